from __future__ import annotations

import pytest
import torch

from trainlab.checkpoints import atomic_write_text, load_checkpoint, save_checkpoint
from trainlab.registry import ConfigError


def test_round_trip_and_weights_only(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", {"w": torch.arange(3.0), "n": 3, "s": "x", "l": [1.0]})
    state = load_checkpoint(path)
    assert torch.equal(state["w"], torch.arange(3.0)) and state["n"] == 3 and state["l"] == [1.0]


def test_a_checkpoint_holding_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(ConfigError, match="Could not load checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_failed_write_keeps_the_old_file(tmp_path):
    target = atomic_write_text(tmp_path / "f.txt", "old")

    def broken(f):
        f.write(b"half")
        raise RuntimeError("disk full")

    from trainlab.checkpoints import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_missing_checkpoint(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(tmp_path / "none.pt")


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o644
