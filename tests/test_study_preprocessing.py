from __future__ import annotations

import pytest

import trainlab.runs
from trainlab.runs import RunResult
from trainlab.studies import STUDIES, make_context, run_studies
from trainlab.studies.preprocessing import (ARMS, DATASET_NAMES, LEAK_EFFECT, claim_faster, claim_leak, feature_stds,
                                            loss_after)


def run(train_loss=(1.0,), val_acc=None, final=None) -> RunResult:
    val_acc = val_acc or [0.5] * len(train_loss)
    history = [{"epoch": i + 1, "train_loss": t, "val_acc": v} for i, (t, v) in enumerate(zip(train_loss, val_acc))]
    return RunResult({}, history, dict(final or {}))


def test_loss_after_reads_epoch_k_or_the_last_epoch_of_a_shorter_run():
    r = run([3.0, 2.0, 1.0])
    assert loss_after(r, 2) == 2.0
    assert loss_after(r, 10) == 1.0


def test_the_datasets_have_features_on_very_different_scales():
    for ds in DATASET_NAMES:
        std = feature_stds(ds)
        assert std.max() / std.min() > 1e3


def _runs(**losses_by_arm):
    return {ds: {arm: [run([1.0, loss + 0.01 * i]) for i in range(3)] for arm, loss in losses_by_arm.items()}
            for ds in DATASET_NAMES}


def test_faster_claim_follows_the_loss_after_k_epochs():
    assert claim_faster({"k_epochs": 2, "runs": _runs(raw=5.0, standardize=0.1, minmax=0.3)}).verdict == "supported"
    assert claim_faster({"k_epochs": 2, "runs": _runs(raw=0.1, standardize=5.0, minmax=0.3)}).verdict == "refuted"


def _leak_runs(diffs):
    honest = [0.90, 0.93, 0.95, 0.91]
    return {ds: {"standardize": [run(final={"val_acc": v}) for v in honest],
                 "standardize_leak": [run(final={"val_acc": v + d}) for v, d in zip(honest, diffs)]}
            for ds in DATASET_NAMES}


def test_leak_claim_needs_more_than_the_minimum_effect():
    assert claim_leak({"runs": _leak_runs([0.05, 0.06, 0.04, 0.05])}).verdict == "supported"
    tiny = [LEAK_EFFECT / 10, 0.0, -LEAK_EFFECT / 10, 0.0]
    assert claim_leak({"runs": _leak_runs(tiny)}).verdict == "refuted"


@pytest.mark.slow
def test_on_three_seeds_scaled_wine_features_converge_faster_and_a_second_run_trains_nothing(tmp_path, monkeypatch):
    calls = []
    real = trainlab.runs.train
    monkeypatch.setattr(trainlab.runs, "train", lambda config, *a, **k: calls.append(config) or real(config, *a, **k))
    study = STUDIES["preprocessing"]
    ctx = make_context(study, mode="smoke", seeds=3, out=tmp_path)
    results = study.measure(ctx)
    assert len(calls) == len(DATASET_NAMES) * len(ARMS) * 3
    # Each seed draws its own split; the leak arms fit their scaler on all the data.
    assert {c.data.split_seed for c in calls} == {0, 1, 2}
    assert sum(c.data.fit_on == "all" for c in calls) == len(DATASET_NAMES) * 2 * 3
    # Wine's raw features span 3 orders of magnitude: its raw training loss is still far above the scaled ones'.
    faster = claim_faster(results)
    for scaler in ("standardize", "minmax"):
        part = faster.parts[f"wine: {scaler}"]
        assert part.verdict == "supported" and part.numbers["raw mean"] > 10 * part.numbers[f"{scaler} mean"]

    (outcome,) = run_studies(["preprocessing"], mode="smoke", seeds=3, out=tmp_path, progress=False)
    assert len(calls) == len(DATASET_NAMES) * len(ARMS) * 3
    assert (outcome.runs_trained, outcome.runs_cached) == (0, len(calls))
    assert [c.key for c in outcome.claims] == [c.key for c in study.claims]
    assert outcome.claims == [c.evaluate(results) for c in study.claims]
    assert outcome.figures and all((tmp_path / f.path).is_file() for f in outcome.figures)
    assert outcome.tables and all(t.rows for t in outcome.tables)
