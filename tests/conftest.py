from __future__ import annotations

import pytest

# A small, fast run: moons (2 features), a tiny MLP, few epochs.
TINY = {
    "seed": 0,
    "data": {"dataset": {"name": "moons", "n_samples": 300}, "batch_size": 32},
    "model": {"name": "mlp", "depth": 2, "width": 16},
    "optimizer": {"name": "adam", "lr": 0.01},
    "epochs": 4,
}


@pytest.fixture
def tiny() -> dict:
    import copy

    return copy.deepcopy(TINY)
