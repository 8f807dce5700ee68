from __future__ import annotations

import numpy as np
import pytest

import trainlab.runs
from trainlab.schedules import SCHEDULES, preview
from trainlab.studies import STUDIES, make_context, run_studies
from trainlab.runs import RunResult
from trainlab.studies.base import finals
from trainlab.studies.measures import steps_to_target
from trainlab.studies.schedules import (DECAYS, FASTER_EPOCHS, NO_WARMUP, SPEED_SCHEDULES, SPIKE_CAP, STABLER, WARMUP,
                                        best_lr, claim_cosine, claim_decay, claim_faster, claim_one_cycle,
                                        claim_warmup, end_epochs, end_roughness, schedule_specs, start_instability,
                                        target_loss)


def test_the_study_covers_every_registered_schedule():
    assert set(schedule_specs(18, 2)) == set(SCHEDULES.names())


def test_schedule_shapes_follow_the_run_length():
    epochs, per_epoch = 18, 5
    total = epochs * per_epoch
    specs = {name: SCHEDULES.create(spec) for name, spec in schedule_specs(epochs, 2).items()}
    step = preview(specs["step"], total, per_epoch)
    # Divided by 10 at epochs 6 and 12: 1% at the end, like exponential decay.
    assert step[6 * per_epoch - 1] == 1.0 and step[6 * per_epoch] == pytest.approx(0.1)
    assert step[-1] == pytest.approx(0.01)
    exponential = preview(specs["exponential"], total + 1, per_epoch)
    assert exponential[total] == pytest.approx(0.01, rel=1e-4)
    # Cycles of 6 and 12 epochs end with the run: no restart, the last step is annealed.
    restarts = preview(specs["cosine_restarts"], total, per_epoch)
    assert restarts[6 * per_epoch] == 1.0 and restarts[-1] < 0.01
    assert specs["plateau"].patience_epochs == 2


def test_start_instability_is_peak_and_mean_change_relative_to_the_first_loss():
    peak, rough = start_instability([2.0, 4.0, 1.0, 1.0, 100.0], window=4)
    assert peak == pytest.approx(2.0)
    assert rough == pytest.approx((1.0 + 1.5 + 0.0) / 3)
    peak, rough = start_instability([2.0, float("nan"), 2.0], window=3)
    assert peak == SPIKE_CAP
    assert rough == pytest.approx(2 * (SPIKE_CAP - 1) / 2)
    # A window longer than the run (stopped early) uses what there is.
    assert start_instability([1.0, 3.0], window=10) == (3.0, 2.0)
    with pytest.raises(ValueError, match="window"):
        start_instability([1.0, 2.0], window=1)
    with pytest.raises(ValueError, match="first step loss"):
        start_instability([float("inf"), 2.0], window=2)


def test_best_lr_maximizes_mean_validation_accuracy_and_breaks_ties_to_the_smaller():
    assert best_lr({0.1: [0.5, 0.6], 0.3: [0.6, 0.61]}) == 0.3
    assert best_lr({0.3: [0.5], 0.1: [0.5]}) == 0.1


def _accs(**means: float) -> dict[str, list[float]]:
    noise = np.array([0.004, -0.003, 0.001, -0.002])
    return {name: list(mean + noise * (1 + i)) for i, (name, mean) in enumerate(means.items())}


def test_cosine_and_decay_claims_follow_the_accuracies():
    r = {"test_acc": _accs(constant=0.60, step=0.63, exponential=0.62, cosine=0.66)}
    assert claim_cosine(r).verdict == "supported"
    assert claim_decay(r).verdict == "supported"
    r = {"test_acc": _accs(constant=0.66, step=0.70, exponential=0.64, cosine=0.60)}
    assert claim_cosine(r).verdict == "refuted"
    assert claim_decay(r).verdict == "refuted"  # exponential and cosine lose to constant
    r = {"test_acc": {k: v[:2] for k, v in _accs(constant=0.6, step=0.6, exponential=0.6, cosine=0.7).items()}}
    assert claim_cosine(r).verdict == "inconclusive"  # two seeds decide nothing


def test_warmup_claim_needs_a_lower_peak_and_a_better_end():
    calm, spiky = [1.0, 1.01, 1.0, 1.02], [3.0, 2.1, 5.0, 2.6]
    good, bad = [0.56, 0.58, 0.55, 0.57], [0.47, 0.46, 0.48, 0.45]
    r = {"peak": {WARMUP: calm, NO_WARMUP: spiky}, "stability_acc": {WARMUP: good, NO_WARMUP: bad}}
    assert claim_warmup(r).verdict == "supported"
    r["stability_acc"] = {WARMUP: bad, NO_WARMUP: good}
    assert claim_warmup(r).verdict == "refuted"


def test_end_roughness_is_the_mean_change_over_the_last_epochs():
    assert end_roughness([5.0, 1.0, 1.2, 1.1, 1.4], window=3) == pytest.approx((0.1 + 0.3) / 2)
    assert np.isnan(end_roughness([1.0, float("nan")], window=2))
    assert end_epochs(18) == 4 and end_epochs(3) == 2


def test_the_target_loss_is_the_highest_mean_final_training_loss_of_the_compared_schedules():
    def rs(loss):
        return [RunResult({}, [{"epoch": 1, "train_loss": loss + d}], {}, {}) for d in (-0.01, 0.01)]

    runs = {name: rs(0.2 + 0.1 * i) for i, name in enumerate(SPEED_SCHEDULES)}
    runs["plateau"] = rs(9.0)  # not compared: does not set the target
    assert target_loss(runs) == pytest.approx(0.2 + 0.1 * (len(SPEED_SCHEDULES) - 1))


def _epochs(**means: int) -> dict[str, list[int]]:
    return {name: [mean + d for d in (0, 1, -1, 0)] for name, mean in means.items()}


def test_speed_and_one_cycle_claims_need_more_than_the_minimum_number_of_epochs():
    slow = 12
    fast = slow - 3 * FASTER_EPOCHS
    calm, rough = [0.001, 0.002, 0.001, 0.0015], [0.05, 0.06, 0.04, 0.055]
    r = {"target_loss": 0.5, "to_loss": _epochs(constant=slow, **{d: fast for d in DECAYS}, one_cycle=fast - 3),
         "end_roughness": {"one_cycle": calm, "constant": rough, "cosine": rough}}
    assert claim_faster(r).verdict == "supported"
    assert claim_one_cycle(r).verdict == "supported"
    # Step decay 0.75 epochs sooner on 4 seeds: the CI [-1.55, 0.05] neither shows nor rules out 1 epoch sooner.
    r["to_loss"]["step"] = [slow - 1, slow, slow - 1, slow - 1]
    assert claim_faster(r).verdict == "inconclusive"
    assert claim_faster(r).parts["step"].verdict == "inconclusive"
    # As slow as constant on every seed (paired differences 0, 0, 0, 0.1): sooner by 1 epoch is ruled out.
    r["to_loss"]["step"] = [a + d for a, d in zip(r["to_loss"]["constant"], (0, 0, 0, 0.1))]
    assert claim_faster(r).verdict == "refuted"
    r["end_roughness"]["cosine"] = [c + STABLER / 10 for c in calm]
    assert claim_one_cycle(r).parts["stabler end than cosine"].verdict == "refuted"


@pytest.mark.slow
def test_on_three_seeds_warmup_removes_the_spike_at_the_start_and_a_second_run_trains_nothing(tmp_path, monkeypatch):
    study = STUDIES["schedules"]
    ctx = make_context(study, mode="smoke", seeds=3, out=tmp_path)
    results = study.measure(ctx)
    # Adam at 30x its default lr: without warmup the first steps' loss jumps to over twice the first loss.
    spike = claim_warmup(results).parts["no spike"]
    assert spike.verdict == "supported"
    assert spike.numbers[f"{NO_WARMUP} mean"] > 2 > spike.numbers[f"{WARMUP} mean"]
    # The stability runs last the budget's stability_epochs, not the grid's epochs.
    budget, per_epoch = study.smoke, results["steps_per_epoch"]
    for run in [*results["stability"][NO_WARMUP], *results["stability"][WARMUP]]:
        assert run.final["epochs_run"] == budget.stability_epochs != budget.epochs
        assert len(run.extras["step_loss"]) == budget.stability_epochs * per_epoch
    assert results["warmup_steps"] == budget.warmup_epochs * per_epoch

    calls = []
    monkeypatch.setattr(trainlab.runs, "train", lambda *a, **k: calls.append(a))
    (outcome,) = run_studies(["schedules"], mode="smoke", seeds=3, out=tmp_path, progress=False)
    assert calls == [] and outcome.runs_trained == 0 and outcome.runs_cached == ctx.runs_trained
    assert outcome.claims == [c.evaluate(results) for c in study.claims]
    assert len(outcome.figures) == 4 and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)
    # The speed claims read the stored histories: epochs to the target loss and the validation loss at the end.
    runs, claims = results["runs"], {c.key: c for c in outcome.claims}
    assert results["target_loss"] == pytest.approx(max(np.mean(finals(runs[n], "train_loss")) for n in SPEED_SCHEDULES))
    assert claims["schedule_faster"].numbers["cosine: constant mean"] == pytest.approx(np.mean(
        [steps_to_target(r.metric("train_loss"), results["target_loss"], budget.epochs) for r in runs["constant"]]))
    assert claims["one_cycle_fast_stable"].numbers["stabler end than cosine: one_cycle mean"] == pytest.approx(
        np.mean([end_roughness(r.metric("val_loss"), end_epochs(budget.epochs)) for r in runs["one_cycle"]]))
