"""Where work executes: in this process, or spread over a local pool of worker processes.

``run_in_pool(jobs, workers, progress)`` runs ``job.fn(*job.args, progress=...)`` for every job: in this process
when ``workers`` is 1, else in ``workers`` spawned processes (``concurrent.futures.ProcessPoolExecutor``), each
limited to ``cpu_count // workers`` intra-op threads so the processes do not fight over cores (small models run
fastest on one thread, and many times slower when threads contend). Jobs are submitted in the order given (put the
longest first: the pool then balances like longest-processing-time scheduling) and their results come back in that
order. Progress a job reports goes through ``QueueProgress``, a stand-in for ``rich.progress.Progress`` that
forwards its calls over a queue to the parent's display, so bars from every worker show in one place.

A job that raises does not stop the others (a long job's failure should not throw away hours of other results):
every job runs, and then the first error is raised in the parent with the job's name and the names of any others
that failed.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Job:
    """One unit of work: ``fn(*args, **kwargs, progress=PROGRESS)``; ``fn`` must be importable (it is pickled)."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


class _Console:
    def __init__(self, queue: Any):
        self.queue = queue

    def print(self, message: str, **_: Any) -> None:
        self.queue.put(("print", None, str(message)))


class QueueProgress:
    """The part of ``rich.progress.Progress`` that studies use (add_task, advance, update, remove_task,
    console.print), forwarded to the parent over ``queue``; task ids are unique across processes."""

    def __init__(self, queue: Any):
        self.queue, self.console = queue, _Console(queue)
        self._ids = itertools.count()

    def add_task(self, description: str, total: float | None = None, **_: Any) -> tuple[int, int]:
        task = (os.getpid(), next(self._ids))
        self.queue.put(("add", task, (description, total)))
        return task

    def advance(self, task: tuple[int, int], advance: float = 1) -> None:
        self.queue.put(("advance", task, advance))

    def update(self, task: tuple[int, int], **fields: Any) -> None:
        self.queue.put(("update", task, fields))

    def remove_task(self, task: tuple[int, int]) -> None:
        self.queue.put(("remove", task, None))


def _relay(queue: Any, progress: Any) -> None:
    """Apply the workers' progress calls to the parent's display until a ``None`` arrives."""
    tasks: dict[tuple[int, int], Any] = {}
    while (message := queue.get()) is not None:
        kind, task, value = message
        if progress is None:
            continue
        if kind == "add":
            tasks[task] = progress.add_task(value[0], total=value[1])
        elif kind == "print":
            progress.console.print(value, highlight=False)
        elif task in tasks:
            if kind == "advance":
                progress.advance(tasks[task], value)
            elif kind == "update":
                progress.update(tasks[task], **value)
            else:
                progress.remove_task(tasks.pop(task))


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _call(job: Job, queue: Any) -> Any:
    return job.fn(*job.args, **job.kwargs, progress=QueueProgress(queue))


def check_workers(workers: object) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"The 'workers' parameter must be an int >= 1 (1 runs in this process). Got {workers!r} "
                         f"instead.")
    return workers


def run_in_pool(jobs: Sequence[Job], workers: int = 1, progress: Any = None,
                on_result: Callable[[Job, Any], None] | None = None) -> list[Any]:
    """Every job's result, in the jobs' order; ``on_result`` is called in the parent as each one finishes."""
    check_workers(workers)
    if workers == 1 or len(jobs) <= 1:
        results = []
        for job in jobs:
            results.append(job.fn(*job.args, **job.kwargs, progress=progress))
            if on_result is not None:
                on_result(job, results[-1])
        return results
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    queue = manager.Queue()
    relay = threading.Thread(target=_relay, args=(queue, progress), daemon=True)
    relay.start()
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx, initializer=_limit_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(_call, job, queue): job for job in jobs}
            pending, failed = set(futures), []
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    if future.exception() is not None:
                        failed.append(future)
                    elif on_result is not None:
                        on_result(futures[future], future.result())
            if failed:
                first = failed[0].exception()
                more = f" ({len(failed) - 1} more failed: {', '.join(futures[f].name for f in failed[1:])})"
                raise RuntimeError(f"{futures[failed[0]].name} failed in a worker process: {type(first).__name__}: "
                                   f"{first}{more if len(failed) > 1 else ''}; the other jobs ran to the end and "
                                   f"kept their results.") from first
            return [future.result() for future in futures]
    finally:
        queue.put(None)
        relay.join(timeout=10)
        manager.shutdown()
