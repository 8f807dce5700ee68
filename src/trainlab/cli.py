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
from pydantic import ValidationError

from trainlab.registry import REGISTRIES, format_validation_error, registry

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Train neural networks well, and measure what each technique does.")


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Bad input ends the command with exit status 2 and its message, never a traceback.

    ``OSError`` covers a file that is missing, unreadable or unwritable (a read-only ``--out``, a full disk).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (ValueError, TypeError, OSError, ModuleNotFoundError) as e:
            fail(error_message(e))

    return wrapper


def error_message(err: Exception) -> str:
    """What ``err`` says to a user: pydantic's errors as one line each, with their path, value and rule."""
    if isinstance(err, ValidationError):
        return format_validation_error(err, None, err.title)
    return str(err) or type(err).__name__


def console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


@app.command("list")
@user_errors
def list_components(kind: Optional[str] = typer.Argument(None, help=f"One of: {', '.join(REGISTRIES)}.")) -> None:
    """List the registered components of one kind (or of every kind) with their one-line descriptions."""
    from rich.table import Table

    table = Table("kind", "name", "description", box=None, pad_edge=False)
    for k in [kind] if kind else REGISTRIES:
        for name, description in registry(k).describe().items():
            table.add_row(k, name, description)
    console().print(table)


@app.command()
@user_errors
def train(ctx: typer.Context,
          config: Path = typer.Argument(..., help="A run config (YAML); see examples/."),
          set_: list[str] = typer.Option([], "--set", help="Override a config value: --set optimizer.lr=3e-3."),
          out: Optional[Path] = typer.Option(None, "--out", help="Run directory [default: runs/<config>-<hash>]."),
          resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its checkpoint."),
          as_json: bool = typer.Option(False, "--json", help="Print the final summary as JSON on stdout."),
          quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
          probes: bool = typer.Option(False, "--probes", help="Record per-layer activation and gradient statistics "
                                                               "into the run directory (diagnostics.npz/.json)."),
          tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="Record the probes (as --probes) "
                                                     "and export them for TensorBoard into this folder."),
          nproc: int = typer.Option(1, "--nproc", min=1, help="Train data-parallel in N processes on this machine "
                                                               "(torchrun; gloo on CPU, NCCL on GPU): the result of "
                                                               "one process with the same batch_size.")) -> None:
    """Train one config; write the run directory (config, metrics, summary, checkpoint).

    Under torchrun ('torchrun ... -m trainlab.cli train CONFIG', any number of machines) each process trains its
    rank of one data-parallel run; --nproc N starts such a job on this machine.
    """
    from trainlab.config import load_config
    from trainlab.runs import config_hash, train as train_run

    cfg = load_config(config, set_)
    out = out or Path("runs") / f"{config.stem}-{config_hash(cfg)[:8]}"
    if nproc > 1:
        raise typer.Exit(_launch_train(ctx, cfg, out, resume, nproc))
    parallel = _join_torchrun(cfg)
    main = parallel is None or parallel.is_main
    callbacks = []
    if main and (probes or tensorboard is not None):
        from trainlab.diagnostics import Diagnostics, summary_writer_class

        if tensorboard is not None:
            summary_writer_class()  # fail before training if tensorboard is not installed
        callbacks.append(Diagnostics(out_dir=out, tensorboard_dir=tensorboard))
    try:
        result = train_run(cfg, out, callbacks=callbacks, progress=main and not quiet, resume=resume,
                           description=config.stem, parallel=parallel)
    except BaseException:
        if parallel is not None:
            parallel.close(synchronize=False)  # the other ranks may never get there: no barrier
        raise
    if parallel is not None:
        parallel.close()
    if not main:
        raise typer.Exit(1 if result.extras.get("diverged") else 0)  # rank 0 prints; every rank's status agrees
    if as_json:
        typer.echo(json.dumps({"run_dir": str(out), **result.final}, indent=2, default=float))
    elif not quiet:
        metrics = {k: v for k, v in result.final.items() if k.startswith("test_") or k.startswith("val_")}
        console().print(f"run: {out}  " + "  ".join(f"{k}={v:.4f}" for k, v in metrics.items()), highlight=False)
    if result.extras.get("diverged"):  # recorded as failed in summary.json; the exit status says so too
        kept = (out / "checkpoint.pt").is_file()
        typer.echo(f"error: the run failed: {result.final['stopped_reason']}. "
                   + (f"Its last good checkpoint is kept in {out}." if kept else "It diverged before its first "
                      "checkpoint.") + " Lower optimizer.lr, or see 'trainlab doctor'.", err=True)
        raise typer.Exit(1)


def _join_torchrun(cfg: Any) -> Any:
    """This process's rank of a data-parallel run when it runs under torchrun (``distributed.start``); else None."""
    import os

    from trainlab.distributed import ranks_from, start

    ranks = ranks_from(os.environ)
    return start(ranks, cfg) if ranks is not None else None


def _launch_train(ctx: typer.Context, cfg: Any, out: Path, resume: bool, nproc: int) -> int:
    """Run this ``train`` command again as ``nproc`` torchrun processes (``distributed.launch``); their exit status.

    What cannot shard, and a run directory that already holds a run, are refused here, before any process starts."""
    import os

    from trainlab.distributed import check_config, launch, ranks_from
    from trainlab.runs import refuse_existing_run

    if (ranks := ranks_from(os.environ)) is not None:
        fail(f"--nproc starts its own torchrun job, and this process already runs under torchrun (rank "
             f"{ranks.rank} of {ranks.world_size}). Leave --nproc out.")
    check_config(cfg, nproc)
    if not resume:
        refuse_existing_run(out)
    return launch(nproc, _command_line(ctx, {"out": out}, skip="nproc"))


def _command_line(ctx: typer.Context, values: dict[str, Any], skip: str) -> list[str]:
    """The command of ``ctx`` as arguments again, from its parsed parameters (every one, so a new option is never
    lost), with ``values`` in place of parsed ones and the parameter ``skip`` left out."""
    args = [ctx.info_name or ctx.command.name or ""]
    for param in ctx.command.params:
        value = values.get(param.name, ctx.params.get(param.name))
        if param.name == skip or value is None or value is False or param.expose_value is False:
            continue
        if param.param_type_name == "argument":
            args.append(str(value))
            continue
        flag = param.opts[0]
        if value is True and getattr(param, "is_flag", False):
            args.append(flag)
        elif isinstance(value, (list, tuple)):
            args += [a for item in value for a in (flag, str(item))]
        else:
            args += [flag, str(value)]
    return args


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

    from trainlab.figures import plot_schedules, save_figure
    from trainlab.schedules import SCHEDULES, preview

    try:
        raw = yaml.safe_load(spec)
    except yaml.YAMLError as e:
        from trainlab.config import yaml_problem

        fail(f"The schedule SPEC must be a name or a YAML mapping. Got {spec!r} ({yaml_problem(e)}).")
    sched = SCHEDULES.create(raw)
    lrs = preview(sched, steps, steps_per_epoch, lr)
    points = sorted({0, sched.warmup_steps, steps // 4, steps // 2, 3 * steps // 4, steps - 1} & set(range(steps)))
    table = Table("step", "lr", box=None)
    for s in points:
        table.add_row(str(s), f"{lrs[s]:.6g}")
    console().print(table)
    if plot is not None:
        save_figure(plot_schedules({sched.name: sched}, steps, steps_per_epoch, lr), plot)
        console().print(f"plot: {plot}")


@app.command("lr-find")
@user_errors
def lr_find(config: Path = typer.Argument(..., help="A run config (YAML); its optimizer and data are used."),
            min_lr: float = typer.Option(1e-6, "--min-lr", help="First learning rate."),
            max_lr: float = typer.Option(10.0, "--max-lr", help="Last learning rate."),
            steps: int = typer.Option(100, "--steps", min=2, help="Steps of the exponential sweep."),
            set_: list[str] = typer.Option([], "--set", help="Override a config value: --set optimizer.name=sgd."),
            plot: Optional[Path] = typer.Option(None, "--plot", help="Write the loss-vs-lr curve here (PNG).")) -> None:
    """LR range test (Smith 2017): raise the lr every step, watch the loss, suggest a learning rate."""
    from trainlab.config import load_config
    from trainlab.figures import save_lr_range_plot
    from trainlab.lr_range import lr_range_test

    result = lr_range_test(load_config(config, set_), min_lr, max_lr, steps)
    con = console()
    con.print(f"suggested lr: {result.suggested_lr:.3g} ({result.rule}; minimum loss at {result.min_loss_lr:.3g}, "
              f"steepest descent at {result.steepest_lr:.3g})", highlight=False)
    con.print(f"stopped: {result.stopped_reason} ({len(result.lrs)} steps)", highlight=False)
    if plot is not None:
        con.print(f"plot: {save_lr_range_plot(result, plot)}", highlight=False)


@app.command()
@user_errors
def search(config: Path = typer.Argument(..., help="A run config (YAML): the base every trial overrides."),
           space: Path = typer.Option(..., "--space", help="YAML: dotted path -> {low, high, log, step} or [choices]."),
           sampler: str = typer.Option("tpe", "--sampler", help="grid, random, tpe or coarse_to_fine."),
           trials: Optional[int] = typer.Option(None, "--trials", help="Trials to run [grid: every point]."),
           seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per trial; the objective is their mean."),
           workers: int = typer.Option(1, "--workers", min=1, help="Worker processes sharing the storage."),
           storage: Optional[str] = typer.Option(None, "--storage", help="Journal file path or Optuna storage URL "
                                                 "[default: OUT/journal.log]."),
           prune: str = typer.Option("none", "--prune", help="none, median, hyperband or wilcoxon (across seeds)."),
           grid_points: int = typer.Option(3, "--grid-points", min=2, help="Grid values per range."),
           seed: int = typer.Option(0, "--seed", min=0, help="Sampler seed."),
           set_: list[str] = typer.Option([], "--set", help="Override a base config value: --set epochs=5."),
           out: Path = typer.Option(Path("search"), "--out", help="Folder of the storage, runs, trials and page."),
           name: str = typer.Option("search", "--name", help="The study's name in the storage (searches sharing "
                                                             "one PostgreSQL database need their own)."),
           quiet: bool = typer.Option(False, "--quiet", help="No per-trial output.")) -> None:
    """Search hyperparameters with Optuna: trials, best config, plots (resumes a killed search in OUT)."""
    import yaml
    from rich.table import Table

    from trainlab.config import load_config
    from trainlab.search import make_spec, run_search

    spec = make_spec(load_config(config, set_), space, sampler=sampler, trials=trials, out=out, seeds=seeds,
                     workers=workers, storage=storage, prune=prune, grid_points=grid_points, seed=seed, name=name)
    con = console()
    announce = None if quiet else (lambda study, t: con.print(f"trial {t.number}: {t.state.name} {t.value} "
                                                             f"{t.params}", highlight=False))
    result = run_search(spec, announce)
    table = Table("study", "trial", "state", "value", *spec.space, box=None)
    for s in result.studies:
        for t in s.trials:
            table.add_row(s.study_name, str(t.number), t.state.name, "" if t.value is None else f"{t.value:.4f}",
                          *(str(t.params.get(p, "")) for p in spec.space))
    con.print(table)
    con.print(f"best {spec.metric} = {result.best_value:.4f} with {result.best_params}", highlight=False)
    con.print(yaml.safe_dump(result.best_config.model_dump(mode="json"), sort_keys=False), highlight=False)
    con.print("  ".join(f"{k}: {v}" for k, v in result.files.items()), highlight=False)


CLUSTER_HELP = ("Train {what} on a Ray cluster: its head's HOST:PORT, or 'auto' for the one running on this "
                "machine (OUT must be a folder every node sees).")


@app.command()
@user_errors
def doctor(config: Path = typer.Argument(..., help="A run config (YAML)."),
           steps: Optional[int] = typer.Option(None, "--steps", min=1,
                                               help="Train about this many steps [default: 250, whole epochs]."),
           full: bool = typer.Option(False, "--full", help="Train the config's own epochs instead."),
           repair: bool = typer.Option(False, "--repair", help="Try each finding's fixes over seeds; keep those "
                                                               "with a significant gain; write OUT/repaired.yaml."),
           seeds: Optional[int] = typer.Option(None, "--seeds", help="Seeds per config with --repair (>= 3) "
                                                                      "[default: 5]."),
           set_: list[str] = typer.Option([], "--set", help="Override a config value: --set optimizer.lr=3e-3."),
           out: Path = typer.Option(Path("doctor"), "--out", help="Where the record and doctor.html go."),
           cluster: Optional[str] = typer.Option(None, "--cluster",
                                                 help=CLUSTER_HELP.format(what="the fixes of --repair")),
           workers: int = typer.Option(1, "--workers", min=1, help="With --repair: train the candidate fixes at once "
                                                                   "in this many local processes."),
           tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="Export the record for "
                                                                               "TensorBoard here.")) -> None:
    """Train briefly with per-layer probes and print what is wrong, with the technique that fixes it."""
    from trainlab.config import load_config
    from trainlab.diagnostics import doctor as run_doctor
    from trainlab.diagnostics import repair as run_repair

    con = console()
    if repair:
        result = run_repair(load_config(config, set_), steps, full=full, out_dir=out, cluster=cluster,
                            workers=workers, **({"seeds": seeds} if seeds is not None else {}))
        result.render(con)
        con.print(f"repaired config: {out / 'repaired.yaml'}", highlight=False)
    else:
        if cluster is not None or workers != 1:
            fail("--cluster and --workers train the fixes of --repair; without --repair the doctor trains one short "
                 "run here.")
        report = run_doctor(load_config(config, set_), steps, full=full, out_dir=out, tensorboard_dir=tensorboard)
        report.render(con)
    con.print(f"report: {out / 'doctor.html'}", highlight=False)


def parse_data(value: Optional[str]) -> Any:
    """``--data``: a dataset name or a YAML mapping of data fields."""
    if value is None:
        return None
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        from trainlab.config import yaml_problem

        fail(f"--data must be a dataset name or a YAML mapping of data fields. Got {value!r} ({yaml_problem(e)}).")
    if not isinstance(parsed, (str, dict)):
        fail(f"--data must be a dataset name or a YAML mapping of data fields. Got {value!r}.")
    return parsed


@app.command()
@user_errors
def study(name: str = typer.Argument(..., help="A study name, or 'all'. 'trainlab study list' lists them."),
          quick: bool = typer.Option(False, "--quick", help="The quick budget (>= 10 seeds) instead of the full one "
                                                            "(>= 20 seeds)."),
          smoke: bool = typer.Option(False, "--smoke", hidden=True, help="The tests' tiny budget."),
          seeds: Optional[int] = typer.Option(None, "--seeds", min=1, help="Number of seeds [default: the budget's]."),
          data: Optional[str] = typer.Option(None, "--data", help="Replace the dataset of trained runs: a name "
                                                                  "('digits') or a YAML mapping of data fields."),
          out: Path = typer.Option(Path("reports"), "--out", help="Report folder (runs are cached in OUT/runs/<study>)."),
          workers: int = typer.Option(1, "--workers", min=1, help="Studies run at once, each in its own process "
                                                                  "(cores / workers threads each)."),
          cluster: Optional[str] = typer.Option(None, "--cluster", help=CLUSTER_HELP.format(what="the arms")),
          quiet: bool = typer.Option(False, "--quiet", help="No progress bars.")) -> None:
    """Run a study (or all): train its arms over seeds, test each claim, write the HTML report."""
    from rich.table import Table

    from trainlab.studies import STUDIES, run_studies

    con = console()
    if name == "list":
        table = Table("study", "question", box=None)
        for s in STUDIES.values():
            table.add_row(s.name, s.question)
        con.print(table)
        return
    mode = "smoke" if smoke else "quick" if quick else "full"

    def announce(outcome: Any) -> None:
        counts = {v: sum(c.verdict == v for c in outcome.claims) for v in ("supported", "refuted", "inconclusive")}
        con.print(f"{outcome.name}: " + ", ".join(f"{n} {v}" for v, n in counts.items())
                  + f" ({outcome.runtime_s:.0f} s, {outcome.runs_trained} runs trained)", highlight=False)

    run_studies(name, mode=mode, seeds=seeds, data=parse_data(data), out=out, progress=not quiet, workers=workers,
                cluster=cluster, on_outcome=announce)
    con.print(f"report: {out / 'index.html'}", highlight=False)


@app.command()
@user_errors
def report(folder: Path = typer.Argument(Path("reports"), help="A study output folder.")) -> None:
    """Re-render the HTML report from stored study outcomes (no training)."""
    from trainlab.report import render_report

    if not (folder / "outcomes").is_dir():
        fail(f"{str(folder)!r} holds no study outcomes (no outcomes/ folder). Run 'trainlab study' first.")
    console().print(f"report: {render_report(folder)}", highlight=False)


@app.command()
@user_errors
def ablate(config: Path = typer.Argument(..., help="Your run config (YAML)."),
           seeds: int = typer.Option(10, "--seeds", min=2, help="Seeds per variant (paired with the baseline)."),
           set_: list[str] = typer.Option([], "--set", help="Override a config value: --set epochs=10."),
           out: Path = typer.Option(Path("ablation"), "--out", help="Report folder (runs cached in OUT/runs)."),
           quiet: bool = typer.Option(False, "--quiet", help="No progress bars.")) -> None:
    """Toggle each technique of your config in turn and rank them by their effect on the validation metric."""
    from rich.table import Table

    from trainlab.config import load_config
    from trainlab.studies import ablate as run_ablate

    outcome = run_ablate(load_config(config, set_), seeds=seeds, out=out, progress=not quiet)
    table = Table(*outcome.tables[0].header, box=None) if outcome.tables else None
    con = console()
    if table is not None:
        for row in outcome.tables[0].rows:
            table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row))
        con.print(table)
    con.print(f"report: {out / 'ablation.html'}", highlight=False)


@app.command()
@user_errors
def ensemble(config: Path = typer.Argument(..., help="A run config (YAML) of a classification task."),
             method: str = typer.Option(..., "--method", help="bagging, boosting, averaging, voting, snapshot or swa."),
             members: int = typer.Option(5, "--members", help="K: members (snapshot: cycles; swa: epochs averaged)."),
             set_: list[str] = typer.Option([], "--set", help="Override a config value: --set epochs=10."),
             out: Path = typer.Option(Path("ensemble"), "--out", help="Where ensemble.json goes."),
             as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
             cluster: Optional[str] = typer.Option(None, "--cluster", help=CLUSTER_HELP.format(what="the members")),
             workers: int = typer.Option(1, "--workers", min=1, help="bagging: train the members in this many local "
                                                                     "processes."),
             quiet: bool = typer.Option(False, "--quiet", help="Print nothing but errors.")) -> None:
    """Train an ensemble and compare it on the test split with its average and its best member."""
    from rich.table import Table

    from trainlab.config import load_config
    from trainlab.ensembles import run_ensemble

    summary = run_ensemble(load_config(config, set_), method, members, out=out, cluster=cluster, workers=workers)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=float))
    elif not quiet:
        table = Table("test", "accuracy", box=None)
        table.add_row(f"ensemble ({summary['method']}, {summary['members']} members)", f"{summary['accuracy']:.4f}")
        table.add_row("average member", f"{summary['mean_member_accuracy']:.4f}")
        table.add_row("best member", f"{summary['best_member_accuracy']:.4f}")
        table.add_row("ensemble log-loss", f"{summary['log_loss']:.4f}")
        con = console()
        con.print(table)
        con.print(f"summary: {out / 'ensemble.json'}", highlight=False)


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """Warnings from trainlab print as one line on stderr, as errors do (no source path or code line)."""
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main() -> None:
    import warnings

    warnings.showwarning = _show_warning
    app()


if __name__ == "__main__":
    sys.exit(main())
