"""Study 13: what the notes draw — their four pictures of notes 002 and 003, redrawn from measurements.

1. *L1 diamond and L2 circle* (note 002). Least squares of scikit-learn's diabetes progression (442 patients,
   standardized) on two standardized features, ``FEATURES`` (body-mass index and blood pressure):
   loss(w) = ||y - Xw||² / 2n = ½ wᵀHw - gᵀw + const. The L1 optimum of loss + α||w||₁ is exact along the whole
   path by LARS in its lasso form (``sklearn.linear_model.lars_path``: the path is linear between its knots); the L2
   optimum of loss + (λ/2)||w||² is w(λ) = (H + λI)⁻¹g. Drawn as the notes draw it: contours, the regions
   ||w||₁ <= t (a diamond) and ||w||₂ <= r (a circle) and the optimum on each, where a contour touches it.
   Seeds: bootstrap resamples of the patients.
2. *The start decides the minimum* (note 002). A 64-8-10 tanh network on ``landscape_samples`` digits, trained from
   three seeds to three minima θA, θB, θC (full-batch L-BFGS on cross-entropy + ``DECAY``·||θ||², so each is a
   strict minimum); its loss on the plane θ(a, b) = θA + a(θB - θA) + b(θC - θA) holds them at (0, 0), (1, 0) and
   (0, 1). Plain gradient descent on (a, b) from ``starts`` random points of [-0.5, 1.5]². Seeds: the draws of start
   points.
3. *Learning rates too low and too high* (note 003). Gradient descent on the least-squares loss of 1, from a start
   at distance 1 from the optimum, with lr = ``LR_FACTORS`` x 1/λmax (λmax: H's largest eigenvalue; 2/λmax is the
   stability bound of gradient descent on a quadratic). Seeds: the direction of the start.
4. *Activation histograms per layer for every initialization* (note 002): a stack of ``layers`` dense layers of
   ``width`` units (the notes' 5 of 100) on 1000 standardized digits, one row per init, one column per hidden
   layer, for sigmoid (the notes' "linear" section), tanh and ReLU (their "nonlinear" one). The notes' seven inits
   carry Keras's names (zeros, RandomNormal, RandomUniform, glorot/he normal and uniform), so normal and uniform
   take Keras's defaults, N(0, 0.05²) and U(-0.05, 0.05); two more rows: He as the notes write it (std 2/√n) and
   U(-1, 1). Seeds: the weights' draw.

Definitions fixed before measuring:

- *sparse range* of an L1 path: the share of the penalties (0, α_max], α_max the smallest α with w = 0, at which
  exactly one weight is exactly 0; *exactly 0 at a finite penalty* means a sparse range of at least ``SPARSE``.
  *Only shrinks*: along λ in [0, 1000·λmax] the smaller |weight| of the L2 optimum stays above ``NEAR_ZERO`` of the
  larger (L1's is exactly 0 on its sparse range).
- two gradient-descent runs *end in different minima* when their end points lie more than ``SAME_MINIMUM`` apart
  (the minima of the plane are about 1 apart); a run *converged* when the gradient at its end is below ``CONVERGED``.
- *too low*: after ``lr_steps`` steps more than ``FAR`` of the start's distance to the optimum remains; *good*:
  less than ``NEAR``; *too high*: the distance grew (diverged).
- two inits *look alike* when, averaged over the layers, their activation stds differ by less than ``ALIKE_STD``x
  and their histograms (30 common bins) are no farther apart than two draws of the normal init are, by a total
  variation distance of at most ``ALIKE_TV`` more, for the worst activation. (Deep sigmoid layers of two draws of the
  *same* init differ by about 0.2: each unit's offset is random. A bare distance threshold would measure that.)
  An *even* distribution: every layer's total variation distance from the flat histogram over the output range is
  below ``EVEN_TV``. A *growing* range: the activation std grows by more than ``GROWS``x per layer (geometric mean);
  one *leaning to 0*: it shrinks by more than ``GROWS``x per layer.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import Tensor, nn

from trainlab.figures import HistogramCell, histogram_grid
from trainlab.models import MLP
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, joint,
                                   one_thread, threshold_result)
from trainlab.studies.measures import mean_finite

FEATURES = ("bmi", "bp")
SPARSE = 0.1
NEAR_ZERO = 0.05
L2_RANGE = 1000.0  # the L2 path runs over λ in [0, L2_RANGE * λmax]
DECAY = 1e-3
HIDDEN = 8
LANDSCAPE_LR = 0.2  # below 2 / the largest curvature at the minima (about 4.8): plain GD is stable
BOX = (-0.5, 1.5)
SAME_MINIMUM = 0.1
CONVERGED = 1e-3
LR_FACTORS = {"too low": 0.01, "good": 1.0, "too high": 2.2}
FAR, NEAR = 0.25, 0.01
INITS: dict[str, Any] = {
    "zeros": "zeros",
    "normal": {"name": "normal", "std": 0.05},
    "uniform": {"name": "uniform", "a": 0.05},
    "xavier_normal": "xavier_normal",
    "xavier_uniform": "xavier_uniform",
    "he_normal": "he_normal",
    "he_uniform": "he_uniform",
    "he_notes": {"name": "variance_scaling", "scale": 4.0, "mode": "fan_in", "distribution": "normal"},
    "uniform_1": {"name": "uniform", "a": 1.0},
}
LABELS = {"zeros": "zeros", "normal": "N(0, 0.05²)", "uniform": "U(±0.05)", "xavier_normal": "Xavier normal",
          "xavier_uniform": "Xavier uniform", "he_normal": "He normal", "he_uniform": "He uniform",
          "he_notes": "notes' He 2/√n", "uniform_1": "U(±1)"}
PAIRS = {"Xavier": ("xavier_uniform", "xavier_normal"), "He": ("he_uniform", "he_normal")}
ACTIVATIONS = ("sigmoid", "tanh", "relu")
RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0)}
BINS = 30
ALIKE_STD, ALIKE_TV = 1.25, 0.05
SECOND_DRAW = 10_000  # seed offset of the second draw of a normal init: the draw-to-draw baseline
EVEN_TV = 0.25
GROWS = 2.0
VERSION = 3  # bump when a computation changes, so cached results are recomputed


@dataclass(frozen=True)
class GeometryBudget(Budget):
    """``seeds`` are bootstrap resamples, start draws and weight draws; nothing is trained through the store."""

    starts: int = 8  # gradient-descent starts per seed on the landscape
    landscape_steps: int = 200
    landscape_samples: int = 500  # training digits of the landscape's network
    grid: int = 61  # points per axis of the drawn landscape
    lr_steps: int = 100
    layers: int = 5
    width: int = 100
    samples: int = 1000


# 1. L1 and L2 paths on a real 2-feature regression ---------------------------------------------------------------

def regression(resample: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Standardized (X, y) of the two ``FEATURES`` of the diabetes set; bootstrap resample ``resample`` (a seed) or
    every patient (None). Centred again after resampling, so the intercept stays 0."""
    import sklearn.datasets

    bunch = sklearn.datasets.load_diabetes()
    x = bunch.data[:, [list(bunch.feature_names).index(f) for f in FEATURES]]
    x, y = (x - x.mean(0)) / x.std(0), (bunch.target - bunch.target.mean()) / bunch.target.std()
    if resample is not None:
        rows = np.random.default_rng(resample).integers(0, len(y), len(y))
        x, y = x[rows] - x[rows].mean(0), y[rows] - y[rows].mean()
    return x, y


def quadratic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(H, g) of loss(w) = ||y - Xw||² / 2n = ½ wᵀHw - gᵀw + const."""
    return x.T @ x / len(y), x.T @ y / len(y)


def l1_path(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact lasso path of loss + α||w||₁: its knots α (decreasing, down to 0) and the weights there
    (knots x 2); between knots the optimum moves linearly."""
    from sklearn.linear_model import lars_path

    alphas, _, coefs = lars_path(x, y, method="lasso")
    return alphas, coefs.T


def l2_path(h: np.ndarray, g: np.ndarray, lambdas: np.ndarray) -> np.ndarray:
    """The ridge optima w(λ) = (H + λI)⁻¹g of loss + (λ/2)||w||², one row per λ."""
    return np.stack([np.linalg.solve(h + lam * np.eye(len(g)), g) for lam in lambdas])


def l2_lambdas(h: np.ndarray, points: int = 200) -> np.ndarray:
    """0, then a log grid up to ``L2_RANGE`` x H's largest eigenvalue (where w has shrunk ~1000-fold)."""
    top = float(np.linalg.eigvalsh(h)[-1])
    return np.concatenate([[0.0], np.logspace(-3, math.log10(L2_RANGE), points) * top])


def sparse_range(alphas: np.ndarray, coefs: np.ndarray) -> float:
    """The share of (0, α_max] on which exactly one weight of the lasso path is exactly 0: a weight is 0 on a whole
    segment between knots when it is 0 at both ends (the path is linear in between); two weights make it exact."""
    zero = coefs == 0
    one_zero = [int((zero[k] & zero[k + 1]).sum()) == 1 for k in range(len(alphas) - 1)]
    widths = alphas[:-1] - alphas[1:]
    return float(np.sum(widths[one_zero]) / alphas[0])


def l1_norm_growth(coefs: np.ndarray) -> float:
    """The largest growth of ||w||₁ from one knot of the lasso path to the next larger α (<= 0: it only shrinks)."""
    norms = np.abs(coefs).sum(1)
    return float(np.max(norms[:-1] - norms[1:]))


def path_stats(resample: int) -> dict[str, Any]:
    """A resample's L1 sparse range and norm growth, and the smallest ratio of the L2 optimum's two |weights|."""
    x, y = regression(resample)
    alphas, coefs = l1_path(x, y)
    h, g = quadratic(x, y)
    w = np.abs(l2_path(h, g, l2_lambdas(h)))
    return {"sparse_range": sparse_range(alphas, coefs), "l1_growth": l1_norm_growth(coefs),
            "l2_min_ratio": float(np.min(w.min(1) / w.max(1)))}


# 2. The landscape of a tiny network on the plane through three of its minima ------------------------------------

@functools.lru_cache(maxsize=4)
def digits(samples: int) -> tuple[Tensor, Tensor]:
    """``samples`` training digits, standardized on the training split (trainlab's own data pipeline); read-only."""
    from trainlab.config import load_config
    from trainlab.data import load_data

    data = load_data(load_config({"data": {"dataset": "digits", "train_size": samples}}).data)
    return data.x_train, data.y_train


def train_minimum(x: Tensor, y: Tensor, seed: int) -> list[Tensor]:
    """The parameters [W1, b1, W2, b2] of a 64-8-10 tanh MLP from Xavier init (seed ``seed``) at a minimum of
    cross-entropy + ``DECAY``·||θ||² (full-batch L-BFGS with a strong Wolfe line search)."""
    model = MLP(depth=1, width=HIDDEN, activation="tanh", init="xavier_normal").build(
        (x.shape[1],), 10, torch.Generator().manual_seed(seed))
    params = list(model.parameters())
    opt = torch.optim.LBFGS(params, max_iter=300, tolerance_grad=1e-7, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) + DECAY * sum((p ** 2).sum() for p in params)
        loss.backward()
        return loss

    opt.step(closure)
    return [p.detach().clone() for p in params]


class PlaneLoss:
    """The regularized training loss of the MLP at θ(a, b) = θA + a(θB - θA) + b(θC - θA), for a batch of points.

    θ is linear in (1, a, b), so the first layer's pre-activations XW1ᵀ + b1 are a fixed combination of three
    precomputed ones, and the penalty is a quadratic form of the three directions' Gram matrix.
    """

    def __init__(self, x: Tensor, y: Tensor, minima: list[list[Tensor]]) -> None:
        a, b, c = minima
        basis = [a, [pb - pa for pa, pb in zip(a, b)], [pc - pa for pa, pc in zip(a, c)]]
        self.y = y
        self.z = torch.stack([x @ w1.T + b1 for w1, b1, _, _ in basis])  # (3, n, hidden)
        self.w2 = torch.stack([w2 for _, _, w2, _ in basis])  # (3, 10, hidden)
        self.b2 = torch.stack([b2 for *_, b2 in basis])  # (3, 10)
        flat = torch.stack([torch.cat([p.flatten() for p in d]) for d in basis])
        self.gram = flat @ flat.T

    def __call__(self, ab: Tensor) -> Tensor:
        coef = torch.cat([torch.ones(len(ab), 1, dtype=ab.dtype), ab], dim=1)  # (B, 3)
        hidden = torch.tanh((coef @ self.z.flatten(1)).reshape(len(ab), *self.z.shape[1:]))
        w2 = (coef @ self.w2.flatten(1)).reshape(len(ab), *self.w2.shape[1:])
        logits = torch.bmm(hidden, w2.transpose(1, 2)) + (coef @ self.b2)[:, None, :]
        ce = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), self.y.repeat(len(ab)),
                                         reduction="none").reshape(len(ab), -1).mean(1)
        return ce + DECAY * torch.einsum("bi,ij,bj->b", coef, self.gram, coef)


def descend(loss: PlaneLoss, starts: np.ndarray, steps: int) -> dict[str, np.ndarray]:
    """Plain gradient descent (lr ``LANDSCAPE_LR``) on the plane from each start: the paths, end losses and the
    gradient norms at the ends."""
    p = torch.tensor(starts, dtype=torch.float32)
    path = [p.numpy().copy()]
    for _ in range(steps):
        p.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(p).sum(), p)
        p = (p - LANDSCAPE_LR * grad).detach()
        path.append(p.numpy().copy())
    p.requires_grad_(True)
    end = loss(p)
    (grad,) = torch.autograd.grad(end.sum(), p)
    return {"path": np.stack(path, 1), "end_loss": end.detach().numpy(), "end_grad": grad.norm(dim=1).numpy()}


def distinct_minima(ends: np.ndarray) -> np.ndarray:
    """A label per end point: points closer than ``SAME_MINIMUM`` to an earlier group's first point join it."""
    firsts: list[np.ndarray] = []
    labels = []
    for point in ends:
        near = [i for i, f in enumerate(firsts) if np.linalg.norm(point - f) < SAME_MINIMUM]
        if not near:
            firsts.append(point)
        labels.append(near[0] if near else len(firsts) - 1)
    return np.array(labels)


def landscape(budget: GeometryBudget, seeds: list[int]) -> dict[str, Any]:
    """The three minima, the loss on a grid of the plane, and gradient descent from each seed's starts."""
    with one_thread():  # ops this small run fastest on one thread
        x, y = digits(budget.landscape_samples)
        loss = PlaneLoss(x, y, [train_minimum(x, y, seed) for seed in range(3)])
        axis = np.linspace(*BOX, budget.grid)
        grid = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
        with torch.no_grad():
            surface = torch.cat([loss(torch.tensor(chunk, dtype=torch.float32))
                                 for chunk in np.array_split(grid, max(1, len(grid) // 500))])
        starts = np.concatenate([np.random.default_rng(seed).uniform(*BOX, (budget.starts, 2)) for seed in seeds])
        runs = descend(loss, starts, budget.landscape_steps)
        with torch.no_grad():
            minima_loss = loss(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])).numpy()
    shape = (len(seeds), budget.starts)
    return {"axis": axis, "surface": surface.numpy().reshape(budget.grid, budget.grid),
            "minima_loss": minima_loss, "path": runs["path"].reshape(*shape, -1, 2),
            "end_loss": runs["end_loss"].reshape(shape), "end_grad": runs["end_grad"].reshape(shape)}


# 3. Learning rates on the least-squares loss of 1 ----------------------------------------------------------------

def lr_paths(seeds: list[int], steps: int) -> dict[str, Any]:
    """Gradient descent on the full-data least-squares loss from a start at distance 1 from the optimum (its
    direction drawn from each seed), for each rate of ``LR_FACTORS``: paths (seeds x steps+1 x 2) and distances."""
    h, g = quadratic(*regression())
    optimum = np.linalg.solve(h, g)
    top = float(np.linalg.eigvalsh(h)[-1])
    angles = np.array([np.random.default_rng(seed).uniform(0, 2 * np.pi) for seed in seeds])
    start = optimum + np.stack([np.cos(angles), np.sin(angles)], 1)
    out: dict[str, Any] = {"optimum": optimum, "h": h, "g": g, "lambda_max": top}
    for name, factor in LR_FACTORS.items():
        w, path = start.copy(), [start.copy()]
        for _ in range(steps):
            w = w - factor / top * (w @ h - g)
            path.append(w.copy())
        path_array = np.stack(path, 1)
        out[name] = {"lr": factor / top, "path": path_array,
                     "distance": np.linalg.norm(path_array - optimum, axis=2)}
    return out


# 4. Activation histograms per layer for every initialization -----------------------------------------------------

def activations_per_layer(activation: str, init: str, seed: int, x: Tensor, budget: GeometryBudget) -> list[Tensor]:
    """The output of each hidden layer of a freshly initialized ``layers`` x ``width`` MLP on ``x``."""
    spec = MLP(depth=budget.layers, width=budget.width, activation=activation, init=INITS[init])
    model = spec.build((x.shape[1],), 10, torch.Generator().manual_seed(seed))
    outs, h = [], x
    with torch.no_grad():
        for block in model.blocks:
            h = block(h)
            outs.append(h)
    return outs


def histogram(values: Tensor, lo: float, hi: float) -> np.ndarray:
    """Shares of ``values`` in ``BINS`` equal bins over [lo, hi] (values outside go to the end bins)."""
    index = ((values.flatten() - lo) / max(hi - lo, 1e-12) * BINS).long().clamp(0, BINS - 1)
    counts = torch.bincount(index, minlength=BINS).double()
    return (counts / counts.sum()).numpy()


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
    return float(0.5 * np.abs(p - q).sum())


def drawn_range(activation: str, values: Tensor) -> tuple[float, float]:
    """The range a layer's histogram is drawn over: the activation's output range, or for ReLU [0, the 99.5th
    percentile of the positive values] (digits' rare large pixels give a long tail that would squash the rest)."""
    if activation in RANGES:
        return RANGES[activation]
    positive = values[values > 0]
    return 0.0, float(torch.quantile(positive, 0.995)) if positive.numel() else 1.0


def drawn_histogram(activation: str, values: Tensor, lo: float, hi: float) -> np.ndarray:
    """The drawn histogram: shares of all values over [lo, hi]; for ReLU of the positive values up to ``hi`` only,
    its zeros being counted apart (the panel gives their share) and the tail beyond ``hi`` left out."""
    if activation in RANGES:
        return histogram(values, lo, hi)
    shown = values[(values > 0) & (values <= hi)]
    return histogram(shown, lo, hi) if shown.numel() else np.zeros(BINS)


def common_range(activation: str, *layers: Tensor) -> tuple[float, float]:
    """The histogram range: the activation's output range, else [0 or min, max] of the values."""
    if activation in RANGES:
        return RANGES[activation]
    return min(float(v.min()) for v in layers), max(float(v.max()) for v in layers)


def forward_stats(activation: str, seed: int, budget: GeometryBudget) -> dict[str, np.ndarray]:
    """For one activation and weight draw: per init and layer the std, the share of exact zeros, the histogram over
    its drawn range (``drawn_histogram``), the distance from a flat
    histogram, and per uniform/normal pair the std ratios and histogram distances, layer by layer."""
    x, _ = digits(budget.samples)
    with one_thread():
        acts = {init: activations_per_layer(activation, init, seed, x, budget) for init in INITS}
    out: dict[str, np.ndarray] = {}
    for init, layers in acts.items():
        ranges = [drawn_range(activation, v) for v in layers]
        out[f"{init}/std"] = np.array([float(v.std()) for v in layers])
        out[f"{init}/zeros"] = np.array([float((v == 0).double().mean()) for v in layers])
        out[f"{init}/hist"] = np.stack([drawn_histogram(activation, v, lo, hi) for v, (lo, hi) in zip(layers, ranges)])
        out[f"{init}/range"] = np.array(ranges)
        flat = np.full(BINS, 1 / BINS)
        # Unbounded ReLU outputs have no flat histogram to compare with.
        out[f"{init}/uneven"] = np.array([total_variation(histogram(v, *RANGES[activation]), flat)
                                          if activation in RANGES else math.nan for v in layers])
    for name, (uniform, normal) in PAIRS.items():
        redrawn = activations_per_layer(activation, normal, seed + SECOND_DRAW, x, budget)
        pairs = list(zip(acts[uniform], acts[normal]))
        out[f"{name}/log_std_ratio"] = np.array([math.log(float(u.std()) / float(n.std())) for u, n in pairs])
        out[f"{name}/tv"] = np.array([layer_distance(activation, u, n) for u, n in pairs])
        out[f"{name}/tv_redrawn"] = np.array([layer_distance(activation, n, m) for n, m in zip(acts[normal], redrawn)])
    return out


def layer_distance(activation: str, a: Tensor, b: Tensor) -> float:
    """Total variation distance between the histograms of two layers' outputs over their common range."""
    lo, hi = common_range(activation, a, b)
    return total_variation(histogram(a, lo, hi), histogram(b, lo, hi))


# Claims ----------------------------------------------------------------------------------------------------------

def claim_l1_zero_l2_shrinks(r: dict[str, Any]) -> ClaimResult:
    paths = r["paths"]
    return joint({
        "L1 reaches exactly 0": threshold_result([p["sparse_range"] for p in paths], ">", SPARSE,
                                                 "share of the L1 penalties at which exactly one weight is 0"),
        "L1 norm only shrinks": threshold_result([p["l1_growth"] for p in paths], "<", 1e-9,
                                                 "largest growth of ||w||₁ as the L1 penalty grows"),
        "L2 only shrinks": threshold_result([p["l2_min_ratio"] for p in paths], ">", NEAR_ZERO,
                                            "smallest |smaller weight| / |larger weight| along the L2 path"),
    })


def claim_starts_decide_minimum(r: dict[str, Any]) -> ClaimResult:
    land = r["landscape"]
    ends = land["path"][:, :, -1]
    counts = [float(len(set(distinct_minima(e)))) for e in ends]
    return joint({
        "several minima": threshold_result(counts, ">", 1.5,
                                           f"distinct minima reached by the {ends.shape[1]} starts of a seed"),
        "converged": threshold_result([float(g.max()) for g in land["end_grad"]], "<", CONVERGED,
                                      "largest gradient norm at the end of a seed's runs"),
    })


def _distance_ratio(r: dict[str, Any], name: str) -> list[float]:
    d = r["lr"][name]["distance"]
    return [float(v) for v in d[:, -1] / d[:, 0]]


def claim_lr_too_low_too_high(r: dict[str, Any]) -> ClaimResult:
    steps = r["lr"]["too low"]["distance"].shape[1] - 1
    what = f"distance to the optimum after {steps} steps / at the start"
    return joint({
        "too low is still far": threshold_result(_distance_ratio(r, "too low"), ">", FAR, f"{what}, too low"),
        "good converges": threshold_result(_distance_ratio(r, "good"), "<", NEAR, f"{what}, good"),
        "too high diverges": threshold_result([math.log10(v) for v in _distance_ratio(r, "too high")], ">", 0.0,
                                              f"log10 of the {what}, too high"),
    })


def _worst(r: dict[str, Any], value: Callable[[dict[str, np.ndarray]], float]) -> list[float]:
    """Per seed, the largest ``value`` of a seed's forward statistics over the activations."""
    forward = r["forward"]
    return [max(float(value(forward[act][i])) for act in ACTIVATIONS) for i in range(len(forward["relu"]))]


def claim_uniform_like_normal(r: dict[str, Any]) -> ClaimResult:
    parts = {}
    for name in PAIRS:
        parts[f"{name} std alike"] = threshold_result(
            _worst(r, lambda s, n=name: np.mean(np.abs(s[f"{n}/log_std_ratio"]))), "<", math.log(ALIKE_STD),
            f"{name}: |ln(std uniform / std normal)| averaged over layers, worst activation")
        parts[f"{name} histograms alike"] = threshold_result(
            _worst(r, lambda s, n=name: np.mean(s[f"{n}/tv"] - s[f"{n}/tv_redrawn"])), "<", ALIKE_TV,
            f"{name}: distance of the uniform and normal histograms minus that of two normal draws, averaged "
            f"over layers, worst activation")
    return joint(parts)


def claim_he_notes_sigmoid_even(r: dict[str, Any]) -> ClaimResult:
    return threshold_result([float(s["he_notes/uneven"].max()) for s in r["forward"]["sigmoid"]], "<", EVEN_TV,
                            "largest distance of a sigmoid layer's histogram from the flat one, notes' He 2/√n")


def growth(std: np.ndarray) -> float:
    """The geometric mean of the per-layer std ratios (last / first, to the power 1 / (layers - 1))."""
    return float((std[-1] / std[0]) ** (1 / (len(std) - 1)))


def claim_uniform_range_grows(r: dict[str, Any]) -> ClaimResult:
    return threshold_result([growth(s["uniform_1/std"]) for s in r["forward"]["relu"]], ">", GROWS,
                            "growth of the ReLU activation std per layer (geometric mean), U(-1, 1)")


def claim_small_inits_uneven(r: dict[str, Any]) -> ClaimResult:
    """Keras's small defaults N(0, 0.05²) and U(±0.05), each: with sigmoid more spread than zeros in every layer but
    no layer near flat (distance above ``EVEN_TV``), and with ReLU a std that shrinks by more than ``GROWS``x per
    layer (geometric mean), toward 0."""
    forward = r["forward"]
    parts = {}
    for init in ("normal", "uniform"):
        label = LABELS[init]
        parts[f"sigmoid {label} spread"] = threshold_result(
            [float(np.min(s[f"{init}/std"] - s["zeros/std"])) for s in forward["sigmoid"]], ">", 0.0,
            f"smallest sigmoid layer std above zeros', {label}")
        parts[f"sigmoid {label} uneven"] = threshold_result(
            [float(s[f"{init}/uneven"].min()) for s in forward["sigmoid"]], ">", EVEN_TV,
            f"smallest distance of a sigmoid layer's histogram from the flat one, {label}")
        parts[f"ReLU {label} shrinks"] = threshold_result(
            [growth(s[f"{init}/std"]) for s in forward["relu"]], "<", 1 / GROWS,
            f"growth of the ReLU activation std per layer (geometric mean), {label}")
    return joint(parts)


CLAIMS = (
    Claim("l1_zero_l2_shrinks", "As the penalty grows, the L1 optimum sets a weight exactly to 0 at a finite "
                                "penalty while its L1 norm only shrinks; the L2 optimum only shrinks both weights "
                                "toward 0.", claim_l1_zero_l2_shrinks),
    Claim("starts_decide_minimum", "On the same loss, gradient descent from different starting points ends in "
                                   "different minima.", claim_starts_decide_minimum),
    Claim("lr_too_low_too_high", "On the same loss, a learning rate too low is still far from the minimum after "
                                 "the given steps, and one too high diverges.", claim_lr_too_low_too_high),
    Claim("uniform_like_normal", "Xavier uniform and He uniform give the same activation distributions layer by "
                                 "layer as their normal forms.", claim_uniform_like_normal),
    Claim("he_notes_sigmoid_even", "With sigmoid, He initialization as the notes write it (std 2/√n) spreads the "
                                   "activations evenly in every layer.", claim_he_notes_sigmoid_even),
    Claim("uniform_range_grows", "With a uniform initialization U(-1, 1), the layers' output range keeps growing "
                                 "with depth.", claim_uniform_range_grows),
    Claim("small_inits_uneven", "Small normal and uniform initializations (Keras's N(0, 0.05²), U(±0.05)) spread "
                                "the activations more than zeros, but unevenly: with sigmoid no layer is near "
                                "flat, and with ReLU the spread shrinks toward 0 layer by layer.",
          claim_small_inits_uneven),
)


@register_study
class Geometry(Study[GeometryBudget]):
    name = "geometry"
    title = "What the notes draw"
    question = ("Do the pictures of the notes hold when drawn from measurements: the L1 diamond and the L2 circle, "
                "a landscape whose minimum depends on the start, learning rates too low and too high, and the "
                "activation histograms of every initialization?")
    order = 14
    smoke = GeometryBudget(seeds=3, epochs=1, starts=4, landscape_steps=100, landscape_samples=200, grid=21,
                           lr_steps=100, layers=3, width=50, samples=200)
    quick = GeometryBudget(seeds=10, epochs=1)
    full = GeometryBudget(seeds=20, epochs=1)
    claims = CLAIMS

    def measure(self, ctx: StudyContext[GeometryBudget]) -> dict[str, Any]:
        b = ctx.budget
        seeds = list(ctx.seeds)
        paths = [ctx.cached("paths", {"resample": s, "features": FEATURES, "version": VERSION},
                            lambda s=s: path_stats(s)) for s in seeds]
        land_params = {"seeds": seeds, "starts": b.starts, "steps": b.landscape_steps, "grid": b.grid,
                       "samples": b.landscape_samples,
                       "lr": LANDSCAPE_LR, "decay": DECAY, "hidden": HIDDEN, "version": VERSION}
        land = ctx.cached("landscape", land_params, lambda: landscape(b, seeds))
        lr = lr_paths(seeds, b.lr_steps)  # a few hundred 2x2 products: cheaper than a cache lookup
        forward: dict[str, list[dict[str, np.ndarray]]] = {}
        with ctx.task(f"{self.name} · forward", len(ACTIVATIONS) * len(seeds)) as advance:
            for act in ACTIVATIONS:
                forward[act] = []
                for seed in seeds:
                    params = {"activation": act, "seed": seed, "inits": INITS, "layers": b.layers,
                              "width": b.width, "samples": b.samples, "version": VERSION}
                    forward[act].append(ctx.cached("forward", params,
                                                   lambda a=act, s=seed: forward_stats(a, s, b)))
                    advance()
        return {"paths": paths, "landscape": land, "lr": lr, "forward": forward}

    def present(self, results: dict[str, Any], ctx: StudyContext[GeometryBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        figures = [
            ctx.figure(_regions_figure(), "l1_l2_regions",
                       f"Least squares of diabetes progression on {FEATURES[0]} and {FEATURES[1]} (442 patients, "
                       "standardized): loss contours, the optimum of loss + penalty as the penalty grows (the "
                       "path), and for three penalties the region the optimum sits on, touched by a contour (dashed). "
                       "L1's diamond is touched at a corner, where a weight is exactly 0; L2's circle never is."),
            ctx.figure(_landscape_figure(results["landscape"]), "landscape",
                       "Training loss of a 64-8-10 tanh network on digits over the plane through three of its "
                       "minima (A, B, C), and plain gradient descent from the first seed's starts (dots): each "
                       "start ends in the minimum of its basin. Right: the end points of every seed's runs."),
            ctx.figure(_lr_figure(results["lr"]), "learning_rates",
                       "Gradient descent on the least-squares loss of the first figure from the same start with a "
                       "learning rate too low, good and too high (x 1/λmax, λmax the Hessian's largest eigenvalue). "
                       "Right: distance to the optimum per step for every seed's start (log scale)."),
        ]
        relu = (" Only positive values up to each layer's 99.5th percentile are binned; each panel gives the share "
                "of exact zeros.")
        figures += [ctx.figure(_histograms_figure(results["forward"], act), f"histograms_{act}",
                               f"Activation histograms of every hidden layer ({act}, {ctx.budget.samples} digits, "
                               f"weight seed {ctx.seeds[0]}), one row per initialization as the notes lay them out."
                               + (relu if act == "relu" else ""))
                    for act in ACTIVATIONS]
        return figures, _tables(results)


# Figures ---------------------------------------------------------------------------------------------------------

def _loss_grid(h: np.ndarray, g: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int = 200
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    w1, w2 = np.meshgrid(np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n))
    w = np.stack([w1, w2], -1)
    return w1, w2, 0.5 * np.einsum("...i,ij,...j->...", w, h, w) - w @ g


def _regions_figure() -> Any:
    x, y = regression()
    h, g = quadratic(x, y)
    ols = np.linalg.solve(h, g)
    alphas, coefs = l1_path(x, y)
    lambdas = l2_lambdas(h)
    ridge = l2_path(h, g, lambdas)
    loss = lambda w: 0.5 * w @ h @ w - w @ g  # noqa: E731
    lo, hi = np.array([-0.35, -0.35]), ols + 0.25
    w1, w2, surface = _loss_grid(h, g, lo, hi)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2))
    shares = (0.75, 0.45, 0.15)
    colors = ("#1a7f37", "#bf8700", "#cf222e")
    for ax, kind, path in ((axes[0], "L1", coefs[::-1]), (axes[1], "L2", ridge)):
        ax.contour(w1, w2, surface, levels=np.quantile(surface, np.linspace(0.02, 0.9, 12)), colors="#8c959f",
                   linewidths=0.7, linestyles="solid")
        ax.plot(*path.T, "-", color="#0969da", lw=2, label=f"optimum as the {kind} penalty grows")
        ax.plot(*ols, "*", color="black", ms=12, label="unpenalized optimum")
        for share, color in zip(shares, colors):
            if kind == "L1":
                t = share * np.abs(ols).sum()
                point = _l1_point(alphas, coefs, t)
                ax.fill([t, 0, -t, 0], [0, t, 0, -t], color=color, alpha=0.12)
                ax.plot([t, 0, -t, 0, t], [0, t, 0, -t, 0], color=color, lw=1.2)
            else:
                r = share * np.linalg.norm(ols)
                point = _l2_point(ridge, r)
                circle = plt.Circle((0, 0), r, color=color, alpha=0.12)
                ax.add_patch(circle)
                ax.add_patch(plt.Circle((0, 0), r, color=color, fill=False, lw=1.2))
            ax.contour(w1, w2, surface, levels=[loss(point)], colors=[color], linestyles="--", linewidths=1)
            ax.plot(*point, "o", color=color, ms=7,
                    label=f"{kind} norm {share:.0%} of the optimum's: w = ({point[0]:.2f}, {point[1]:.2f})")
        ax.axhline(0, color="black", lw=0.6)
        ax.axvline(0, color="black", lw=0.6)
        ax.set(xlim=(lo[0], hi[0]), ylim=(lo[1], hi[1]), xlabel=f"weight of {FEATURES[0]}",
               ylabel=f"weight of {FEATURES[1]}", aspect="equal",
               title=f"{kind}: {'diamond |w₁| + |w₂| ≤ t' if kind == 'L1' else 'circle w₁² + w₂² ≤ r²'}")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def _l1_point(alphas: np.ndarray, coefs: np.ndarray, t: float) -> np.ndarray:
    """The lasso optimum whose L1 norm is ``t`` (the norm grows linearly between knots as α falls)."""
    norms = np.abs(coefs).sum(1)
    return np.array([np.interp(t, norms, coefs[:, j]) for j in range(coefs.shape[1])])


def _l2_point(ridge: np.ndarray, r: float) -> np.ndarray:
    norms = np.linalg.norm(ridge, axis=1)[::-1]
    return np.array([np.interp(r, norms, ridge[::-1, j]) for j in range(ridge.shape[1])])


MINIMUM_COLORS = ("#fb8500", "#0969da", "#2da44e", "#8c959f")  # A, B, C, elsewhere


def named_minimum(ends: np.ndarray) -> np.ndarray:
    """Per end point, 0, 1 or 2 when it lies within ``SAME_MINIMUM`` of A (0, 0), B (1, 0) or C (0, 1), else 3."""
    named = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    distance = np.linalg.norm(ends[:, None, :] - named[None], axis=2)
    return np.where(distance.min(1) < SAME_MINIMUM, distance.argmin(1), 3)


def _landscape_figure(land: dict[str, Any]) -> Any:
    axis, surface = land["axis"], land["surface"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    levels = np.quantile(surface, np.linspace(0, 0.97, 25))
    for ax in axes:
        filled = ax.contourf(axis, axis, surface, levels=levels, cmap="viridis", extend="max")
        for (a, b), name, value in zip(((0, 0), (1, 0), (0, 1)), "ABC", land["minima_loss"]):
            ax.plot(a, b, "*", color="white", ms=13, mec="black")
            ax.annotate(f"{name} ({value:.4f})", (a, b), xytext=(7, -12), textcoords="offset points",
                        color="white", fontsize=8)
        ax.set(xlabel="a (toward B)", ylabel="b (toward C)", aspect="equal")
    fig.colorbar(filled, ax=axes, shrink=0.8, label="training loss (cross-entropy + L2)")
    paths = land["path"][0]
    for path, k in zip(paths, named_minimum(paths[:, -1])):
        axes[0].plot(*path.T, "-", color=MINIMUM_COLORS[k], lw=1.8)
        axes[0].plot(*path[0], "o", color=MINIMUM_COLORS[k], ms=7, mec="white")
    axes[0].set_title(f"seed 0: plain gradient descent (lr {LANDSCAPE_LR:g}) from {len(paths)} starts", fontsize=10)
    ends = land["path"][:, :, -1].reshape(-1, 2)
    starts = land["path"][:, :, 0].reshape(-1, 2)
    reached = named_minimum(ends)
    for k, name in enumerate(("A", "B", "C", "elsewhere")):
        mine = reached == k
        if mine.any():
            axes[1].scatter(*starts[mine].T, color=MINIMUM_COLORS[k], s=16, edgecolors="white", linewidths=0.4,
                            label=f"ends at {name}: {int(mine.sum())}")
    axes[1].legend(fontsize=7, loc="upper right")
    axes[1].set_title(f"all {len(starts)} starts, coloured by the minimum they reach", fontsize=10)
    return fig


def _lr_figure(lr: dict[str, Any]) -> Any:
    h, g, optimum = lr["h"], lr["g"], lr["optimum"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    w1, w2, surface = _loss_grid(h, g, optimum - 1.6, optimum + 1.6)
    axes[0].contour(w1, w2, surface, levels=np.quantile(surface, np.linspace(0.01, 0.9, 14)), colors="#8c959f",
                    linewidths=0.7, linestyles="solid")
    drawn = _off_axis_seed(lr)
    colors = {"too low": "#0969da", "good": "#1a7f37", "too high": "#cf222e"}
    shown = {"too low": None, "good": 15, "too high": 8}  # steps drawn: the diverging path leaves the frame
    for name, color in colors.items():
        run = lr[name]
        path = run["path"][drawn][: None if shown[name] is None else shown[name] + 1]
        axes[0].plot(*path.T, "o-", color=color, ms=3, lw=1.2,
                     label=f"{name}: lr {run['lr']:.3g} ({LR_FACTORS[name]:g}/λmax)")
        distance = run["distance"]
        steps = np.arange(distance.shape[1])
        for k, d in enumerate(distance):
            axes[1].plot(steps, d, color=color, lw=1, alpha=0.5, label=name if k == 0 else None)
    axes[0].plot(*optimum, "*", color="black", ms=12, label="minimum")
    axes[0].plot(*lr["too low"]["path"][drawn][0], "s", color="black", ms=6, label="start")
    axes[0].set(xlim=(optimum[0] - 1.6, optimum[0] + 1.6), ylim=(optimum[1] - 1.6, optimum[1] + 1.6),
                xlabel=f"weight of {FEATURES[0]}", ylabel=f"weight of {FEATURES[1]}", aspect="equal",
                title=f"paths on the least-squares loss (start of seed {drawn})")
    axes[0].legend(fontsize=7, loc="lower left")
    axes[1].set_yscale("log")
    axes[1].set_ylim(1e-6, 1e3)
    axes[1].axhline(1.0, color="black", lw=0.6)
    axes[1].set(xlabel="step", ylabel="distance to the minimum", title="every seed's start")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _off_axis_seed(lr: dict[str, Any]) -> int:
    """The seed whose start lies farthest from the Hessian's two axes (a start on an axis moves along a line)."""
    _, vectors = np.linalg.eigh(lr["h"])
    offset = lr["too low"]["path"][:, 0] - lr["optimum"]
    along = np.abs(offset @ vectors) / np.linalg.norm(offset, axis=1, keepdims=True)
    return int(np.argmax(along.min(1)))


def _histograms_figure(forward: dict[str, list[dict[str, np.ndarray]]], act: str) -> Any:
    stats = forward[act][0]
    layers = len(stats["zeros/std"])

    def cell(r: int, c: int) -> HistogramCell:
        init = list(INITS)[r]
        note = f"std {stats[f'{init}/std'][c]:.2g}" + (f"\nzeros {stats[f'{init}/zeros'][c]:.0%}" if act == "relu" else "")
        return stats[f"{init}/hist"][c], tuple(stats[f"{init}/range"][c]), note

    return histogram_grid([LABELS[init] for init in INITS], [f"hidden {c + 1}" for c in range(layers)], cell,
                          title=f"{act} activations per hidden layer")


def _tables(results: dict[str, Any]) -> list[Table]:
    paths, land, lr, forward = results["paths"], results["landscape"], results["lr"], results["forward"]
    path_rows = [[k, p["sparse_range"], p["l1_growth"], p["l2_min_ratio"]] for k, p in enumerate(paths)]
    ends = land["path"][:, :, -1]
    land_rows = [[k, len(set(distinct_minima(e))), float(land["end_loss"][k].min()),
                  float(land["end_loss"][k].max()), float(land["end_grad"][k].max())] for k, e in enumerate(ends)]
    lr_rows = [[name, run["lr"], float(np.mean(run["distance"][:, -1] / run["distance"][:, 0]))]
               for name, run in ((n, lr[n]) for n in LR_FACTORS)]
    init_rows = []
    for act in ACTIVATIONS:
        for init in INITS:
            s = forward[act]
            grows = [growth(v[f"{init}/std"]) for v in s if v[f"{init}/std"][0] > 0]
            init_rows.append([act, LABELS[init], mean_finite([v[f"{init}/std"][0] for v in s]),
                              mean_finite([v[f"{init}/std"][-1] for v in s]), mean_finite(grows) if grows else "-",
                              mean_finite([v[f"{init}/uneven"].max() for v in s]) if act in RANGES else "-"])
    return [
        Table("L1 and L2 paths per bootstrap resample",
              ["resample", "L1 sparse range", "largest L1-norm growth", "L2 smallest weight ratio"], path_rows),
        Table(f"Gradient descent on the landscape, per seed ({ends.shape[1]} starts)",
              ["seed", "distinct minima", "lowest end loss", "highest end loss", "largest end gradient"], land_rows),
        Table("Learning rates (mean over seeds)", ["rate", "lr", "distance at the end / at the start"], lr_rows),
        Table("Activations per initialization (means over seeds)",
              ["activation", "init", "std hidden 1", "std last hidden", "std growth per layer",
               "largest distance from flat"], init_rows),
    ]
