"""Datasets, splits, preprocessing and batches.

A dataset spec loads raw numpy arrays (``RawData``); ``load_data(DataConfig)`` splits them (stratified for
classification), fits the preprocessor on the training split only, and returns ``Data``: float32 tensors that
yield seeded, augmented training batches without a DataLoader (the sets here fit in memory many times over).
``data_from_arrays`` does the same for arrays or tensors already in memory (one code path, ``prepare_data``).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor

from trainlab.augment import AUGMENTATIONS, Augmentation, check_low_below_high
from trainlab.checkpoints import atomic_write
from trainlab.registry import Component, ConfigError, Registry, Section

Task = Literal["classification", "regression"]


@dataclass
class RawData:
    """Arrays as a dataset provides them: inputs ``(N, ...)``, labels ``(N,)`` or targets ``(N,)``/``(N, k)``.

    ``x_test``/``y_test`` are None when the dataset has no test split of its own (``load_data`` carves one).
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray | None
    y_test: np.ndarray | None
    task: Task
    num_classes: int | None
    feature_names: list[str] | None = None
    class_names: list[str] | None = None


class DatasetSpec(Component):
    """Base of datasets: ``spec.load() -> RawData``; ``spec.sizes()`` counts samples without building arrays."""

    def load(self) -> RawData:
        raise NotImplementedError

    def sizes(self) -> tuple[int, int | None]:
        """``(training samples, test samples)``, the second ``None`` when the set has no test split of its own.

        This default loads the set; datasets that know their size without loading override it.
        """
        raw = self.load()
        return len(raw.y_train), None if raw.y_test is None else len(raw.y_test)


DATASETS: Registry[DatasetSpec] = Registry("dataset", DatasetSpec)


# --- MNIST-1D -------------------------------------------------------------------------------------------------------

def _mnist1d_args(num_samples: int, seed: int):
    from mnist1d.data import get_dataset_args

    args = get_dataset_args(as_dict=True)
    args.update(num_samples=num_samples, seed=seed)
    del args["url"]  # where the original pickle lives; irrelevant to generation and never used here
    return args


#: Where generated datasets are kept between processes (MNIST-1D takes 1-2 s to generate); ``None`` keeps none.
DATA_CACHE: Path | None = Path.home() / ".cache" / "trainlab"
_MNIST1D_KEYS = ("x", "y", "x_test", "y_test")


def _mnist1d_cache_path(num_samples: int, seed: int) -> Path | None:
    from importlib.metadata import version

    return None if DATA_CACHE is None else DATA_CACHE / f"mnist1d-{version('mnist1d')}-{num_samples}-{seed}.npz"


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    """(x, y, x_test, y_test): from ``DATA_CACHE`` when a process has generated them before, else generated.

    The file name holds everything the arrays depend on (the mnist1d version, ``num_samples``, ``seed``) and is
    written atomically, so a reader sees a whole file or none; one that cannot be read is generated again.
    """
    path = _mnist1d_cache_path(num_samples, seed)
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return tuple(f[k] for k in _MNIST1D_KEYS)
        except (OSError, ValueError, KeyError):
            pass  # a damaged file: generate the arrays again and replace it
    arrays = _generate_mnist1d(num_samples, seed)
    if path is not None:
        try:
            atomic_write(path, lambda f: np.savez(f, **dict(zip(_MNIST1D_KEYS, arrays))))
        except OSError:
            pass  # a read-only or full disk costs the next process a second, nothing more
    return arrays


def _generate_mnist1d(num_samples: int, seed: int) -> tuple[np.ndarray, ...]:
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    # make_dataset reseeds the global numpy and random generators; leave the caller's streams untouched.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(ObjectView(_mnist1d_args(num_samples, seed)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return (d["x"].astype(np.float32), d["y"].astype(np.int64),
            d["x_test"].astype(np.float32), d["y_test"].astype(np.int64))


@DATASETS.register("mnist1d")
class Mnist1d(DatasetSpec):
    """MNIST-1D: 10 classes of 1-D signals of length 40, 4000 train / 1000 test, generated offline.

    Digit templates are padded, scaled, sheared, translated and noised (``mnist1d.data.make_dataset`` with the
    package's default arguments; about a second, once per process). Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024.
    """

    num_samples: int = Field(5000, ge=10)
    seed: int = 42

    def sizes(self) -> tuple[int, int | None]:
        path = _mnist1d_cache_path(self.num_samples, self.seed)
        if path is not None and path.is_file():  # read the cached arrays (milliseconds), not import mnist1d (~1 s)
            _, y, _, y_test = _mnist1d_arrays(self.num_samples, self.seed)
            return len(y), len(y_test)
        total = self.num_samples // 10 * 10  # make_dataset makes num_samples // 10 signals of each digit
        train = int(total * _mnist1d_args(self.num_samples, self.seed)["train_split"])
        return train, total - train

    def load(self) -> RawData:
        x, y, x_test, y_test = _mnist1d_arrays(self.num_samples, self.seed)
        return RawData(x.copy(), y.copy(), x_test.copy(), y_test.copy(), "classification", 10,
                       class_names=[str(d) for d in range(10)])


# --- scikit-learn bundled sets and synthetic sets -----------------------------------------------------------------

class _BundledSet(DatasetSpec):
    """A set bundled with scikit-learn: ``sklearn.datasets.<loader>()``, ``samples`` rows, no test split."""

    loader: ClassVar[str]
    samples: ClassVar[int]

    def sizes(self) -> tuple[int, int | None]:
        return self.samples, None

    def inputs(self, data: np.ndarray) -> np.ndarray:
        return data

    def load(self) -> RawData:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, self.loader)()
        names = [str(n) for n in bunch.target_names]
        return RawData(self.inputs(bunch.data).astype(np.float32), bunch.target.astype(np.int64), None, None,
                       "classification", len(names), feature_names=[str(n) for n in bunch.feature_names],
                       class_names=names)


@DATASETS.register("digits")
class Digits(_BundledSet):
    """scikit-learn's 8x8 handwritten digits: 1797 samples, 10 classes; image=True gives (1, 8, 8) for CNNs.

    Pixel values are integers in [0, 16]. UCI "Optical Recognition of Handwritten Digits" (Alpaydin & Kaynak 1998).
    """

    loader, samples = "load_digits", 1797
    image: bool = False

    def inputs(self, data: np.ndarray) -> np.ndarray:
        return data.reshape(-1, 1, 8, 8) if self.image else data


@DATASETS.register("breast_cancer")
class BreastCancer(_BundledSet):
    """scikit-learn's Wisconsin breast cancer set: 569 samples, 30 features on very different scales, 2 classes."""

    loader, samples = "load_breast_cancer", 569


@DATASETS.register("wine")
class Wine(_BundledSet):
    """scikit-learn's wine recognition set: 178 samples, 13 features on very different scales, 3 classes."""

    loader, samples = "load_wine", 178


@DATASETS.register("moons")
class Moons(DatasetSpec):
    """Two interleaving half circles in 2-D with Gaussian noise (sklearn.datasets.make_moons), 2 classes."""

    n_samples: int = Field(1000, ge=2)
    noise: float = Field(0.2, ge=0)
    seed: int = 0

    def sizes(self) -> tuple[int, int | None]:
        return self.n_samples, None

    def load(self) -> RawData:
        from sklearn.datasets import make_moons

        x, y = make_moons(n_samples=self.n_samples, noise=self.noise, random_state=self.seed)
        return RawData(x.astype(np.float32), y.astype(np.int64), None, None, "classification", 2)


@DATASETS.register("spirals")
class Spirals(DatasetSpec):
    """Interleaved 2-D spiral arms, one per class: a classic set that a linear model cannot separate.

    Sample ``i`` has class ``k = i mod K``, ``t ~ U(0, 1)``, angle ``theta = 2 pi (k / K + t) + noise * eps`` with
    ``eps ~ N(0, 1)``, radius ``r = t`` and point ``r (cos theta, sin theta)`` (as in Karpathy's CS231n notes).
    """

    n_classes: int = Field(3, ge=2)
    n_samples: int = Field(1500, ge=2)
    noise: float = Field(0.2, ge=0)
    seed: int = 0

    @model_validator(mode="after")
    def _check_counts(self) -> Spirals:
        if self.n_samples < self.n_classes:
            raise ValueError(f"The 'n_samples' parameter of Spirals must be at least n_classes ({self.n_classes}). "
                             f"Got {self.n_samples} instead.")
        return self

    def sizes(self) -> tuple[int, int | None]:
        return self.n_samples, None

    def load(self) -> RawData:
        rng = np.random.default_rng(self.seed)
        y = np.arange(self.n_samples) % self.n_classes
        t = rng.uniform(0.0, 1.0, self.n_samples)
        theta = 2 * np.pi * (y / self.n_classes + t) + self.noise * rng.standard_normal(self.n_samples)
        x = np.stack([t * np.cos(theta), t * np.sin(theta)], axis=1)
        return RawData(x.astype(np.float32), y.astype(np.int64), None, None, "classification", self.n_classes)


# --- user files -----------------------------------------------------------------------------------------------------

def _targets(y: np.ndarray, task: str, owner: str) -> tuple[np.ndarray, Task, int | None, list[str] | None]:
    """Labels as int64 class indices (classification) or float32 (N, k) targets (regression).

    ``auto`` picks classification for integer-valued or string labels. Non-negative integer labels keep their
    values (class c is output c, even if absent); other labels map to their rank among the sorted distinct values.
    """
    numeric = np.issubdtype(y.dtype, np.number) or y.dtype == bool
    if numeric:
        y = y.astype(np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"The targets of {owner} must be finite numbers. Got NaN or inf instead.")
    integral = numeric and bool(np.all(y == np.round(y)))
    if task == "auto":
        task = "classification" if integral or not numeric else "regression"
    if task == "regression":
        if not numeric:
            raise ValueError(f"The targets of {owner} must be numbers for task='regression'. "
                             f"Got values of type {y.dtype} instead.")
        return (y.reshape(len(y), -1) if y.ndim > 1 else y[:, None]).astype(np.float32), "regression", None, None
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(f"The labels of {owner} must be one column for task='classification'. "
                         f"Got shape {y.shape} instead.")
    if numeric and not integral:
        raise ValueError(f"The labels of {owner} must be integers for task='classification'. "
                         f"Got non-integer values such as {y[y != np.round(y)][0]} instead.")
    if numeric and y.min() >= 0:
        return y.astype(np.int64), "classification", int(y.max()) + 1, None
    classes, index = np.unique(y, return_inverse=True)
    names = [str(int(c)) if numeric else str(c) for c in classes]
    return index.astype(np.int64), "classification", len(classes), names


def _existing(path: str, owner: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"The 'path' parameter of {owner} must name an existing file. Got {path!r} "
                          f"(resolved to {p.resolve()}), which does not exist.")
    return p


def _inputs(x: np.ndarray, owner: str, key: str) -> np.ndarray:
    if not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise ValueError(f"The array {key!r} of {owner} must be numeric. Got dtype {x.dtype} instead.")
    if x.ndim < 1:
        raise ValueError(f"The array {key!r} of {owner} must have a sample axis. Got a scalar instead.")
    return x.astype(np.float32)


@DATASETS.register("npz")
class Npz(DatasetSpec):
    """Arrays from a .npz file: keys x, y (split here) or x_train, y_train, x_test, y_test.

    Inputs may have any shape ``(N, ...)``. task=auto: integer-valued labels mean classification.
    """

    path: str
    task: Literal["auto", "classification", "regression"] = "auto"

    def sizes(self) -> tuple[int, int | None]:
        import zipfile

        lengths = {}
        with zipfile.ZipFile(_existing(self.path, "npz")) as archive:
            for member in archive.namelist():
                with archive.open(member) as f:
                    read_header = (np.lib.format.read_array_header_1_0 if np.lib.format.read_magic(f) == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape = read_header(f)[0]
                lengths[member.removesuffix(".npy")] = shape[0] if shape else 0
        if {"x_train", "y_train", "x_test", "y_test"} <= lengths.keys():
            return lengths["y_train"], lengths["y_test"]
        if {"x", "y"} <= lengths.keys():
            return lengths["y"], None
        return super().sizes()  # load() raises the error that names the missing keys

    def load(self) -> RawData:
        owner = f"npz dataset {self.path!r}"
        with np.load(_existing(self.path, "npz"), allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
        found = sorted(arrays)
        if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
            keys = ("x_train", "y_train", "x_test", "y_test")
        elif {"x", "y"} <= arrays.keys():
            keys = ("x", "y")
        else:
            raise ValueError(f"The {owner} must hold arrays 'x' and 'y', or 'x_train', 'y_train', 'x_test' and "
                             f"'y_test'. Got keys {found} instead.")
        xs = [_inputs(arrays[k], owner, k) for k in keys[::2]]
        ys = [arrays[k] for k in keys[1::2]]
        for x, y, kx, ky in zip(xs, ys, keys[::2], keys[1::2]):
            if len(x) != len(y):
                raise ValueError(f"The arrays {kx!r} and {ky!r} of {owner} must have the same number of samples. "
                                 f"Got {len(x)} and {len(y)} instead.")
        if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
            raise ValueError(f"The arrays 'x_train' and 'x_test' of {owner} must have the same sample shape. "
                             f"Got {xs[0].shape[1:]} and {xs[1].shape[1:]} instead.")
        y_all, task, num_classes, names = _targets(np.concatenate(ys), self.task, owner)
        n = len(ys[0])
        if len(xs) == 2:
            return RawData(xs[0], y_all[:n], xs[1], y_all[n:], task, num_classes, class_names=names)
        return RawData(xs[0], y_all, None, None, task, num_classes, class_names=names)


def _is_number(text: str) -> bool:
    """A finite number: 'nan', 'inf' and empty cells are not (they would poison every gradient)."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


@DATASETS.register("csv")
class Csv(DatasetSpec):
    """A table from a CSV file: numeric feature columns and one target column (default: the last).

    The header is detected: the first row is one when it holds text above a numeric column. ``target`` is a column
    name (needs a header) or a 0-based index (negative counts from the end). task=auto: integer-valued or text
    labels mean classification; text labels map to classes in sorted order.
    """

    path: str
    target: str | int = -1
    delimiter: str = Field(",", min_length=1, max_length=1)
    task: Literal["auto", "classification", "regression"] = "auto"

    def load(self) -> RawData:
        owner = f"csv dataset {self.path!r}"
        with open(_existing(self.path, "csv"), newline="") as f:
            rows = [r for r in csv.reader(f, delimiter=self.delimiter) if r]
        if not rows:
            raise ValueError(f"The {owner} must hold at least one row of data. Got an empty file instead.")
        width = len(rows[0])
        # A header row has text above a numeric column; a text label column alone does not make one.
        has_header = any(not _is_number(rows[0][j]) and all(_is_number(r[j]) for r in rows[1:] if len(r) == width)
                         for j in range(width))
        header = [c.strip() for c in rows[0]] if has_header else None
        body = rows[1:] if header is not None else rows
        if not body:
            raise ValueError(f"The {owner} must hold at least one row of data below its header. Got none instead.")
        for i, r in enumerate(body):
            if len(r) != width:
                raise ValueError(f"Every row of {owner} must have {width} cells. "
                                 f"Got {len(r)} in data row {i + 1} instead.")
        names = header or [str(i) for i in range(width)]
        target = self._target_index(header, width, owner)
        table = np.array(body, dtype=str)
        features = [j for j in range(width) if j != target]
        for j in features:
            bad = [c for c in table[:, j] if not _is_number(c)]
            if bad:
                raise ValueError(f"The feature column {names[j]!r} of {owner} must be numeric. "
                                 f"Got {str(bad[0])!r} instead; drop or encode that column first.")
        x = table[:, features].astype(np.float64).astype(np.float32)
        column = table[:, target]
        raw_y = column.astype(np.float64) if all(_is_number(c) for c in column) else np.char.strip(column)
        y, task, num_classes, class_names = _targets(raw_y, self.task, owner)
        return RawData(x, y, None, None, task, num_classes, feature_names=[names[j] for j in features],
                       class_names=class_names)

    def _target_index(self, header: list[str] | None, width: int, owner: str) -> int:
        if isinstance(self.target, int):
            if not -width <= self.target < width:
                raise ValueError(f"The 'target' parameter of Csv must be a column index in [{-width}, {width}) for "
                                 f"{owner}. Got {self.target} instead.")
            return self.target % width
        if header is None:
            raise ValueError(f"The 'target' parameter of Csv names column {self.target!r}, but {owner} has no "
                             f"header row; give the column's index instead.")
        if self.target not in header:
            raise ValueError(f"The 'target' parameter of Csv must name a column of {owner}: one of {header}. "
                             f"Got {self.target!r} instead.")
        return header.index(self.target)


# --- preprocessing --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fitted:
    """A fitted per-feature affine map ``x -> x * scale + offset`` (statistics over the sample axis)."""

    scale: np.ndarray
    offset: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (x * self.scale + self.offset).astype(np.float32)


class Preprocessor(Component):
    """Base of preprocessors: ``fit(x_train) -> Fitted``, then ``fitted.transform(x)`` for every split."""

    def fit(self, x: np.ndarray) -> Fitted:
        raise NotImplementedError


PREPROCESSORS: Registry[Preprocessor] = Registry("preprocessor", Preprocessor)


@PREPROCESSORS.register("none")
class NoPreprocessing(Preprocessor):
    """Inputs as the dataset gives them: x' = x."""

    def fit(self, x: np.ndarray) -> Fitted:
        return Fitted(np.ones(x.shape[1:]), np.zeros(x.shape[1:]))


@PREPROCESSORS.register("standardize")
class Standardize(Preprocessor):
    """Per-feature z-score: x' = (x - mean) / std with training-split statistics; constant features keep std 1.

    Zero-mean, equal-variance inputs make the loss surface better conditioned, so gradient descent converges
    faster: LeCun, Bottou, Orr & Mueller, "Efficient BackProp", 1998, section 4.3.
    """

    def fit(self, x: np.ndarray) -> Fitted:
        x = x.astype(np.float64)
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        std = np.where(std > 0, std, 1.0)
        return Fitted(1.0 / std, -mean / std)


@PREPROCESSORS.register("minmax")
class MinMax(Preprocessor):
    """Per-feature rescaling of the training range to [low, high]: x' = low + (x - min) (high - low) / (max - min).

    Constant features map to low. Values outside the training range (val/test) land outside [low, high].
    """

    low: float = 0.0
    high: float = 1.0

    @model_validator(mode="after")
    def _check_range(self) -> MinMax:
        return check_low_below_high(self)

    def fit(self, x: np.ndarray) -> Fitted:
        x = x.astype(np.float64)
        lo, hi = x.min(axis=0), x.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        scale = (self.high - self.low) / span
        return Fitted(scale, self.low - lo * scale)


# --- configuration, splits and batches ------------------------------------------------------------------------------

class DataConfig(Section):
    """Which data, how it is split, preprocessed, augmented and batched."""

    @classmethod
    def owner_name(cls) -> str:
        return "data"

    dataset: DATASETS.field() = Mnist1d()
    val_fraction: float = Field(0.1, ge=0, lt=1, description="share of the training split held out for validation")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="share held out for test when the set has no test "
                                                                "split of its own")
    split_seed: int = 0
    train_size: int | None = Field(None, ge=1, description="keep only this many training samples (stratified), "
                                                             "for small-data studies")
    preprocess: PREPROCESSORS.field() = Standardize()
    fit_on: Literal["train", "all"] = Field(
        "train", description="'all' fits the preprocessor on train+val+test: a deliberate leak, only to demonstrate "
                             "why statistics must come from the training split")
    augment: list[AUGMENTATIONS.field()] = []
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1024, ge=1)


def _split(x: np.ndarray, y: np.ndarray, held_out: float | int, stratify: bool, seed: int, what: str):
    """(x_keep, x_out, y_keep, y_out); ``held_out`` is a fraction or a count of samples for the second part."""
    if held_out == 0:
        return x, x[:0], y, y[:0]
    from sklearn.model_selection import train_test_split  # here, not at the top: its import takes about 1 s

    try:
        return train_test_split(x, y, test_size=held_out, stratify=y if stratify else None, random_state=seed)
    except ValueError as e:
        raise ValueError(f"Cannot carve {what} from {len(y)} samples: {e}") from None


@dataclass
class Data:
    """Float32 tensors of the three splits, ready for training; labels int64 (classification) or float32 (N, k)."""

    x_train: Tensor
    y_train: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor
    y_test: Tensor
    task: Task
    num_classes: int | None
    augment: list[Augmentation] = dataclasses.field(default_factory=list)
    feature_names: list[str] | None = None
    class_names: list[str] | None = None
    train_index: Tensor | None = None  # positions of the training samples in the arrays they were split from
    fitted: Fitted | None = None  # the preprocessing fitted by load_data / data_from_arrays, for new inputs

    @classmethod
    def from_arrays(cls, x: np.ndarray | Tensor, y: np.ndarray | Tensor, cfg: DataConfig,
                    x_test: np.ndarray | Tensor | None = None, y_test: np.ndarray | Tensor | None = None,
                    task: Literal["auto", "classification", "regression"] = "auto") -> Data:
        """``data_from_arrays(x, y, cfg, x_test, y_test, task)``: arrays in memory, split as ``load_data`` does."""
        return data_from_arrays(x, y, cfg, x_test, y_test, task)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, without the batch axis."""
        return tuple(self.x_train.shape[1:])

    @property
    def num_outputs(self) -> int:
        """Outputs the model needs: the number of classes, or the target dimension."""
        return self.num_classes if self.task == "classification" else self.y_train.shape[1]

    def to(self, device: torch.device | str) -> Data:
        moved = {f: getattr(self, f).to(device) for f in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return dataclasses.replace(self, **moved)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Batches ``train_batches`` yields (see ``batches_per_epoch``)."""
        return batches_per_epoch(len(self.x_train), batch_size)

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        """One epoch of shuffled, augmented training batches; the generator fixes the order and the augmentations.

        The permutation is drawn on the generator's device and moved to the data's. A final batch of a single
        sample is dropped because batch norm cannot compute a variance from one sample.
        """
        order = torch.randperm(len(self.x_train), generator=generator, device=generator.device)
        order = order.to(self.x_train.device)
        for step in range(self.steps_per_epoch(batch_size)):
            index = order[step * batch_size:(step + 1) * batch_size]
            x = self.x_train.index_select(0, index)
            for augmentation in self.augment:
                x = augmentation(x, generator)
            yield x, self.y_train.index_select(0, index)

    def eval_batches(self, split: Literal["train", "val", "test"], batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
        """The samples of one split in order, unaugmented, in batches of ``batch_size`` (the last may be smaller)."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"The 'split' argument must be 'train', 'val' or 'test'. Got {split!r} instead.")
        x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
        for start in range(0, len(x), batch_size):
            yield x[start:start + batch_size], y[start:start + batch_size]

    def __repr__(self) -> str:
        sizes = f"train={len(self.x_train)}, val={len(self.x_val)}, test={len(self.x_test)}"
        return (f"Data({self.task}, input_shape={self.input_shape}, num_outputs={self.num_outputs}, {sizes}, "
                f"device={self.x_train.device})")


@dataclass(repr=False)
class WeightedData(Data):
    """``Data`` whose training samples carry weights (mean 1); each training batch sets ``batch_weights``.

    The batches are ``Data.train_batches``'s own (same order, same augmentations): the positions of the samples
    stand in for the labels, so the weights follow the samples. ``batch_weights`` is None outside an epoch, which
    makes ``trainer.WeightedLoss`` the plain mean loss in evaluation.
    """

    weights: Tensor | None = None
    batch_weights: Tensor | None = None

    def to(self, device: torch.device | str) -> WeightedData:
        moved = Data.to(self, device)
        moved.weights = self.weights.to(device)
        return moved

    def train_batches(self, batch_size: int, generator: torch.Generator) -> Iterator[tuple[Tensor, Tensor]]:
        positions = dataclasses.replace(self, y_train=torch.arange(len(self.y_train), device=self.y_train.device))
        try:
            for x, index in Data.train_batches(positions, batch_size, generator):
                self.batch_weights = self.weights[index]
                yield x, self.y_train.index_select(0, index)
        finally:
            self.batch_weights = None


def with_sample_weights(data: Data, weights: Tensor) -> WeightedData:
    """``data`` whose training samples (in ``x_train`` order) weigh ``weights``, rescaled to mean 1 so a weight of 2
    counts a sample twice in expectation; ``build_trainer`` then trains on the weighted mean loss."""
    if weights.shape != (len(data.y_train),) or not bool(torch.all(weights >= 0)) or not bool(weights.sum() > 0):
        raise ValueError(f"The sample weights must be {len(data.y_train)} non-negative numbers (one per training "
                         f"sample), not all 0. Got shape {tuple(weights.shape)} instead.")
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(Data)}
    w = weights.float()
    return WeightedData(**fields, weights=w / w.mean())


def batches_per_epoch(samples: int, batch_size: int) -> int:
    """Training batches of one epoch: a final batch of one sample is dropped (when batch_size > 1)."""
    return math.ceil(samples / batch_size) - (batch_size > 1 and samples % batch_size == 1)


def _held_out(n: int, fraction: float) -> int:
    # scikit-learn's train_test_split holds out ceil(fraction * n) samples for a float test_size.
    return math.ceil(fraction * n) if fraction else 0


def split_sizes(cfg: DataConfig) -> dict[str, int]:
    """``{"train": n, "val": n, "test": n}`` as ``load_data(cfg)`` will split, counted without loading the arrays."""
    n, n_test = cfg.dataset.sizes()
    if n_test is None:
        n_test = _held_out(n, cfg.test_fraction)
        n -= n_test
    n_val = _held_out(n, cfg.val_fraction)
    n_train = n - n_val
    if cfg.train_size is not None:
        _check_train_size(cfg.train_size, n_train)
        n_train = cfg.train_size
    return {"train": n_train, "val": n_val, "test": n_test}


def steps_per_epoch(cfg: DataConfig) -> int:
    """Optimizer steps per epoch of a run on ``cfg``, without loading the data."""
    return batches_per_epoch(split_sizes(cfg)["train"], cfg.batch_size)


def _check_train_size(train_size: int, available: int) -> None:
    if train_size > available:
        raise ConfigError(f"The 'train_size' parameter of DataConfig must be at most the {available} training "
                          f"samples left after the validation/test splits. Got {train_size} instead.")


def load_data(cfg: DataConfig) -> Data:
    """Load, split (stratified for classification), subsample, preprocess and convert to tensors."""
    return prepare_data(cfg.dataset.load(), cfg)


def data_from_arrays(x: np.ndarray | Tensor, y: np.ndarray | Tensor, cfg: DataConfig,
                     x_test: np.ndarray | Tensor | None = None, y_test: np.ndarray | Tensor | None = None,
                     task: Literal["auto", "classification", "regression"] = "auto") -> Data:
    """``Data`` from arrays or tensors in memory, split and preprocessed exactly as ``load_data`` does a dataset.

    ``x`` is ``(N, ...)``, ``y`` is ``(N,)`` labels or ``(N,)``/``(N, k)`` targets, read as the ``npz`` dataset
    reads its keys ``x``/``y`` (``x_train``/``y_train`` with ``x_test``/``y_test``). Without test arrays
    ``cfg.test_fraction`` of the samples is held out for test; ``cfg.dataset`` is not used.
    """
    return prepare_data(raw_from_arrays(x, y, x_test, y_test, task), cfg)


_TASKS = ("auto", "classification", "regression")


def _array(value: object, key: str) -> np.ndarray:
    """A numpy view of an array-like (tensors are detached and moved to the CPU first)."""
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as e:
        raise TypeError(f"The {key!r} argument of data_from_arrays must be an array or a tensor. "
                        f"Got {type(value).__name__} ({e}) instead.") from None


def _finite_inputs(value: object, key: str) -> np.ndarray:
    x = _inputs(_array(value, key), "data_from_arrays", key)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"The array {key!r} of data_from_arrays must hold finite numbers. Got NaN or inf "
                         f"(or a value beyond float32's range) instead.")
    return x


def raw_from_arrays(x: np.ndarray | Tensor, y: np.ndarray | Tensor, x_test: np.ndarray | Tensor | None = None,
                    y_test: np.ndarray | Tensor | None = None, task: str = "auto") -> RawData:
    """``RawData`` from arrays in memory, checked as the ``npz`` dataset checks its arrays, plus finite inputs."""
    if task not in _TASKS:
        raise ValueError(f"The 'task' argument of data_from_arrays must be one of {list(_TASKS)}. "
                         f"Got {task!r} instead.")
    if (x_test is None) != (y_test is None):
        raise ValueError(f"The 'x_test' and 'y_test' arguments of data_from_arrays must be given together. "
                         f"Got x_test={'None' if x_test is None else 'an array'} and "
                         f"y_test={'None' if y_test is None else 'an array'} instead.")
    pairs = [("x", "y")] + ([("x_test", "y_test")] if x_test is not None else [])
    given = {"x": x, "y": y, "x_test": x_test, "y_test": y_test}
    xs = [_finite_inputs(given[kx], kx) for kx, _ in pairs]
    ys = [_array(given[ky], ky) for _, ky in pairs]
    for xa, ya, (kx, ky) in zip(xs, ys, pairs):
        if ya.ndim < 1 or len(xa) != len(ya):
            raise ValueError(f"The arguments {kx!r} and {ky!r} of data_from_arrays must have the same number of "
                             f"samples. Got {len(xa)} and {len(ya) if ya.ndim else 'a scalar'} instead.")
    if len(xs) == 2 and xs[0].shape[1:] != xs[1].shape[1:]:
        raise ValueError(f"The arguments 'x' and 'x_test' of data_from_arrays must have the same sample shape. "
                         f"Got {xs[0].shape[1:]} and {xs[1].shape[1:]} instead.")
    owner = "data_from_arrays (arguments 'y' and 'y_test')" if len(ys) == 2 else "data_from_arrays (argument 'y')"
    y_all, task, num_classes, names = _targets(np.concatenate(ys), task, owner)
    n = len(ys[0])
    if len(xs) == 2:
        return RawData(xs[0], y_all[:n], xs[1], y_all[n:], task, num_classes, class_names=names)
    return RawData(xs[0], y_all, None, None, task, num_classes, class_names=names)


def _split_indices(raw: RawData, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Positions in ``raw.x_train`` of the (train, val, test) splits; test is None when the set has its own.

    Splitting positions rather than the arrays draws the same permutation (it depends on the labels only).
    """
    stratify = raw.task == "classification"
    index, y = np.arange(len(raw.y_train)), raw.y_train
    test = None
    if raw.x_test is None:
        index, test, y, _ = _split(index, y, cfg.test_fraction, stratify, cfg.split_seed,
                                   f"a test split of test_fraction={cfg.test_fraction}")
    train, val, y_train, _ = _split(index, y, cfg.val_fraction, stratify, cfg.split_seed,
                                    f"a validation split of val_fraction={cfg.val_fraction}")
    if cfg.train_size is not None:
        _check_train_size(cfg.train_size, len(train))
        if cfg.train_size < len(train):
            train, _, _, _ = _split(train, y_train, len(train) - cfg.train_size, stratify,
                                    cfg.split_seed, f"a training subset of train_size={cfg.train_size}")
    return train, val, test


def prepare_data(raw: RawData, cfg: DataConfig) -> Data:
    """Split ``raw`` (stratified for classification), subsample, preprocess (fitted on the training split unless
    ``cfg.fit_on='all'``) and convert to tensors; ``Data.train_index`` holds the training samples' positions."""
    train, val, test = _split_indices(raw, cfg)
    x, y = raw.x_train, raw.y_train
    x_train, x_val, y_train, y_val = x[train], x[val], y[train], y[val]
    x_test, y_test = (raw.x_test, raw.y_test) if test is None else (x[test], y[test])
    fit_x = x_train if cfg.fit_on == "train" else np.concatenate([x_train, x_val, x_test])
    fitted = cfg.preprocess.fit(fit_x)
    stratify = raw.task == "classification"

    def inputs(a: np.ndarray) -> Tensor:
        return torch.from_numpy(fitted.transform(a))

    def labels(a: np.ndarray) -> Tensor:
        return torch.from_numpy(a.astype(np.int64 if stratify else np.float32))

    return Data(inputs(x_train), labels(y_train), inputs(x_val), labels(y_val), inputs(x_test), labels(y_test),
                raw.task, raw.num_classes, list(cfg.augment), raw.feature_names, raw.class_names,
                torch.from_numpy(train), fitted)


ArraysLike = tuple  # (x, y) or (x, y, x_test, y_test): numpy arrays or tensors


def _array_tuple(data: object, owner: str) -> tuple[object, object, object | None, object | None]:
    if not (isinstance(data, (tuple, list)) and len(data) in (2, 4)):
        raise TypeError(f"The 'data' argument of {owner} must be a trainlab Data, an (x, y) tuple or an "
                        f"(x, y, x_test, y_test) tuple of arrays or tensors. Got {type(data).__name__}"
                        f"{f' of length {len(data)}' if isinstance(data, (tuple, list)) else ''} instead.")
    x, y, *test = data
    return (x, y, *test) if test else (x, y, None, None)  # type: ignore[return-value]


def as_data(data: Data | ArraysLike | None, cfg: DataConfig, owner: str) -> Data:
    """The ``Data`` an entry point trains on: ``cfg``'s dataset (None), a ``Data`` as it is, or arrays in memory,
    ``(x, y)`` or ``(x, y, x_test, y_test)``, split and preprocessed by ``cfg`` exactly as a dataset would be."""
    if data is None:
        return load_data(cfg)
    if isinstance(data, Data):
        return data
    x, y, x_test, y_test = _array_tuple(data, owner)
    return data_from_arrays(x, y, cfg, x_test, y_test)  # type: ignore[arg-type]


def save_arrays(data: ArraysLike, folder: str | Path, owner: str) -> Path:
    """Write arrays in memory as an ``npz`` dataset file named by their content, ``FOLDER/arrays-<sha>.npz``
    (checked first as ``data_from_arrays`` checks them; written atomically, and once per content). For entry points
    whose runs happen in other processes and are cached by config: the file's path keys the content."""
    import hashlib
    import io

    x, y, x_test, y_test = _array_tuple(data, owner)
    raw = raw_from_arrays(x, y, x_test, y_test)  # type: ignore[arg-type]
    arrays = {"x": raw.x_train, "y": _array(y, "y")} if raw.x_test is None else {
        "x_train": raw.x_train, "y_train": _array(y, "y"), "x_test": raw.x_test, "y_test": _array(y_test, "y_test")}
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = buffer.getvalue()
    path = Path(folder) / f"arrays-{hashlib.sha256(payload).hexdigest()[:16]}.npz"
    if not path.exists():
        atomic_write(path, lambda f: f.write(payload))
    return path
