"""`dyme train`: a run from a recipe, with a live progress bar; `--dry-run` prints the plan instead."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..ui import (StepLog, console, err_console, image_check_progress, image_check_task, is_main_process, live_stats,
                  note, progress_bar, quiet_transformers)


def train(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.toml", help="Training recipe."),
    output: Optional[Path] = typer.Option(None, "--output", help="Run directory (default: \\[run].output_dir)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override \\[train].max_steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the run directory."),
    allow_recipe_change: bool = typer.Option(
        False, "--allow-recipe-change", help="With --resume: go on although the recipe changes what the run trains "
        "(beyond its length, checkpointing and evaluation); the recorded recipe is kept as recipe.toml.step-N."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check data, verifiers, model and batch sizes and print the plan; train nothing."),
    processes: Optional[int] = typer.Option(
        None, "--processes", min=1, help="With --dry-run: plan for N processes (default: the launched number, else 1)."),
    layout: Optional[str] = typer.Option(
        None, "--layout", help="With --dry-run: plan for this layout of the model over the processes: replicate, "
        "shard or shard-grad-op (default: what the launch configuration asks for, CPU offload included, else "
        "replicate)."),
) -> None:
    """Train a model with DyME (or the SFT / GRPO baselines) from a TOML recipe."""
    from ..errors import BadArgument, UserError
    from ..processes import launched_offload
    from ..recipe import load_recipe
    from ..rundir import RunDir
    from ..trainer import TrainingInterrupted, train as run_training

    if allow_recipe_change and not resume:
        raise BadArgument("--allow-recipe-change goes with --resume: a new run has no recorded recipe to change")
    recipe = load_recipe(recipe_path)
    quiet_transformers()
    if dry_run and not is_main_process():  # launched: the main process prints the plan
        return
    if dry_run:
        _print_plan(recipe_path, recipe, max_steps, processes or int(os.environ.get("WORLD_SIZE", "1")),
                    planned_layout(layout), layout is None and launched_offload())
        return
    if not is_main_process():  # another process of a launched run: it trains its share, the main one reports
        _train_quietly(run_training, recipe, output_dir=output, max_steps=max_steps, resume=resume,
                       allow_recipe_change=allow_recipe_change)
        return
    history: list = []  # traces.StepMetrics of each step
    total = max_steps or recipe.train.max_steps
    live, log = console.is_terminal, StepLog(recipe.run.log_every)
    with progress_bar() as progress:
        task = progress.add_task("starting", total=total, stats="") if live else None

        def on_step(step: int, total_steps: int, metrics) -> None:
            history.append(metrics)
            if live:
                progress.update(task, completed=step, description=f"step {step}", stats=live_stats(metrics))
                return
            saved = step % recipe.run.save_every == 0 or step == total_steps
            log.step(metrics, total_steps, RunDir(Path(output or recipe.run.output_dir)).checkpoint(step) if saved
                     else None)

        try:
            result = run_training(
                recipe, output_dir=output, max_steps=max_steps, resume=resume,
                allow_recipe_change=allow_recipe_change, on_step=on_step, on_image_check=image_check_task(progress),
                on_message=lambda m: progress.console.print(escape(m), soft_wrap=True),
            )
        except TrainingInterrupted as exc:
            progress.stop()
            err_console.print(f"[yellow]{escape(str(exc))}[/]; continue with --resume")
            raise typer.Exit(exc.exit_code)
        except UserError:
            if not history:  # refused before its first step: the error is the one line left, no empty bar above it
                progress.live.transient = True
            raise
        if not history:  # a finished run resumed: nothing trained, the trainer's message says so
            progress.live.transient = True
    _print_summary(result, history)


def _train_quietly(run_training, recipe, **options) -> None:
    from ..trainer import TrainingInterrupted

    try:
        run_training(recipe, **options)
    except TrainingInterrupted as exc:
        raise typer.Exit(exc.exit_code)


def planned_layout(layout: Optional[str]) -> str:
    """--layout, checked, or the one the launch configuration asks for."""
    from ..errors import BadArgument
    from ..processes import LAYOUTS, launched_layout

    if layout is None:
        return launched_layout()
    if layout not in LAYOUTS:
        raise BadArgument(f"--layout: '{layout}' is not one of {', '.join(LAYOUTS)}")
    return layout


def _print_plan(recipe_path: Path, recipe, max_steps: Optional[int], processes: int, layout: str,
                offload: bool) -> None:
    from ..plan import dry_run

    with image_check_progress() as on_image_check:
        plan = dry_run(recipe, max_steps, on_image_check, processes, layout, offload)
    table = Table(title=f"dry run of {recipe_path}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("plan")
    for what, value in plan.facts:
        table.add_row(what, escape(value))
    console.print(table)
    for message in plan.notes:
        note(message)
    for problem in plan.problems:
        err_console.print(f"[bold red]error:[/] {escape(problem)}", soft_wrap=True)
    if plan.problems:
        raise typer.Exit(2)
    console.print("ok: the recipe is ready to train")


def _print_summary(result, history: list) -> None:
    if history:
        console.print(_mode_table(history))
    if result.checkpoint:
        console.print(f"checkpoint: {result.checkpoint}")
    for label, report in (("before", result.before), ("after", result.after)):
        if report is not None:
            s = report.overall.summary()
            console.print(f"held-out accuracy {label} training: [bold]{s['accuracy']:.1%}[/] (n={s['n']}, format {s['format_rate']:.1%})")


def _mode_table(history: list, windows: int = 4) -> Table:
    """Mode fractions and rollout accuracy over the run (traces.StepMetrics of each step), in a few step windows."""
    from ..dyme import Mode

    table = Table(title="DyME modes over the run")
    for column in ("steps", *(mode.value for mode in Mode), "rollout acc"):
        table.add_column(column, justify="right")
    size = max(1, -(-len(history) // windows))
    for start in range(0, len(history), size):
        window = history[start : start + size]
        groups = sum(m.groups for m in window) or 1
        accs = [m.accuracy for m in window if m.accuracy is not None]
        table.add_row(
            f"{window[0].step}-{window[-1].step}",
            *(f"{sum(m.modes.get(mode, 0) for m in window) / groups:.2f}" for mode in Mode),
            f"{sum(accs) / len(accs):.2f}" if accs else "-",
        )
    return table
