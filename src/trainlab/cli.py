"""The ``trainlab`` command line: parses arguments and calls the library; no logic of its own.

Imports of torch and friends happen inside the commands so that ``trainlab --help`` answers fast.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Train neural networks well, and measure what each technique does.")

KINDS = {
    "initializer": ("trainlab.initializers", "INITIALIZERS"),
    "activation": ("trainlab.activations", "ACTIVATIONS"),
    "model": ("trainlab.models", "MODELS"),
    "regularizer": ("trainlab.regularizers", "REGULARIZERS"),
    "optimizer": ("trainlab.optimizers", "OPTIMIZERS"),
    "schedule": ("trainlab.schedules", "SCHEDULES"),
    "dataset": ("trainlab.data", "DATASETS"),
    "preprocessor": ("trainlab.data", "PREPROCESSORS"),
    "augmentation": ("trainlab.augment", "AUGMENTATIONS"),
}


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends the command with exit status 2 and its message, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ValueError, TypeError, FileNotFoundError) as e:
            fail(str(e))

    return wrapper


def registry(kind: str) -> Any:
    import importlib

    module, name = KINDS[kind]
    return getattr(importlib.import_module(module), name)


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


@app.command("list")
@user_errors
def list_components(kind: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(KINDS)}.")) -> None:
    """List the registered components of one kind (or of every kind) with their one-line descriptions."""
    from rich.table import Table

    from trainlab.registry import suggest

    if kind is not None and kind not in KINDS:
        fail(f"Unknown kind {kind!r}. {suggest(kind, list(KINDS))}Available: {', '.join(KINDS)}.")
    table = Table("kind", "name", "description", box=None, pad_edge=False)
    for k in [kind] if kind else KINDS:
        for name, description in registry(k).describe().items():
            table.add_row(k, name, description)
    console().print(table)


@app.command()
@user_errors
def train(config: Path = typer.Argument(..., help="A run config (YAML); see examples/."),
          set_: list[str] = typer.Option([], "--set", help="Override a config value: --set optimizer.lr=3e-3."),
          out: Optional[Path] = typer.Option(None, "--out", help="Run directory [default: runs/<config>-<hash>]."),
          resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
          as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON on stdout."),
          quiet: bool = typer.Option(False, "--quiet", help="No progress output.")) -> None:
    """Train one config; write the run directory (config, metrics, summary, checkpoint)."""
    from trainlab.config import load_config
    from trainlab.store import config_hash, train as train_run

    cfg = load_config(config, set_)
    out = out or Path("runs") / f"{config.stem}-{config_hash(cfg)[:8]}"
    result = train_run(cfg, out, progress=not quiet, resume=resume, description=config.stem)
    if as_json:
        typer.echo(json.dumps({"run_dir": str(out), **result.final}, indent=2, default=float))
    elif not quiet:
        metrics = {k: v for k, v in result.final.items() if k.startswith("test_") or k.startswith("val_")}
        console().print(f"run: {out}  " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()), highlight=False)


@app.command()
@user_errors
def schedule(spec: str = typer.Argument(..., help="A schedule name or YAML mapping, e.g. "
                                                  "'{name: cosine, warmup_steps: 100}'."),
             steps: int = typer.Option(..., "--steps", min=1, help="Total training steps."),
             steps_per_epoch: int = typer.Option(1, "--steps-per-epoch", min=1),
             lr: float = typer.Option(1.0, "--lr", help="Base (peak) learning rate the schedule multiplies."),
             plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of the curve here.")) -> None:
    """Preview a learning-rate schedule: the lr at key steps, and optionally a plot."""
    import yaml
    from rich.table import Table

    from trainlab.schedules import SCHEDULES, plot_preview, preview

    try:
        raw = yaml.safe_load(spec)
    except yaml.YAMLError as e:
        fail(f"The schedule SPEC must be a name or a YAML mapping. Got {spec!r} ({e}).")
    sched = SCHEDULES.create(raw)
    lrs = preview(sched, steps, steps_per_epoch, lr)
    points = sorted({0, sched.warmup_steps, steps // 4, steps // 2, 3 * steps // 4, steps - 1} & set(range(steps)))
    table = Table("step", "lr", box=None)
    for s in points:
        table.add_row(str(s), f"{lrs[s]:.6g}")
    console().print(table)
    if plot is not None:
        plot_preview({sched.name: sched}, steps, steps_per_epoch, lr, plot)
        console().print(f"plot: {plot}")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
