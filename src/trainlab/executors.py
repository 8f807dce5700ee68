"""Where work executes: in this process, in a local pool of worker processes, or on a Ray cluster.

``run_jobs(jobs, workers=1, cluster=None, progress=None, on_result=None)`` runs ``job.fn(*job.args, progress=...)``
for every job and returns their results in the jobs' order:

- in this process when ``workers`` is 1 and no ``cluster`` is given;
- in ``workers`` spawned processes (``run_in_pool``, ``concurrent.futures.ProcessPoolExecutor``), each limited to
  ``cpu_count // workers`` intra-op threads so the processes do not fight over cores (small models run fastest on
  one thread, and many times slower when threads contend). Jobs are submitted in the order given (put the longest
  first: the pool then balances like longest-processing-time scheduling);
- as tasks on the Ray cluster at ``cluster`` (``run_on_cluster``): ``"auto"`` for the one running on this machine,
  else the head's ``HOST:PORT`` (what ``ray start --head`` prints). This process joins the cluster as its driver;
  it never starts a cluster of its own. Each task takes ``CLUSTER_TASK_CPUS`` CPUs and as many intra-op threads,
  and is retried up to ``CLUSTER_RETRIES`` times when its worker process or node dies (an error the job raises is
  not retried: it would raise again). Every node must have the same trainlab installed, and a job's files (a run
  store) must be in a folder every node sees at the same path: on one machine that is any folder, across machines
  a shared file system.

Progress a job reports goes through ``QueueProgress``, a stand-in for ``rich.progress.Progress`` that forwards its
calls over a queue (a ``multiprocessing`` manager's, or a ``ray.util.queue.Queue`` on a cluster) to the display of
this process, so bars from every worker show in one place.

``train_in_store`` is the job studies and repairs send: ``Store.run_many`` of one config's seeds (one batch) into a
run store. The store's locks (an ``flock`` each, dropped when its process dies) and its whole-directory writes
make a task killed mid-run leave no half-written run, and the task Ray runs again trains only what is not stored:
a finished run is loaded, never trained twice, whichever executor ran it. ``check_shared`` refuses results a node
stored in a folder this machine does not see.

A job that raises does not stop the others (a long job's failure should not throw away hours of other results):
every job runs, and then the first error is raised here with the job's name and the names of any others that
failed (in this process as in a pool; a lone job's error is raised as it is).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import socket
import threading
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainlab.callbacks import Callback
    from trainlab.config import RunConfig
    from trainlab.runs import RunResult

#: CPUs (and intra-op threads) one cluster task takes: trainlab's runs are small, and fastest on one thread.
CLUSTER_TASK_CPUS = 1
#: How often Ray runs a task again after its worker process or node died (a SIGKILL, the out-of-memory killer).
CLUSTER_RETRIES = 3
#: Seconds to wait for the cluster's head to accept a connection before saying it is unreachable.
CONNECT_TIMEOUT_S = 5.0


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
    console.print), forwarded to the parent over ``queue``; task ids are unique across processes and machines."""

    def __init__(self, queue: Any):
        self.queue, self.console = queue, _Console(queue)
        self._ids = itertools.count()

    def add_task(self, description: str, total: float | None = None, **_: Any) -> tuple[str, int, int]:
        task = (socket.gethostname(), os.getpid(), next(self._ids))
        self.queue.put(("add", task, (description, total)))
        return task

    def advance(self, task: tuple[str, int, int], advance: float = 1) -> None:
        self.queue.put(("advance", task, advance))

    def update(self, task: tuple[str, int, int], **fields: Any) -> None:
        self.queue.put(("update", task, fields))

    def remove_task(self, task: tuple[str, int, int]) -> None:
        self.queue.put(("remove", task, None))


def _relay(queue: Any, progress: Any) -> None:
    """Apply the workers' progress calls to the parent's display until a ``None`` arrives."""
    tasks: dict[tuple[str, int, int], Any] = {}
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


@contextmanager
def _relaying(queue: Any, progress: Any) -> Iterator[None]:
    """Relay ``queue`` to ``progress`` in a thread for the block (``queue`` None: nothing to relay)."""
    if queue is None:
        yield
        return
    relay = threading.Thread(target=_relay, args=(queue, progress), daemon=True)
    relay.start()
    try:
        yield
    finally:
        queue.put(None)
        relay.join(timeout=10)


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _call(job: Job, queue: Any) -> Any:
    return job.fn(*job.args, **job.kwargs, progress=QueueProgress(queue) if queue is not None else None)


def _call_with_threads(job: Job, queue: Any, threads: int) -> Any:
    """A cluster task: ``job`` on ``threads`` intra-op threads."""
    _limit_threads(threads)
    return _call(job, queue)


def train_in_store(root: str, configs: Sequence[RunConfig],
                   callbacks_for: Callable[[RunConfig], Sequence[Callback]] | None = None, description: str = "train",
                   progress: Any = None) -> tuple[list[RunResult], str, int]:
    """A job that trains what ``Store(root)`` lacks of ``configs`` (``Store.run_many``: the new seeds of one config
    as one batch) under a progress bar named ``description``; their results, why they were not one batch, and how
    many this call trained. ``root`` must be absolute, and on a cluster a folder every node sees."""
    from trainlab.runs import Store

    trained = 0

    def done(result: RunResult, cached: bool) -> None:
        nonlocal trained
        trained += not cached
        advance()

    with progress_task(progress, description, len(configs)) as advance:
        runs, why = Store(root).run_many(configs, callbacks_for, done)
    return runs, why, trained


def check_shared(results: Sequence[tuple[list[RunResult], str, int]], root: str, cluster: str) -> None:
    """Raise ``OSError`` when a run that ``train_in_store`` stored on ``cluster`` is not in ``root`` here: the folder
    is not shared between this machine and the node that ran it."""
    for runs, _, _ in results:
        for run in runs:
            if run.run_dir is not None and not run.run_dir.is_dir():
                raise OSError(f"The run store {root!r} is not shared with the cluster {cluster!r}: a node stored the "
                              f"run {run.run_dir.name} there, but this machine does not see it. Put the output folder "
                              f"on a file system every node mounts at the same path.")


@contextmanager
def progress_task(progress: Any, description: str, total: int) -> Iterator[Callable[[], None]]:
    """A bar for ``total`` units of work on ``progress`` (``None``: silence); yields ``advance()``; the bar goes when
    the work is done."""
    if progress is None:
        yield lambda: None
        return
    task_id = progress.add_task(description, total=total)
    try:
        yield lambda: progress.advance(task_id)
    finally:
        progress.remove_task(task_id)


def check_workers(workers: object) -> int:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"The 'workers' parameter must be an int >= 1 (1 runs in this process). Got {workers!r} "
                         f"instead.")
    return workers


def check_cluster(cluster: object, workers: int = 1) -> str | None:
    """``cluster`` checked: None (no cluster), ``"auto"`` or the head's ``HOST:PORT``; a cluster takes the place of
    ``workers``, so both together are refused."""
    if cluster is None:
        return None
    host, _, port = cluster.rpartition(":") if isinstance(cluster, str) else ("", "", "")
    if cluster != "auto" and not (host and port.isdigit()):
        raise ValueError(f"The 'cluster' parameter must be 'auto' (the Ray cluster running on this machine) or the "
                         f"address of a cluster's head, HOST:PORT. Got {cluster!r} instead.")
    if workers != 1:
        raise ValueError(f"The 'workers' parameter must be 1 when a cluster is given (the cluster's nodes are the "
                         f"workers). Got workers={workers!r} with cluster={cluster!r} instead.")
    return cluster


def run_jobs(jobs: Sequence[Job], workers: int = 1, cluster: str | None = None, progress: Any = None,
             on_result: Callable[[Job, Any], None] | None = None) -> list[Any]:
    """Every job's result, in the jobs' order: on the Ray cluster at ``cluster`` when given, else in this process
    (``workers`` 1) or ``workers`` local processes; ``on_result`` is called here as each one finishes."""
    check_workers(workers)
    if check_cluster(cluster, workers) is not None:
        return run_on_cluster(jobs, cluster, progress, on_result)
    return run_in_pool(jobs, workers, progress, on_result)


def run_in_pool(jobs: Sequence[Job], workers: int = 1, progress: Any = None,
                on_result: Callable[[Job, Any], None] | None = None) -> list[Any]:
    """Every job's result, in the jobs' order; ``on_result`` is called in the parent as each one finishes."""
    check_workers(workers)
    if not jobs:
        return []
    if len(jobs) == 1:  # nothing else to run: its own error, as it is
        result = jobs[0].fn(*jobs[0].args, **jobs[0].kwargs, progress=progress)
        if on_result is not None:
            on_result(jobs[0], result)
        return [result]
    if workers == 1:  # one after another here, each to the end, as a pool would
        return _gather(dict(enumerate(jobs)), lambda pending: (list(pending)[:1], list(pending)[1:]),
                       lambda i: jobs[i].fn(*jobs[i].args, **jobs[i].kwargs, progress=progress), on_result,
                       "in this process")
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")
    manager = ctx.Manager()
    threads = max(1, (os.cpu_count() or 1) // workers)
    try:
        queue = manager.Queue()
        with _relaying(queue, progress), ProcessPoolExecutor(min(workers, len(jobs)), mp_context=ctx,
                                                             initializer=_limit_threads, initargs=(threads,)) as pool:
            futures = {pool.submit(_call, job, queue): job for job in jobs}
            return _gather(futures, lambda pending: wait(pending, return_when=FIRST_COMPLETED),
                           lambda future: future.result(), on_result, "in a worker process")
    finally:
        manager.shutdown()


def run_on_cluster(jobs: Sequence[Job], cluster: str, progress: Any = None,
                   on_result: Callable[[Job, Any], None] | None = None) -> list[Any]:
    """Every job's result, in the jobs' order, each job run as a task on the Ray cluster at ``cluster``;
    ``on_result`` is called here as each one finishes."""
    with connect(cluster) as ray:
        queue = _progress_queue(ray) if progress is not None else None
        task = ray.remote(_call_with_threads)
        with _relaying(queue, progress):
            refs = {task.options(name=job.name, num_cpus=CLUSTER_TASK_CPUS, max_retries=CLUSTER_RETRIES,
                                 retry_exceptions=False).remote(job, queue, CLUSTER_TASK_CPUS): job for job in jobs}
            return _gather(refs, lambda pending: ray.wait(list(pending), num_returns=1),
                           lambda ref: _ray_result(ray, ref), on_result, "on the Ray cluster")


# The progress queue of this process's connection to a cluster (by Ray job id), made on first use and kept while
# the connection lasts: a queue is an actor, whose process takes seconds to start.
_QUEUES: dict[str, Any] = {}


def _progress_queue(ray: Any) -> Any:
    from ray.util.queue import Queue

    job = ray.get_runtime_context().get_job_id()
    if job not in _QUEUES:
        _QUEUES[job] = Queue(actor_options={"num_cpus": 0})
    return _QUEUES[job]


def _ray_result(ray: Any, ref: Any) -> Any:
    """A task's result; a job's own error raised as itself (not wrapped in Ray's ``RayTaskError``)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        raise (e.cause if isinstance(e.cause, BaseException) else e) from None


def _gather(handles: dict[Any, Job], wait: Callable[[Collection[Any]], tuple[Collection[Any], Collection[Any]]],
            result: Callable[[Any], Any], on_result: Callable[[Job, Any], None] | None, where: str) -> list[Any]:
    """The results of the running ``handles`` (futures or task references, each its job's), in the jobs' order:
    ``wait(pending) -> (done, pending)`` waits for at least one, ``result(handle)`` returns or raises its outcome.
    Every job runs to the end; then the first failure is raised, naming its job and any others that failed."""
    pending: Collection[Any] = list(handles)
    results: dict[Any, Any] = {}
    failed: list[tuple[Job, BaseException]] = []
    while pending:
        done, pending = wait(pending)
        for handle in done:
            try:
                results[handle] = result(handle)
            except Exception as e:  # noqa: BLE001 - reported below with its job's name, after the other jobs
                failed.append((handles[handle], e))
                continue
            if on_result is not None:
                on_result(handles[handle], results[handle])
    if failed:
        (job, first), others = failed[0], [j.name for j, _ in failed[1:]]
        more = f" ({len(others)} more failed: {', '.join(others)})" if others else ""
        raise RuntimeError(f"{job.name} failed {where}: {type(first).__name__}: {first}{more}; the other jobs ran "
                           f"to the end and kept their results.") from first
    return [results[handle] for handle in handles]


@contextmanager
def connect(cluster: str) -> Iterator[Any]:
    """This process connected to the Ray cluster at ``cluster`` for the block; yields the ``ray`` module. A
    connection this process already has is used (and left open); a new one is closed at the end. Never starts a
    cluster: an unreachable address raises ``ConnectionError``, and a missing Ray ``ModuleNotFoundError`` naming the
    extra to install."""
    check_cluster(cluster)
    try:
        import ray
    except ImportError:
        raise ModuleNotFoundError(f"Running on a Ray cluster (cluster={cluster!r}) needs Ray, which is not "
                                  f"installed here: pip install 'trainlab[cluster]'.") from None
    _check_reachable(cluster)
    if ray.is_initialized():
        yield ray
        return
    import logging

    try:
        ray.init(address=cluster, log_to_driver=False, logging_level=logging.WARNING)
    except ConnectionError as e:
        raise ConnectionError(f"Could not connect to the Ray cluster at {cluster!r}: {e} {START_HINT}") from None
    try:
        yield ray
    finally:
        _QUEUES.clear()
        ray.shutdown()


START_HINT = ("Start one with 'ray start --head' (or 'bash scripts/ray.sh start DIR') and pass the address it prints, "
              "or 'auto' for the one running on this machine.")


def _check_reachable(cluster: str) -> None:
    """Fail at once when nothing listens at ``HOST:PORT`` (Ray itself would retry for minutes)."""
    if cluster == "auto":
        return
    host, _, port = cluster.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConnectionError(f"Could not connect to the Ray cluster at {cluster!r}: nothing answers there "
                              f"({type(e).__name__}: {e}). {START_HINT}") from None
