"""trainlab: train neural networks well, and measure what each technique does.

The public API is flat (``from trainlab import train, RunConfig, Trainer``); names load on first use so that
importing trainlab (and ``trainlab --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from trainlab.registry import REGISTRIES

__version__ = "0.1.0"

_EXPORTS = {
    "RunConfig": "trainlab.config", "load_config": "trainlab.config", "ConfigError": "trainlab.registry",
    "Trainer": "trainlab.trainer", "build_trainer": "trainlab.trainer",
    "train": "trainlab.runs", "Store": "trainlab.runs", "RunResult": "trainlab.runs",
    "load_result": "trainlab.runs", "load_model": "trainlab.runs",
    "Callback": "trainlab.callbacks", "StopTraining": "trainlab.callbacks", "EarlyStopping": "trainlab.callbacks",
    "EarlyStoppingConfig": "trainlab.callbacks",
    "DataConfig": "trainlab.data", "Data": "trainlab.data", "load_data": "trainlab.data",
    "split_sizes": "trainlab.data", "steps_per_epoch": "trainlab.data",
    "diagnose": "trainlab.diagnostics", "doctor": "trainlab.diagnostics", "Diagnostics": "trainlab.diagnostics",
    "probe_forward": "trainlab.diagnostics", "find_problems": "trainlab.diagnostics",
    "run_studies": "trainlab.studies", "run_study": "trainlab.studies", "ablate": "trainlab.studies",
    "STUDIES": "trainlab.studies", "lr_range_test": "trainlab.lr_range",
    "train_replicas": "trainlab.batched", "train_sequentially": "trainlab.batched", "can_batch": "trainlab.batched",
    "ReplicaResult": "trainlab.batched",
    # Every registry (INITIALIZERS, OPTIMIZERS, ...), from the one list in registry.py.
    **{name: module for module, name in REGISTRIES.values()},
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
