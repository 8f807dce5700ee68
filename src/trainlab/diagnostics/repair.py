"""Repair: for each finding of the doctor, try its fixes in order (each a set of dotted config overrides), each
over the same seeds as the unchanged config at the doctor's budget, and keep the first whose gain in validation
loss (or accuracy) is significant by a paired t-test (``trainlab.stats.verdict_compare``).

The seeds of one config train as one batch (``runs.Store.run_many``), and every run is cached by its config, so a
fix two findings share trains once. On a Ray cluster (``cluster=``, ``executors.run_jobs``) every candidate fix
trains at once first, each config's seeds one task (more runs than the search in order may need, which stops at
a finding's first significant fix, in one round trip); the decisions are the same. ``repair`` returns a ``RepairReport``: problem -> fix -> effect with its 95%
CI, the repaired config (``repaired.yaml``) and the doctor page with before/after curves.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from trainlab.checkpoints import atomic_write_text
from trainlab.diagnostics.doctor import DiagnosisReport, doctor, doctor_epochs
from trainlab.html import esc, image, table

if TYPE_CHECKING:
    from rich.console import Console

    from trainlab.config import RunConfig
    from trainlab.runs import RunResult
    from trainlab.stats import Comparison

# Three seeds are the fewest a paired t-test can judge (df = 2), and at df = 2 only a gain ~4.3 standard errors
# wide shows; five (df = 4, ~2.8) find real fixes of noisy sick runs and, batched, cost little more than three.
DEFAULT_SEEDS = 5
ALPHA = 0.05
Overrides = dict[str, Any]


def _scaled_lr(config: RunConfig, factor: float) -> Overrides:
    lr = getattr(config.optimizer, "lr", None)
    return {"optimizer.lr": float(f"{lr * factor:.3g}")} if isinstance(lr, float) else {}


def _auto_init(config: RunConfig) -> Overrides:
    """``auto`` picks He for ReLU-like activations and Xavier for sigmoid/tanh (``initializers.Auto``)."""
    return {} if config.model.init.name == "auto" else {"model.init.name": "auto"}


def _relu(config: RunConfig) -> Overrides:
    return {} if config.model.activation.name == "relu" else {"model.activation.name": "relu", **_auto_init(config)}


def _early_stopping(config: RunConfig) -> Overrides:
    if config.early_stopping is not None or config.data.val_fraction == 0:
        return {}
    return {"early_stopping": {"monitor": "val_loss", "patience": 3, "restore_best": True}}


def _bigger(config: RunConfig) -> Overrides:
    model = config.model
    if getattr(model, "widths", None) is None and hasattr(model, "depth"):
        return {"model.depth": max(2, model.depth), "model.width": max(64, 2 * model.width)}
    return {}


def _weight_decay(config: RunConfig) -> Overrides:
    return {"optimizer.weight_decay": 0.1} if "weight_decay" in type(config.optimizer).model_fields else {}


def _one(overrides: Overrides) -> Callable[[RunConfig], Overrides]:
    return lambda config: overrides


# The fixes of each problem, in the order they are tried; each builds overrides from the config (empty: n/a).
# Problems of a user's own code (loss_mismatch, linear_stack, frozen or missing parameters) or of the data
# (labels_no_signal, unscaled_targets) have no config override that fixes them.
FIXES: dict[str, tuple[Callable[[RunConfig], Overrides], ...]] = {
    "symmetric_units": (_auto_init,),
    "unscaled_inputs": (_one({"data.preprocess.name": "standardize"}),),
    "exploding_gradients": (_auto_init, _one({"model.norm": "batch"}), _one({"grad_clip": 1.0}),
                            lambda c: _scaled_lr(c, 0.1)),
    "divergence": (lambda c: _scaled_lr(c, 0.1), lambda c: _scaled_lr(c, 0.01), _one({"grad_clip": 1.0})),
    "saturation": (_auto_init, _one({"model.norm": "batch"}), _relu),
    "dead_units": (lambda c: _scaled_lr(c, 0.1), _one({"model.activation.name": "leaky_relu"})),
    "activation_collapse": (_auto_init, _one({"model.norm": "batch"})),
    "vanishing_gradients": (_relu, _one({"model.norm": "batch"})),
    "dropout_too_high": (_one({"model.dropout": 0.1}),),
    "oscillating_loss": (lambda c: _scaled_lr(c, 0.1), lambda c: _scaled_lr(c, 0.3)),
    "lr_too_high": (lambda c: _scaled_lr(c, 0.1), lambda c: _scaled_lr(c, 0.3)),
    "lr_too_low": (lambda c: _scaled_lr(c, 10.0), lambda c: _scaled_lr(c, 100.0)),
    "overfitting": (_early_stopping, _weight_decay, _one({"model.dropout": 0.3})),
    "underfitting": (_bigger, lambda c: _scaled_lr(c, 3.0)),
}


def fixes_for(code: str, config: RunConfig) -> list[Overrides]:
    """The overrides to try for a problem, in order, leaving out those that do not apply or change nothing."""
    from trainlab.config import load_config

    out = []
    for build in FIXES.get(code, ()):
        overrides = build(config)
        if overrides and overrides not in out and load_config(config, overrides) != config:
            out.append(overrides)
    return out


@dataclass(frozen=True)
class Attempt:
    """One fix tried for one problem: its overrides, the metric compared and the paired comparison (fixed - base)."""

    problem: str
    overrides: Overrides
    metric: str
    comparison: Comparison
    significant: bool

    def describe(self) -> str:
        fix = ", ".join(f"{k}={v}" for k, v in self.overrides.items())
        return (f"{self.problem} -> {fix}: {self.metric} {self.effect()} (p = {self.comparison.p:.2g}, "
                f"n = {self.comparison.a.n} paired seeds){'' if self.significant else ', not significant'}")

    def effect(self) -> str:
        """``0.82 -> 0.19, x0.23 [0.1, 0.5]``: a loss is compared on a log scale (a ratio, robust to one seed's
        blow-up), an accuracy as a difference; the bracket is the 95% CI."""
        c = self.comparison
        if self.metric.endswith("_loss"):
            return (f"{math.exp(c.b.mean):.4g} -> {math.exp(c.a.mean):.4g} (geometric means), x{math.exp(c.diff):.3g} "
                    f"[{math.exp(c.ci_low):.3g}, {math.exp(c.ci_high):.3g}]")
        return f"{c.b.mean:.4g} -> {c.a.mean:.4g}, {c.diff:+.3g} [{c.ci_low:.3g}, {c.ci_high:.3g}]"


@dataclass
class RepairReport:
    """The diagnosis, every fix tried, the merged overrides of the fixes kept and the repaired config."""

    diagnosis: DiagnosisReport
    attempts: list[Attempt]
    overrides: Overrides
    repaired: RunConfig
    unfixable: list[str] = field(default_factory=list)
    curves: dict[str, list[list[float]]] = field(default_factory=dict)

    @property
    def kept(self) -> list[Attempt]:
        return [a for a in self.attempts if a.significant]

    @property
    def fixed(self) -> bool:
        """Whether some fix gave a significant gain."""
        return bool(self.kept)

    def lines(self) -> list[str]:
        lines = [a.describe() for a in self.attempts]
        lines += [f"{code} -> no config fix to try (see the finding's advice)" for code in self.unfixable]
        return lines or ["nothing to repair"]

    def render(self, console: Console) -> None:
        from rich.markup import escape

        self.diagnosis.render(console)
        for line in self.lines():
            style = "green" if "not significant" not in line and "->" in line and "no config fix" not in line else ""
            console.print(f"[{style}]{escape(line)}[/]" if style else escape(line), highlight=False)

    def page_section(self) -> str:
        """The repair's table and before/after curves, for the doctor page."""
        from trainlab.figures import curves_figure, png_base64

        rows = [[a.problem, ", ".join(f"{k}={v}" for k, v in a.overrides.items()), a.metric, a.effect(),
                 f"{a.comparison.p:.2g}", "kept" if a.significant else "-"] for a in self.attempts]
        html = str(table(["problem", "fix", "metric", "before -> after, effect [95% CI]", "p", ""], rows,
                         cls="text"))
        if self.curves:
            fig = curves_figure(self.curves, title="Before and after the repair (mean, 95% band over seeds)",
                                xlabel="epoch", ylabel="val_loss")
            html += f"<figure>{image(png_base64(fig), 'before and after')}</figure>"
        return html + f"<pre>{esc(yaml.safe_dump(self.repaired.model_dump(mode='json'), sort_keys=False))}</pre>"

    def write(self, out_dir: str | Path) -> Path:
        """``repaired.yaml`` and ``doctor.html`` (with the repair section) into ``out_dir``."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "repaired.yaml", yaml.safe_dump(self.repaired.model_dump(mode="json"),
                                                                sort_keys=False))
        self.diagnosis.sections = [("Repair", self.page_section())]
        self.diagnosis.write_html(out / "doctor.html")
        return out / "repaired.yaml"


def _seeds(config: RunConfig, n: int) -> list[RunConfig]:
    from trainlab.config import load_config

    return [load_config(config, {"seed": config.seed + i}) for i in range(n)]


def _train_ahead(root: Path, configs: list[RunConfig], seeds: int, workers: int, cluster: str | None) -> None:
    """Train the ``seeds`` seeds of each config into the store at ``root`` in ``workers`` local processes or on
    ``cluster``, one job per config (its seeds one batch), all at once; configs that are the same train once."""
    from trainlab.executors import Job, check_shared, run_jobs, train_in_store
    from trainlab.runs import config_hash

    unique, shared = {config_hash(c): c for c in configs}, str(root.resolve())
    results = run_jobs([Job(f"repair · {key}", train_in_store, (shared, _seeds(config, seeds)))
                        for key, config in unique.items()], workers, cluster)
    if cluster is not None:
        check_shared(results, shared, cluster)


def _metric(base: list[RunResult], fixed: list[RunResult]) -> tuple[str, list[float], list[float], bool]:
    """(name, base values, fixed values, lower is better): the validation loss where every run has a finite one,
    else the validation accuracy (a diverged run still has one); the test split's when there is no validation."""
    finals = [r.final for r in base + fixed]
    split = "val" if all("val_loss" in f for f in finals) else "test"
    loss = f"{split}_loss"
    if all(math.isfinite(f.get(loss, math.nan)) for f in finals):
        name, lower = loss, True
    elif all(f"{split}_acc" in f for f in finals):
        name, lower = f"{split}_acc", False
    else:
        # Regression without a finite loss in some run: a diverged run scores as the worst finite loss seen, x10.
        worst = max((f[loss] for f in finals if math.isfinite(f.get(loss, math.nan))), default=1.0)
        values = [f[loss] if math.isfinite(f.get(loss, math.nan)) else 10 * worst for f in finals]
        return loss, values[:len(base)], values[len(base):], True
    return name, [r.final[name] for r in base], [r.final[name] for r in fixed], lower


def _attempt(problem: str, overrides: Overrides, base: list[RunResult], fixed: list[RunResult],
             alpha: float) -> Attempt:
    from trainlab.stats import verdict_compare

    name, before, after, lower = _metric(base, fixed)
    if name.endswith("_loss"):
        # Losses are positive and a sick seed's can be 100x the others': compared as log ratios.
        before, after = [math.log(max(v, 1e-12)) for v in before], [math.log(max(v, 1e-12)) for v in after]
    verdict, comparison = verdict_compare(after, before, "less" if lower else "greater", paired=True, alpha=alpha)
    return Attempt(problem, overrides, name, comparison, verdict == "supported")


def _val_curves(results: list[RunResult]) -> list[list[float]]:
    return [[h.get("val_loss", h.get("train_loss", math.nan)) for h in r.history] for r in results]


def repair(config: RunConfig, steps: int | None = None, *, full: bool = False, seeds: int = DEFAULT_SEEDS,
           alpha: float = ALPHA, out_dir: str | Path | None = None,
           store_dir: str | Path | None = None, cluster: str | None = None, workers: int = 1) -> RepairReport:
    """Diagnose ``config`` (``doctor``, same budget), then try each finding's fixes (``FIXES``) over ``seeds``
    seeds against the unchanged config; keep the first fix per finding whose gain is significant (paired t-test at
    ``alpha``). The repaired config is the config with every kept fix's overrides (the earlier finding's win where
    two set the same path). With ``out_dir``: ``repaired.yaml`` and ``doctor.html``; runs are cached under
    ``store_dir`` (default ``out_dir/runs``, or a temporary folder). ``cluster``, a Ray cluster's address, trains the
    candidate fixes there, all at once; ``store_dir`` must then be a folder every node sees. ``workers`` > 1 trains
    them all at once in that many local processes instead.
    """
    from trainlab.config import RunConfig, load_config

    if not isinstance(config, RunConfig):
        raise TypeError(f"The 'config' argument of repair must be a RunConfig (load_config makes one from a YAML "
                        f"path or a dict). Got {type(config).__name__} instead.")
    from trainlab.executors import check_cluster, check_workers

    check_cluster(cluster, check_workers(workers))
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 3:
        # A paired t-test needs at least three pairs to judge (df = 2).
        raise ValueError(f"The 'seeds' parameter of repair must be an int >= 3. Got {seeds!r} instead.")
    budget = load_config(config, {"epochs": doctor_epochs(config, steps, full)})
    diagnosis = doctor(budget, full=True)
    if store_dir is None and out_dir is not None:
        store_dir = Path(out_dir) / "runs"
    from trainlab.executors import connect

    with tempfile.TemporaryDirectory(prefix="trainlab-repair-") as tmp, (
            connect(cluster) if cluster is not None else contextlib.nullcontext()):
        report = _repair(budget, diagnosis, seeds, alpha, Path(store_dir) if store_dir is not None else Path(tmp),
                         workers, cluster)
    report.repaired = load_config(config, report.overrides)
    if out_dir is not None:
        report.write(out_dir)
    return report


def _repair(budget: RunConfig, diagnosis: DiagnosisReport, seeds: int, alpha: float, root: Path,
            workers: int = 1, cluster: str | None = None) -> RepairReport:
    from trainlab.config import load_config
    from trainlab.runs import Store

    store = Store(root)
    if workers > 1 or cluster is not None:
        _train_ahead(root, [budget, *(load_config(budget, overrides) for finding in diagnosis.findings
                                      if finding.severity != "info"
                                      for overrides in fixes_for(finding.code, budget))], seeds, workers, cluster)
    base = store.run_many(_seeds(budget, seeds))[0]
    attempts, unfixable, merged = [], [], {}
    for finding in diagnosis.findings:
        if finding.severity == "info":
            continue
        candidates = fixes_for(finding.code, budget)
        if not candidates:
            unfixable.append(finding.code)
        for overrides in candidates:
            fixed = store.run_many(_seeds(load_config(budget, overrides), seeds))[0]
            attempts.append(_attempt(finding.code, overrides, base, fixed, alpha))
            if attempts[-1].significant:
                merged = {**overrides, **merged}
                break
    curves = {"before": _val_curves(base)}
    if merged:
        if cluster is not None:
            _train_ahead(root, [load_config(budget, merged)], seeds, 1, cluster)
        curves["after"] = _val_curves(store.run_many(_seeds(load_config(budget, merged), seeds))[0])
    return RepairReport(diagnosis, attempts, merged, budget, unfixable, curves)
