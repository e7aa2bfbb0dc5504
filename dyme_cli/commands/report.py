"""`dyme report`: a run's curves, or several runs' side by side, as one self-contained HTML page of PNG plots."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..ui import err_console, output_file


def report_command(
    runs: list[Path] = typer.Argument(..., metavar="RUN...", help="Run directories (one, or several to compare)."),
    out: Optional[Path] = typer.Option(
        None, "--out", help="The HTML file to write (default: RUN/report.html for one run, report.html for several)."),
) -> None:
    """Plot a run's curves, or several runs' side by side, into one HTML page.

    The reward by component, mode shares, rollout and held-out accuracy, loss, gradient norm, throughput, memory,
    step time and the pseudo-thinking flag rates of the logged rollouts, read from the run directories while they
    train or after."""
    from ..run_report import report

    target = output_file(out or (runs[0] / "report.html" if len(runs) == 1 else Path("report.html")), "--out")
    written = report(runs, target)
    err_console.print(f"wrote {written}")
