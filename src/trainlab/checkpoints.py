"""Atomic writes, checksums, and safe loading of checkpoints.

A file is written to a temporary sibling, flushed and fsynced, then moved over the target with ``os.replace``, so a
crash leaves either the old file or the new one, never half of one.

A checkpoint ``c.pt`` has its SHA-256 beside it in ``c.pt.sha256`` (``sha256sum`` format), and the checkpoint
before it is kept as ``c.prev.pt`` (with ``c.prev.pt.sha256``). A save with ``keep_previous`` goes:

1. the current ``c.pt``, if it matches its checksum, becomes ``c.prev.pt`` (a hard link), then its checksum follows;
2. the new checksum is written;
3. the new checkpoint is written.

So a process killed at any moment leaves a checkpoint that matches its checksum, the newest or the one before it:
between steps 2 and 3, ``c.pt`` is the old file under the new checksum, reads as damaged, and ``c.prev.pt`` (the
same state) is used. A file that does not match its checksum (truncated, a flipped bit, a save cut short) is never
loaded. A checkpoint without a checksum file (written before checksums) loads unchecked.

Checkpoints load with torch's weights-only unpickler, which takes tensors, numbers, strings, lists and dicts and
refuses any other object before it is built, so loading never runs code. Torch older than 2.6 is refused: its
weights-only loader could still be made to run code (CVE-2025-32434).
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import secrets
import shutil
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from trainlab.registry import ConfigError

SAFE_TORCH = (2, 6)  # the first torch whose weights-only loader is not open to CVE-2025-32434


class ResumeWarning(UserWarning):
    """A resume that could not continue from the newest checkpoint as it is (and what it did instead)."""


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


def remove_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files a killed ``atomic_write`` left in ``folder`` (``.NAME.XXXX.tmp``)."""
    found = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in found:
        path.unlink(missing_ok=True)
    return found


def checksum_path(path: str | Path) -> Path:
    """Where the SHA-256 of checkpoint ``path`` is kept: ``path`` + ``.sha256``."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def previous_path(path: str | Path) -> Path:
    """Where the checkpoint before ``path`` is kept: ``checkpoint.pt`` -> ``checkpoint.prev.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksum_problem(path: str | Path) -> str:
    """Why checkpoint ``path`` does not match its checksum file; ``""`` when it does, or has no checksum file."""
    path = Path(path)
    recorded = checksum_path(path)
    if not recorded.is_file():
        return ""
    words = recorded.read_text(errors="replace").split()
    expected = words[0].lower() if words else ""
    actual = file_sha256(path)
    if expected == actual:
        return ""
    return (f"its SHA-256 ({actual[:16]}...) does not match the one in {recorded.name} "
            f"({expected[:16] or 'empty'}...): the file is truncated or altered, or its save was cut short")


def _write_checksum(path: Path, digest: str) -> None:
    atomic_write_text(checksum_path(path), f"{digest}  {path.name}\n")


def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """The bytes :func:`write_checkpoint` stores for ``state`` (a dict of tensors, numbers, strings, lists, dicts)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def write_checkpoint(path: str | Path, data: bytes, *, keep_previous: bool = False) -> Path:
    """Store encoded checkpoint bytes at ``path`` with their checksum; ``keep_previous`` first keeps the current
    checkpoint as ``previous_path(path)``. The order of the steps is the module docstring's."""
    path = Path(path)
    if keep_previous and path.is_file():
        _keep_previous(path)
    _write_checksum(path, hashlib.sha256(data).hexdigest())
    return atomic_write(path, lambda f: f.write(data))


def _keep_previous(path: Path) -> None:
    if checksum_problem(path):
        return  # a damaged current file is no previous checkpoint; the one kept before stays
    previous = previous_path(path)
    link = path.with_name(f".{previous.name}.{secrets.token_hex(6)}.tmp")
    try:
        os.link(path, link)
        os.replace(link, previous)
    except OSError:  # a file system without hard links: copy
        link.unlink(missing_ok=True)
        atomic_write(previous, lambda f: _copy_into(path, f))
    _write_checksum(previous, file_sha256(previous))


def _copy_into(path: Path, f: IO[bytes]) -> None:
    with open(path, "rb") as source:
        shutil.copyfileobj(source, f)


def save_checkpoint(path: str | Path, state: dict[str, Any], *, keep_previous: bool = False) -> Path:
    """Save a dict of tensors, numbers, strings, lists and dicts atomically, with its checksum beside it."""
    return write_checkpoint(path, encode_checkpoint(state), keep_previous=keep_previous)


def require_safe_torch(path: str | Path) -> None:
    """Refuse to load checkpoints under a torch whose weights-only loader can be made to run code."""
    from packaging.version import Version

    if Version(str(torch.__version__)).release < SAFE_TORCH:
        raise ConfigError(f"Could not load checkpoint {str(path)!r}: torch {torch.__version__} is older than 2.6, "
                          f"and its weights-only loader can be made to run code hidden in a file "
                          f"(CVE-2025-32434). Nothing was loaded. Install torch >= 2.6 to load checkpoints.")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, checked against its checksum; never unpickles
    arbitrary objects. A missing, damaged or foreign file is a ``ConfigError`` that names it."""
    path = Path(path)
    require_safe_torch(path)
    if not path.is_file():
        raise ConfigError(f"Checkpoint not found: {str(path)!r}.")
    state = checksum_problem(path) or _read(path, map_location)
    if isinstance(state, str):
        raise ConfigError(f"Could not load checkpoint {str(path)!r}: {state}. Nothing was loaded from it.")
    return state


def load_latest_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"
                           ) -> tuple[dict[str, Any], Path] | None:
    """The newest intact one of checkpoint ``path`` and ``previous_path(path)``, and which it was; None when
    neither exists.

    Passing over a damaged or missing ``path`` is said in a ``ResumeWarning`` naming it; with neither intact, a
    ``ConfigError`` names both. A file holding objects that are not plain data is refused, never passed over.
    """
    path = Path(path)
    require_safe_torch(path)
    candidates = [path, previous_path(path)]
    if not any(p.is_file() for p in candidates):
        return None
    problems: list[str] = []
    for candidate in candidates:
        state = (checksum_problem(candidate) or _read(candidate, map_location) if candidate.is_file()
                 else "it is missing")
        if not isinstance(state, str):
            if problems:
                warnings.warn(f"Passed over {'; '.join(problems)}. Resuming from {str(candidate)!r} (epoch "
                              f"{state.get('trainer', {}).get('epoch', '?')}) instead.", ResumeWarning, stacklevel=2)
            return state, candidate
        problems.append(f"the checkpoint {str(candidate)!r}: {state}")
    raise ConfigError(f"No intact checkpoint to resume from: {'; '.join(problems)}. Nothing was loaded; train the "
                      f"run again in a new directory (or delete these files to start it over).")


def _read(path: Path, map_location: str | torch.device) -> dict[str, Any] | str:
    """The checkpoint in ``path``, or why it is not readable; raises ``ConfigError`` for a file holding objects
    that are not plain data."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"torch\.")  # torch's advice on pickle protocols is not ours
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Weights only load failed" not in str(e):
            return f"it is not a file torch can read ({error_line(e)})"
        found = re.search(r"GLOBAL (\S+)", str(e))
        raise ConfigError(
            f"Could not load checkpoint {str(path)!r}: it holds objects that are not plain data (tensors, numbers, "
            f"strings, lists, dicts){f', such as {found.group(1)!r}' if found else ''}. Building such objects can "
            f"run code, so loading stopped before any was built: nothing in the file was run. Load only "
            f"checkpoints that trainlab wrote, from a source you trust.") from None
    except Exception as e:  # a corrupt or foreign file: say which and why, not a deep traceback
        return f"it is not a file torch can read ({error_line(e)})"
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not a checkpoint's dict"
    return state


def error_line(error: BaseException) -> str:
    """``Type: first line of the message`` (just the type when there is no message): errors in one line."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
