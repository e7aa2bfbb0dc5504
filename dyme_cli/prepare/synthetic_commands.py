"""`dyme prepare synthetic-*`: offline generators (no downloads), for demos, tests and smoke runs."""

from __future__ import annotations

from pathlib import Path

import typer

from ..ui import console, fail
from .app import prepare_app

N_TRAIN = typer.Option(2000, "--n-train", help="Training samples.")
N_TEST = typer.Option(200, "--n-test", help="Held-out samples.")
SEED = typer.Option(0, "--seed", help="Random seed; the same seed writes the same data.")


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _write(generate, out: Path, **settings) -> None:
    """Run a generator; its ValueError (a bad argument) is a one-line error."""
    try:
        counts = generate(out, **settings)
    except ValueError as exc:
        fail(str(exc))
    console.print(f"wrote {counts['train']} train and {counts['test']} test samples to {out}")


@prepare_app.command("synthetic-chart")
def prepare_synthetic_chart(
    out: Path = typer.Option(..., "--out", help="Output folder for train.jsonl, test.jsonl and images/."),
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = SEED,
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
    from .synthetic_chart import generate

    if reference_quality not in ("high", "medium", "low"):
        fail(f"--reference-quality must be high, medium or low, not '{reference_quality}'")
    _write(generate, out, n_train=n_train, n_test=n_test, seed=seed, quality=reference_quality, min_bars=min_bars,
           max_bars=max_bars, max_value=max_value, image_size=image_size, kinds=_kinds(kinds))


@prepare_app.command("synthetic-math")
def prepare_synthetic_math(
    out: Path = typer.Option(..., "--out", help="Output folder for train.jsonl and test.jsonl (text only)."),
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = SEED,
    reference_quality: str = typer.Option(
        "high", "--reference-quality",
        help="high: every value in a trace is true; medium: wrong intermediate results, right answer "
        "(pseudo thinking); low: verbose, unstructured traces.",
    ),
    min_steps: int = typer.Option(2, "--min-steps", help="Fewest arithmetic operations in a problem (2-6)."),
    max_steps: int = typer.Option(4, "--max-steps", help="Most arithmetic operations in a problem (2-6)."),
    max_number: int = typer.Option(50, "--max-number", help="Largest number in a problem, its steps and answer."),
) -> None:
    """Write GSM8K-style multi-step arithmetic word problems with step-by-step reference traces."""
    from .synthetic_math import generate

    _write(generate, out, n_train=n_train, n_test=n_test, seed=seed, quality=reference_quality, min_steps=min_steps,
           max_steps=max_steps, max_number=max_number)


@prepare_app.command("synthetic-medvqa")
def prepare_synthetic_medvqa(
    out: Path = typer.Option(..., "--out", help="Output folder for train.jsonl, test.jsonl and images/."),
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = SEED,
    reference_quality: str = typer.Option(
        "high", "--reference-quality",
        help="high: every finding in a trace is true; medium: wrong findings the answer does not depend on "
        "(pseudo thinking); low: verbose, unstructured traces.",
    ),
    image_size: int = typer.Option(64, "--image-size", help="Side of the square scans in pixels (64-512)."),
    kinds: str = typer.Option(
        "abnormality,count,side,location", "--kinds", help="Comma-separated question kinds to draw from."
    ),
) -> None:
    """Render phantom scans (an organ with 0-3 bright lesions) with medical VQA questions and reference traces."""
    from .synthetic_medvqa import generate

    _write(generate, out, n_train=n_train, n_test=n_test, seed=seed, quality=reference_quality, image_size=image_size,
           kinds=_kinds(kinds))
