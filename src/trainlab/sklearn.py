"""scikit-learn estimators over trainlab training: ``TrainlabClassifier`` and ``TrainlabRegressor``.

The constructor takes plain values mirroring the most used ``RunConfig`` fields and stores them unchanged
(scikit-learn's convention, so ``clone``, ``GridSearchCV`` and ``set_params`` work); ``fit`` builds the config with
``load_config`` (the one place a config is validated), the data with ``data_from_arrays`` and trains with
``build_trainer``. ``config=`` gives a whole ``RunConfig`` (or dict) instead of the plain values. The estimators
train on all of ``X`` apart from ``val_fraction``: ``data.test_fraction`` is always 0, scoring is the caller's.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import _check_sample_weight, check_is_fitted, validate_data

from trainlab.config import RunConfig, load_config
from trainlab.data import Data, WeightedData, data_from_arrays, with_sample_weights
from trainlab.trainer import build_trainer

#: Inputs per forward pass at prediction time.
_PREDICT_BATCH = 1024


def _with_weights(data: Data, weights: np.ndarray) -> WeightedData:
    """``data`` whose training samples carry ``weights`` (given per sample of the arrays it was split from)."""
    return with_sample_weights(data, torch.from_numpy(weights.astype(np.float32))[data.train_index])


class _TrainlabEstimator(BaseEstimator):
    """What the classifier and the regressor share: parameters, the config, training and the forward pass."""

    _task: ClassVar[str]

    def __init__(self, model: str = "mlp", depth: int = 2, width: int = 64, activation: str = "relu",
                 norm: str = "none", dropout: float = 0.0, optimizer: str = "adam", lr: float = 1e-3,
                 weight_decay: float = 0.0, epochs: int = 50, batch_size: int = 64, preprocess: str = "standardize",
                 val_fraction: float = 0.0, early_stopping_patience: int | None = None, seed: int = 0,
                 threads: int | None = 1, config: RunConfig | Mapping[str, Any] | None = None):
        self.model = model
        self.depth = depth
        self.width = width
        self.activation = activation
        self.norm = norm
        self.dropout = dropout
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.val_fraction = val_fraction
        self.early_stopping_patience = early_stopping_patience
        self.seed = seed
        self.threads = threads
        self.config = config

    def _changed_params(self, names: tuple[str, ...] | None = None) -> list[str]:
        """The plain parameters (of ``names``, default all but config) that differ from their defaults."""
        defaults = {k: p.default for k, p in inspect.signature(_TrainlabEstimator.__init__).parameters.items()}
        params = self.get_params(deep=False)
        names = names or tuple(k for k in params if k != "config")
        return [k for k in names if not (params[k] is defaults[k] or params[k] == defaults[k])]

    def run_config(self) -> RunConfig:
        """The validated ``RunConfig`` that ``fit`` trains (``data.test_fraction`` 0: the caller holds out test)."""
        if self.config is not None:
            changed = self._changed_params()
            if changed:
                raise ValueError(f"The 'config' parameter of {type(self).__name__} replaces the plain parameters; "
                                 f"leave those at their defaults. Got config and {changed} instead.")
            return load_config(self.config, {"data.test_fraction": 0.0})
        model = {"name": self.model, "activation": self.activation, "norm": self.norm, "dropout": self.dropout}
        if self.model == "mlp":
            model.update(depth=self.depth, width=self.width)
        elif self._changed_params(("depth", "width")):
            raise ValueError(f"The 'depth' and 'width' parameters of {type(self).__name__} apply to model='mlp'; "
                             f"give other models' sizes through config=. Got model={self.model!r} with "
                             f"depth={self.depth!r}, width={self.width!r} instead.")
        early = None if self.early_stopping_patience is None else {"patience": self.early_stopping_patience}
        return load_config({
            "seed": self.seed, "threads": self.threads, "epochs": self.epochs, "model": model,
            "optimizer": {"name": self.optimizer, "lr": self.lr, "weight_decay": self.weight_decay},
            "data": {"batch_size": self.batch_size, "preprocess": self.preprocess,
                     "val_fraction": self.val_fraction, "test_fraction": 0.0},
            "early_stopping": early})

    def _sample_weight(self, sample_weight: Any, X: np.ndarray) -> np.ndarray | None:
        """Checked non-negative float weights, or None when there are none or all are equal (the same fit)."""
        if sample_weight is None:
            return None
        weights = _check_sample_weight(sample_weight, X, ensure_non_negative=True)
        return None if np.all(weights == weights[0]) else weights

    def _train(self, X: np.ndarray, y: np.ndarray, weights: np.ndarray | None) -> None:
        """Train on checked arrays; set ``model_``, ``preprocess_`` (the fitted input map) and ``history_``."""
        config = self.run_config()
        data = data_from_arrays(X, y, config.data, task=self._task)
        if weights is not None:
            data = _with_weights(data, weights)
        trainer = build_trainer(config, data=data)
        trainer.fit()
        self.model_ = trainer.model.eval()
        self.preprocess_ = data.fitted
        self.history_ = trainer.history

    def _forward(self, X: Any) -> np.ndarray:
        """The model's outputs (logits or targets) for ``X``, float64 ``(n, outputs)``."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        x = torch.from_numpy(self.preprocess_.transform(X.astype(np.float32)))
        with torch.no_grad():
            out = torch.cat([self.model_(batch) for batch in x.split(_PREDICT_BATCH)])
        return out.double().numpy()


def _drop_unweighted(X: np.ndarray, y: np.ndarray, weights: np.ndarray | None):
    """Samples of weight 0 count for nothing, so they are left out (a class only they hold is no class)."""
    if weights is None:
        return X, y, None
    keep = weights > 0
    return X[keep], y[keep], weights[keep]


class TrainlabClassifier(ClassifierMixin, _TrainlabEstimator):
    """A trainlab network (default: an MLP) trained with cross-entropy, as a scikit-learn classifier.

    ``classes_`` holds the sorted labels; ``predict_proba`` is the softmax of the network's logits.
    """

    _task = "classification"

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> TrainlabClassifier:
        """Train on ``X`` ``(n, features)`` and labels ``y``; ``sample_weight`` weights each sample's loss."""
        X, y = validate_data(self, X, y, ensure_min_samples=2)  # one sample makes no training batch
        check_classification_targets(y)
        X, y, weights = _drop_unweighted(X, y, self._sample_weight(sample_weight, X))
        self.classes_, codes = np.unique(y, return_inverse=True)
        self._train(X, codes, weights)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities ``(n, classes)``, columns in the order of ``classes_``."""
        return torch.softmax(torch.from_numpy(self._forward(X)), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each sample."""
        scores = self._forward(X)
        return self.classes_[scores.argmax(axis=1)]


class TrainlabRegressor(RegressorMixin, _TrainlabEstimator):
    """A trainlab network (default: an MLP) trained with mean squared error, as a scikit-learn regressor.

    ``y`` may be ``(n,)`` or ``(n, k)`` (several outputs); predictions have the same shape.
    """

    _task = "regression"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> TrainlabRegressor:
        """Train on ``X`` ``(n, features)`` and targets ``y``; ``sample_weight`` weights each sample's loss."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, ensure_min_samples=2)
        X, y, weights = _drop_unweighted(X, y, self._sample_weight(sample_weight, X))
        self.n_outputs_ = 1 if y.ndim == 1 else y.shape[1]
        self._single_output = y.ndim == 1
        self._train(X, y, weights)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Predicted targets: ``(n,)`` when fitted on a 1-D ``y``, else ``(n, k)``."""
        out = self._forward(X)
        return out[:, 0] if self._single_output else out
