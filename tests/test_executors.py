"""Local process pool: studies in worker processes give the outcomes they give in this one; errors and progress
come back to the parent."""

from __future__ import annotations

import io
import queue

import pytest
from rich.console import Console
from rich.progress import Progress

from trainlab.executors import Job, QueueProgress, _relay, check_workers, run_in_pool
from trainlab.studies import _run_named, run_studies

SMOKE = ["learning_rate", "preprocessing"]


def _decisions(outcomes):
    return [(o.name, [(c.key, c.verdict, c.evidence) for c in o.claims], o.tables) for o in outcomes]


@pytest.mark.slow
def test_studies_in_two_worker_processes_match_one_process(tmp_path):
    import time

    done = []
    pooled = run_studies(SMOKE, mode="smoke", out=tmp_path / "pool", workers=2, progress=False,
                         on_outcome=lambda o: done.append((o.name, time.time())))
    alone = run_studies(SMOKE, mode="smoke", out=tmp_path / "alone", workers=1, progress=False)
    assert [o.name for o in pooled] == SMOKE and sorted(name for name, _ in done) == sorted(SMOKE)
    # Each outcome is announced when its study ends, not when the last one does: the first announcement comes
    # before the other study has written its outcome (the two smoke studies take seconds apart).
    (first, announced), (second, _) = done
    assert announced < (tmp_path / "pool" / "outcomes" / f"{second}.json").stat().st_mtime
    assert _decisions(pooled) == _decisions(alone)
    assert (tmp_path / "pool" / "index.html").is_file()
    assert {p.name for p in (tmp_path / "pool" / "runs").iterdir()} == set(SMOKE)


def test_a_failing_job_is_raised_in_the_parent_with_its_name(tmp_path):
    jobs = [Job("study 'nope'", _run_named, ("nope", "smoke", None, None, str(tmp_path))),
            Job("study 'nope either'", _run_named, ("nope either", "smoke", None, None, str(tmp_path)))]
    done = []
    with pytest.raises(RuntimeError, match="study 'nope.*' failed in a worker process: ValueError: The study "
                                           "'nope.*' is not registered in this worker process.*\\(1 more failed: "
                                           "study 'nope.*'\\); the other jobs ran to the end"):
        run_in_pool([*jobs, Job("study 'learning_rate'", _run_named, ("learning_rate", "smoke", None, None,
                                                                      str(tmp_path)))],
                    workers=2, on_result=lambda job, outcome: done.append(outcome.name))
    assert done == ["learning_rate"] and (tmp_path / "outcomes" / "learning_rate.json").is_file()


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_workers_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=f"The 'workers' parameter must be an int >= 1 .* Got {bad!r} instead"):
        check_workers(bad)


def test_queue_progress_drives_the_parents_display():
    messages: queue.Queue = queue.Queue()
    worker = QueueProgress(messages)
    first, second = worker.add_task("arm a", total=3), worker.add_task("arm b", total=2)
    worker.advance(first)
    worker.advance(first, 2)
    worker.update(second, description="arm b'")
    worker.remove_task(second)
    worker.console.print("a note")
    messages.put(None)
    out = io.StringIO()
    with Progress(console=Console(file=out, force_terminal=False)) as display:
        _relay(messages, display)
        tasks = {t.description: (t.completed, t.total) for t in display.tasks}
    assert tasks == {"arm a": (3, 3)} and first != second
    assert "a note" in out.getvalue()


def test_bagging_members_in_two_worker_processes_predict_as_members_trained_here():
    import torch

    from trainlab.config import load_config
    from trainlab.data import load_data
    from trainlab.ensembles import build_ensemble

    config = load_config({"data": {"dataset": {"name": "moons", "n_samples": 300}, "batch_size": 32},
                          "model": {"name": "mlp", "depth": 1, "width": 16}, "epochs": 3})
    data = load_data(config.data)
    pooled = build_ensemble(config, "bagging", 3, data=data, workers=2)
    here = build_ensemble(config, "bagging", 3, data=data)
    assert len(pooled.members) == 3
    assert torch.equal(pooled.predict_proba(data.x_test), here.predict_proba(data.x_test))


def test_a_repair_with_two_worker_processes_decides_as_in_this_process(tmp_path):
    from trainlab.config import load_config
    from trainlab.diagnostics import repair
    from trainlab.runs import Store

    config = load_config({"data": {"dataset": "digits", "batch_size": 64}, "model": {
        "name": "mlp", "depth": 2, "width": 32, "activation": "tanh", "init": "zeros"}})
    pooled = repair(config, 150, store_dir=tmp_path / "pooled", workers=2)
    alone = repair(config, 150, store_dir=tmp_path / "alone")
    assert pooled.lines() == alone.lines() and pooled.overrides == alone.overrides == {"model.init.name": "auto"}
    assert Store(tmp_path / "pooled").verify() == []
    # Every candidate fix trained up front, so those the search in order stopped before are stored too.
    assert {p.name for p in (tmp_path / "alone").iterdir()} <= {p.name for p in (tmp_path / "pooled").iterdir()}
    with pytest.raises(ValueError, match="'workers' parameter must be an int >= 1"):
        repair(config, 150, workers=0)


def _square(x, progress=None):
    return x * x


def _fail(x, progress=None):
    raise ValueError(f"bad {x}")


def test_in_this_process_a_failing_job_does_not_stop_the_others_and_a_lone_one_raises_its_own_error():
    done = []
    jobs = [Job("a", _square, (2,)), Job("b", _fail, (3,)), Job("c", _square, (4,))]
    with pytest.raises(RuntimeError, match=r"^b failed in this process: ValueError: bad 3; the other jobs ran to "
                                           r"the end and kept their results\.$") as info:
        run_in_pool(jobs, workers=1, on_result=lambda job, result: done.append((job.name, result)))
    assert done == [("a", 4), ("c", 16)] and isinstance(info.value.__cause__, ValueError)
    with pytest.raises(ValueError, match="^bad 5$"):
        run_in_pool([Job("d", _fail, (5,))])
    assert run_in_pool([], workers=2) == [] and run_in_pool(jobs[::2]) == [4, 16]
