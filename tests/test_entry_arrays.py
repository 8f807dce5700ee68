"""Arrays in memory work in every entry point: train, ensembles, doctor, search (and, by nature, the estimators)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from trainlab.config import load_config
from trainlab.data import DataConfig, as_data, data_from_arrays, load_data, save_arrays


def _arrays(n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    return x, (x[:, 0] + x[:, 1] > 0).astype(np.int64)


def _config(tiny: dict):
    return load_config({**tiny, "epochs": 2})


def test_as_data_takes_none_data_or_arrays():
    x, y = _arrays()
    cfg = DataConfig(val_fraction=0.2)
    from_tuple = as_data((x, y), cfg, "t")
    expected = data_from_arrays(x, y, cfg)
    torch.testing.assert_close(from_tuple.x_train, expected.x_train, rtol=0, atol=0)
    assert as_data(expected, cfg, "t") is expected
    with_test = as_data((x[:200], y[:200], x[200:], y[200:]), cfg, "t")
    assert len(with_test.x_test) == 40 and as_data(None, DataConfig(), "t").task == "classification"


@pytest.mark.parametrize("bad, match", [
    (np.zeros((10, 2)), "'data' argument of doctor must be a trainlab Data, an \\(x, y\\) tuple .* Got ndarray"),
    ((np.zeros((10, 2)),), "Got tuple of length 1 instead"),
    ("data.npz", "Got str instead"),
])
def test_as_data_names_the_entry_point_and_what_is_allowed(bad, match):
    with pytest.raises(TypeError, match=match):
        as_data(bad, DataConfig(), "doctor")


def test_save_arrays_names_the_file_by_content(tmp_path):
    x, y = _arrays()
    first = save_arrays((x, y), tmp_path, "search")
    assert save_arrays((torch.from_numpy(x), torch.from_numpy(y)), tmp_path, "search") == first
    other = save_arrays((x, 1 - y), tmp_path, "search")
    assert other != first and sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, other.name])
    cfg = DataConfig(dataset={"name": "npz", "path": str(first)})
    torch.testing.assert_close(load_data(cfg).x_train, data_from_arrays(x, y, cfg).x_train, rtol=0, atol=0)
    split = save_arrays((x[:200], y[:200], x[200:], y[200:]), tmp_path, "search")
    assert load_data(DataConfig(dataset={"name": "npz", "path": str(split)})).x_test.shape == (40, 4)


def test_save_arrays_checks_before_writing(tmp_path):
    x, y = _arrays()
    with pytest.raises(ValueError, match="'x' and 'y' of data_from_arrays must have the same number of samples"):
        save_arrays((x, y[:-1]), tmp_path / "out", "search")
    assert not (tmp_path / "out").exists()


def test_train_takes_arrays_and_says_so(tiny, tmp_path):
    from trainlab.runs import train

    x, y = _arrays()
    config = _config(tiny)
    result = train(config, tmp_path / "run", data=(x, y))
    same = train(config, data=data_from_arrays(x, y, config.data))
    untimed = [[{k: v for k, v in h.items() if k != "time_s"} for h in r.history] for r in (result, same)]
    assert untimed[0] == untimed[1] and len(untimed[0]) == 2
    assert '"data": "arrays"' in (tmp_path / "run" / "meta.json").read_text()


def test_ensemble_and_doctor_take_arrays(tiny):
    from trainlab.diagnostics import doctor
    from trainlab.ensembles import run_ensemble

    x, y = _arrays()
    config = _config(tiny)
    summary = run_ensemble(config, "averaging", 2, data=(x, y))
    assert summary["members"] == 2 and 0 <= summary["accuracy"] <= 1
    per_epoch = data_from_arrays(x, y, config.data).steps_per_epoch(config.data.batch_size)  # 6 (172 samples)
    report = doctor(config, steps=2 * per_epoch - 1, data=(x, y))  # rounded up to whole epochs of the arrays
    assert report.final["steps"] == 2 * per_epoch


def test_search_takes_arrays_and_a_space_mapping(tiny, tmp_path):
    from trainlab.search import make_spec, run_search

    x, y = _arrays()
    space = {"optimizer.lr": {"low": 1e-3, "high": 0.1, "log": True}}
    spec = make_spec(_config(tiny), space, sampler="random", trials=2, out=tmp_path, data=(x, y))
    assert spec.base["data"]["dataset"] == {"name": "npz", "path": str(save_arrays((x, y), tmp_path, "t")),
                                            "task": "auto"}
    result = run_search(spec)
    assert len(result.trials) == 2 and result.best_config.data.dataset.name == "npz"
    with pytest.raises(TypeError, match="'data' argument of make_spec must be an \\(x, y\\).* Got Data instead"):
        make_spec(_config(tiny), space, sampler="random", trials=2, out=tmp_path / "b",
                  data=data_from_arrays(x, y, DataConfig()))
    assert not (tmp_path / "b").exists()
