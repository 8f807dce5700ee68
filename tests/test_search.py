from __future__ import annotations

import os

import pytest
import yaml
from typer.testing import CliRunner

from trainlab.cli import app
from trainlab.config import load_config
from trainlab.search import Choice, Range, grid_points, make_spec, narrow_space, run_search

runner = CliRunner()
BASE = {"seed": 0, "data": {"dataset": {"name": "moons", "n_samples": 200}, "batch_size": 32},
        "model": {"name": "mlp", "depth": 1, "width": 8}, "optimizer": {"name": "adam", "lr": 0.01}, "epochs": 1}
SPACE = {"optimizer.lr": {"low": 1e-3, "high": 1e-1, "log": True}, "model.width": [4, 8]}


def spec_for(tmp_path, sampler, trials=None, space=SPACE, name="s", base=BASE, **options):
    path = tmp_path / f"{name}-space.yaml"
    path.write_text(yaml.safe_dump(space))
    return make_spec(load_config(base), path, sampler=sampler, trials=trials, out=tmp_path / name, **options)


def params_and_values(result):
    return [(t.params, t.value, t.state.name) for t in result.trials]


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_seeded_search_is_reproducible(tmp_path, sampler):
    first = run_search(spec_for(tmp_path, sampler, 3, name="a", seed=3))
    second = run_search(spec_for(tmp_path, sampler, 3, name="b", seed=3))
    assert params_and_values(first) == params_and_values(second)
    assert len(first.trials) == 3 and all(state == "COMPLETE" for *_, state in params_and_values(first))
    assert (tmp_path / "a" / "trials.csv").is_file() and (tmp_path / "a" / "search.html").is_file()
    assert load_config(tmp_path / "a" / "best_config.yaml") == first.best_config


def test_range_grids_are_log_spaced_ints_or_stepped():
    assert Range(1e-3, 1e-1, log=True).grid(3) == pytest.approx([1e-3, 1e-2, 1e-1])
    assert Range(1, 9).grid(3) == [1, 5, 9]
    # Four even points of [0, 1] (0, 1/3, 2/3, 1) snapped to the step 0.25.
    assert Range(0.0, 1.0, step=0.25).grid(4) == pytest.approx([0.0, 0.25, 0.75, 1.0])


def grid_counts(result):
    done = [tuple(sorted(t.params.items())) for t in result.trials if t.state.name == "COMPLETE"]
    return done, [t for t in result.trials if t.state.name != "COMPLETE"]


def test_grid_runs_every_point_exactly_once(tmp_path):
    spec = spec_for(tmp_path, "grid", grid_points=2)
    done, others = grid_counts(run_search(spec))
    expected = {tuple(sorted(p.items())) for p in grid_points(spec.space, 2)}
    assert len(done) == len(expected) == 4 and set(done) == expected and not others


def _postgres_or_skip(server: str) -> str | None:
    if server != "postgresql":
        return None
    # scripts/test.sh starts a throwaway server when PostgreSQL is installed (.ci/run installs it).
    url = os.environ.get("TRAINLAB_TEST_POSTGRES")
    if not url:
        pytest.skip("no PostgreSQL server: TRAINLAB_TEST_POSTGRES is not set (scripts/test.sh starts one)")
    return url


@pytest.mark.slow
@pytest.mark.parametrize("server", ["journal file", "postgresql"])
def test_grid_with_two_worker_processes_loses_and_repeats_no_point(tmp_path, server):
    spec = spec_for(tmp_path, "grid", grid_points=3, workers=2, storage=_postgres_or_skip(server))
    done, others = grid_counts(run_search(spec))
    expected = {tuple(sorted(p.items())) for p in grid_points(spec.space, 3)}
    assert len(done) == len(expected) == 6 and set(done) == expected and not others


def test_coarse_to_fine_narrows_the_space_around_the_best_point(tmp_path):
    result = run_search(spec_for(tmp_path, "coarse_to_fine", 8, space={"optimizer.lr": SPACE["optimizer.lr"],
                                                                        "model.width": [4, 8, 16]}))
    coarse, fine = result.spaces
    assert [s.study_name for s in result.studies] == ["search-coarse", "search-fine"]
    assert fine["optimizer.lr"].high - fine["optimizer.lr"].low < coarse["optimizer.lr"].high - coarse["optimizer.lr"].low
    best_coarse = max((t for t in result.studies[0].trials if t.value is not None), key=lambda t: t.value)
    assert fine["optimizer.lr"].low <= best_coarse.params["optimizer.lr"] <= fine["optimizer.lr"].high
    assert best_coarse.params["model.width"] in fine["model.width"].options
    assert set(fine["model.width"].options) <= {4, 8, 16}


def test_narrow_space_follows_its_rule():
    class T:
        def __init__(self, value, lr, act):
            self.value, self.params = value, {"lr": lr, "act": act}

    trials = [T(0.9, 0.01, "relu"), T(0.1, 0.5, "tanh"), T(0.2, 0.4, "tanh"), T(0.3, 0.3, "tanh")]
    space = {"lr": Range(0.0, 1.0), "act": Choice(("relu", "tanh"))}
    narrowed = narrow_space(space, trials, maximize=True)
    assert narrowed["act"] == Choice(("relu",))
    assert narrowed["lr"].low == 0.0 and narrowed["lr"].high == pytest.approx(0.11)  # one top trial: +-10% of span


def test_median_pruning_prunes_a_hopeless_trial(tmp_path):
    base = {**BASE, "epochs": 4}
    space = {"optimizer.lr": [0.05, 0.03, 1e-7], "model.width": [16, 17]}
    result = run_search(spec_for(tmp_path, "grid", space=space, base=base, prune="median"))
    pruned = [t for t in result.trials if t.state.name == "PRUNED"]
    assert pruned and all(len(t.intermediate_values) < 4 for t in pruned)
    assert any(t.params["optimizer.lr"] == 1e-7 for t in pruned)


def test_wilcoxon_reports_each_seed_as_a_step(tmp_path):
    result = run_search(spec_for(tmp_path, "random", 2, prune="wilcoxon", seeds=2))
    assert all(sorted(t.intermediate_values) == [0, 1] for t in result.trials if t.state.name == "COMPLETE")


def test_a_stale_running_trial_is_failed_and_retried_on_resume(tmp_path):
    from trainlab.search import _study

    spec = spec_for(tmp_path, "random", 2)
    (tmp_path / "s").mkdir()
    dead = _study(spec, "search", spec.space, 0).ask()
    dead.suggest_float("optimizer.lr", 1e-3, 1e-1, log=True)
    dead.suggest_categorical("model.width", [4, 8])
    result = run_search(spec)
    states = {t.number: t.state.name for t in result.trials}
    assert states[0] == "FAIL" and list(states.values()).count("COMPLETE") == 2
    retry = [t for t in result.trials if t.user_attrs.get("retry_of") == 0]
    assert len(retry) == 1 and retry[0].params == dead.params and retry[0].state.name == "COMPLETE"


@pytest.mark.parametrize("space,args,message", [
    ({"optimizer.lrr": [0.1, 0.2]}, [], "Unknown config path 'optimizer.lrr'"),
    ({"optimizer.lr": {"low": 0.1, "high": 0.01}}, [], "The range of 'optimizer.lr' is empty"),
    ({"model.width": [8]}, [], "The choice list of 'model.width' in the space must have at least 2"),
    ({"optimizer.lr": {"low": 0, "high": 0.1, "log": True}}, [], "log-scaled, so low must be > 0"),
    (SPACE, ["--sampler", "tpf"], "Did you mean 'tpe'"),
    (SPACE, ["--prune", "medain"], "Did you mean 'median'"),
    (SPACE, ["--storage", "sqlite:///x.db", "--workers", "2"], "SQLite"),
    (SPACE, ["--storage", "postgresql://u:secret@127.0.0.1:9/nodb"], "cannot be opened"),
])
def test_bad_input_exits_2_with_a_message_and_writes_nothing(tmp_path, space, args, message):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    out = tmp_path / "out"
    result = runner.invoke(app, ["search", str(tmp_path / "run.yaml"), "--space", str(tmp_path / "space.yaml"),
                                 "--trials", "2", "--out", str(out), "--quiet", *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split()) and "secret" not in result.output
    assert not out.exists() and not (tmp_path / "x.db").exists()


def test_search_command_prints_the_trials_and_the_best_config(tmp_path):
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(BASE))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    result = runner.invoke(app, ["search", str(tmp_path / "run.yaml"), "--space", str(tmp_path / "space.yaml"),
                                 "--sampler", "random", "--trials", "2", "--out", str(tmp_path / "o"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "best val_acc" in result.output and "COMPLETE" in result.output
    assert (tmp_path / "o" / "best_config.yaml").is_file()


@pytest.mark.slow
def test_random_workers_never_share_a_stream_of_points(tmp_path):
    from trainlab.search import worker_seed

    result = run_search(spec_for(tmp_path, "random", 4, workers=2, seed=5))
    points = [tuple(sorted(t.params.items())) for t in result.trials]
    assert len(points) == 4 and len(set(points)) == 4
    assert worker_seed(5, 0, 0) == 5 and len({worker_seed(5, s, w) for s in (0, 4) for w in (0, 1)}) == 4


def test_the_shipped_space_validates_against_the_example_config(tmp_path):
    from pathlib import Path

    examples = Path(__file__).parent.parent / "examples"
    spec = make_spec(load_config(examples / "breast_cancer_mlp.yaml"), examples / "spaces" / "mlp.yaml",
                     sampler="random", trials=4, out=tmp_path / "s")
    assert set(spec.space) == {"optimizer.lr", "model.width", "model.dropout"}
    assert not (tmp_path / "s").exists()  # validating writes nothing


@pytest.mark.slow
@pytest.mark.parametrize("server", ["journal file", "postgresql"])
def test_a_search_killed_mid_trial_resumes_with_no_trial_left_running(tmp_path, server):
    """The journal file has no heartbeat: the resuming search fails the dead trial itself. PostgreSQL's trials
    beat: one silent for the grace period is failed and retried by Optuna's heartbeat callback."""
    import signal
    import subprocess
    import sys
    import time
    import uuid

    import optuna

    from trainlab.search import open_storage

    url, name = _postgres_or_skip(server), f"killed-{uuid.uuid4().hex[:8]}"
    slow = {**BASE, "data": {"dataset": {"name": "moons", "n_samples": 2000}, "batch_size": 8}, "epochs": 40}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(slow))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    args = [sys.executable, "-m", "trainlab.cli", "search", str(tmp_path / "base.yaml"), "--space",
            str(tmp_path / "space.yaml"), "--sampler", "random", "--trials", "2", "--out", str(tmp_path / "s"),
            "--name", name, "--quiet", *(["--storage", url] if url else [])]
    storage = lambda: open_storage(url, tmp_path / "s", 1)  # noqa: E731

    def trials() -> list:
        try:
            return optuna.load_study(study_name=name, storage=storage()).trials
        except KeyError:  # the study is not created yet
            return []

    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not trials() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # inside the first trial's training
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert [t.state.name for t in trials()] == ["RUNNING"]  # the killed process left its trial running
    quick = {**slow, "epochs": 1}
    if url:
        time.sleep(3)  # longer than the resuming search's grace period: the dead worker's heartbeat is stale
    result = run_search(make_spec(load_config(quick), tmp_path / "space.yaml", sampler="random", trials=2,
                                  out=tmp_path / "s", storage=url, name=name, grace_s=2))
    states = [t.state.name for t in result.trials]
    assert "RUNNING" not in states and states.count("COMPLETE") == 2 and states[0] == "FAIL"
    retried = [t for t in result.trials if t.number > 0 and t.params == result.trials[0].params]
    assert retried and retried[0].state.name == "COMPLETE"


def test_searches_with_their_own_names_share_one_storage_apart(tmp_path):
    journal = str(tmp_path / "shared.log")
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))

    def named(study, trials):
        return make_spec(load_config(BASE), tmp_path / "space.yaml", sampler="random", trials=trials,
                         out=tmp_path / study, storage=journal, name=study)

    first, second = run_search(named("first", 2)), run_search(named("second", 3))
    assert [s.study_name for s in first.studies] == ["first"] and len(first.trials) == 2
    assert [s.study_name for s in second.studies] == ["second"] and len(second.trials) == 3
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    bad = runner.invoke(app, ["search", str(tmp_path / "base.yaml"), "--space", str(tmp_path / "space.yaml"),
                              "--sampler", "random", "--trials", "2", "--name", "no spaces", "--out",
                              str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "The --name option must be 1 to 100 letters" in bad.output
    assert not (tmp_path / "bad").exists()
