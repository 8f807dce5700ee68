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


def pytest_configure(config):
    # The suite trains many tiny models: one intra-op thread is faster for them than two that contend.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _data_cache(tmp_path_factory):
    """Generated datasets are cached in a folder of the test session's, never in the user's home."""
    import trainlab.data

    trainlab.data.DATA_CACHE = tmp_path_factory.mktemp("data-cache")
    yield
