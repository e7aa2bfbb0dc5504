"""`dyme compare`: DyME and the paper's baselines on one recipe's data, model and budget, with a table of
held-out accuracy (mean ± sd over seeds), pseudo-thinking flag rates and training time, and a plot."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import BadArgument
from ..ui import console, progress_bar, quiet_transformers

ALL_METHODS = "dyme,sft,grpo,sft-grpo,threshold,anneal"


def compare_command(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.toml", help="The recipe every method shares."),
    methods: str = typer.Option(ALL_METHODS, "--methods", help="Comma-separated methods to train."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds; every method runs once per seed."),
    lrs: Optional[str] = typer.Option(
        None, "--lrs", help="Comma-separated learning rates to choose from per method, on --val "
        "(default: the recipe's [optim].lr for every method)."),
    val: Optional[Path] = typer.Option(None, "--val", help="Validation JSONL the learning rate is chosen on."),
    out: Path = typer.Option(Path("runs/compare"), "--out", help="Folder for the runs, compare.json and accuracy.png."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override [train].max_steps."),
    selection_seed: int = typer.Option(1000, "--selection-seed", help="Seed of the learning-rate selection runs."),
    sft_fraction: float = typer.Option(0.5, "--sft-fraction", min=0.0, max=1.0,
                                       help="Share of the steps sft-grpo spends on SFT."),
) -> None:
    """Train DyME, SFT, GRPO, SFT→GRPO and the paper's other switching strategies from the same start, on the
    same data and budget, and compare them on the recipe's test split."""
    from ..compare import PLOT_FILE, RESULT_FILE, compare
    from ..recipe import load_recipe

    recipe = load_recipe(recipe_path)
    if max_steps:
        recipe.train.max_steps = max_steps
    quiet_transformers()
    with progress_bar() as progress:
        task = progress.add_task("starting", total=None, stats="")
        comparison = compare(
            recipe, methods=_items(methods, str, "--methods"), seeds=_items(seeds, int, "--seeds"),
            lrs=_items(lrs, float, "--lrs") if lrs else (), val=val, out=out, selection_seed=selection_seed,
            sft_fraction=sft_fraction, on_run=lambda label: progress.update(task, description=escape(label)),
            on_message=lambda m: progress.console.print(escape(m)),
        )
    console.print(_table(comparison))
    console.print(f"results: {out / RESULT_FILE}; held-out accuracy over steps: {out / PLOT_FILE}")


def _items(text: str, kind, option: str) -> list:
    try:
        return [kind(item.strip()) for item in text.split(",") if item.strip()]
    except ValueError:
        raise BadArgument(f"{option} '{text}': expected a comma-separated list of {kind.__name__} values") from None


def _pm(value: tuple[float, float], percent: bool = True) -> str:
    m, s = value
    return f"{100 * m:.1f} ± {100 * s:.1f}" if percent else f"{m:.1f} ± {s:.1f}"


def _table(comparison) -> Table:
    seeds = len(comparison.base)
    base = sum(comparison.base) / seeds
    table = Table(title=f"held-out accuracy and pseudo thinking, mean ± sd over {seeds} seed(s); the start: {100 * base:.1f}%")
    for column in ("method", "lr", "accuracy %", "format %", "ungrounded %", "right-for-wrong %",
                   "mismatch %", "mem / exp / skip", "train s"):
        table.add_column(column, justify="left" if column == "method" else "right")
    for s in comparison.summaries():
        table.add_row(
            s.method, f"{s.lr:g}", _pm(s.accuracy), _pm(s.format_rate), _pm(s.flags["ungrounded-value"]),
            _pm(s.flags["right-for-wrong-reasons"]), _pm(s.flags["conclusion-mismatch"]),
            " / ".join(f"{s.modes[m]:.2f}" for m in ("memorize", "explore", "skip")), f"{s.train_s:.0f}",
        )
    return table
