"""Atomic writes and safe loading.

A file is written to a temporary sibling, flushed and fsynced, then moved over the target with ``os.replace``, so a
crash leaves either the old file or the new one, never half of one. Checkpoints load with ``weights_only=True``:
loading one never runs code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from trainlab.registry import ConfigError


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(file)`` on a temporary file in ``path``'s folder, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text.encode()))


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Save a dict of tensors, numbers, strings, lists and dicts atomically."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`; never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Checkpoint not found: {str(path)!r}.")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a corrupt or foreign file: say which and why, not a deep traceback
        raise ConfigError(f"Could not load checkpoint {str(path)!r}: {e}") from None
