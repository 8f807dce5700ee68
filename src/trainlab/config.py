"""Run configuration: one pydantic model validates everything before any work starts (DESIGN §3).

YAML or a dict -> ``--set a.b=c`` overrides (an unknown path is an error) -> ``RunConfig.model_validate``. Every
component's ``name`` is looked up in its registry during validation, so a typo fails in milliseconds.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError

from trainlab.callbacks import EarlyStoppingConfig
from trainlab.data import DataConfig
from trainlab.models import MODELS
from trainlab.optimizers import OPTIMIZERS
from trainlab.registry import ConfigError, Section, format_validation_error, registries, short_repr, suggest
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
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="the training step's arithmetic: fp32, or mixed precision (autocast) in bf16 or fp16")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    threads: int | None = Field(None, ge=1)
    checkpoint_every_epochs: int = Field(1, ge=1)


_MERGE_TAG = "tag:yaml.org,2002:merge"  # '<<: *base' may override keys: not a repeat


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, except that a key given twice in one mapping is an error, not "the last one
    wins": the document is composed (nodes only, nothing constructed) and its mappings checked first."""
    _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader))
    return yaml.safe_load(text)


def _check_unique_keys(root: yaml.Node | None) -> None:
    stack, visited = [root], set()
    while stack:  # iterative, and each node once: aliases may share a node many times
        node = stack.pop()
        if node is None or id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            keys: set[tuple[str, str]] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE_TAG:
                    if (key.tag, key.value) in keys:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"the key {short_repr(key.value)} appears twice in one mapping; keep one",
                            key.start_mark)
                    keys.add((key.tag, key.value))
                stack.extend((key, value))


def yaml_problem(err: yaml.YAMLError) -> str:
    """One line from a PyYAML error: what is wrong and where (PyYAML's own message spans several lines)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"{err.problem}{where}"
    return " ".join(str(err).split())


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML config file; a missing, unreadable, empty or malformed file is a ConfigError."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file not found: {str(path)!r}.")
    if not path.is_file():
        raise ConfigError(f"The config path {str(path)!r} is not a file. Give the path of a YAML config file.")
    try:
        raw = safe_yaml(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"The config file {str(path)!r} cannot be read: {e.strerror or e}.") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"The config file {str(path)!r} is not UTF-8 text: byte {e.start} is "
                          f"{e.object[e.start:e.start + 1]!r}.") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"The config file {str(path)!r} is not valid YAML: {yaml_problem(e)}.") from None
    except RecursionError:
        raise ConfigError(f"The config file {str(path)!r} nests its values too deeply to read.") from None
    if raw is None:
        raise ConfigError(f"The config file {str(path)!r} is empty (or holds only comments). A config is a YAML "
                          f"mapping of keys to values, e.g. 'epochs: 10'; write '{{}}' to train the defaults.")
    if not isinstance(raw, dict):
        raise ConfigError(f"The config file {str(path)!r} must be a mapping of keys to values. Got "
                          f"{type(raw).__name__} {short_repr(raw)} instead.")
    return raw


def read_config_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping with its ``base`` resolved: ``base: other.yaml`` (relative to the file's folder)
    loads that config first and lays this file's keys over it, mapping into mapping (a component given another
    ``name`` is replaced whole); lists and values replace. A base may have a base of its own."""
    path = Path(path)
    raw = read_yaml(path)
    if "base" not in raw:
        return raw
    base = raw.pop("base")
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"The 'base' key of the config file {str(path)!r} must be the path of another config file "
                          f"(relative to its folder). Got {short_repr(base)} instead.")
    base_path = path.parent / base
    chain = (*_chain, path.resolve())
    if base_path.resolve() in chain:
        cycle = " -> ".join(repr(str(p)) for p in (*chain, base_path.resolve()))
        raise ConfigError(f"The config files' bases form a cycle: {cycle}. Remove one of these 'base' keys.")
    if not base_path.is_file():
        raise ConfigError(f"The 'base' of the config file {str(path)!r}, {base!r}, is not a file: "
                          f"{str(base_path)!r} (a base is relative to the folder of the file that names it).")
    return _laid_over(read_config_file(base_path, chain), raw)


def _laid_over(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        same_component = (isinstance(below, dict) and isinstance(value, Mapping)
                          and value.get("name", below.get("name")) == below.get("name"))
        out[key] = _laid_over(below, value) if same_component else value
    return out


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """``["optimizer.lr=3e-3", "model.norm=batch"]`` -> ``{"optimizer.lr": 0.003, ...}``; values parse as YAML."""
    if isinstance(items, (str, bytes)):
        raise ConfigError(f"Overrides must be a list of 'a.b=value' strings or a mapping of paths to values. "
                          f"Got one string {short_repr(items)} instead; put it in a list.")
    out: dict[str, Any] = {}
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"An override must be a string like 'a.b=value'. Got {type(item).__name__} "
                              f"{short_repr(item)} instead.")
        path, sep, value = item.partition("=")
        if not sep or not path.strip():
            raise ConfigError(f"An override must look like 'a.b=value'. Got {short_repr(item)} instead.")
        try:
            out[path.strip()] = safe_yaml(value) if value.strip() else None
        except yaml.YAMLError:
            out[path.strip()] = value
        except RecursionError:
            raise ConfigError(f"The value of the override {path.strip()!r} nests too deeply to read.") from None
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
    if "base" in raw:
        raise ConfigError(f"The 'base' key ({short_repr(raw['base'])}) names a base config file, which works in a "
                          f"YAML config file (relative to its folder), not in a mapping. Use "
                          f"load_config(base_path, overrides) instead.")
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
    elif isinstance(source, (str, os.PathLike)):
        config = resolve(read_config_file(source))
    else:
        raise ConfigError(f"The 'source' argument of load_config must be a YAML file path, a mapping or a "
                          f"RunConfig. Got {type(source).__name__} {short_repr(source)} instead.")
    overrides = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    bad = [path for path in overrides if not isinstance(path, str)]
    if bad:
        raise ConfigError(f"An override path must be a dotted string like 'optimizer.lr'. Got "
                          f"{type(bad[0]).__name__} {short_repr(bad[0])} instead.")
    if not overrides:
        return config
    return resolve(apply_overrides(config.model_dump(), overrides))


def require_config(config: Any, who: str) -> RunConfig:
    """``config`` if it is a RunConfig; otherwise a TypeError that says how to make one."""
    if not isinstance(config, RunConfig):
        raise TypeError(f"The 'config' argument of {who} must be a RunConfig. Got {type(config).__name__} instead; "
                        f"make one with trainlab.load_config(path_or_dict, overrides).")
    return config
