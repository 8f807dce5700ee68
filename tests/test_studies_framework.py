from __future__ import annotations

import ast
import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import trainlab.runs
import trainlab.studies
from trainlab.registry import ConfigError
from trainlab.studies import STUDIES, make_context, register_study, run_studies, run_study, select
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   finals, joint, series, threshold_result)

BASE = {"data": {"dataset": {"name": "moons", "n_samples": 120}, "batch_size": 64}, "model": {"name": "mlp", "depth": 1,
                                                                                            "width": 4},
        "threads": 1}


class FakeStudy(Study[Budget]):
    name = "fake"
    title = "A <fake> study"
    question = "Does a large learning rate fit the moons in a few epochs?"
    smoke = Budget(seeds=2, epochs=1)
    quick = Budget(seeds=10, epochs=5)
    full = Budget(seeds=20, epochs=5)
    arms = {"slow": {"optimizer.lr": 1e-4}, "fast": {"optimizer.lr": 0.05}}
    claims = (Claim("fast", "With a large learning rate the training loss falls below ln 2, a coin flip's.",
                    lambda r: threshold_result(finals(r["runs"]["fast"], "train_loss"), "<", math.log(2),
                                               "final train loss")),)

    def __init__(self) -> None:
        self.computed = 0

    def measure(self, ctx: StudyContext[Budget]) -> dict[str, Any]:
        def compute() -> dict[str, Any]:
            self.computed += 1
            return {"grid": np.arange(6.0).reshape(2, 3), "label": "x"}

        extra = ctx.cached("grid", {"size": 6}, compute)
        return {"runs": ctx.train_arms(BASE, self.arms), "extra": extra}

    def present(self, results: dict[str, Any], ctx: StudyContext[Budget]) -> tuple[list[FigureRef], list[Table]]:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots()
        ax.plot([1, 2])
        rows = [[arm, float(np.mean(finals(runs, "train_loss")))] for arm, runs in results["runs"].items()]
        return [ctx.figure(fig, "loss", "loss")], [Table("losses", ["arm", "train loss"], rows)]


def test_arms_times_seeds_are_trained_once_then_loaded_from_the_store(tmp_path, train_calls):
    study = FakeStudy()
    ctx = make_context(study, mode="quick", seeds=3, out=tmp_path)
    outcome = run_study(study, ctx)
    assert len(train_calls) == 2 * 3
    assert {c.seed for c in train_calls} == {0, 1, 2}
    assert (outcome.runs_trained, outcome.runs_cached) == (6, 0)
    assert study.computed == 1
    # Five epochs at lr 0.05 fit the moons on every seed: the claim is decided from the three runs' losses.
    (claim,) = outcome.claims
    assert claim.verdict == "supported"
    assert claim.numbers["n"] == 3 and claim.numbers["ci_high"] < math.log(2)
    assert (tmp_path / outcome.figures[0].path).is_file()

    again = run_study(study, make_context(study, mode="quick", seeds=3, out=tmp_path))
    assert len(train_calls) == 6  # nothing retrained
    assert (again.runs_trained, again.runs_cached) == (0, 6)
    assert study.computed == 1
    assert again.claims == outcome.claims
    assert again.tables == outcome.tables


def test_adding_an_arm_or_a_seed_trains_only_what_is_new(tmp_path, train_calls):
    study = FakeStudy()
    run_study(study, make_context(study, mode="smoke", out=tmp_path))
    assert len(train_calls) == 4
    study.arms = {**FakeStudy.arms, "faster": {"optimizer.lr": 0.2}}
    outcome = run_study(study, make_context(study, mode="smoke", seeds=3, out=tmp_path))
    assert len(train_calls) == 4 + 2 + 3  # seed 2 of the old arms, every seed of the new one
    assert (outcome.runs_trained, outcome.runs_cached) == (5, 4)


def test_budget_seeds_and_data_override_reach_the_run_configs(tmp_path, train_calls):
    study = FakeStudy()
    ctx = make_context(study, mode="smoke", seeds=[7], data={"dataset": {"name": "moons", "n_samples": 100}},
                       out=tmp_path)
    ctx.train_arms(BASE, {"only": {}})
    (config,) = train_calls
    assert config.seed == 7
    assert config.epochs == 1
    assert config.data.dataset.n_samples == 100
    assert make_context(study, data="digits").data_overrides() == {"data.dataset": "digits"}
    with pytest.raises(TypeError, match="dataset name or a mapping"):
        make_context(study, data=3).data_overrides()
    with pytest.raises(ValueError, match="positive number of seeds"):
        make_context(study, seeds=0)
    with pytest.raises(ValueError, match="smoke, quick, full"):
        study.budget("huge")


def test_a_run_config_is_the_base_with_budget_data_arm_and_seed_in_that_order_of_precedence(tmp_path):
    ctx = make_context(FakeStudy(), mode="smoke", data={"batch_size": 16}, out=tmp_path,
                       budget=Budget(seeds=2, epochs=3, train_size=50))
    config = ctx.run_config({**BASE, "epochs": 9}, {"data.batch_size": 8}, seed=4)
    assert (config.epochs, config.data.train_size, config.data.batch_size, config.seed) == (3, 50, 8, 4)
    assert ctx.run_config(BASE, {}, seed=0).data.batch_size == 16
    assert ctx.run_config(BASE, {}, seed=0, use_data_override=False).data.batch_size == 64
    assert ctx.seeds == [0, 1]  # the custom budget's seed count


def test_a_custom_budget_must_be_of_the_studys_budget_type(tmp_path):
    study = STUDIES["batch_norm"]
    budget = dataclasses.replace(study.smoke, seeds=3, lrs=(0.5,))
    ctx = make_context(study, mode="smoke", budget=budget, out=tmp_path)
    assert ctx.budget.lrs == (0.5,) and ctx.seeds == [0, 1, 2] and ctx.mode == "smoke"
    with pytest.raises(TypeError, match="must be a BatchNormBudget"):
        make_context(study, budget=Budget(seeds=3, epochs=1), out=tmp_path)


def test_run_studies_writes_outcomes_and_pages_and_fewer_than_three_seeds_are_inconclusive(tmp_path, monkeypatch):
    monkeypatch.setitem(STUDIES, "fake", FakeStudy())
    (outcome,) = run_studies(["fake"], mode="smoke", out=tmp_path, progress=False)
    assert outcome.seeds == [0, 1]
    assert [c.verdict for c in outcome.claims] == ["inconclusive"]
    assert (tmp_path / "outcomes" / "fake.json").is_file()
    page = (tmp_path / "fake.html").read_text()
    assert "A &lt;fake&gt; study" in page and "data:image/png;base64," in page
    assert 'href="fake.html"' in (tmp_path / "index.html").read_text()


def test_unknown_study_names_and_small_budgets_are_rejected():
    with pytest.raises(ConfigError, match="Did you mean 'optimizers'"):
        select("optimizer")
    assert [s.name for s in select("all")] == list(STUDIES)
    assert {"init_activations", "optimizers"} <= set(STUDIES)

    class TooFew(FakeStudy):
        name = "too_few"
        quick = Budget(seeds=9, epochs=1)

    with pytest.raises(ValueError, match="quick budget of study 'too_few' must have at least 10 seeds. Got 9"):
        register_study(TooFew)

    class TooFewFull(FakeStudy):
        name = "too_few_full"
        full = Budget(seeds=19, epochs=1)

    with pytest.raises(ValueError, match="full budget of study 'too_few_full' must have at least 20 seeds. Got 19"):
        register_study(TooFewFull)


def test_cached_stores_arrays_and_json_values(tmp_path):
    ctx = make_context(FakeStudy(), out=tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.eye(2), "b": [1, 2], "c": 0.5}

    first = ctx.cached("thing", {"k": 1}, compute)
    second = ctx.cached("thing", {"k": 1}, compute)
    ctx.cached("thing", {"k": 2}, compute)
    assert len(calls) == 2
    np.testing.assert_array_equal(second["a"], np.eye(2))
    assert (second["b"], second["c"]) == (first["b"], first["c"]) == ([1, 2], 0.5)


# --- verdicts on synthetic results -----------------------------------------------------------------------------------
def test_threshold_and_compare_results_follow_the_numbers():
    assert threshold_result([22.0, 21.0, 24.0], "<", 2.0, "ratio").verdict == "refuted"
    assert threshold_result([1.0, 1.1, 0.9], "<", 2.0, "ratio").verdict == "supported"
    assert threshold_result([1.0, 3.0], "<", 2.0, "ratio").verdict == "inconclusive"
    result = threshold_result([1.0, 1.1], "<", 2.0, "ratio")
    assert result.verdict == "inconclusive" and "too few" in result.evidence
    faster = compare_result([10, 11, 12, 10], [20, 22, 21, 25], "less", "steps", ("adam", "sgd"))
    assert faster.verdict == "supported" and faster.numbers["adam mean"] == 10.75
    assert compare_result([20, 22, 21, 25], [10, 11, 12, 10], "less", "steps", ("adam", "sgd")).verdict == "refuted"
    assert compare_result([10, 11], [20, 22], "less", "steps", ("a", "b")).verdict == "inconclusive"


def test_joint_claims_need_every_part():
    yes, no, maybe = (ClaimResult(v, v, {"x": 1.0}) for v in ("supported", "refuted", "inconclusive"))
    assert joint({"a": yes, "b": yes}).verdict == "supported"
    assert joint({"a": yes, "b": maybe}).verdict == "inconclusive"
    assert joint({"a": maybe, "b": no}).verdict == "refuted"
    assert joint({"a": yes, "b": no}).numbers == {"a: x": 1.0, "b: x": 1.0}
    assert joint({"a": yes, "b": no}).parts == {"a": yes, "b": no}


def test_a_claim_test_must_return_a_valid_verdict():
    with pytest.raises(TypeError, match="ClaimResult"):
        Claim("k", "text", lambda r: "supported").evaluate({})
    with pytest.raises(ValueError, match="supported, refuted, inconclusive"):
        Claim("k", "text", lambda r: ClaimResult("true", "e")).evaluate({})


def test_series_and_finals_read_histories():
    run = trainlab.runs.RunResult({}, [{"loss": 2.0}, {"loss": 1.0}], {"acc": 0.5})
    assert series([run, run], "loss") == [[2.0, 1.0], [2.0, 1.0]]
    assert finals([run], "acc") == [0.5] and finals([run], "loss") == [1.0]


# --- the study modules ------------------------------------------------------------------------------------------------
def _study_imports(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
    return {m for m in modules if m.startswith("trainlab.studies")}


def test_studies_share_measures_not_each_other():
    """A study imports the framework and the shared measures, never another study's module."""
    folder = Path(trainlab.studies.__file__).parent
    shared = {"trainlab.studies", "trainlab.studies.base", "trainlab.studies.measures"}
    modules = sorted(p for p in folder.glob("*.py") if p.stem not in ("__init__", "base", "measures"))
    assert len(modules) == len(STUDIES)
    for path in modules:
        assert _study_imports(path) <= shared, path.name
        assert "cast(" not in path.read_text(), path.name  # a study's budget has its own type: no casts


def test_toggles_switch_each_technique_once():
    from trainlab.config import load_config
    from trainlab.studies import toggles

    config = load_config({"model": {"name": "mlp", "dropout": 0.3, "norm": "batch"}, "regularizers": ["l1"]})
    variants = toggles(config)
    assert variants["norm: batch -> none"] == {"model.norm": "none"}
    assert variants["dropout: 0.3 -> 0"] == {"model.dropout": 0.0}
    assert variants["regularizers: l1 -> none"] == {"regularizers": []}
    assert variants["optimizer: adamw -> momentum"]["optimizer"]["name"] == "momentum"
    assert variants["schedule: constant -> cosine"] == {"schedule": "cosine"}
    assert "init: auto -> normal" in variants and "activation: relu -> tanh" in variants
    for overrides in variants.values():  # every variant is a valid config
        load_config(config, overrides)


def test_ablate_ranks_every_toggle_against_the_baseline(tmp_path):
    from trainlab.studies import ablate

    outcome = ablate({**BASE, "epochs": 1}, seeds=2, out=tmp_path, progress=False)
    assert len(outcome.claims) == 7 == len(outcome.tables[0].rows)
    assert {c.verdict for c in outcome.claims} == {"inconclusive"}  # two seeds
    changes = [row[2] for row in outcome.tables[0].rows]
    assert changes == sorted(changes, reverse=True)  # accuracy: the most helpful first
    assert (tmp_path / "ablation.html").is_file()


def test_ablation_effects_read_helps_hurts_or_no_detectable_effect():
    from trainlab.studies import effect_word
    from trainlab.studies.base import compare_result

    baseline = [0.80, 0.82, 0.81, 0.79]
    helps = compare_result([0.85, 0.88, 0.86, 0.84], baseline, "greater", "val_acc", ("v", "baseline"))
    hurts = compare_result([0.70, 0.71, 0.72, 0.69], baseline, "greater", "val_acc", ("v", "baseline"))
    unclear = compare_result([0.81, 0.80, 0.83, 0.78], baseline, "greater", "val_acc", ("v", "baseline"))
    assert effect_word(helps) == "helps" and effect_word(hurts) == "hurts"
    assert effect_word(unclear) == f"no detectable effect (|change| < {unclear.numbers['detectable diff']:.3g})"
    assert effect_word(compare_result(baseline, baseline, "greater", "val_acc", ("v", "baseline"))) == "no effect"


def test_ablate_ranks_on_validation_loss_when_accuracy_is_at_its_ceiling(tmp_path):
    from trainlab.studies import ablate

    easy = {**BASE, "data": {"dataset": {"name": "moons", "n_samples": 300, "noise": 0.0}, "batch_size": 32},
            "model": {"name": "mlp", "depth": 2, "width": 32}, "optimizer": {"name": "adam", "lr": 0.02}, "epochs": 10}
    outcome = ablate(easy, seeds=2, out=tmp_path, progress=False)
    assert outcome.tables[0].title.startswith("Baseline val_loss:")
    changes = [row[2] for row in outcome.tables[0].rows]
    assert changes == sorted(changes)  # loss: the most helpful (most negative change) first


def test_ablate_rejects_too_few_seeds_and_a_config_without_validation_split(tmp_path, train_calls):
    from trainlab.studies import ablate

    with pytest.raises(ValueError, match="'seeds'"):
        ablate({**BASE, "epochs": 1}, seeds=0, out=tmp_path, progress=False)
    no_val = {**BASE, "epochs": 1, "data": {**BASE["data"], "val_fraction": 0.0}}
    with pytest.raises(ConfigError, match="val_fraction"):
        ablate(no_val, seeds=2, out=tmp_path, progress=False)
    assert train_calls == []  # rejected before anything was trained


def test_claim_results_carry_n_effect_size_and_the_detectable_difference():
    from trainlab.studies.base import compare_result, threshold_effect, threshold_result

    above = threshold_result([2.0, 3.0, 4.0], ">", 1.0, "x")
    assert above.numbers["n"] == 3 and above.numbers["d"] == pytest.approx(2.0)  # (3 - 1) / std 1
    assert "d = 2" in above.evidence
    assert threshold_effect(2.0, 0.0, 2.0) == 0.0 and threshold_effect(2.0, 0.0, 1.0) == math.inf
    assert math.isnan(threshold_effect(2.0, math.nan, 1.0))
    result = compare_result([1.0, 2.0, 3.0], [1.5, 2.2, 2.9], "greater", "acc", ("a", "b"))
    assert result.verdict == "inconclusive" and result.numbers["n"] == 3
    assert result.numbers["detectable diff"] > abs(result.numbers["diff"])
    assert f"it would detect a difference of {result.numbers['detectable diff']:.3g}" in result.evidence
