"""`dyme compare`: DyME and the paper's baselines on one recipe's data, model and budget, with a table of
held-out accuracy (mean ± sd over seeds), pseudo-thinking flag rates and training time, and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..dyme import METHODS, Mode
from ..errors import BadArgument
from ..ui import StepLog, console, err_console, live_stats, progress_bar, quiet_transformers

ALL_METHODS = ",".join(METHODS)


def compare_command(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.toml", help="The recipe every method shares."),
    methods: str = typer.Option(ALL_METHODS, "--methods", help="Comma-separated methods to train."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds; every method runs once per seed."),
    lrs: Optional[str] = typer.Option(
        None, "--lrs", help="Comma-separated learning rates each method chooses from on --val, and/or METHOD=LR "
        "pairs that fix a method's lr (default: the recipe's \\[optim].lr for every method)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation JSONL the learning rate is chosen on."),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Folder for the runs, compare.json and accuracy.png."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override \\[train].max_steps."),
    selection_seed: int = typer.Option(1000, "--selection-seed", help="Seed of the learning-rate selection runs."),
    sft_fraction: float = typer.Option(0.5, "--sft-fraction", min=0.0, max=1.0,
                                       help="Share of the steps sft-grpo spends on SFT."),
) -> None:
    """Train DyME, SFT, GRPO, SFT→GRPO and the paper's other switching strategies from the same start, on the
    same data and budget, and compare them on the recipe's test split."""
    from ..compare import PLOT_FILE, RESULT_FILE, check_methods, compare
    from ..recipe import load_recipe
    from ..trainer import TrainingInterrupted

    recipe = load_recipe(recipe_path)
    chosen = check_methods(_items(methods, str, "--methods"))  # before the progress bar: an error is one line
    candidates, method_lrs = _learning_rates(lrs or "")
    if max_steps:
        recipe.train.max_steps = max_steps
    quiet_transformers()
    live, log = console.is_terminal, StepLog(recipe.run.log_every)

    def on_run(label: str) -> None:
        log.restart(f"{label}: ")
        progress.update(task, description=escape(label), completed=0, total=None, stats="")

    def on_step(step: int, total: int, metrics) -> None:
        """On a terminal the run's bar; in a log its step lines, labelled with the run."""
        if live:
            progress.update(task, completed=step, total=total, stats=live_stats(metrics))
        else:
            log.step(metrics, total)

    with progress_bar() as progress:
        task = progress.add_task("starting", total=None, stats="")
        try:
            comparison = compare(
                recipe, methods=chosen, seeds=_items(seeds, int, "--seeds"),
                lrs=candidates, method_lrs=method_lrs, val=val, out=out, selection_seed=selection_seed,
                sft_fraction=sft_fraction, on_run=on_run, on_message=lambda m: progress.console.print(escape(m)),
                on_step=on_step,
            )
        except TrainingInterrupted as exc:
            progress.stop()
            err_console.print(f"[yellow]{escape(str(exc))}[/]; run the same command again to continue")
            raise typer.Exit(exc.exit_code)
    for table in _tables(comparison):
        console.print(table)
    console.print(f"results: {out / RESULT_FILE}; held-out accuracy over steps: {out / PLOT_FILE}")


def _items(text: str, kind, option: str) -> list:
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise BadArgument(f"{option} '{text}': expected a comma-separated list of {kind.__name__} values") from None


def _learning_rates(text: str) -> tuple[list[float], dict[str, float]]:
    """`--lrs`: bare values are candidates for every method, METHOD=LR pairs fix one method's lr."""
    candidates, fixed = [], {}
    for method, eq, value in (item.partition("=") for item in _items(text, str, "--lrs")):
        try:
            lr = float(value if eq else method)
        except ValueError:
            raise BadArgument(f"--lrs '{text}': expected learning rates and METHOD=LR pairs, separated by commas") from None
        if eq:
            fixed[method.strip()] = lr
        else:
            candidates.append(lr)
    return candidates, fixed


def _tables(comparison) -> list[Table]:
    """Accuracy and costs, then the pseudo-thinking flags of the held-out completions; mean ± sd over seeds."""
    from ..compare import FLAGS

    seeds = len(comparison.base)
    spread = f"mean ± sd over {seeds} seeds" if seeds > 1 else "one seed"

    def pm(value: tuple[float, float]) -> str:
        return f"{100 * value[0]:.1f} ± {100 * value[1]:.1f}" if seeds > 1 else f"{100 * value[0]:.1f}"

    summaries = comparison.summaries()
    scores = Table(title=f"held-out accuracy (%), {spread}; the starting model: {100 * sum(comparison.base) / seeds:.1f}")
    for column in ("method", "lr", "accuracy", "format", "memorize/explore/skip", "train s"):
        scores.add_column(column, justify="left" if column == "method" else "right")
    for s in summaries:
        scores.add_row(s.method, f"{s.lr:g}", pm(s.accuracy), pm(s.format_rate),
                       " / ".join(f"{s.modes[m.value]:.2f}" for m in Mode), f"{s.train_s:.0f}")
    flags = Table(title=f"pseudo thinking in the held-out completions (% flagged), {spread}")
    for column in ("method", *FLAGS):
        flags.add_column(column, justify="left" if column == "method" else "right")
    for s in summaries:
        flags.add_row(s.method, *(pm(s.flags[name]) for name in FLAGS))
    return [scores, flags]
