"""Console output shared by the command modules: one rich console for results, one for errors."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err_console = Console(stderr=True)
USER_ERROR = 2  # exit code for mistakes in what the user gave us


def fail(message: str, code: int = USER_ERROR) -> None:
    """Print one error line (markup-safe) and exit."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)
