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


@pytest.fixture
def train_calls(monkeypatch):
    """The config of every run trained from here on, one by one (``runs.train``) or as a batch of seeds."""
    import trainlab.batched
    import trainlab.runs
    from trainlab.config import load_config

    calls = []
    real, real_batch = trainlab.runs.train, trainlab.batched.train_replicas

    def counting(config, *args, **kwargs):
        calls.append(config)
        return real(config, *args, **kwargs)

    def counting_batch(config, seeds, *args, **kwargs):
        calls.extend(load_config(config, {"seed": s}) for s in seeds)
        return real_batch(config, seeds, *args, **kwargs)

    monkeypatch.setattr(trainlab.runs, "train", counting)
    monkeypatch.setattr(trainlab.batched, "train_replicas", counting_batch)
    return calls
