"""Ray cluster: a study whose arms train on a real local cluster (a head and a worker node, each its own process,
started by scripts/ray.sh) gives the outcomes it gives in this process; a worker process killed mid-study is run
again by Ray and loses nothing; progress and errors come back to this process; an unreachable address and a missing
Ray say so.

scripts/test.sh starts the cluster and passes its address as ``TRAINLAB_TEST_RAY``; without it the cluster tests are
skipped, saying why. One connection serves the whole file (its worker processes stay warm between tests).
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from rich.progress import Progress

from trainlab.callbacks import Callback
from trainlab.executors import Job, check_cluster, check_shared, connect, run_jobs
from trainlab.runs import Store
from trainlab.studies import STUDIES, _run_named, make_context, run_studies

ADDRESS = os.environ.get("TRAINLAB_TEST_RAY")
STUDY = "learning_rate"


@pytest.fixture(scope="module")
def cluster():
    if not ADDRESS and os.environ.get("CI"):
        pytest.fail("CI runs the cluster tests: scripts/test.sh must start a Ray cluster (scripts/ray.sh) and set "
                    "TRAINLAB_TEST_RAY")
    if not ADDRESS:
        pytest.skip("no Ray cluster: scripts/test.sh starts one (scripts/ray.sh) and sets TRAINLAB_TEST_RAY")
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[dev]' installs it)")
    # The worker processes cannot import this test module: its callbacks and job functions travel by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with connect(ADDRESS):
        yield ADDRESS


def _decisions(outcomes):
    return [(o.name, [(c.key, c.verdict, c.evidence) for c in o.claims], o.tables) for o in outcomes]


@pytest.mark.slow
def test_a_study_on_the_cluster_matches_this_process(cluster, tmp_path):
    on_cluster = run_studies([STUDY], mode="smoke", out=tmp_path / "cluster", cluster=cluster, progress=False)
    alone = run_studies([STUDY], mode="smoke", out=tmp_path / "alone", progress=False)
    assert _decisions(on_cluster) == _decisions(alone)
    store, trained = Store(tmp_path / "cluster" / "runs" / STUDY), on_cluster[0].runs_trained
    assert store.verify() == [] and trained == alone[0].runs_trained > 0
    assert sorted(p.name for p in store.root.iterdir()) == sorted(p.name for p in (tmp_path / "alone" / "runs" /
                                                                                   STUDY).iterdir())
    # A finished run is never trained twice: the second call on the cluster loads every run from the store.
    again = run_studies([STUDY], mode="smoke", out=tmp_path / "cluster", cluster=cluster, progress=False)
    assert again[0].runs_trained == 0 and again[0].runs_cached == trained
    assert _decisions(again) == _decisions(alone)


class _Witness(Callback):
    """Logs each run's start and end (``log``, one line per event, appended); in the ``victim`` arm, the first
    attempt writes its process id to ``pid_file`` at the end of the first epoch and waits there to be killed."""

    per_replica = True

    def __init__(self, log: Path, arm: str, seed: int, pid_file: Path | None):
        self.log, self.arm, self.seed, self.pid_file = log, arm, seed, pid_file

    def _say(self, event: str) -> None:
        with open(self.log, "a") as f:
            f.write(f"{event} {self.arm} {self.seed} {os.getpid()}\n")

    def on_fit_start(self, trainer) -> None:
        self._say("start")

    def on_epoch_end(self, trainer) -> None:
        if self.pid_file is not None and not self.pid_file.exists():
            self.pid_file.with_suffix(".tmp").write_text(str(os.getpid()))
            self.pid_file.with_suffix(".tmp").rename(self.pid_file)
            time.sleep(120)  # the test kills this process long before

    def on_fit_end(self, trainer) -> None:
        self._say("end")


def _kill_when_written(pid_file: Path, killed: list[int]) -> None:
    for _ in range(1200):
        if pid_file.exists():
            killed.append(int(pid_file.read_text()))
            os.kill(killed[-1], signal.SIGKILL)
            return
        time.sleep(0.1)


@pytest.mark.slow
def test_a_worker_killed_mid_study_is_retried_and_loses_nothing(cluster, tmp_path):
    study = STUDIES[STUDY]
    ctx = make_context(study, mode="smoke", out=tmp_path, cluster=cluster)
    arms = {f"lr {lr:g}": {"optimizer.lr": lr} for lr in study.smoke.lrs}
    victim, log, pid_file = next(iter(arms)), tmp_path / "events.log", tmp_path / "victim.pid"
    killed: list[int] = []
    killer = threading.Thread(target=_kill_when_written, args=(pid_file, killed), daemon=True)
    killer.start()
    runs = ctx.train_arms(study.base_config(), arms, callbacks_factory=lambda arm, seed: [
        _Witness(log, arm, seed, pid_file if arm == victim else None)])
    killer.join()
    assert len(killed) == 1 and killed[0] != os.getpid()
    events = [line.split() for line in log.read_text().splitlines()]
    seeds = ctx.seeds
    for arm in arms:
        ends = sorted(int(seed) for event, *name, seed, _ in events if event == "end" and " ".join(name) == arm)
        assert ends == seeds, arm  # every run finished exactly once
    # The victim's batch started twice: in the killed process, then in the one Ray ran it again in.
    victim_starts = {pid for event, *name, _, pid in events if event == "start" and " ".join(name) == victim}
    assert str(killed[0]) in victim_starts and len(victim_starts) == 2
    assert ctx.store.verify() == [] and len(list(ctx.store.root.iterdir())) == len(arms) * len(seeds)
    assert ctx.runs_trained == len(arms) * len(seeds)
    # Nothing was lost: the same arms in this process load every run (train none) and give the same results.
    here = make_context(study, mode="smoke", out=tmp_path)
    again = here.train_arms(study.base_config(), arms, callbacks_factory=lambda arm, seed: [
        _Witness(log, arm, seed, None)])
    assert here.runs_trained == 0
    assert {a: [r.final for r in rs] for a, rs in again.items()} == {a: [r.final for r in rs] for a, rs in runs.items()}


def _report(steps: int, fail: bool = False, progress=None) -> int:
    """A job that shows a bar of ``steps`` steps and a line on ``progress`` (when given), then fails if asked."""
    if progress is not None:
        task = progress.add_task(f"job of {steps}", total=steps)
        for _ in range(steps):
            progress.advance(task)
        progress.console.print(f"done with {steps}")
    if fail:
        raise ValueError(f"job of {steps} failed on purpose")
    return steps


def test_progress_and_results_come_back_from_the_cluster(cluster):
    out = io.StringIO()
    done = []
    with Progress(console=Console(file=out, force_terminal=False)) as display:
        results = run_jobs([Job(f"job {n}", _report, (n,)) for n in (3, 5)], cluster=cluster, progress=display,
                           on_result=lambda job, result: done.append(job.name))
        tasks = {t.description: (t.completed, t.total) for t in display.tasks}
    assert results == [3, 5] and sorted(done) == ["job 3", "job 5"]
    assert tasks == {"job of 3": (3, 3), "job of 5": (5, 5)}
    assert "done with 3" in out.getvalue() and "done with 5" in out.getvalue()


def test_a_failing_task_is_raised_here_with_its_name_after_the_others(cluster, tmp_path):
    done = []
    jobs = [Job("study 'nope'", _run_named, ("nope", "smoke", None, None, str(tmp_path))),
            Job("job 2", _report, (2,)), Job("job 4", _report, (4, True))]
    # Which of the two failures comes back first is up to the cluster; the message names it, then the other.
    with pytest.raises(RuntimeError, match="(study 'nope'|job 4) failed on the Ray cluster: ValueError: (The study "
                                           "'nope' is not registered in this worker process|job of 4 failed on "
                                           "purpose).*\\(1 more failed: (job 4|study 'nope')\\); the other jobs ran "
                                           "to the end"):
        run_jobs(jobs, cluster=cluster, on_result=lambda job, result: done.append(result))
    assert done == [2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cluster_fails_at_once_saying_how_to_start_one(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[dev]' installs it)")
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(ConnectionError, match=f"Could not connect to the Ray cluster at '{address}': nothing answers "
                                              f"there .*Start one with 'ray start --head'"):
        run_studies([STUDY], mode="smoke", out=tmp_path, cluster=address, progress=False)
    assert not (tmp_path / "runs").exists()


def test_cli_study_with_an_unreachable_cluster_ends_with_the_message(tmp_path):
    from typer.testing import CliRunner

    from trainlab.cli import app

    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[dev]' installs it)")
    address = f"127.0.0.1:{_free_port()}"
    result = CliRunner().invoke(app, ["study", STUDY, "--smoke", "--quiet", "--cluster", address, "--out",
                                      str(tmp_path)])
    assert result.exit_code == 2 and f"Could not connect to the Ray cluster at '{address}'" in result.output


def test_without_ray_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # Python's own way to make an import fail: Ray absent
    with pytest.raises(ModuleNotFoundError, match="cluster='auto'\\) needs Ray, which is not installed here: pip "
                                                  "install 'trainlab\\[cluster\\]'"):
        run_studies([STUDY], mode="smoke", out=tmp_path, cluster="auto", progress=False)


def test_runs_a_node_stored_where_this_machine_cannot_see_them_are_refused(tmp_path):
    from trainlab.runs import RunResult

    stored_elsewhere = RunResult({}, [], {}, run_dir=tmp_path / "runs" / "0123456789abcdef")
    with pytest.raises(OSError, match=f"The run store '{tmp_path}' is not shared with the cluster 'auto': a node "
                                      f"stored the run 0123456789abcdef there, but this machine does not see it"):
        check_shared([([stored_elsewhere], "", 1)], str(tmp_path), "auto")


@pytest.mark.parametrize("bad", ["", "localhost", "host:port", 6379, ":6379", "ray://"])
def test_a_cluster_address_is_auto_or_host_and_port(bad):
    with pytest.raises(ValueError, match="The 'cluster' parameter must be 'auto' .* or the address of a cluster's "
                                         f"head, HOST:PORT. Got {bad!r} instead"):
        check_cluster(bad)


def test_a_cluster_takes_the_place_of_workers():
    with pytest.raises(ValueError, match="The 'workers' parameter must be 1 when a cluster is given .* Got "
                                         "workers=2 with cluster='auto' instead"):
        run_studies([STUDY], mode="smoke", workers=2, cluster="auto", progress=False)


@pytest.mark.slow
def test_a_repair_on_the_cluster_decides_as_in_this_process(cluster, tmp_path):
    from trainlab.config import load_config
    from trainlab.diagnostics import repair

    config = load_config({"data": {"dataset": "digits", "batch_size": 64}, "model": {
        "name": "mlp", "depth": 2, "width": 32, "activation": "tanh", "init": "zeros"}})
    on_cluster = repair(config, 150, store_dir=tmp_path / "cluster", cluster=cluster)
    alone = repair(config, 150, store_dir=tmp_path / "alone")
    assert on_cluster.lines() == alone.lines() and on_cluster.overrides == alone.overrides == {
        "model.init.name": "auto"}
    assert Store(tmp_path / "cluster").verify() == []
    # Every candidate fix trained on the cluster, so those the search in order stopped before are stored too.
    assert {p.name for p in (tmp_path / "alone").iterdir()} <= {p.name for p in (tmp_path / "cluster").iterdir()}


@pytest.mark.parametrize("method", ["bagging", "averaging"])
def test_an_ensemble_trained_on_the_cluster_predicts_as_one_trained_here(cluster, method):
    import torch

    from trainlab.config import load_config
    from trainlab.data import load_data
    from trainlab.ensembles import build_ensemble

    config = load_config({"data": {"dataset": {"name": "moons", "n_samples": 300}, "batch_size": 32},
                          "model": {"name": "mlp", "depth": 1, "width": 16}, "epochs": 3})
    data = load_data(config.data)
    # Bagging's three members are three tasks, averaging's one batch of seeds one task; both come back here.
    on_cluster = build_ensemble(config, method, 3, data=data, cluster=cluster)
    here = build_ensemble(config, method, 3, data=data)
    assert len(on_cluster.members) == 3
    assert torch.equal(on_cluster.predict_proba(data.x_test), here.predict_proba(data.x_test))
