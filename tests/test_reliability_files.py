"""Damaged and hostile checkpoint files: detected by their checksum or refused by the weights-only loader, in
trainlab's words, before anything in them runs; and no unsafe loader anywhere in the source."""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import pickle
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

import trainlab.checkpoints
from trainlab.checkpoints import (ResumeWarning, checksum_path, checksum_problem, load_checkpoint,
                                  load_latest_checkpoint, previous_path, save_checkpoint)
from trainlab.cli import app
from trainlab.config import load_config
from trainlab.registry import ConfigError
from trainlab.runs import load_model, train

from test_trainer import Interrupt

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


kill_resume = load_script("kill_resume")  # the kill harness, whose comparison of final states is used here

CONFIG = {**kill_resume.CONFIG, "epochs": 5, "early_stopping": None}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run's final state, and a run cut after epoch 3 (checkpoint: epoch 2; previous: epoch 1)."""
    root = tmp_path_factory.mktemp("runs")
    train(load_config(CONFIG), root / "whole")
    with pytest.raises(KeyboardInterrupt):
        train(load_config(CONFIG), root / "cut", callbacks=[Interrupt(at_epoch=3)])
    return {"expected": kill_resume.final_state(root / "whole"), "cut": root / "cut", "whole": root / "whole"}


def copy_run(source: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source, tmp_path / source.name))


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x10
    path.write_bytes(bytes(data))


def truncate(path: Path, length: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:length if length >= 0 else len(data) + length])


# Offsets into the file (negative: from its end): the zip header, the pickled dict, tensor data, the central
# directory and the end record; truncations at several lengths, and a checksum file that is garbage.
DAMAGE = ([("flip", o) for o in (0, 1, 40, 200, 0.25, 0.5, 0.75, -60, -22, -2, -1)]
          + [("truncate", n) for n in (0, 1, 100, 0.5, -22, -1)] + [("garbage checksum", 0)])


def damage(path: Path, how: str, where: float) -> None:
    size = path.stat().st_size
    at = int(where * size) if isinstance(where, float) else where
    if how == "flip":
        flip(path, at)
    elif how == "truncate":
        truncate(path, at)
    else:
        checksum_path(path).write_text("not a checksum\n")


@pytest.mark.parametrize("how,where", DAMAGE, ids=[f"{h}-{w}" for h, w in DAMAGE])
def test_a_damaged_checkpoint_is_detected_and_the_previous_one_resumes_bit_identically(runs, tmp_path, how, where):
    run = copy_run(runs["cut"], tmp_path)
    damage(run / "checkpoint.pt", how, where)
    assert checksum_problem(run / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"Could not load checkpoint '.*checkpoint\.pt': its SHA-256 .* does not "
                                          r"match the one in checkpoint\.pt\.sha256"):
        load_checkpoint(run / "checkpoint.pt")
    with pytest.warns(ResumeWarning, match=r"Passed over the checkpoint '.*checkpoint\.pt': its SHA-256.*"
                                           r"Resuming from '.*checkpoint\.prev\.pt' \(epoch 1\) instead"):
        train(load_config(CONFIG), run, resume=True)
    assert kill_resume.differences(runs["expected"], kill_resume.final_state(run)) == []


def test_with_no_intact_checkpoint_resume_is_one_clear_error(runs, tmp_path):
    run = copy_run(runs["cut"], tmp_path)
    flip(run / "checkpoint.pt", 300)
    truncate(run / "checkpoint.prev.pt", 50)
    message = (r"No intact checkpoint to resume from: the checkpoint '.*checkpoint\.pt': its SHA-256 .*; the "
               r"checkpoint '.*checkpoint\.prev\.pt': its SHA-256 .*Nothing was loaded")
    with pytest.raises(ConfigError, match=message):
        train(load_config(CONFIG), run, resume=True)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.yaml"), "--out", str(run), "--resume", "--quiet"])
    assert result.exit_code == 2
    assert result.output.startswith("error: No intact checkpoint") and result.output.count("\n") == 1
    assert "checkpoint.prev.pt" in result.output and "Traceback" not in result.output


def test_a_finished_runs_damaged_checkpoint_is_never_loaded_as_its_model(runs, tmp_path):
    run = copy_run(runs["whole"], tmp_path)
    assert isinstance(load_model(run), torch.nn.Module)
    flip(run / "checkpoint.pt", -1000)
    with pytest.raises(ConfigError, match=r"Could not load checkpoint '.*checkpoint\.pt': its SHA-256"):
        load_model(run)


class Payload:
    """Unpickling this writes the canary file: what a hostile checkpoint would do."""

    def __init__(self, canary: Path):
        self.canary = canary

    def __reduce__(self):
        return exec, (f"open({str(self.canary)!r}, 'w').write('ran')",)


def plant(path: Path, canary: Path, raw_pickle: bool = False) -> None:
    """Replace the checkpoint ``path`` with a real one carrying a payload, under a matching checksum (an attacker
    can compute one as easily as trainlab)."""
    state = load_checkpoint(path)
    state["trainer"]["extras"]["note"] = Payload(canary)
    if raw_pickle:
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, path)
    checksum_path(path).write_text(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")


HOSTILE = r"Could not load checkpoint '.*checkpoint\.pt': it holds objects that are not plain data \(tensors, " \
          r"numbers, strings, lists, dicts\), such as '\S+'\..*nothing in the file was run"


@pytest.mark.parametrize("raw_pickle", [False, True], ids=["torch-zip", "raw-pickle"])
def test_a_checkpoint_carrying_code_is_refused_everywhere_and_nothing_runs(runs, tmp_path, raw_pickle):
    canary = tmp_path / "canary"
    run = copy_run(runs["whole"], tmp_path)
    plant(run / "checkpoint.pt", canary, raw_pickle)
    assert checksum_problem(run / "checkpoint.pt") == ""
    for load in (lambda: load_checkpoint(run / "checkpoint.pt"), lambda: load_latest_checkpoint(run / "checkpoint.pt"),
                 lambda: train(load_config(CONFIG), run, resume=True), lambda: load_model(run)):
        with pytest.raises(ConfigError, match=HOSTILE) as refused:
            load()
        assert "weights_only" not in str(refused.value)  # trainlab's words, not torch's advice
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(CONFIG))
    result = CliRunner().invoke(app, ["train", str(tmp_path / "run.yaml"), "--out", str(run), "--resume", "--quiet"])
    assert result.exit_code == 2 and "not plain data" in result.output and "Traceback" not in result.output
    assert not canary.exists()
    # The payload is live: an unsafe loader would have run it.
    if raw_pickle:
        pickle.loads((run / "checkpoint.pt").read_bytes())
    else:
        torch.load(run / "checkpoint.pt", weights_only=False)
    assert canary.read_text() == "ran"


@pytest.mark.parametrize("version,refused", [("2.5.1", True), ("1.13.0+cpu", True), ("2.6.0", False),
                                             ("2.13.0+cpu", False)])
def test_a_torch_older_than_2_6_refuses_to_load(runs, tmp_path, monkeypatch, version, refused):
    run = copy_run(runs["cut"], tmp_path)
    monkeypatch.setattr(torch, "__version__", version)
    if not refused:
        assert load_checkpoint(run / "checkpoint.pt")["trainer"]["epoch"] == 2
        return
    message = rf"Could not load checkpoint .*torch {version.replace('+', '[+]')} is older than 2\.6.*CVE-2025-32434"
    for load in (lambda: load_checkpoint(run / "checkpoint.pt"), lambda: train(load_config(CONFIG), run, resume=True)):
        with pytest.raises(ConfigError, match=message):
            load()


@pytest.mark.filterwarnings("ignore::trainlab.checkpoints.ResumeWarning")  # passing over is the point here
def test_a_save_that_fails_at_any_step_leaves_an_intact_checkpoint(tmp_path, monkeypatch):
    """Fail the n-th rename of a save (each step of it ends in one): the newest or the previous state survives."""
    path = tmp_path / "checkpoint.pt"
    for epoch in (1, 2):
        save_checkpoint(path, {"trainer": {"epoch": epoch}}, keep_previous=True)
    real, steps = trainlab.checkpoints.os.replace, 0
    while True:
        run = tmp_path / f"attempt{steps}"
        run.mkdir()
        for name in ("checkpoint.pt", "checkpoint.pt.sha256", "checkpoint.prev.pt", "checkpoint.prev.pt.sha256"):
            shutil.copy(tmp_path / name, run / name)
        calls = []

        def failing(src, dst, calls=calls, limit=steps):
            if len(calls) == limit:
                raise OSError("disk full")
            calls.append(dst)
            real(src, dst)

        monkeypatch.setattr(trainlab.checkpoints.os, "replace", failing)
        try:
            save_checkpoint(run / "checkpoint.pt", {"trainer": {"epoch": 3}}, keep_previous=True)
            finished = True
        except OSError:
            finished = False
        monkeypatch.setattr(trainlab.checkpoints.os, "replace", real)
        state, _ = load_latest_checkpoint(run / "checkpoint.pt")
        assert state["trainer"]["epoch"] == (3 if finished else 2), steps
        if finished:
            assert load_checkpoint(previous_path(run / "checkpoint.pt"))["trainer"]["epoch"] == 2
            break
        steps += 1
    assert steps == 4  # keep the previous (link, checksum), the new checksum, the new checkpoint


def test_a_checkpoint_without_a_checksum_file_loads(tmp_path):
    """Checkpoints written before checksums load (unchecked) with the weights-only loader."""
    torch.save({"trainer": {"epoch": 1}}, tmp_path / "old.pt")
    assert load_checkpoint(tmp_path / "old.pt") == {"trainer": {"epoch": 1}}


# --- No unsafe loader in the source -----------------------------------------------------------------------------

UNPICKLERS = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}
UNSAFE_YAML = {"load", "load_all", "unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    return "?"


def keyword_is_true(call: ast.Call, name: str) -> bool:
    return any(k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords)


SAFE_YAML_LOADERS = {"yaml.SafeLoader", "yaml.CSafeLoader", "SafeLoader", "CSafeLoader"}


def safe_yaml_loaders(tree: ast.Module) -> set[str]:
    """PyYAML's safe loaders and the classes of this module derived from one (which construct plain data only,
    unless they register constructors: the scan trusts a subclass to add checks, not types)."""
    bases = {node.name: [dotted(b) for b in node.bases] for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    safe = set(SAFE_YAML_LOADERS)
    while True:
        more = {name for name, of in bases.items() if name not in safe and any(b in safe for b in of)}
        if not more:
            return safe
        safe |= more


def unsafe_yaml(call: ast.Call, attr: str, safe_loaders: set[str]) -> bool:
    if attr not in UNSAFE_YAML:
        return False
    loader = [k.value for k in call.keywords if k.arg == "Loader"] + call.args[1:2]
    return not (attr in ("load", "load_all") and loader and dotted(loader[0]) in safe_loaders)


def unsafe_loads(source: str) -> list[tuple[int, str]]:
    """(line, what) for each call that can run code from data: eval/exec, torch.load without weights_only=True,
    the pickle family, yaml's loaders but with a safe Loader, numpy's allow_pickle=True; and imports that would
    hide them."""
    tree = ast.parse(source)
    safe_loaders, found = safe_yaml_loaders(tree), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            root = node.module.split(".")[0]
            for alias in node.names:
                if (root in UNPICKLERS or (root, alias.name) in {("torch", "load"), ("yaml", "load")}
                        or root == "yaml" and alias.name in UNSAFE_YAML):
                    found.append((node.lineno, f"from {node.module} import {alias.name}"))
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        root, _, attr = name.rpartition(".")
        if (name in ("eval", "exec")
                or name == "torch.load" and not keyword_is_true(node, "weights_only")
                or root in UNPICKLERS and attr in ("load", "loads", "open", "Unpickler")
                or root == "yaml" and unsafe_yaml(node, attr, safe_loaders)
                or root in ("np", "numpy") and attr == "load" and keyword_is_true(node, "allow_pickle")):
            found.append((node.lineno, f"{name}(...)"))
    return found


def test_the_scanner_finds_every_unsafe_load_and_passes_the_safe_ones():
    unsafe = ["eval(text)", "exec(code)", "torch.load(f)", "torch.load(f, weights_only=False)", "pickle.load(f)",
              "pickle.loads(b)", "marshal.loads(b)", "yaml.load(s)", "yaml.load(s, Loader=yaml.Loader)",
              "yaml.unsafe_load(s)", "yaml.full_load(s)", "class L(yaml.Loader): ...\nyaml.load(s, Loader=L)",
              "np.load(p, allow_pickle=True)", "from pickle import loads", "from torch import load"]
    for line in unsafe:
        assert unsafe_loads(line), line
    safe = ["model.eval()", "torch.load(f, map_location='cpu', weights_only=True)", "yaml.safe_load(s)",
            "yaml.load(s, Loader=yaml.SafeLoader)", "class A(yaml.SafeLoader): ...\nclass B(A): ...\nyaml.load(s, B)",
            "np.load(p, allow_pickle=False)", "json.loads(s)", "re.compile(p)"]
    for line in safe:
        assert unsafe_loads(line) == [], line


def test_the_source_has_no_loader_that_can_run_code():
    src = ROOT / "src" / "trainlab"
    found = [f"{path.relative_to(ROOT)}:{line}: {what}" for path in sorted(src.rglob("*.py"))
             for line, what in unsafe_loads(path.read_text())]
    assert found == []
