"""Study 12: Newton, Newton-CG, CG, BFGS and L-BFGS against Adam, and what one Newton iteration costs.

Training part: a tanh MLP (one hidden layer of 16 units, no norm, no dropout: the full-batch optimizers of
``trainlab.second_order`` refuse both) on moons, trained once per seed by each method with the same initial weights.
Adam (lr 1e-2, minibatches of 32) is the reference; the others take one full-batch ``step(closure)`` per epoch of at
most ``max_iter`` iterations: 1 for Newton and Newton-CG (stateless, so an epoch is exactly one iteration), 10 for
CG and BFGS (scipy restarts them at every step, so one iteration per step would reduce both to steepest descent) and
for L-BFGS (torch's LBFGS called with max_iter = 1 stalls after a few epochs: its loss stops changing). Each method
gets the same budget of full-batch iterations (``iterations``); Adam gets ``epochs`` epochs.

Definitions fixed before measuring:

- *training loss*: the mean loss over the whole training split, evaluated at fit start and after every epoch
  (``EpochTrainLoss``), against the cumulative training time of the epochs (history's ``time_s``, step time only);
- *target*: ``TARGET_FRACTION`` x the training loss of the best constant prediction (``constant_loss``: the
  entropy of the training labels' frequencies, ln 2 on moons; for regression their variance): the same for every
  method and seed, whatever the initial weights;
- *iterations to the target*: ``measures.steps_to_target`` over the epochs (a miss counts as one epoch more than
  the run) times the iterations per epoch: Adam's minibatch steps, or a full-batch method's ``max_iter`` (an upper
  bound: a step may stop early at its tolerance);
- *seconds to the target*: the training time up to the first epoch at the target; a miss counts as the run's whole
  training time (a lower bound);
- *time per iteration* at m parameters: the median over ``repeats`` of the wall time of one ``step`` with
  max_iter = 1 of a fresh optimizer from the same initial weights, on a fixed batch (the seed's 256 training samples
  of the base dataset), for one-hidden-layer tanh MLPs of each width in ``widths`` (m = 5 x width + 2 on moons);
  for Newton that is one gradient, the m x m Hessian (m batched vector-Jacobian products), its Cholesky solve and the
  backtracking evaluations; for L-BFGS one gradient and its line search. The Cholesky solve alone (an m x m SPD
  matrix) is timed the same way, for reference;
- *cost exponent* b: the least-squares fit log t = a + b log m over the widths, per seed and method.

At these sizes (m up to ~10³) forming the Hessian, about m x (one backward pass of O(m) work per sample), is O(m²)
and dominates; the O(m³) solve only takes over at larger m. Fixed per-call overhead flattens the small-m end, so the
fitted b is a measurement of what the cost does over this range, not the asymptotic exponent.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from trainlab.callbacks import Callback
from trainlab.figures import curves_figure
from trainlab.optimizers import OPTIMIZERS
from trainlab.runs import RunResult
from trainlab.studies import register_study
from trainlab.studies.base import (Budget, Claim, ClaimResult, FigureRef, Study, StudyContext, Table, compare_result,
                                   joint, threshold_result)
from trainlab.studies.measures import mean_finite, reached, steps_to_target

MAX_PARAMS = 2000  # newton's max_params: room for the widest timed model (m = 1502) and digits' trained one (1210)
METHODS: dict[str, dict[str, Any]] = {
    "adam": {"name": "adam", "lr": 1e-2},
    "newton": {"name": "newton", "max_iter": 1, "max_params": MAX_PARAMS},
    "newton_cg": {"name": "newton_cg", "max_iter": 1},
    "cg": {"name": "cg", "max_iter": 10},
    "bfgs": {"name": "bfgs", "max_iter": 10},
    "lbfgs": {"name": "lbfgs", "max_iter": 10},
}
QUASI = ("bfgs", "lbfgs", "cg")
# On moons a nearly straight boundary plateaus at a loss of ~0.28 = 0.4 x ln 2; a quarter of the constant prediction's
# loss lies well below, so reaching it means the network has bent its boundary around the moons.
TARGET_FRACTION = 0.25
# "O(m³)" is read as growth: an exponent nearer 3 (the solve) than 2 (forming the Hessian) — halfway, 2.5, chosen
# before measuring. Below it the cost grows like the Hessian's m backward passes, not like the cubic solve.
CUBIC_EXPONENT = 2.5
# "Much slower": L-BFGS's exponent at least 1 below Newton's, i.e. its cost grows by a factor m less.
EXPONENT_GAP = 1.0
TIMED = ("newton", "lbfgs", "solve")
TIMING_VERSION = 1  # bump when the timing changes, so cached timings are measured again


@dataclass(frozen=True)
class SecondOrderBudget(Budget):
    iterations: int = 60  # full-batch iterations per run (epochs = iterations / max_iter)
    widths: tuple[int, ...] = (10, 20, 40, 80, 120)  # hidden widths of the timed models: m = 52 ... 602
    repeats: int = 3  # timings per width; the median is kept


class EpochTrainLoss(Callback):
    """Stores the loss over the whole training split at fit start and after every epoch in
    ``extras["train_curve"]`` (``trainer.evaluate``, not counted in the epoch's ``time_s``).

    Not ``per_replica``: each run then trains on its own, so its ``time_s`` is its own wall time (a batch of
    replicas would share one clock).
    """

    def on_fit_start(self, trainer: Any) -> None:
        self.losses = [trainer.evaluate("train")["loss"]]

    def on_epoch_end(self, trainer: Any) -> None:
        self.losses.append(trainer.evaluate("train")["loss"])

    def on_fit_end(self, trainer: Any) -> None:
        trainer.extras["train_curve"] = self.losses


def iterations_per_epoch(run: RunResult) -> int:
    """Adam's minibatch steps per epoch, or a full-batch method's ``max_iter`` (its one step's iteration cap)."""
    steps = int(run.final["steps"]) // max(int(run.final["epochs_run"]), 1)
    return steps * int(run.config["optimizer"].get("max_iter", 1))


def curve(run: RunResult) -> tuple[np.ndarray, np.ndarray]:
    """(training time in s, training loss) at fit start and after every epoch."""
    times = [0.0] + [float(row["time_s"]) for row in run.history]
    return np.asarray(times), np.asarray(run.extras["train_curve"], dtype=float)


def constant_loss(y: torch.Tensor, task: str) -> float:
    """The training loss of the best constant prediction: the entropy of the label frequencies (cross-entropy), or
    the variance of the targets (mean squared error)."""
    if task != "classification":
        return float(y.double().var(unbiased=False))
    p = torch.bincount(y).double() / len(y)
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def to_target(run: RunResult, target: float) -> tuple[int, float, bool]:
    """Iterations and seconds until the training loss reaches ``target`` (see the docstring), and whether it got
    there."""
    times, losses = curve(run)
    epochs = int(run.config["epochs"])
    hit = steps_to_target(losses[1:], target, epochs)
    got = reached(hit, epochs)
    return hit * iterations_per_epoch(run), float(times[hit]) if got else float(times[-1]), got


def fit_exponent(m: np.ndarray, seconds: np.ndarray) -> tuple[float, float]:
    """(a, b) of the least-squares line log t = a + b log m."""
    b, a = np.polyfit(np.log(m), np.log(seconds), 1)
    return float(a), float(b)


def _median_time(action: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_iterations(config: Any, repeats: int) -> dict[str, Any]:
    """Median seconds of one Newton iteration, one L-BFGS iteration and one m x m Cholesky solve for the model of
    ``config`` on its training split (see the docstring); ``m`` its parameter count."""
    from trainlab.trainer import build_trainer

    trainer = build_trainer(config)
    model, x, y = trainer.model, trainer.data.x_train, trainer.data.y_train
    start = parameters_to_vector(model.parameters()).detach().clone()

    def closure(backward: bool = True) -> torch.Tensor:
        loss = trainer.loss_fn(model(x), y)
        if not backward:
            return loss
        model.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach()

    def one_iteration(spec: dict[str, Any]) -> None:
        vector_to_parameters(start, model.parameters())
        OPTIMIZERS.create({**spec, "max_iter": 1}).build(model).step(closure)

    m = len(start)
    g = torch.Generator().manual_seed(config.seed)
    factor = torch.randn(m, m, generator=g)
    spd, rhs = factor @ factor.T / m + torch.eye(m), torch.randn(m, 1, generator=g)
    solve = lambda: torch.cholesky_solve(rhs, torch.linalg.cholesky_ex(spd)[0])  # noqa: E731
    return {"m": m, "newton": _median_time(lambda: one_iteration(METHODS["newton"]), repeats),
            "lbfgs": _median_time(lambda: one_iteration(METHODS["lbfgs"]), repeats),
            "solve": _median_time(solve, repeats)}


def claim_newton_cubic(r: dict[str, Any]) -> ClaimResult:
    return threshold_result(r["exponents"]["newton"], ">", CUBIC_EXPONENT,
                            "fitted exponent b of Newton's time per iteration ~ m^b")


def claim_fewer_iterations(r: dict[str, Any]) -> ClaimResult:
    # Counts spread over a decade between seeds: their logs (ratios) are compared, paired by seed.
    logs = {name: np.log10(r["iterations"][name]) for name in ("adam", *QUASI)}
    return joint({name: compare_result(logs[name], logs["adam"], "less", "log10 of the iterations to the target loss",
                                       (name, "adam")) for name in QUASI})


def claim_lbfgs_cheaper(r: dict[str, Any]) -> ClaimResult:
    e = r["exponents"]
    return compare_result(e["lbfgs"], e["newton"], "less", "fitted exponent b of the time per iteration ~ m^b",
                          ("lbfgs", "newton"), min_effect=EXPONENT_GAP)


CLAIMS = (
    Claim("newton_cubic", "Newton's method costs O(m³) per iteration in the parameter count m: its time per "
                          "iteration grows like m^b with b > 2.5.", claim_newton_cubic),
    Claim("quasi_fewer_iterations", "Quasi-Newton (BFGS, L-BFGS) and CG reach the target loss in fewer iterations "
                                    "than Adam.", claim_fewer_iterations),
    Claim("lbfgs_cheaper", "L-BFGS avoids Newton's cost: its time per iteration grows much slower with m (an "
                           "exponent at least 1 below Newton's).", claim_lbfgs_cheaper),
)


@register_study
class SecondOrder(Study[SecondOrderBudget]):
    name = "second_order"
    title = "Second-order and quasi-Newton methods"
    question = ("How do Newton, Newton-CG, CG, BFGS and L-BFGS compare with Adam in iterations and wall time to a "
                "target loss on a small network, and does Newton's cost grow as O(m³) in the parameter count m?")
    order = 12
    smoke = SecondOrderBudget(seeds=2, epochs=40, train_size=128, iterations=30, widths=(10, 20, 40, 80), repeats=2)
    quick = SecondOrderBudget(seeds=10, epochs=100, train_size=256)
    full = SecondOrderBudget(seeds=20, epochs=200, train_size=256, iterations=100,
                             widths=(10, 20, 40, 80, 160, 300), repeats=5)
    claims = CLAIMS

    def base_config(self) -> dict[str, Any]:
        return {"data": {"dataset": "moons", "batch_size": 32},
                "model": {"name": "mlp", "depth": 1, "width": 16, "activation": "tanh", "norm": "none",
                          "dropout": 0.0},
                "threads": 1}

    def measure(self, ctx: StudyContext[SecondOrderBudget]) -> dict[str, Any]:
        import scipy.optimize  # noqa: F401  (imported here so that the first timed scipy run does not pay for it)

        from trainlab.data import load_data

        b = ctx.budget
        cost = self._cost(ctx)
        data = load_data(ctx.run_config(self.base_config(), {}, ctx.seeds[0]).data)
        target = TARGET_FRACTION * constant_loss(data.y_train, data.task)
        arms = {name: {"optimizer": spec, "epochs": b.epochs if name == "adam" else b.iterations // spec["max_iter"]}
                for name, spec in METHODS.items()}
        runs = ctx.train_arms(self.base_config(), arms, callbacks_factory=lambda arm, seed: [EpochTrainLoss()])
        reach = {name: [to_target(run, target) for run in rs] for name, rs in runs.items()}
        return {"runs": runs, **cost, "target": target,
                "iterations": {name: [float(i) for i, _, _ in rs] for name, rs in reach.items()},
                "seconds": {name: [s for _, s, _ in rs] for name, rs in reach.items()},
                "reached": {name: [got for _, _, got in rs] for name, rs in reach.items()}}

    def _cost(self, ctx: StudyContext[SecondOrderBudget]) -> dict[str, Any]:
        """Time per iteration against m per seed (``time_iterations``, cached) and the fitted exponents."""
        b = ctx.budget
        base = {**self.base_config(), "optimizer": METHODS["newton"], "epochs": 1}
        timings = []
        with ctx.task(f"{self.name} · time per iteration", len(ctx.seeds) * len(b.widths)) as advance:
            for seed in ctx.seeds:
                row = []
                for width in b.widths:
                    # The base dataset, whatever --data says: m must stay within max_params.
                    config = ctx.run_config(base, {"model.width": width}, seed, use_data_override=False)
                    params = {"config": config.model_dump(mode="json"), "repeats": b.repeats,
                              "version": TIMING_VERSION}
                    row.append(ctx.cached("time_per_iteration", params,
                                          lambda c=config: time_iterations(c, b.repeats)))
                    advance()
                timings.append(row)
        m = np.array([t["m"] for t in timings[0]], dtype=float)
        seconds = {k: np.array([[t[k] for t in row] for row in timings]) for k in TIMED}
        fits = {k: [fit_exponent(m, s) for s in seconds[k]] for k in TIMED}
        return {"m": m, "time_per_iteration": seconds,
                "intercepts": {k: [a for a, _ in f] for k, f in fits.items()},
                "exponents": {k: [e for _, e in f] for k, f in fits.items()}}

    def present(self, results: dict[str, Any], ctx: StudyContext[SecondOrderBudget]
                ) -> tuple[list[FigureRef], list[Table]]:
        runs = results["runs"]
        figures = [ctx.figure(_training_figure(runs, results["target"]), "training",
                              "Training loss over the whole training split against iterations and against training "
                              f"time: mean over seeds with 95% band; dotted: the target ({TARGET_FRACTION:g} x the "
                              "loss of the best constant prediction)."),
                   ctx.figure(_cost_figure(results), "cost",
                              "Time per iteration against the parameter count m (log-log), one dot per seed and "
                              "width (median of repeats), with the least-squares line of the mean fit; b is the "
                              "mean fitted exponent.")]
        rows = [[name, int(np.mean([r.final.get("epochs_run", 0) for r in rs])), iterations_per_epoch(rs[0]),
                 mean_finite(results["iterations"][name]), sum(not got for got in results["reached"][name]),
                 mean_finite(results["seconds"][name]), mean_finite([curve(r)[1][-1] for r in rs]),
                 mean_finite([r.final.get("test_acc", np.nan) for r in rs])]
                for name, rs in runs.items()]
        table = Table(f"Reaching the target training loss {results['target']:.3g} (means over seeds)",
                      ["method", "epochs", "iterations per epoch", "iterations to target", "runs missing it",
                       "seconds to target", "final train loss", "test acc"], rows)
        m = results["m"]
        cost_rows = [[k, mean_finite(e), float(np.min(e)), float(np.max(e)),
                      mean_finite(results["time_per_iteration"][k][:, 0]),
                      mean_finite(results["time_per_iteration"][k][:, -1])] for k, e in results["exponents"].items()]
        cost = Table(f"Time per iteration against m = {', '.join(f'{x:g}' for x in m)} (fit over seeds)",
                     ["timed", "exponent b (mean)", "b min", "b max", f"seconds at m = {m[0]:g}",
                      f"seconds at m = {m[-1]:g}"], cost_rows)
        return figures, [table, cost]


def _on_grid(pairs: list[tuple[np.ndarray, np.ndarray]], grid: np.ndarray) -> list[np.ndarray]:
    """Each (x, loss) curve interpolated on ``grid``; NaN beyond the curve's end."""
    return [np.interp(grid, x, y, right=np.nan) for x, y in pairs]


def _training_figure(runs: dict[str, list[RunResult]], target: float) -> Any:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, rs in runs.items():
        by_time = [curve(r) for r in rs]
        by_iter = [(np.arange(len(losses)) * iterations_per_epoch(r), losses) for r, (_, losses) in zip(rs, by_time)]
        for ax, pairs in ((axes[0], by_iter), (axes[1], by_time)):
            first = min(float(x[1]) for x, _ in pairs)
            grid = np.geomspace(first, max(float(x[-1]) for x, _ in pairs), 80)
            curves_figure({name: _on_grid(pairs, grid)}, title="", xlabel="", ylabel="", x=grid, ax=ax)
    for ax, xlabel in zip(axes, ("iterations (Adam: minibatch steps)", "training time (s)")):
        ax.axhline(target, color="black", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set(title=f"training loss against {xlabel.split(' (')[0]}", xlabel=xlabel, ylabel="training loss")
    fig.tight_layout()
    return fig


def _cost_figure(results: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    m = results["m"]
    for key, label in (("newton", "Newton"), ("lbfgs", "L-BFGS"), ("solve", "Cholesky solve alone")):
        seconds = results["time_per_iteration"][key]
        a, b = float(np.mean(results["intercepts"][key])), float(np.mean(results["exponents"][key]))
        (line,) = ax.plot(m, np.exp(a) * m ** b, lw=1.4, label=f"{label}: b = {b:.2f}")
        ax.plot(np.tile(m, len(seconds)), seconds.ravel(), "o", ms=4, color=line.get_color(), alpha=0.7)
    ax.plot(m, results["time_per_iteration"]["newton"][:, -1].mean() * (m / m[-1]) ** 3, "k:", lw=1,
            label="m³ (through Newton's last point)")
    ax.set(xscale="log", yscale="log", title="time per iteration against the parameter count",
           xlabel="parameter count m", ylabel="seconds per iteration")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
