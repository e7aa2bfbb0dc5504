"""Console output shared by the command modules: one rich console for results, one for errors, the progress bar."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console()
err_console = Console(stderr=True)
USER_ERROR = 2  # exit code for mistakes in what the user gave us


def fail(message: str, code: int = USER_ERROR) -> None:
    """Print one error line (markup-safe) and exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def note(message: str) -> None:
    err_console.print(f"[yellow]note:[/] {escape(message)}", soft_wrap=True)


def progress_bar() -> Progress:
    """A progress bar with elapsed and remaining time and a `stats` field for live numbers."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console,
        transient=False,
    )


def quiet_transformers() -> None:
    """transformers' own warnings and download bars are noise on a command line."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
