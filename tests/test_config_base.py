"""A config file's 'base': another config laid under it, and the errors when one cannot be."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainlab.config import load_config
from trainlab.registry import ConfigError
from trainlab.runs import config_hash

BASE = {"seed": 3, "data": {"dataset": {"name": "moons", "n_samples": 300}, "batch_size": 32,
                            "augment": [{"name": "gaussian_noise", "std": 0.1}]},
        "model": {"name": "mlp", "depth": 2, "width": 16, "dropout": 0.1},
        "optimizer": {"name": "adamw", "lr": 0.01, "weight_decay": 0.05},
        "schedule": {"name": "cosine", "warmup_steps": 5}, "epochs": 4}


def write(path: Path, mapping: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(mapping))
    return path


def test_a_file_laid_over_its_base_is_the_base_with_those_values_set(tmp_path):
    write(tmp_path / "recipes" / "base.yaml", BASE)
    child = write(tmp_path / "recipes" / "variants" / "child.yaml", {
        "base": "../base.yaml",
        "model": {"width": 64},                       # merged into the base's mlp: depth and dropout stay
        "data": {"augment": [{"name": "shift", "max_shift": 2}]},   # a list replaces the base's list
        "schedule": {"name": "step", "every_epochs": 2},  # another component replaces the base's whole
        "precision": "bf16"})
    expected = load_config(tmp_path / "recipes" / "base.yaml",
                           ["model.width=64", "data.augment=[{name: shift, max_shift: 2}]",
                            "schedule={name: step, every_epochs: 2}", "precision=bf16"])
    got = load_config(child)
    assert got == expected and config_hash(got) == config_hash(expected)
    assert got.model.depth == 2 and got.model.dropout == 0.1 and got.schedule.warmup_steps == 0
    # A base of a base, and --set on top of both.
    grandchild = write(tmp_path / "g.yaml", {"base": "recipes/variants/child.yaml", "epochs": 9})
    assert load_config(grandchild, ["seed=5"]) == load_config(child, ["epochs=9", "seed=5"])


def test_a_base_that_cannot_be_used_is_named(tmp_path):
    missing = write(tmp_path / "a.yaml", {"base": "nowhere.yaml", "epochs": 2})
    with pytest.raises(ConfigError, match=r"The 'base' of the config file '.*a\.yaml', 'nowhere\.yaml', is not a "
                                          r"file: '.*nowhere\.yaml' \(a base is relative to the folder"):
        load_config(missing)
    write(tmp_path / "x.yaml", {"base": "y.yaml"})
    write(tmp_path / "y.yaml", {"base": "x.yaml"})
    with pytest.raises(ConfigError, match=r"bases form a cycle: '.*x\.yaml' -> '.*y\.yaml' -> '.*x\.yaml'"):
        load_config(tmp_path / "x.yaml")
    with pytest.raises(ConfigError, match=r"'base' key of the config file .* must be the path of another config "
                                          r"file \(relative to its folder\)\. Got 3 instead"):
        load_config(write(tmp_path / "n.yaml", {"base": 3}))
    with pytest.raises(ConfigError, match=r"'base' key \('x\.yaml'\) names a base config file, which works in a "
                                          r"YAML config file"):
        load_config({"base": "x.yaml", "epochs": 2})


def test_the_bf16_fast_cnn_recipe_is_the_fast_one_in_bf16_for_18_epochs():
    examples = Path(__file__).resolve().parent.parent / "examples"
    assert load_config(examples / "mnist1d_cnn_fast_bf16.yaml") == load_config(
        examples / "mnist1d_cnn_fast.yaml", ["precision=bf16", "epochs=18"])
