"""Run configuration: one pydantic model validates everything before any work starts (DESIGN §3).

YAML or a dict -> ``--set a.b=c`` overrides (an unknown path is an error) -> ``RunConfig.model_validate``. Every
component's ``name`` is looked up in its registry during validation, so a typo fails in milliseconds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError

from trainlab.callbacks import EarlyStoppingConfig
from trainlab.data import DataConfig
from trainlab.models import MODELS
from trainlab.optimizers import OPTIMIZERS
from trainlab.registry import ConfigError, Section, format_validation_error, registries, suggest
from trainlab.regularizers import REGULARIZERS
from trainlab.schedules import SCHEDULES


class RunConfig(Section):
    """Everything one training run needs; its hash keys the run in a store."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)
    seed: int = Field(0, ge=0)
    data: DataConfig = DataConfig()
    model: MODELS.field() = "mlp"
    optimizer: OPTIMIZERS.field() = "adamw"
    schedule: SCHEDULES.field() = "constant"
    regularizers: list[REGULARIZERS.field()] = []
    epochs: int = Field(20, ge=1)
    early_stopping: EarlyStoppingConfig | None = None
    grad_clip: float | None = Field(None, gt=0)
    gradient_noise: float = Field(0.0, ge=0, description="eta of annealed gradient noise (Neelakantan et al. 2015)")
    weight_noise: float = Field(0.0, ge=0, description="std of Gaussian noise added to weights at each step")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int | None = Field(None, ge=1)
    checkpoint_every_epochs: int = Field(1, ge=1)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file not found: {str(path)!r}.")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config must be a mapping of keys to values. Got {type(raw).__name__} instead.")
    return raw


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["optimizer.lr=3e-3", "model.norm=batch"]`` -> ``{"optimizer.lr": 0.003, ...}``; values parse as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        path, sep, value = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"An override must look like 'a.b=value'. Got {item!r} instead.")
        try:
            out[path.strip()] = yaml.safe_load(value) if value.strip() else None
        except yaml.YAMLError:
            out[path.strip()] = value
    return out


def apply_overrides(resolved: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set dotted paths in a copy of a *resolved* config dict (every field present, so unknown paths are caught).

    Setting ``x.name`` swaps the component at ``x`` and keeps only the fields the new one also has.
    """
    import copy

    out = copy.deepcopy(dict(resolved))
    created: set[int] = set()  # sections that were None: their keys are checked by validation instead
    for path, value in overrides.items():
        keys = path.split(".")
        node: Any = out
        for depth, key in enumerate(keys):
            where = ".".join(keys[:depth]) or "the config"
            last = depth == len(keys) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError(f"Unknown config path {path!r}: {where} is a list of {len(node)} items; "
                                      f"use an index in [0, {len(node)}).")
                key = int(key)
            elif isinstance(node, dict):
                if key not in node and id(node) not in created:
                    raise ConfigError(f"Unknown config path {path!r}: {where} has no key {key!r}. "
                                      f"{suggest(key, list(node))}Available: {', '.join(map(str, node))}.")
            else:
                raise ConfigError(f"Unknown config path {path!r}: {where} is a value, not a mapping.")
            if last:
                if key == "name" and isinstance(node, dict):
                    _swap_component(node, value)
                else:
                    node[key] = value
            else:
                if node[key] is None:
                    node[key] = {}
                    created.add(id(node[key]))
                node = node[key]
    return out


def _swap_component(node: dict[str, Any], name: Any) -> None:
    old = node.get("name")
    # A name can live in two registries ('constant' is a schedule and an initializer): prefer the one with both.
    owners = [r for r in registries().values() if old in r]
    owners.sort(key=lambda r: name not in r)
    if owners:
        fields = owners[0].get(name).model_fields if isinstance(name, str) and name in owners[0] else {}
        for key in [k for k in node if k != "name" and k not in fields]:
            del node[key]
    node["name"] = name


def resolve(raw: Mapping[str, Any] | RunConfig) -> RunConfig:
    """Validate a raw dict into a RunConfig, turning pydantic's errors into one clear ConfigError."""
    if isinstance(raw, RunConfig):
        return raw
    try:
        return RunConfig.model_validate(dict(raw))
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, raw, "RunConfig")) from None


def load_config(source: str | Path | Mapping[str, Any] | RunConfig,
                overrides: Iterable[str] | Mapping[str, Any] = ()) -> RunConfig:
    """A validated RunConfig from a YAML path, a dict or a RunConfig, with dotted overrides applied.

    This is the one place a config is validated: everything below it (``build_trainer``, ``train``, ``Store``,
    studies, doctor) takes the ``RunConfig`` it returns. A RunConfig without overrides comes back as it is.
    """
    if isinstance(source, RunConfig):
        config = source
    elif isinstance(source, Mapping):
        config = resolve(source)
    else:
        config = resolve(read_yaml(source))
    overrides = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    if not overrides:
        return config
    return resolve(apply_overrides(config.model_dump(), overrides))


def require_config(config: Any, who: str) -> RunConfig:
    """``config`` if it is a RunConfig; otherwise a TypeError that says how to make one."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"The 'config' argument of {who} must be a RunConfig. Got {type(config).__name__} instead; "
                        f"make one with trainlab.load_config(path_or_dict, overrides).")
    return config
