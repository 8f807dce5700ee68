"""trainlab: train neural networks well, and measure what each technique does.

The public API is flat (``from trainlab import train, RunConfig, Trainer``); names load on first use so that
importing trainlab (and ``trainlab --help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from trainlab.registry import REGISTRIES

__version__ = "0.1.0"

_PUBLIC = {
    "trainlab.config": ("RunConfig", "load_config"),
    "trainlab.registry": ("ConfigError",),
    "trainlab.trainer": ("Trainer", "build_trainer"),
    "trainlab.runs": ("train", "Store", "RunResult", "load_result", "load_model"),
    "trainlab.callbacks": ("Callback", "StopTraining", "EarlyStopping", "EarlyStoppingConfig"),
    "trainlab.data": ("DataConfig", "Data", "load_data", "data_from_arrays", "split_sizes", "steps_per_epoch"),
    "trainlab.sklearn": ("TrainlabClassifier", "TrainlabRegressor"),
    "trainlab.diagnostics": ("diagnose", "doctor", "Diagnostics", "probe_forward", "find_problems"),
    "trainlab.studies": ("run_studies", "run_study", "ablate", "STUDIES"),
    "trainlab.lr_range": ("lr_range_test",),
    "trainlab.batched": ("train_replicas", "train_sequentially", "can_batch", "ReplicaResult"),
    "trainlab.checkpoints": ("ResumeWarning",),
    "trainlab.search": ("make_spec", "run_search", "SearchSpec"),
    "trainlab.ensembles": ("build_ensemble", "run_ensemble"),
}
# Every registry (INITIALIZERS, OPTIMIZERS, ...) comes from the one list in registry.py.
_EXPORTS = {**{name: module for module, names in _PUBLIC.items() for name in names},
            **{name: module for module, name in REGISTRIES.values()}}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
