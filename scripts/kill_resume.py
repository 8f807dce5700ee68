"""Kill training runs at random moments and check that resuming them gives the uninterrupted result, bit for bit.

    python scripts/kill_resume.py --kills 200 [--seed 0] [--work DIR] [--fresh]

Each child runs ``trainlab train CONFIG --out DIR --quiet`` (``--resume`` after the first) and is killed with
SIGKILL after a random delay: uniform over a child's life, or up to a few milliseconds after the checkpoint's
checksum file is replaced (that is, while the checkpoint itself is being written). After a random number of kills
a run is resumed to its end, and its final checkpoint (weights, optimizer, schedule, RNG states, early stopping,
history) and summary are compared with an uninterrupted run's, times aside.

Starting Python and importing torch takes seconds, so children are forked from one process that has imported
trainlab (a zygote) and run the command line's ``main()`` as ``python -m trainlab.cli`` would; ``--fresh`` starts
each child as a new interpreter instead. Linux only (``fork``, ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

# Tiny and quick, with every kind of state a resume must restore: dropout (torch's RNG), a warmup + cosine schedule,
# early stopping that ends the run at epoch 12 and restores epoch 8's weights, and a checkpoint every epoch.
CONFIG = {
    "seed": 2,
    "data": {"dataset": {"name": "moons", "n_samples": 300}, "batch_size": 32},
    "model": {"name": "mlp", "depth": 1, "width": 8, "dropout": 0.2},
    "optimizer": {"name": "adam", "lr": 0.01},
    "schedule": {"name": "cosine", "warmup_steps": 10},
    "early_stopping": {"patience": 4, "min_delta": 0.002},
    "epochs": 40,
    "threads": 1,
    "checkpoint_every_epochs": 1,
}
IGNORED = frozenset({"time_s", "elapsed_s"})  # wall-clock times differ between any two runs

ZYGOTE = r"""
import json, os, sys
import sklearn.datasets, torch, trainlab.cli, trainlab.runs, trainlab.trainer  # the slow imports, once for all
torch.optim.Adam([torch.zeros(1, requires_grad=True)])  # an optimizer's first construction imports torch._dynamo

def child(argv, log):
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.argv = ["trainlab", *argv]
    code = 0
    try:
        trainlab.cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)

print("ready", flush=True)
for line in sys.stdin:
    argv, log = json.loads(line)
    pid = os.fork()
    if pid == 0:
        child(argv, log)
    print(pid, flush=True)
    sys.stdin.readline()  # reaped only when told, so the pid stays the child's until then
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)
"""


class Launcher:
    """Starts ``trainlab`` children (forked from a zygote, or fresh interpreters), one at a time."""

    def __init__(self, fresh: bool = False):
        if not Path("/proc/self/stat").is_file():
            raise RuntimeError("The kill harness needs Linux (/proc, fork).")
        self.fresh = fresh
        self._zygote: subprocess.Popen[str] | None = None
        self._child: subprocess.Popen[bytes] | None = None
        if not fresh:
            self._zygote = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, text=True)
            if self._read() != "ready":
                raise RuntimeError("the zygote process did not start")

    def _read(self) -> str:
        assert self._zygote is not None and self._zygote.stdout is not None
        return self._zygote.stdout.readline().strip()

    def _send(self, line: str) -> None:
        assert self._zygote is not None and self._zygote.stdin is not None
        self._zygote.stdin.write(line + "\n")
        self._zygote.stdin.flush()

    def start(self, argv: list[str], log: Path) -> int:
        if self.fresh:
            with open(log, "wb") as f:
                self._child = subprocess.Popen([sys.executable, "-m", "trainlab.cli", *argv], stdout=f,
                                               stderr=subprocess.STDOUT)
            return self._child.pid
        self._send(json.dumps([argv, str(log)]))
        return int(self._read())

    def wait(self) -> int:
        """The child's exit code (``-9`` when SIGKILL ended it), once it has ended; then its pid is released."""
        if self.fresh:
            assert self._child is not None
            return self._child.wait()
        self._send("reap")
        return int(self._read())

    def run(self, argv: list[str], log: Path, kill: Callable[[int], None] | None = None) -> int:
        pid = self.start(argv, log)
        if kill is not None:
            kill(pid)
        return self.wait()

    def close(self) -> None:
        if self._zygote is not None:
            assert self._zygote.stdin is not None
            self._zygote.stdin.close()
            self._zygote.wait(timeout=30)
            self._zygote = None

    def __enter__(self) -> Launcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def alive(pid: int) -> bool:
    """Whether ``pid`` (our unreaped child) still runs, i.e. is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def kill_after(delay_s: float) -> Callable[[int], None]:
    def kill(pid: int) -> None:
        time.sleep(delay_s)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)

    return kill


def kill_in_save(watched: Path, saves: int, delay_s: float, timeout_s: float) -> Callable[[int], None]:
    """Kill ``delay_s`` after ``watched`` (a checkpoint's checksum file) has been replaced ``saves`` times."""

    def signature() -> tuple[int, int] | None:
        try:
            st = watched.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def kill(pid: int) -> None:
        seen, last, deadline = 0, signature(), time.monotonic() + timeout_s
        while seen < saves and time.monotonic() < deadline and alive(pid):
            now = signature()
            if now != last and now is not None:
                seen, last = seen + 1, now
            time.sleep(0.0002)
        kill_after(delay_s)(pid)

    return kill


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    """Where two checkpoint states or summaries differ (tensors bit for bit; keys in ``IGNORED`` skipped)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}: keys {sorted(map(str, set(a) ^ set(b)))} in one only"] if set(a) != set(b) else []
        for key in sorted(set(a) & set(b) - IGNORED, key=str):
            out += differences(a[key], b[key], f"{where}.{key}")
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return [f"{where}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{i}]")]
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = (a.dtype == b.dtype and a.shape == b.shape
                and a.detach().cpu().contiguous().numpy().tobytes() == b.detach().cpu().contiguous().numpy().tobytes())
        return [] if same else [f"{where}: tensors differ"]
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    return [] if type(a) is type(b) and a == b else [f"{where}: {a!r} != {b!r}"]


def final_state(run_dir: Path) -> dict[str, Any]:
    """A finished run's final checkpoint and summary (what an uninterrupted run is compared on)."""
    from trainlab.checkpoints import load_checkpoint

    return {"checkpoint": load_checkpoint(run_dir / "checkpoint.pt"),
            "summary": json.loads((run_dir / "summary.json").read_text())}


def kill_phase(run_dir: Path, started: float) -> str:
    """Where in a run's life a kill landed, read from what it left in the run directory."""
    from trainlab.checkpoints import checksum_problem

    checkpoint = run_dir / "checkpoint.pt"
    if (run_dir / "summary.json").is_file() and (run_dir / "summary.json").stat().st_mtime >= started:
        return "after the summary"
    if not checkpoint.is_file():
        return "before the first checkpoint"
    if any(run_dir.glob(".*.tmp")):
        return "inside an atomic write"
    if checksum_problem(checkpoint):
        return "between a checksum and its checkpoint"
    return "between checkpoints"


@dataclass
class Report:
    kills: int = 0
    trials: int = 0
    plans: Counter[str] = field(default_factory=Counter)  # when kills were aimed: "any time" or "in a save"
    phases: Counter[str] = field(default_factory=Counter)  # where the kills landed
    notes: Counter[str] = field(default_factory=Counter)  # what the resumed children said
    mismatches: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"{self.kills} kills over {self.trials} resumed runs; {len(self.mismatches)} differ from the "
                 f"uninterrupted run"]
        lines += [f"  kills aimed {plan}: {n}" for plan, n in sorted(self.plans.items())]
        lines += [f"  killed {phase}: {n}" for phase, n in sorted(self.phases.items())]
        lines += [f"  resumes that said '{note}': {n}" for note, n in sorted(self.notes.items())]
        return "\n".join(lines + self.mismatches)


NOTES = ("Starting it over", "Passed over")


def command(config: Path, out: Path, resume: bool) -> list[str]:
    return ["train", str(config), "--out", str(out), "--quiet", *(["--resume"] if resume else [])]


def reference_run(launcher: Launcher, config: Path, work: Path) -> tuple[Path, float]:
    """An uninterrupted run, and how long its child lived (seconds)."""
    out, start = work / "reference", time.monotonic()
    code = launcher.run(command(config, out, False), work / "reference.log")
    if code != 0:
        raise RuntimeError(f"the reference run failed ({code}):\n{(work / 'reference.log').read_text()}")
    return out, time.monotonic() - start


def one_trial(launcher: Launcher, config: Path, out: Path, lifetime: float, kills: int, rng: random.Random,
              report: Report) -> None:
    """Kill one run up to ``kills`` times at random moments, resuming it each time, then let it finish."""
    log, resume = out.with_suffix(".log"), False
    while True:
        plan, aim = None, "any time" if rng.random() < 0.5 else "in a save"
        if kills > 0:
            plan = (kill_after(rng.uniform(0, lifetime)) if aim == "any time" else
                    kill_in_save(out / "checkpoint.pt.sha256", rng.randint(1, 3), rng.uniform(0, 0.004), lifetime))
        started = time.time()
        code = launcher.run(command(config, out, resume), log, plan)
        said = log.read_text(errors="replace") if log.is_file() else ""
        report.notes.update(note for note in NOTES if note in said)
        if code == -signal.SIGKILL:
            report.kills, kills, resume = report.kills + 1, kills - 1, True
            report.plans[aim] += 1
            report.phases[kill_phase(out, started)] += 1
            continue
        if code != 0:
            raise RuntimeError(f"a child failed with exit code {code} in {out}:\n{said}")
        return


def kill_and_resume(kills: int, work: Path, *, seed: int = 0, fresh: bool = False, config: dict | None = None,
                    most_per_run: int = 8) -> Report:
    """Kill runs of ``config`` (``CONFIG``) ``kills`` times in all, resume each to its end and compare it with an
    uninterrupted run."""
    work.mkdir(parents=True, exist_ok=True)
    config_path = work / "config.yaml"
    config_path.write_text(yaml.safe_dump(config or CONFIG))
    rng, report = random.Random(seed), Report()
    with Launcher(fresh) as launcher:
        reference, lifetime = reference_run(launcher, config_path, work)
        expected = final_state(reference)
        while report.kills < kills:
            if report.trials > 4 * kills + 10:
                raise RuntimeError(f"the kills do not land: {report.summary()}")
            report.trials += 1
            out = work / f"run{report.trials}"
            one_trial(launcher, config_path, out, lifetime, min(rng.randint(1, most_per_run), kills - report.kills),
                      rng, report)
            diffs = differences(expected, final_state(out))
            if diffs:
                report.mismatches.append(f"{out}: " + "; ".join(diffs[:5]))
            else:
                shutil.rmtree(out)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs in all [200].")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the kill times [0].")
    parser.add_argument("--work", type=Path, default=None, help="Folder for the runs [a temporary one, removed].")
    parser.add_argument("--fresh", action="store_true", help="A new interpreter per child (slow: seconds each).")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="kill-resume-"))
    try:
        report = kill_and_resume(args.kills, work, seed=args.seed, fresh=args.fresh)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(report.summary())
    return 1 if report.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
