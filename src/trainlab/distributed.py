"""Data-parallel training under torchrun: N processes (ranks) train one run as one process would with the same
global batch (gloo on the CPU, NCCL on CUDA).

Every rank builds the same model from the run's seed and draws the same data order and the same augmentations
from it, on the whole global batch of ``batch_size`` samples; rank r then takes the r-th of N equal slices, and
DistributedDataParallel averages the gradients. The mean loss of a batch is the mean of its equal slices' mean
losses, so the update is the one-process update on the whole batch, up to float rounding (the sums run in another
order). A batch that does not split into equal slices of two or more samples (the smaller last batch of an epoch)
is computed whole by every rank: the same gradient N times, averaged, is the one-process gradient. The training
metrics are summed over the ranks, and every rank evaluates the whole validation and test splits with the same
weights, so rank 0 reports one process's numbers.

What differs from one process:

- Batch norm. On CUDA its layers become ``SyncBatchNorm``: statistics of the whole global batch, as in one process.
  torch has no ``SyncBatchNorm`` on the CPU (torch 2.13 raises for CPU inputs), so there each rank normalizes by the
  statistics of its own slice, and the running statistics used in evaluation are rank 0's (DDP broadcasts rank 0's
  buffers at every forward pass): a batch-norm config trains close to, not equal to, its one-process run.
- Dropout, and anything else drawing from torch's global generator: each rank has its own stream (rank 0 the run's,
  the others derived from it and the rank), so the masks are not those one process draws for the whole batch.
  Augmentations and weight/gradient noise draw from the run's own generators, identically on every rank: the same
  as one process.

Ranks must take the same decisions or one waits forever for the others. The step's loss that callbacks see
(``trainer.loss``) is the global batch's, all-reduced, so a non-finite loss stops every rank at the same step; at
each epoch-level event (fit start, epoch start and end) the ranks also agree: when one stops, all stop, with the
reason of the lowest such rank, and a divergence on one is a divergence on all. A callback that stops training
at a step must decide from what every rank holds alike (``trainer.loss``, the weights, the step), or the ranks that
go on wait for the one that stopped.

Only rank 0 writes the run directory; a resume reads the checkpoint on rank 0 and broadcasts it, so the other
machines of a job need no shared file system. Full-batch optimizers (one closure step on the whole training split)
and sample-weighted data (boosting) do not shard and are refused.

References: Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training", VLDB 2020; Goyal
et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour", 2017 (per-worker batch norm statistics).
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from trainlab.callbacks import StopTraining
from trainlab.registry import ConfigError

if TYPE_CHECKING:
    from trainlab.config import RunConfig
    from trainlab.data import Data

# The launcher's process id, which it hands to the workers it starts so that they can tell it died before they
# could ask to die with it (see ``_die_with_launcher``).
LAUNCHER_PID = "TRAINLAB_LAUNCHER_PID"


@dataclass(frozen=True)
class Ranks:
    """This process's place in a torchrun job: its rank among ``world_size``, and among those on its machine."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher_pid: int | None = None


def ranks_from(env: Mapping[str, str]) -> Ranks | None:
    """The ``Ranks`` torchrun's variables in ``env`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``LOCAL_WORLD_SIZE``) describe; None outside torchrun or in a job of one process (the plain path)."""
    if "RANK" not in env or "WORLD_SIZE" not in env:
        return None
    names = {"rank": "RANK", "world_size": "WORLD_SIZE", "local_rank": "LOCAL_RANK",
             "local_world_size": "LOCAL_WORLD_SIZE"}
    defaults = {"LOCAL_RANK": env["RANK"], "LOCAL_WORLD_SIZE": env["WORLD_SIZE"]}
    values: dict[str, Any] = {}
    for field, name in names.items():
        text = env.get(name, defaults.get(name, ""))
        if not text.isdigit():
            raise ValueError(f"The torchrun variable {name} must be a non-negative integer. Got {text!r} instead.")
        values[field] = int(text)
    if values["world_size"] < 1 or values["rank"] >= values["world_size"]:
        raise ValueError(f"The torchrun variables say rank {values['rank']} of {values['world_size']} processes; "
                         f"the rank must be in [0, WORLD_SIZE).")
    pid = env.get(LAUNCHER_PID, "")
    values["launcher_pid"] = int(pid) if pid.isdigit() else None
    return Ranks(**values) if values["world_size"] > 1 else None


def check_config(config: RunConfig, nproc: int, local: int | None = None) -> None:
    """Refuse, before any process starts, what ``nproc`` processes cannot train as one process would; ``local`` of
    them (default: all) run on this machine, each on one of its CUDA devices when the run is on CUDA."""
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"The number of processes (--nproc) must be an integer >= 1. Got {nproc!r} instead.")
    batch_size = config.data.batch_size
    if batch_size % nproc:
        raise ConfigError(f"The 'data.batch_size' parameter ({batch_size}) must be divisible by the number of "
                          f"processes (--nproc {nproc}): each process takes batch_size / N samples of every global "
                          f"batch. Use a batch_size that is a multiple of {nproc}, or an N that divides {batch_size}.")
    if config.optimizer.full_batch:
        raise ConfigError(f"The 'optimizer' parameter is the full-batch optimizer {config.optimizer.name}, which "
                          f"takes one step on the whole training split and does not shard over processes. Train it "
                          f"in one process (--nproc 1), or use a minibatch optimizer (adamw, sgd, ...).")
    from trainlab.trainer import resolve_device

    local = nproc if local is None else local  # the processes on this machine, each taking one of its devices
    if resolve_device(config.device).type == "cuda" and local > torch.cuda.device_count():
        raise ConfigError(f"--nproc {local} asks for one CUDA device per process, and this machine has "
                          f"{torch.cuda.device_count()}. Use --nproc {torch.cuda.device_count()} or fewer.")


def start(ranks: Ranks, config: RunConfig) -> DataParallel:
    """Join the torchrun job ``ranks`` describes: NCCL and the rank's CUDA device (``cuda:LOCAL_RANK``) when the
    config's device resolves to CUDA (``device: auto`` with a GPU, or ``cuda``), gloo and the CPU otherwise."""
    from trainlab.trainer import resolve_device

    check_config(config, ranks.world_size, ranks.local_world_size)
    _die_with_launcher(ranks.launcher_pid)
    device = resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", rank=ranks.rank, world_size=ranks.world_size, device_id=device)
    else:
        dist.init_process_group("gloo", rank=ranks.rank, world_size=ranks.world_size)
    return DataParallel(ranks, device)


def _die_with_launcher(launcher_pid: int | None) -> None:
    """Have Linux SIGKILL this worker when the process that started it dies.

    torchrun starts each worker in a session of its own, so killing the launcher's process group (a job scheduler's
    SIGKILL) would leave the workers training on and writing the run directory. A worker whose launcher died before
    this call exits at once.
    """
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1  # <sys/prctl.h>
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGKILL))
    if launcher_pid is not None and os.getppid() != launcher_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s stream of torch's global generator: the run's for rank 0, one derived from it and
    the rank (``numpy.random.SeedSequence``) for the others."""
    import numpy as np

    if rank == 0:
        return seed
    return int(np.random.SeedSequence(seed, spawn_key=(rank,)).generate_state(1)[0])


class DataParallel:
    """One rank of a data-parallel run (made by ``start``): sharding, reductions and agreement for ``Trainer``."""

    def __init__(self, ranks: Ranks, device: torch.device):
        self.rank, self.world_size, self.device = ranks.rank, ranks.world_size, device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the one that writes the run directory and prints."""
        return self.rank == 0

    def seed(self, seed: int) -> int:
        """This rank's seed for torch's global generator (``rank_seed``)."""
        return rank_seed(seed, self.rank)

    @staticmethod
    def check(data: Data) -> None:
        """Refuse data that does not shard: sample weights (boosting) follow the whole batch."""
        from trainlab.data import WeightedData

        if isinstance(data, WeightedData):
            raise ConfigError("Sample-weighted data (boosting) does not shard over processes: its weights follow "
                              "the whole batch. Train it in one process.")

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` with its batch norm layers synchronized over the ranks where torch can (CUDA; not the CPU).

        The layers keep their parameters and buffers, so the state dict (and a checkpoint) is unchanged."""
        return nn.SyncBatchNorm.convert_sync_batchnorm(model) if self.device.type == "cuda" else model

    def wrap(self, model: nn.Module) -> nn.Module:
        """``model`` in DistributedDataParallel, which averages the gradients over the ranks during backward."""
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def shard(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, bool]:
        """This rank's part of a global batch, and whether this rank counts it in the epoch's training metrics:
        the rank-th of N equal slices, or the whole batch (counted by rank 0) when it does not split into slices of
        two or more samples."""
        size, left = divmod(len(y), self.world_size)
        if left or size < 2:
            return x, y, self.is_main
        part = slice(self.rank * size, (self.rank + 1) * size)
        return x[part], y[part], True

    def mean(self, value: Tensor) -> Tensor:
        """The mean of ``value`` over the ranks (a new tensor; no host sync on CUDA)."""
        total = value.detach().clone()
        dist.all_reduce(total)
        return total / self.world_size

    def sum(self, loss_sum: Tensor, correct: Tensor, seen: int) -> tuple[Tensor, Tensor, int]:
        """An epoch's training sums (loss, correct count, samples) added over the ranks, in one all-reduce."""
        totals = torch.stack([loss_sum.double(), correct.double(),
                              torch.tensor(float(seen), dtype=torch.float64, device=loss_sum.device)])
        dist.all_reduce(totals)
        return totals[0].to(loss_sum.dtype), totals[1].round().to(correct.dtype), int(totals[2].item())

    def agree(self, stop: StopTraining | None, extras: dict[str, Any]) -> StopTraining | None:
        """One decision for every rank: stop when any rank stops, with the reason of the lowest rank that did, and
        ``extras["diverged"]`` on every rank when any diverged."""
        views: list[Any] = [None] * self.world_size
        dist.all_gather_object(views, (None if stop is None else str(stop), bool(extras.get("diverged"))))
        if any(diverged for _, diverged in views):
            extras["diverged"] = True
        reasons = [reason for reason, _ in views if reason is not None]
        return StopTraining(reasons[0]) if reasons else None

    def rng_states(self) -> list[list[Tensor]]:
        """Every rank's ``[torch CPU generator state, its CUDA device's state (empty on the CPU)]``, by rank, so
        that rank 0's checkpoint resumes each rank's dropout stream."""
        cuda = (torch.cuda.get_rng_state(self.device) if self.device.type == "cuda"
                else torch.empty(0, dtype=torch.uint8))
        states: list[Any] = [None] * self.world_size
        dist.all_gather_object(states, [torch.get_rng_state(), cuda])
        return states

    def restore_rng(self, state: dict[str, Any]) -> None:
        """Set this rank's generators from a checkpoint's trainer state: its own saved stream; from a checkpoint of
        another number of processes (or of one), rank 0 continues the saved stream and the others draw fresh ones
        derived from it and their rank."""
        states = state.get("rank_rng") or []
        if len(states) == self.world_size:
            cpu, cuda = states[self.rank]
            torch.set_rng_state(cpu)
            if cuda.numel() and self.device.type == "cuda":
                torch.cuda.set_rng_state(cuda, self.device)
        elif not self.is_main:
            digest = hashlib.sha256(state["torch_rng"].numpy().tobytes()).digest()
            torch.manual_seed(rank_seed(int.from_bytes(digest[:8], "little"), self.rank))

    def broadcast_state(self, state: dict[str, Any] | None) -> dict[str, Any] | None:
        """Rank 0's checkpoint ``state`` (None: none) on every rank, sent as the bytes of the checkpoint file and
        read back with torch's weights-only loader."""
        from trainlab.checkpoints import encode_checkpoint

        data = encode_checkpoint(state) if self.is_main and state is not None else b""
        size = torch.tensor([len(data)], dtype=torch.long, device=self.device)
        dist.broadcast(size, 0)
        if not size.item():
            return None
        buffer = (torch.frombuffer(bytearray(data), dtype=torch.uint8) if self.is_main
                  else torch.empty(int(size.item()), dtype=torch.uint8)).to(self.device)
        dist.broadcast(buffer, 0)
        if self.is_main:
            return state
        return torch.load(io.BytesIO(buffer.cpu().numpy().tobytes()), map_location="cpu", weights_only=True)

    def close(self, synchronize: bool = True) -> None:
        """Leave the job (every rank calls it at the end).

        ``synchronize`` (a rank that finished normally) first frees what still holds the group (a DDP reducer
        caught in a reference cycle, which would otherwise be destroyed with its gloo work threads during
        interpreter shutdown and abort the process) and waits for every rank at a barrier, so no rank tears its
        connections down while another still uses them. A rank leaving on an error skips both: the others may
        never reach the barrier.
        """
        if not dist.is_initialized():
            return
        if synchronize:
            gc.collect()
            dist.barrier()
        dist.destroy_process_group()


def launch(nproc: int, worker_args: Sequence[str]) -> int:
    """Run ``python -m trainlab.cli WORKER_ARGS`` as ``nproc`` processes under torchrun on this machine
    (``torch.distributed.run --standalone``, in this process), and return the job's exit status: 0, or the exit
    status of the first process that failed.

    Each process gets ``cpu_count // nproc`` intra-op threads (``OMP_NUM_THREADS``) unless that is set already.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    os.environ[LAUNCHER_PID] = str(os.getpid())
    try:
        run(parse_args(["--standalone", f"--nproc-per-node={nproc}", "--module", "trainlab.cli", *worker_args]))
    except ChildFailedError as failed:
        code = failed.get_first_failure()[1].exitcode
        return code if code > 0 else 1  # a negative code is a signal's
    return 0
