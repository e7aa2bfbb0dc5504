"""`dyme prepare synthetic-*`: offline generators (no downloads), for demos, tests and smoke runs."""

from __future__ import annotations

from pathlib import Path

import typer

from ..ui import console, fail
from .app import prepare_app


@prepare_app.command("synthetic-chart")
def prepare_synthetic_chart(
    out: Path = typer.Option(..., "--out", help="Output folder for train.jsonl, test.jsonl and images/."),
    n_train: int = typer.Option(2000, "--n-train", min=1, help="Training samples."),
    n_test: int = typer.Option(200, "--n-test", min=0, help="Held-out samples."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same data."),
    reference_quality: str = typer.Option(
        "high", "--reference-quality",
        help="high: every value in a trace is true; medium: wrong values for bars the question does not use "
        "(pseudo thinking); low: verbose, unstructured traces.",
    ),
    min_bars: int = typer.Option(3, "--min-bars", help="Fewest bars in a chart (3-5)."),
    max_bars: int = typer.Option(5, "--max-bars", help="Most bars in a chart (3-5)."),
    max_value: int = typer.Option(9, "--max-value", help="Largest bar value; the value axis is scaled to it."),
    image_size: int = typer.Option(64, "--image-size", min=16, help="Side of the square images in pixels."),
    kinds: str = typer.Option(
        "value,largest,smallest,difference,sum", "--kinds", help="Comma-separated question kinds to draw from."
    ),
) -> None:
    """Render synthetic bar charts with questions, gold answers and reference traces."""
    from .prepare.synthetic_chart import generate

    if reference_quality not in ("high", "medium", "low"):
        fail(f"--reference-quality must be high, medium or low, not '{reference_quality}'")
    try:
        counts = generate(
            out, n_train=n_train, n_test=n_test, seed=seed, quality=reference_quality, min_bars=min_bars,
            max_bars=max_bars, max_value=max_value, image_size=image_size,
            kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
        )
    except ValueError as exc:
        fail(str(exc))
    console.print(f"wrote {counts['train']} train and {counts['test']} test samples to {out}")
