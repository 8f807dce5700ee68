"""Train the same MLP the same way with trainlab and its peers; fit times side by side with a hand-written loop.

Run (the peers are the optional ``bench`` extras; a missing one is reported as "not installed")::

    pip install -e '.[bench]'
    python bench/bench_peers.py                 # 30 epochs, 3 rounds
    python bench/bench_peers.py --epochs 10 --rounds 5

Equal across frameworks: the data (MNIST-1D from ``trainlab.data``, 4000 x 40 standardized float32 training
samples, the same arrays handed to every framework), the model (Linear 40->256, ReLU, Linear 256->256, ReLU,
Linear 256->10 on logits), the loss (softmax cross-entropy), the optimizer (Adam, lr 1e-3, betas (0.9, 0.999),
eps 1e-8, no weight decay), batch 128 reshuffled every epoch (32 steps an epoch, the last one of 32 samples),
the number of epochs, and one thread (``torch.set_num_threads(1)``, ``threadpoolctl.threadpool_limits(1)``).

Only ``fit`` is timed: data generation, imports and building the model/trainer objects are not, and each framework
first trains one untimed epoch (lazy imports, first-call allocations). Frameworks are
interleaved within each round (round 1: all of them, round 2: all of them, ...) so drift on a noisy machine hits
them alike; the table gives medians over rounds, the ratio to the hand-written loop of the same run, and the test
accuracy of the last round, as a check that all of them train comparably.

Not equal (inherent to the frameworks): weight initialization (PyTorch's default for the torch-based ones, Glorot
for Keras and scikit-learn), how batches are drawn (tensor indexing in the hand-written loop and trainlab,
a per-sample ``DataLoader`` in Lightning and skorch, Keras's and scikit-learn's own), per-step bookkeeping each
framework does (loss logging, metrics, callbacks), scikit-learn's numpy (not torch) kernels, and trainlab's ``fit``
which ends with one evaluation on the 1000 test samples.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
import warnings
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported (lazily, in bench_keras)
if os.environ["KERAS_BACKEND"] != "torch":
    raise SystemExit(f"bench_peers.py compares torch-based training; KERAS_BACKEND must be 'torch'. "
                     f"Got {os.environ['KERAS_BACKEND']!r} instead; unset it or set it to 'torch'.")

import numpy as np
import torch
from torch import nn

from trainlab.config import load_config
from trainlab.data import load_data

BATCH, LR, WIDTH, INPUTS, CLASSES = 128, 1e-3, 256, 40, 10
DATA_CONFIG = {"dataset": "mnist1d", "batch_size": BATCH, "val_fraction": 0.0}


class NotInstalled(Exception):
    """A peer's package is missing; the bench reports it instead of failing."""


def torch_mlp() -> nn.Sequential:
    """The bench MLP in PyTorch, outputting logits."""
    return nn.Sequential(nn.Linear(INPUTS, WIDTH), nn.ReLU(), nn.Linear(WIDTH, WIDTH), nn.ReLU(),
                         nn.Linear(WIDTH, CLASSES))


def require(module: str, package: str):
    """Import ``module`` or raise NotInstalled naming the pip package."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise NotInstalled(f"{package} is not installed ({error})") from None


@torch.no_grad()
def torch_accuracy(model: nn.Module, data) -> float:
    """Test accuracy of a torch module on logits."""
    model.eval()
    return (model(data.x_test).argmax(1) == data.y_test).float().mean().item()


# Each bench_* builds its model outside the timing, times only training, and returns (seconds, test accuracy).

def bench_handwritten(data, epochs: int, seed: int, fused: bool = False) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = torch_mlp()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR, fused=fused or None)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(seed)
    x, y, n = data.x_train, data.y_train, len(data.y_train)
    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, BATCH):
            index = order[i:i + BATCH]
            loss = loss_fn(model(x[index]), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    elapsed = time.perf_counter() - start
    return elapsed, torch_accuracy(model, data)


def trainlab_config(epochs: int, seed: int) -> dict:
    return {"data": DATA_CONFIG, "model": {"name": "mlp", "depth": 2, "width": WIDTH, "activation": "relu",
                                           "norm": "none", "dropout": 0.0},
            "optimizer": {"name": "adam", "lr": LR}, "epochs": epochs, "threads": 1, "seed": seed}


def bench_trainlab(data, epochs: int, seed: int) -> tuple[float, float]:
    from trainlab.trainer import build_trainer
    trainer = build_trainer(load_config(trainlab_config(epochs, seed)), data=data)
    start = time.perf_counter()
    summary = trainer.fit()
    elapsed = time.perf_counter() - start
    return elapsed, summary["test_acc"]


def bench_lightning(data, epochs: int, seed: int) -> tuple[float, float]:
    L = require("lightning", "lightning")
    import logging
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # "GPU available: False" etc.
    from torch.utils.data import DataLoader, TensorDataset

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch_mlp()

        def training_step(self, batch, batch_index):
            x, y = batch
            return nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=LR)

    torch.manual_seed(seed)
    module = Module()
    loader = DataLoader(TensorDataset(data.x_train, data.y_train), batch_size=BATCH, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, max_epochs=epochs)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        start = time.perf_counter()
        trainer.fit(module, loader)
        elapsed = time.perf_counter() - start
    return elapsed, torch_accuracy(module.net, data)


def bench_keras(data, epochs: int, seed: int) -> tuple[float, float]:
    keras = require("keras", "keras")
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((INPUTS,)), keras.layers.Dense(WIDTH, activation="relu"),
                              keras.layers.Dense(WIDTH, activation="relu"), keras.layers.Dense(CLASSES)])
    # Keras's Adam defaults to epsilon 1e-7; 1e-8 is PyTorch's.
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=LR, beta_1=0.9, beta_2=0.999, epsilon=1e-8),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    x, y = data.x_train.numpy(), data.y_train.numpy()
    start = time.perf_counter()
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=True, verbose=0)
    elapsed = time.perf_counter() - start
    predicted = model.predict(data.x_test.numpy(), batch_size=1000, verbose=0).argmax(1)
    return elapsed, float((predicted == data.y_test.numpy()).mean())


def bench_skorch(data, epochs: int, seed: int) -> tuple[float, float]:
    skorch = require("skorch", "skorch")
    torch.manual_seed(seed)
    # CrossEntropyLoss on logits: skorch's predict_nonlinearity="auto" then applies softmax in predict_proba.
    net = skorch.NeuralNetClassifier(torch_mlp, max_epochs=epochs, lr=LR, optimizer=torch.optim.Adam,
                                     batch_size=BATCH, iterator_train__shuffle=True, train_split=None, verbose=0,
                                     criterion=nn.CrossEntropyLoss)
    x, y = data.x_train.numpy(), data.y_train.numpy()
    start = time.perf_counter()
    net.fit(x, y)  # includes initializing the 3-layer module (microseconds)
    elapsed = time.perf_counter() - start
    return elapsed, float((net.predict(data.x_test.numpy()) == data.y_test.numpy()).mean())


def bench_sklearn(data, epochs: int, seed: int) -> tuple[float, float]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    clf = MLPClassifier(hidden_layer_sizes=(WIDTH, WIDTH), solver="adam", learning_rate_init=LR, batch_size=BATCH,
                        max_iter=epochs, shuffle=True, alpha=0.0, tol=0, n_iter_no_change=epochs + 1,
                        random_state=seed)
    x, y = data.x_train.numpy(), data.y_train.numpy()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ConvergenceWarning)
        start = time.perf_counter()
        clf.fit(x, y)
        elapsed = time.perf_counter() - start
    if clf.n_iter_ != epochs:
        raise RuntimeError(f"scikit-learn's MLPClassifier ran {clf.n_iter_} epochs, not {epochs}; "
                           f"its early stopping should be off (tol=0, n_iter_no_change=epochs+1).")
    return elapsed, float(clf.score(data.x_test.numpy(), data.y_test.numpy()))


FRAMEWORKS: dict[str, tuple[str, Callable]] = {
    "hand-written torch": ("torch", bench_handwritten),
    # The same loop with the one-kernel Adam that trainlab picks: what trainlab's own bookkeeping costs on top.
    "hand-written, fused Adam": ("torch", functools.partial(bench_handwritten, fused=True)),
    "trainlab": ("trainlab", bench_trainlab),
    "lightning": ("lightning", bench_lightning),
    "keras (torch)": ("keras", bench_keras),
    "skorch": ("skorch", bench_skorch),
    "scikit-learn": ("scikit-learn", bench_sklearn),
}


def package_version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def check_trainlab_model(data) -> None:
    """Fail loudly if trainlab's config does not build the bench MLP."""
    from trainlab.trainer import build_trainer
    model = build_trainer(load_config(trainlab_config(1, 0)), data=data).model
    shapes = [tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Linear)]
    # Flatten is a no-op on (batch, 40) inputs.
    others = {type(m).__name__ for m in model.modules() if not list(m.children())} - {"Linear", "ReLU", "Flatten"}
    expected = [(WIDTH, INPUTS), (WIDTH, WIDTH), (CLASSES, WIDTH)]
    if shapes != expected or others:
        raise RuntimeError(f"trainlab's model is not the bench MLP: Linear shapes {shapes} (expected {expected}), "
                           f"other layers {sorted(others)}:\n{model}")


def run(epochs: int, rounds: int) -> dict[str, list[tuple[float, float]] | str]:
    """All frameworks in each round; per framework a list of (seconds, accuracy), or why it did not run."""
    from threadpoolctl import threadpool_limits
    data = load_data(load_config({"data": DATA_CONFIG}).data)
    check_trainlab_model(data)
    results: dict[str, list[tuple[float, float]] | str] = {name: [] for name in FRAMEWORKS}
    with threadpool_limits(1):
        for name, (_, bench) in FRAMEWORKS.items():  # untimed warm-up: lazy imports, first-call allocations
            torch.set_num_threads(1)
            try:
                bench(data, 1, seed=0)
            except NotInstalled as missing:
                results[name] = f"not installed: {missing}"
        for round_index in range(rounds):
            for name, (_, bench) in FRAMEWORKS.items():
                if isinstance(results[name], str):
                    continue
                torch.set_num_threads(1)  # again: a framework may have changed it
                results[name].append(bench(data, epochs, seed=round_index))
                seconds, accuracy = results[name][-1]
                print(f"round {round_index + 1}/{rounds}  {name:20s} {seconds:7.2f} s  test acc {accuracy:.3f}",
                      flush=True)
    return results


def table(results: dict[str, list[tuple[float, float]] | str], epochs: int, rounds: int) -> str:
    base = results["hand-written torch"]
    base_median = statistics.median(s for s, _ in base) if not isinstance(base, str) else None
    lines = [f"{epochs} epochs x 32 steps, {rounds} rounds, 1 thread; medians over rounds, the ratio of medians and "
             "the median of the per-round ratios (which drift between rounds moves less)",
             "", "| framework | version | median fit (s) | vs hand-written | per-round ratio | test acc (last round) |",
             "|---|---|---|---|---|---|"]
    for name, (package, _) in FRAMEWORKS.items():
        runs = results[name]
        if isinstance(runs, str):
            lines.append(f"| {name} | not installed | - | - | - | - |")
            continue
        median = statistics.median(s for s, _ in runs)
        ratio = f"{median / base_median:.2f}x" if base_median else "-"
        per_round = (f"{statistics.median(s / b for (s, _), (b, _) in zip(runs, base)):.2f}x" if base_median
                     else "-")
        lines.append(f"| {name} | {package_version(package)} | {median:.2f} | {ratio} | {per_round} | "
                     f"{runs[-1][1]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs per fit (default 30)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all frameworks (default 3)")
    args = parser.parse_args()
    if args.epochs < 1 or args.rounds < 1:
        parser.error(f"--epochs and --rounds must be at least 1. Got {args.epochs} and {args.rounds} instead.")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {torch.get_num_threads()}", flush=True)
    results = run(args.epochs, args.rounds)
    print()
    print(table(results, args.epochs, args.rounds))
    for name, runs in results.items():
        if isinstance(runs, str):
            print(f"{name}: {runs}")


if __name__ == "__main__":
    main()
