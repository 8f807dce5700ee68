from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from trainlab.augment import Shift
from trainlab.data import (DATASETS, PREPROCESSORS, Csv, Data, DataConfig, Digits, MinMax, Mnist1d, Npz,
                           Standardize, load_data)


def counts(y: torch.Tensor, k: int) -> np.ndarray:
    return np.bincount(y.numpy(), minlength=k)


# --- registries and config ------------------------------------------------------------------------------------------

DATASET_EXAMPLES = {"mnist1d": {}, "digits": {"image": True}, "breast_cancer": {}, "wine": {}, "moons": {"noise": 0.1},
                    "spirals": {"n_classes": 4}, "npz": {"path": "a.npz"}, "csv": {"path": "a.csv", "target": "y"}}


def test_every_component_has_a_description_and_round_trips():
    assert sorted(DATASETS.names()) == sorted(DATASET_EXAMPLES)
    for registry, examples in ((DATASETS, DATASET_EXAMPLES), (PREPROCESSORS, {"none": {}, "standardize": {},
                                                                                  "minmax": {"low": -1.0}})):
        for name, fields in examples.items():
            assert registry.get(name).describe()
            spec = registry.create({"name": name, **fields})
            assert registry.create(spec.model_dump()) == spec


def test_config_round_trip_and_validation():
    cfg = DataConfig(dataset="wine", preprocess={"name": "minmax", "low": -1.0}, augment=["scale"])
    assert DataConfig.model_validate(cfg.model_dump()) == cfg
    assert cfg.model_dump()["dataset"] == {"name": "wine"}
    for bad in ({"val_fraction": 1.0}, {"test_fraction": -0.1}, {"batch_size": 0}, {"train_size": 0},
                {"fit_on": "test"}, {"shuffle": True}, {"dataset": "mnist"}):
        with pytest.raises(ValidationError):
            DataConfig.model_validate(bad)
    with pytest.raises(ValidationError, match="Did you mean 'mnist1d'"):
        DataConfig(dataset="mnist")
    with pytest.raises(ValidationError, match="'high' parameter of MinMax must be greater"):
        MinMax(low=1.0, high=1.0)


# --- splits ---------------------------------------------------------------------------------------------------------

def test_split_sizes_and_stratification():
    data = load_data(DataConfig(dataset="digits", preprocess="none"))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (1293, 144, 360)  # 1797 -> 20% test, 10% val
    overall = np.bincount(Digits().load().y_train) / 1797
    for y in (data.y_train, data.y_val, data.y_test):
        # Stratified: every class within one sample of its share of the split.
        assert np.all(np.abs(counts(y, 10) - overall * len(y)) <= 1.0)
    assert data.y_train.dtype == torch.int64 and data.x_train.dtype == torch.float32
    assert (data.task, data.num_classes, data.num_outputs, data.input_shape) == ("classification", 10, 10, (64,))


def test_splits_partition_the_data_and_follow_the_seed():
    raw = np.sort(DATASETS.create("spirals").load().x_train[:, 0])
    a = load_data(DataConfig(dataset="spirals", preprocess="none", split_seed=1))
    together = torch.cat([a.x_train, a.x_val, a.x_test])[:, 0].numpy()
    np.testing.assert_array_equal(np.sort(together), raw)
    b = load_data(DataConfig(dataset="spirals", preprocess="none", split_seed=1))
    c = load_data(DataConfig(dataset="spirals", preprocess="none", split_seed=2))
    assert torch.equal(a.x_val, b.x_val) and not torch.equal(a.x_val, c.x_val)


def test_empty_validation_split():
    data = load_data(DataConfig(dataset="wine", val_fraction=0.0))
    assert data.x_val.shape == (0, 13) and data.y_val.shape == (0,)
    assert len(data.x_train) + len(data.x_test) == 178
    assert list(data.eval_batches("val", 16)) == []


def test_train_size_keeps_a_stratified_subset():
    data = load_data(DataConfig(dataset="digits", train_size=200))
    assert len(data.x_train) == 200 and len(data.x_val) == 144 and len(data.x_test) == 360
    assert counts(data.y_train, 10).min() >= 19 and counts(data.y_train, 10).max() <= 21
    with pytest.raises(ValueError, match="'train_size' parameter of DataConfig must be at most the 1293"):
        load_data(DataConfig(dataset="digits", train_size=1294))
    with pytest.raises(ValueError, match="train_size=5"):
        load_data(DataConfig(dataset="digits", train_size=5))  # fewer than the 10 classes: no stratified subset


# --- preprocessing --------------------------------------------------------------------------------------------------

def test_standardize_uses_training_statistics_only():
    raw = load_data(DataConfig(dataset="breast_cancer", preprocess="none"))
    std = load_data(DataConfig(dataset="breast_cancer", preprocess="standardize"))
    mean, sd = raw.x_train.double().mean(0), raw.x_train.double().std(0, unbiased=False)
    for split in ("train", "val", "test"):
        expected = (getattr(raw, f"x_{split}").double() - mean) / sd
        torch.testing.assert_close(getattr(std, f"x_{split}").double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(std.x_train.double().mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(std.x_train.double().std(0, unbiased=False), torch.ones(30, dtype=torch.float64),
                               atol=1e-5, rtol=0)
    assert std.x_test.double().mean(0).abs().max() > 1e-3  # the test split was not used for the statistics


def test_fit_on_all_leaks_val_and_test_statistics():
    leak = load_data(DataConfig(dataset="breast_cancer", fit_on="all"))
    clean = load_data(DataConfig(dataset="breast_cancer"))
    assert not torch.allclose(leak.x_train, clean.x_train)
    everything = torch.cat([leak.x_train, leak.x_val, leak.x_test]).double()
    torch.testing.assert_close(everything.mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-5, rtol=0)


@pytest.mark.parametrize(("low", "high"), [(0.0, 1.0), (-1.0, 1.0)])
def test_minmax_maps_the_training_range(low, high):
    data = load_data(DataConfig(dataset="wine", preprocess={"name": "minmax", "low": low, "high": high}))
    torch.testing.assert_close(data.x_train.min(0).values, torch.full((13,), low), atol=1e-6, rtol=0)
    torch.testing.assert_close(data.x_train.max(0).values, torch.full((13,), high), atol=1e-6, rtol=0)


def test_constant_features():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [5.0, 5.0]])
    np.testing.assert_allclose(Standardize().fit(x).transform(x)[:, 1], 0.0)
    np.testing.assert_allclose(MinMax(low=-1.0).fit(x).transform(x), [[-1, -1], [0, -1], [1, -1]])
    np.testing.assert_allclose(PREPROCESSORS.create("none").fit(x).transform(x), x)


def test_preprocessing_is_per_feature_on_images():
    data = load_data(DataConfig(dataset={"name": "digits", "image": True}))
    assert data.input_shape == (1, 8, 8) and data.x_test.shape[1:] == (1, 8, 8)
    pixel_means = data.x_train.double().mean(0)
    torch.testing.assert_close(pixel_means, torch.zeros_like(pixel_means), atol=1e-5, rtol=0)


# --- built-in datasets ----------------------------------------------------------------------------------------------

def test_mnist1d_defaults():
    raw = Mnist1d().load()
    assert raw.x_train.shape == (4000, 40) and raw.x_test.shape == (1000, 40)
    assert set(np.unique(raw.y_train)) == set(range(10)) and raw.num_classes == 10
    raw.x_train[0] = 99.0  # callers get copies: the in-process memo stays intact
    assert Mnist1d().load().x_train[0, 0] != 99.0
    data = load_data(DataConfig(dataset="mnist1d"))
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (3600, 400, 1000)
    assert data.input_shape == (40,) and data.num_outputs == 10


def test_mnist1d_matches_the_package_and_keeps_global_rng_state():
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(123)
    random.seed(123)
    np_state, py_state = np.random.get_state(), random.getstate()
    raw = Mnist1d(num_samples=100, seed=3).load()
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state
    args = get_dataset_args()
    args.num_samples, args.seed = 100, 3
    reference = make_dataset(args)
    np.testing.assert_allclose(raw.x_train, reference["x"], rtol=1e-6)
    np.testing.assert_array_equal(raw.y_test, reference["y_test"])


@pytest.mark.parametrize(("name", "shape", "classes", "n"), [("breast_cancer", (30,), 2, 569), ("wine", (13,), 3, 178),
                                                             ("moons", (2,), 2, 1000), ("spirals", (2,), 3, 1500),
                                                             ("digits", (64,), 10, 1797)])
def test_bundled_and_synthetic_sets(name, shape, classes, n):
    raw = DATASETS.create(name).load()
    assert raw.x_train.shape == (n, *shape) and raw.x_test is None
    assert raw.num_classes == classes and set(np.unique(raw.y_train)) == set(range(classes))


def test_spirals_follow_the_formula_without_noise():
    raw = DATASETS.create({"name": "spirals", "noise": 0.0, "n_samples": 30}).load()
    r = np.hypot(raw.x_train[:, 0], raw.x_train[:, 1])
    theta = np.arctan2(raw.x_train[:, 1], raw.x_train[:, 0])
    expected = 2 * np.pi * (raw.y_train / 3 + r)
    np.testing.assert_allclose(np.cos(theta - expected), 1.0, atol=1e-4)


# --- user files -----------------------------------------------------------------------------------------------------

def test_csv_with_header_and_target_by_name(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,label,b\n1,0,2\n3,1,4\n5,0,6\n7,1,8\n")
    raw = Csv(path=str(path), target="label").load()
    np.testing.assert_array_equal(raw.x_train, [[1, 2], [3, 4], [5, 6], [7, 8]])
    np.testing.assert_array_equal(raw.y_train, [0, 1, 0, 1])
    assert raw.feature_names == ["a", "b"] and raw.task == "classification" and raw.num_classes == 2
    assert Csv(path=str(path), target=1).load().feature_names == ["a", "b"]
    with pytest.raises(ValueError, match=r"one of \['a', 'label', 'b'\]. Got 'y' instead"):
        Csv(path=str(path), target="y").load()


def test_csv_without_header_text_labels_and_regression(tmp_path):
    path = tmp_path / "iris.csv"
    path.write_text("5.1,3.5,setosa\n7.0,3.2,versicolor\n4.9,3.0,setosa\n")
    raw = Csv(path=str(path)).load()
    assert raw.x_train.shape == (3, 2) and raw.class_names == ["setosa", "versicolor"]
    np.testing.assert_array_equal(raw.y_train, [0, 1, 0])
    path = tmp_path / "reg.csv"
    path.write_text("x,y\n1,0.5\n2,1.5\n3,2.25\n")
    raw = Csv(path=str(path)).load()
    assert raw.task == "regression" and raw.y_train.shape == (3, 1) and raw.y_train.dtype == np.float32
    assert Csv(path=str(path), task="classification", target=0).load().num_classes == 4


def test_csv_errors(tmp_path):
    with pytest.raises(ValueError, match="nope.csv"):
        Csv(path=str(tmp_path / "nope.csv")).load()
    path = tmp_path / "t.csv"
    path.write_text("a,city,y\n1,Paris,0\n2,Rome,1\n")
    with pytest.raises(ValueError, match="feature column 'city'.*Got 'Paris'"):
        Csv(path=str(path)).load()
    path.write_text("a,y\n1,0\n,1\n")
    with pytest.raises(ValueError, match="feature column 'a'"):
        Csv(path=str(path)).load()
    path.write_text("a,y\n1,0\n2,0.5\n")
    with pytest.raises(ValueError, match="must be integers for task='classification'"):
        Csv(path=str(path), task="classification").load()


def test_npz_formats_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3, 5)), np.repeat([-1, 1], 20)
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    raw = Npz(path=str(tmp_path / "xy.npz")).load()
    assert raw.x_train.shape == (40, 3, 5) and raw.x_test is None and raw.num_classes == 2
    np.testing.assert_array_equal(raw.y_train, (y + 1) // 2)
    assert raw.class_names == ["-1", "1"]
    np.savez(tmp_path / "split.npz", x_train=x[:30], y_train=y[:30] * 0.5, x_test=x[30:], y_test=y[30:] * 0.5)
    data = load_data(DataConfig(dataset={"name": "npz", "path": str(tmp_path / "split.npz")}, val_fraction=0.2))
    assert data.task == "regression" and data.y_train.shape == (24, 1) and data.y_train.dtype == torch.float32
    assert len(data.x_test) == 10 and data.num_outputs == 1 and data.input_shape == (3, 5)
    np.savez(tmp_path / "bad.npz", inputs=x, y=y)
    with pytest.raises(ValueError, match=r"Got keys \['inputs', 'y'\] instead"):
        Npz(path=str(tmp_path / "bad.npz")).load()
    np.savez(tmp_path / "short.npz", x=x, y=y[:-1])
    with pytest.raises(ValueError, match="same number of samples. Got 40 and 39"):
        Npz(path=str(tmp_path / "short.npz")).load()
    with pytest.raises(ValueError, match="missing.npz"):
        Npz(path=str(tmp_path / "missing.npz")).load()


# --- batches --------------------------------------------------------------------------------------------------------

def tiny(n: int, augment=()) -> Data:
    x = torch.arange(n, dtype=torch.float32).view(n, 1).repeat(1, 4)
    y = torch.arange(n) % 3
    empty = x[:0]
    return Data(x, y, empty, y[:0], x[:5], y[:5], "classification", 3, list(augment))


def test_train_batches_are_a_seeded_permutation():
    data = tiny(10)
    batches = list(data.train_batches(4, torch.Generator().manual_seed(0)))
    assert [len(b[0]) for b in batches] == [4, 4, 2] == [4, 4, 2][:data.steps_per_epoch(4)]
    ids = torch.cat([b[0][:, 0] for b in batches]).long()
    assert sorted(ids.tolist()) == list(range(10))
    assert torch.equal(torch.cat([b[1] for b in batches]), ids % 3)  # labels travel with their inputs
    again = list(data.train_batches(4, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = torch.cat([b[0][:, 0] for b in data.train_batches(4, torch.Generator().manual_seed(1))])
    assert not torch.equal(other.long(), ids)


def test_a_final_batch_of_one_is_dropped():
    data = tiny(9)
    assert data.steps_per_epoch(4) == 2
    assert [len(x) for x, _ in data.train_batches(4, torch.Generator().manual_seed(0))] == [4, 4]
    assert data.steps_per_epoch(1) == 9  # batch size 1 is a choice, not a leftover
    assert data.steps_per_epoch(3) == 3


def test_augmentations_apply_to_training_batches_only():
    data = tiny(8, augment=[Shift(max_shift=1, mode="pad")])
    x, _ = next(data.train_batches(8, torch.Generator().manual_seed(0)))
    assert (x == 0).any(dim=1).sum() >= 1  # some sample was shifted and zero-filled
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(8, generator=g)
    torch.testing.assert_close(x, Shift(max_shift=1, mode="pad")(data.x_train[order], g))
    xs, ys = zip(*data.eval_batches("test", 2))
    assert torch.equal(torch.cat(xs), data.x_test) and torch.equal(torch.cat(ys), data.y_test)
    with pytest.raises(ValueError, match="'split' argument"):
        next(data.eval_batches("validation", 2))


def test_to_device_and_config_augment_reaches_data():
    data = load_data(DataConfig(dataset="moons", augment=[{"name": "gaussian_noise", "std": 0.1}]))
    moved = data.to("cpu")
    assert isinstance(moved, Data) and moved.augment == data.augment and moved.augment[0].std == 0.1
    assert "train=720" in repr(moved)


@pytest.mark.parametrize("dataset", ["mnist1d", {"name": "mnist1d", "num_samples": 777}, "digits", "breast_cancer",
                                     "wine", "moons", {"name": "spirals", "n_samples": 301}])
@pytest.mark.parametrize("val_fraction,test_fraction,train_size", [(0.1, 0.2, None), (0.0, 0.33, None),
                                                                    (0.25, 0.1, 50)])
def test_split_sizes_count_what_load_data_splits_without_loading(dataset, val_fraction, test_fraction, train_size):
    from trainlab.data import split_sizes, steps_per_epoch

    cfg = DataConfig.model_validate({"dataset": dataset, "val_fraction": val_fraction,
                                     "test_fraction": test_fraction, "train_size": train_size, "batch_size": 32})
    data = load_data(cfg)
    assert split_sizes(cfg) == {"train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test)}
    assert steps_per_epoch(cfg) == data.steps_per_epoch(32) == sum(1 for _ in data.train_batches(32, torch.Generator()))


def test_npz_sizes_come_from_the_array_headers(tmp_path):
    from trainlab.data import split_sizes

    np.savez(tmp_path / "own.npz", x_train=np.zeros((30, 3)), y_train=np.zeros(30), x_test=np.zeros((7, 3)),
             y_test=np.zeros(7))
    np.savez(tmp_path / "one.npz", x=np.zeros((40, 2)), y=np.arange(40) % 2)
    assert DATASETS.create({"name": "npz", "path": str(tmp_path / "own.npz")}).sizes() == (30, 7)
    assert DATASETS.create({"name": "npz", "path": str(tmp_path / "one.npz")}).sizes() == (40, None)
    cfg = DataConfig.model_validate({"dataset": {"name": "npz", "path": str(tmp_path / "one.npz")}})
    data = load_data(cfg)
    assert split_sizes(cfg) == {"train": len(data.y_train), "val": len(data.y_val), "test": len(data.y_test)}


def test_split_sizes_refuse_a_train_size_above_what_is_left():
    from trainlab.data import split_sizes

    from trainlab.registry import ConfigError

    with pytest.raises(ConfigError, match="must be at most the 800 training samples"):
        split_sizes(DataConfig.model_validate({"dataset": "moons", "train_size": 801, "val_fraction": 0.0}))


def test_mnist1d_is_generated_once_and_then_read_from_the_cache(tmp_path, monkeypatch):
    import trainlab.data as data

    monkeypatch.setattr(data, "DATA_CACHE", tmp_path)
    data._mnist1d_arrays.cache_clear()
    generated = data._mnist1d_arrays(200, 7)
    (cached,) = tmp_path.glob("mnist1d-*-200-7.npz")
    data._mnist1d_arrays.cache_clear()
    monkeypatch.setattr(data, "_generate_mnist1d", lambda *a: pytest.fail("generated again"))
    again = data._mnist1d_arrays(200, 7)
    for a, b in zip(generated, again, strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    # A damaged file is generated again and replaced.
    cached.write_bytes(b"not an npz")
    data._mnist1d_arrays.cache_clear()
    monkeypatch.setattr(data, "_generate_mnist1d", lambda *a: generated)
    assert all(np.array_equal(a, b) for a, b in zip(data._mnist1d_arrays(200, 7), generated))
    with np.load(cached) as f:
        assert np.array_equal(f["x"], generated[0])
    data._mnist1d_arrays.cache_clear()


# --- arrays in memory -----------------------------------------------------------------------------------------------

def _same_data(a: Data, b: Data) -> None:
    for split in ("train", "val", "test"):
        for kind in ("x", "y"):
            torch.testing.assert_close(getattr(a, f"{kind}_{split}"), getattr(b, f"{kind}_{split}"), rtol=0, atol=0)
    assert (a.task, a.num_classes, a.class_names) == (b.task, b.num_classes, b.class_names)


@pytest.mark.parametrize("labels", ["int", "negative", "float"])
def test_arrays_split_and_preprocess_exactly_as_the_npz_dataset(tmp_path, labels):
    from trainlab.data import data_from_arrays

    rng = np.random.default_rng(0)
    x = rng.normal(size=(90, 2, 3)) * 5 + 1
    y = {"int": np.arange(90) % 3, "negative": np.arange(90) % 3 - 1, "float": rng.normal(size=90)}[labels]
    np.savez(tmp_path / "xy.npz", x=x, y=y)
    fields = {"val_fraction": 0.2, "test_fraction": 0.25, "split_seed": 3, "train_size": 30,
              "augment": [Shift(max_shift=1)]}
    from_file = load_data(DataConfig(dataset={"name": "npz", "path": str(tmp_path / "xy.npz")}, **fields))
    cfg = DataConfig(**fields)
    _same_data(data_from_arrays(x, y, cfg), from_file)
    _same_data(Data.from_arrays(torch.from_numpy(x), torch.from_numpy(y), cfg), from_file)
    assert from_file.augment == [Shift(max_shift=1)] and len(from_file.x_train) == 30
    # train_index points at the training samples, so the preprocessing reproduces x_train from x
    picked = x.astype(np.float32)[from_file.train_index.numpy()]
    np.testing.assert_array_equal(from_file.fitted.transform(picked), from_file.x_train.numpy())


def test_arrays_with_a_test_split_match_the_npz_dataset(tmp_path):
    from trainlab.data import data_from_arrays

    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)), np.arange(40) % 2
    np.savez(tmp_path / "split.npz", x_train=x[:30], y_train=y[:30], x_test=x[30:], y_test=y[30:])
    cfg = DataConfig(val_fraction=0.2)
    from_file = load_data(cfg.model_copy(update={"dataset": Npz(path=str(tmp_path / "split.npz"))}))
    _same_data(data_from_arrays(x[:30], y[:30], cfg, x_test=x[30:], y_test=y[30:]), from_file)
    regression = data_from_arrays(x, y, cfg, task="regression")
    assert regression.task == "regression" and regression.y_train.shape[1] == 1


def test_load_data_is_unchanged_by_the_shared_path():
    cfg = DataConfig(dataset={"name": "wine"}, val_fraction=0.1, test_fraction=0.2, split_seed=5)
    raw = cfg.dataset.load()
    from sklearn.model_selection import train_test_split

    x, x_test, y, _ = train_test_split(raw.x_train, raw.y_train, test_size=0.2, stratify=raw.y_train, random_state=5)
    x_train, _, _, _ = train_test_split(x, y, test_size=0.1, stratify=y, random_state=5)
    data = load_data(cfg)
    np.testing.assert_array_equal(data.x_train.numpy(), Standardize().fit(x_train).transform(x_train))
    np.testing.assert_array_equal(data.x_test.numpy(), Standardize().fit(x_train).transform(x_test))


@pytest.mark.parametrize("kwargs, match", [
    ({"y": np.zeros(9)}, "'x' and 'y' of data_from_arrays must have the same number of samples. Got 10 and 9"),
    ({"x": np.array([["a"]] * 10)}, "'x' of data_from_arrays must be numeric"),
    ({"x": np.full((10, 2), np.nan)}, "'x' of data_from_arrays must hold finite numbers"),
    ({"y": np.full(10, np.inf)}, r"targets of data_from_arrays \(argument 'y'\) must be finite"),
    ({"x_test": np.zeros((3, 2))}, "'x_test' and 'y_test' arguments of data_from_arrays must be given together"),
    ({"x_test": np.zeros((3, 2)), "y_test": np.zeros(2)}, "'x_test' and 'y_test' .* same number of samples"),
    ({"x_test": np.zeros((3, 5)), "y_test": np.zeros(3)}, "'x' and 'x_test' .* same sample shape"),
    ({"task": "ranking"}, "'task' argument of data_from_arrays must be one of"),
])
def test_array_errors_name_the_argument(kwargs, match):
    from trainlab.data import data_from_arrays

    args = {"x": np.zeros((10, 2)), "y": np.arange(10) % 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        data_from_arrays(cfg=DataConfig(), **args)


def test_train_records_that_its_data_came_from_arrays(tmp_path):
    import json

    from trainlab.config import load_config
    from trainlab.data import data_from_arrays
    from trainlab.runs import train

    config = load_config({"epochs": 1, "model": {"name": "mlp", "width": 4, "depth": 1}})
    x, y = np.random.default_rng(0).normal(size=(50, 3)), np.arange(50) % 2
    result = train(config, tmp_path / "run", data=data_from_arrays(x, y, config.data))
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["data"] == "arrays"
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["input_shape"] == [3]
    assert len(result.history) == 1
