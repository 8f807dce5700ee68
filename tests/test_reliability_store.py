"""The run store under killed and concurrent writers: a study killed at several moments and run again retrains no
finished run, leaves no half-written one and gives the uninterrupted outcome; processes writing one store at once
lose, duplicate and corrupt no run; ``Store.verify`` names what is wrong."""

from __future__ import annotations

import json
import multiprocessing
import signal
import subprocess
import sys
import time
from pathlib import Path
from queue import Empty

import pytest

from trainlab.callbacks import Callback
from trainlab.config import load_config
from trainlab.registry import ConfigError
from trainlab.runs import Store, load_result

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="SIGKILL and flock")
STUDY = "learning_rate"  # its smoke budget trains 3 arms x 2 seeds as batches, then 2 runs one by one (~5 s)


def without_time(final: dict) -> dict:
    return {k: v for k, v in final.items() if k != "time_s"}


def finished_runs(store: Path) -> dict[str, tuple[int, int]]:
    """Each finished run's directory name -> (inode, mtime in ns) of its summary.json."""
    found = {}
    for summary in store.glob("*/summary.json"):
        stat = summary.stat()
        found[summary.parent.name] = (stat.st_ino, stat.st_mtime_ns)
    return found


def study_command(out: Path) -> list[str]:
    return [sys.executable, "-m", "trainlab.cli", "study", STUDY, "--smoke", "--out", str(out), "--quiet"]


def run_and_kill(out: Path, when_finished: int) -> int:
    """Start the study in a new process, SIGKILL it once ``when_finished`` runs are finished in its store."""
    store = out / "runs" / STUDY
    proc = subprocess.Popen(study_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while proc.poll() is None and len(finished_runs(store)) < when_finished and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -9, proc.stderr.read().decode()  # killed while it trained, not after it finished
    return proc.returncode


def claims(out: Path) -> list[tuple]:
    outcome = json.loads((out / "outcomes" / f"{STUDY}.json").read_text())
    return [(c["key"], c["verdict"], c["evidence"], c["numbers"]) for c in outcome["claims"]]


@pytest.mark.slow
@linux_only
def test_a_study_killed_three_times_then_rerun_retrains_no_finished_run_and_gives_the_uninterrupted_outcome(
        tmp_path):
    """SIGKILL ``trainlab study learning_rate --smoke`` once 1, 3 and 7 of its 8 runs are finished (during its
    batches of seeds, and while its last runs train one by one), then run it to its end; an uninterrupted study runs
    alongside in another folder."""
    whole = subprocess.Popen(study_command(tmp_path / "whole"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        out = tmp_path / "killed"
        store = out / "runs" / STUDY
        kept: dict[str, tuple[int, int]] = {}
        for when in (1, 3, 7):
            run_and_kill(out, when)
            problems = Store(store).verify()  # what a kill leaves: interrupted runs and leftovers, nothing damaged
            assert all(p.problem.startswith(("incomplete", "leftover")) for p in problems), problems
            now = finished_runs(store)
            assert {k: now[k] for k in kept} == kept  # the finished runs were loaded, not trained or written again
            kept = now
        assert len(kept) >= 7
        rerun = subprocess.run(study_command(out), capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert whole.wait(timeout=300) == 0, whole.stderr.read().decode()
    finally:
        whole.kill()
    now = finished_runs(store)
    assert {k: now[k] for k in kept} == kept
    reference = tmp_path / "whole" / "runs" / STUDY
    assert sorted(now) == sorted(finished_runs(reference))  # no run lost, none extra
    outcome = json.loads((out / "outcomes" / f"{STUDY}.json").read_text())
    assert outcome["runs_trained"] == len(now) - len(kept) and outcome["runs_cached"] >= len(kept)
    assert Store(store).verify() == [] and [p.name for p in store.iterdir() if p.name.startswith(".")] == []
    for name in now:
        here, there = load_result(store / name), load_result(reference / name)
        assert [without_time(r) for r in here.history] == [without_time(r) for r in there.history], name
        assert without_time(here.final) == without_time(there.final), name
    assert claims(out) == claims(tmp_path / "whole")


TINY = {"data": {"dataset": {"name": "moons", "n_samples": 600}, "batch_size": 16},
        "model": {"name": "mlp", "depth": 2, "width": 32}, "optimizer": {"name": "adam", "lr": 0.01}, "epochs": 6,
        "threads": 1}


def configs(seeds, **changes) -> list:
    return [load_config({**TINY, **changes, "seed": s}) for s in seeds]


class SeesFitStart(Callback):
    """Tells whether its run trained (rather than being loaded from the store)."""

    started = False

    def on_fit_start(self, trainer):
        self.started = True


def store_worker(root: str, plan: list[tuple[str, list[int], dict]], barrier, queue) -> None:
    """A writer process: after the barrier, each step of ``plan`` (``run_many`` or ``run`` per config) on one store;
    puts (start, end, [(hash, trained, final)]) on ``queue``."""
    import torch

    torch.set_num_threads(1)
    store = Store(root)
    barrier.wait(timeout=120)
    start, got = time.monotonic(), []
    for how, seeds, changes in plan:
        batch = configs(seeds, **changes)
        if how == "run_many":
            results, _ = store.run_many(batch, on_done=lambda r, cached: got.append(
                (r.run_dir.name, not cached, without_time(r.final))))
        else:
            for config in batch:
                seen = SeesFitStart()
                result = store.run(config, callbacks=[seen])
                got.append((result.run_dir.name, seen.started, without_time(result.final)))
    queue.put((start, time.monotonic(), got))


def run_writers(root: Path, plans: list[list]) -> list[tuple]:
    """Run one writer process per plan, started together; their reports. A writer that fails fails the test."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(len(plans)), ctx.Queue()
    procs = [ctx.Process(target=store_worker, args=(str(root), plan, barrier, queue)) for plan in plans]
    reports: list[tuple] = []
    try:
        for proc in procs:
            proc.start()
        while len(reports) < len(procs):
            try:
                reports.append(queue.get(timeout=1))
            except Empty:
                failed = [proc.exitcode for proc in procs if proc.exitcode not in (None, 0)]
                assert not failed, f"a writer process failed (exit codes {failed}); its traceback is above"
        for proc in procs:
            proc.join(timeout=60)
            assert proc.exitcode == 0
    finally:
        for proc in procs:
            proc.kill()
    assert max(r[0] for r in reports) < min(r[1] for r in reports), "the writers did not run at the same time"
    return reports


def check_store(root: Path, reports: list[tuple], expected: set[str]) -> None:
    """Every expected run stored once, complete and loadable; each trained by exactly one writer; every writer's
    result equal to the stored one; nothing else in the store."""
    store = Store(root)
    assert sorted(p.name for p in root.iterdir()) == sorted(expected)  # no run lost or extra, no leftovers
    assert store.verify() == []
    trained = [name for _, _, got in reports for name, was_trained, _ in got if was_trained]
    assert sorted(trained) == sorted(expected)  # each config trained once, by one writer
    for _, _, got in reports:
        for name, _, final in got:
            assert final == without_time(load_result(root / name).final), name


@pytest.mark.slow
@linux_only
def test_three_processes_writing_overlapping_runs_into_one_store_lose_and_duplicate_none(tmp_path):
    plans = [[("run_many", [0, 1, 2, 3], {}), ("run_many", [0, 1], {"epochs": 3})],
             [("run_many", [2, 3, 4, 5], {}), ("run", [1, 0], {"epochs": 3})],
             [("run", [5, 4, 3, 2, 1, 0], {}), ("run_many", [1, 2], {"epochs": 3})]]
    reports = run_writers(tmp_path, plans)
    expected = {Store(tmp_path).run_dir(c).name for c in configs(range(6)) + configs([0, 1, 2], epochs=3)}
    check_store(tmp_path, reports, expected)


@linux_only
def test_two_processes_training_one_config_at_the_same_moment_train_it_once(tmp_path):
    slow = [("run", [7], {"epochs": 25})]
    reports = run_writers(tmp_path, [slow, slow])
    check_store(tmp_path, reports, {Store(tmp_path).run_dir(configs([7], epochs=25)[0]).name})
    assert sorted(got[0][1] for _, _, got in reports) == [False, True]  # one trained; the other waited and loaded


# A child that SIGKILLs itself at a chosen moment while it writes into a store: "batch" on the second replica's
# checkpoint (the first replica stored, the second's folder half written), "run" at the end of epoch 3.
KILLED_CHILD = """
import json, os, signal, sys
import torch
torch.set_num_threads(1)
import trainlab.runs
from trainlab.callbacks import Callback
from trainlab.config import load_config
from trainlab.runs import Store

root, moment, raw = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
batch = [load_config(c) for c in raw]
if moment == "batch":
    real, saves = trainlab.runs.save_checkpoint, []
    def save_then_die(path, state):
        real(path, state)
        saves.append(path)
        if len(saves) == 2:
            os.kill(os.getpid(), signal.SIGKILL)
    trainlab.runs.save_checkpoint = save_then_die
    Store(root).run_many(batch)
else:
    # Stateful under the test's recorder's name, so the checkpoint resumes with that recorder in its place.
    class _EpochsThisCall(Callback):
        def on_epoch_end(self, trainer):
            if trainer.epoch == 3:
                os.kill(os.getpid(), signal.SIGKILL)
        def state_dict(self):
            return {}
        def load_state_dict(self, state):
            pass
    Store(root).run(batch[0], callbacks=[_EpochsThisCall()])
"""


def kill_child(root: Path, moment: str, batch: list) -> None:
    raw = json.dumps([c.model_dump(mode="json") for c in batch])
    child = subprocess.run([sys.executable, "-c", KILLED_CHILD, str(root), moment, raw], capture_output=True,
                           text=True, timeout=300)
    assert child.returncode == -9, child.stderr


@linux_only
def test_what_a_process_killed_while_writing_leaves_is_never_a_result_and_the_next_call_replaces_it(tmp_path):
    store, batch = Store(tmp_path / "store"), configs([0, 1])
    kill_child(store.root, "batch", batch)
    first, second = (store.run_dir(c) for c in batch)
    assert store.has(batch[0]) and not store.has(batch[1]) and not second.exists()
    leftovers = sorted(p.name for p in store.root.iterdir() if p.name.startswith("."))
    locks, folders = [n for n in leftovers if n.endswith(".lock")], [n for n in leftovers if n.endswith(".tmp")]
    assert locks == sorted([f".{first.name}.lock", f".{second.name}.lock"]) and len(folders) == 1
    assert folders[0].startswith(f".{second.name}.") and (store.root / folders[0] / "checkpoint.pt").is_file()
    assert sorted((p.path.name, p.problem) for p in store.verify()) == sorted(
        [(name, "leftover of a killed process: a lock nobody holds") for name in locks]
        + [(folders[0], "leftover of a killed process: the temporary folder of a batch write cut short")])
    kept, done = finished_runs(store.root), []
    results, _ = store.run_many(batch, on_done=lambda r, cached: done.append((r.config["seed"], cached)))
    assert sorted(done) == [(0, True), (1, False)] and finished_runs(store.root)[first.name] == kept[first.name]
    assert sorted(p.name for p in store.root.iterdir()) == sorted([first.name, second.name]) and store.verify() == []
    reference, _ = Store(tmp_path / "reference").run_many(batch)
    assert [without_time(r.final) for r in results] == [without_time(r.final) for r in reference]

    single = configs([3], epochs=6)[0]
    kill_child(store.root, "run", [single])
    out = store.run_dir(single)
    assert not store.has(single) and (out / "checkpoint.pt").is_file()
    assert sorted((p.path.name, p.problem.split(":")[0]) for p in store.verify()) == [
        (f".{out.name}.lock", "leftover of a killed process"), (out.name, "incomplete")]
    here = _EpochsThisCall()
    resumed = store.run(single, callbacks=[here])  # resumes from the killed process's checkpoint
    assert here.epochs[0] > 1 and here.epochs == list(range(here.epochs[0], 7)), here.epochs  # not trained over
    assert without_time(resumed.final) == without_time(Store(tmp_path / "reference").run(single).final)
    assert store.verify() == [] and not (store.root / f".{out.name}.lock").exists()


@linux_only
def test_verify_names_a_truncated_summary_a_missing_file_and_a_damaged_checkpoint(tmp_path):
    store, batch = Store(tmp_path), configs([0, 1, 2, 3, 4], epochs=2)
    store.run_many(batch)
    assert store.verify() == []
    dirs = [store.run_dir(c) for c in batch]
    summary = dirs[0] / "summary.json"
    summary.write_bytes(summary.read_bytes()[:40])
    (dirs[1] / "config.yaml").unlink()
    checkpoint = dirs[2] / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:-10])
    for name in ("summary.json", "history.csv", "checkpoint.pt", "checkpoint.pt.sha256"):
        (dirs[3] / name).unlink()
    found = {(p.path.name, p.problem) for p in store.verify()}
    assert {(name, problem.split(" (")[0].split(":")[0]) for name, problem in found} == {
        (dirs[0].name, "summary.json does not parse"), (dirs[1].name, "config.yaml is missing"),
        (dirs[2].name, "checkpoint.pt is damaged"), (dirs[3].name, "incomplete")}
    with pytest.raises(ConfigError, match=rf"The stored run '.*{dirs[0].name}' is damaged \(JSONDecodeError"):
        store.run(batch[0])
    assert store.run(batch[4]).final == load_result(dirs[4]).final  # the sound run still loads
    assert store.run(batch[3]).run_dir == dirs[3] and store.has(batch[3])  # the incomplete one is trained again


class _Crash(Callback):
    """Raises inside epoch 3 (after epoch 2's checkpoint is written): the run is left partial, as after a kill."""

    def on_step_end(self, trainer) -> None:
        if trainer.epoch == 2:
            raise RuntimeError("killed")


class _EpochsThisCall(Callback):
    """The epochs trained in this call: a resumed run starts after its checkpoint's epoch, a restarted one at 1. It
    has nothing to restore, so it does not stop a run from resuming (the killed child uses one of the same name)."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def on_epoch_end(self, trainer) -> None:
        self.epochs.append(trainer.epoch)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class _EpochCounter(Callback):
    """Records the epochs it saw (no state_dict: a checkpoint cannot hold its records)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_epoch_end(self, trainer) -> None:
        self.seen.append(trainer.epoch)


class _StatefulCounter(_EpochCounter):
    def state_dict(self) -> dict:
        return {"seen": list(self.seen)}

    def load_state_dict(self, state: dict) -> None:
        self.seen = list(state["seen"])


@pytest.mark.parametrize("counter, seen", [(_EpochCounter, [1, 2, 3, 4]), (_StatefulCounter, [1, 2, 3, 4])])
def test_a_partial_run_resumes_only_when_its_callbacks_keep_their_records(tmp_path, counter, seen):
    config = load_config({**TINY, "epochs": 4})
    store = Store(tmp_path)
    with pytest.raises(RuntimeError, match="killed"):
        store.run(config, callbacks=[counter(), _Crash()])
    assert (store.run_dir(config) / "checkpoint.pt").is_file() and not store.has(config)
    recorder = counter()
    store.run(config, callbacks=[recorder])
    # a stateless recorder's run starts over and sees every epoch; a stateful one resumes with what it had
    assert recorder.seen == seen and store.has(config)
