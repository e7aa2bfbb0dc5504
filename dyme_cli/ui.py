"""Console output shared by the command modules: one rich console for results, one for errors, the progress bar."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import BadArgument

console = Console()
err_console = Console(stderr=True)
USER_ERROR = 2  # exit code for mistakes in what the user gave us
IMAGE_BAR_MIN = 1000  # images to decode before checking them gets a progress bar (fewer take seconds)


def is_main_process() -> bool:
    """False in the other processes of a run launched with `accelerate launch` (or torchrun), which set RANK: only
    the main one prints, or the terminal would show every line N times."""
    return os.environ.get("RANK", "0") == "0"


def fail(message: str, code: int = USER_ERROR) -> None:
    """Print one error line (markup-safe; by the main process only) and exit."""
    if is_main_process():
        err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def answer_flag_option(default: str | None = "Answer:", help_text: str = "Text that introduces the final answer."):
    """`--answer-flag`, refused when blank (completions are split at it), naming the option."""
    def not_blank(flag: str | None) -> str | None:
        if flag is not None and not flag.strip():
            raise typer.BadParameter("must not be blank: completions are split at it")
        return flag

    return typer.Option(default, "--answer-flag", help=help_text, callback=not_blank)


def output_file(path: Path | None, option: str, overwrite: bool = True) -> Path | None:
    """Check an output file option before any work is done, so that a bad path does not lose a finished result:
    BadArgument when it is a directory, lies under a file, or (unless `overwrite`) would replace a non-empty file."""
    if path is None:
        return None
    if path.is_dir():
        raise BadArgument(f"{option} {path}: is a directory; give a file name")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise BadArgument(f"{option} {path}: {blocking} is a file, not a folder")
    if not overwrite and path.is_file() and path.stat().st_size:
        raise BadArgument(f"{option} {path}: the file exists and is not empty; give a new file name")
    return path


def note(message: str) -> None:
    err_console.print(f"[yellow]note:[/] {escape(message)}", soft_wrap=True)


def progress_bar() -> Progress:
    """A progress bar with elapsed and remaining time and a `stats` field for live numbers (shown by the main
    process only)."""
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console,
        transient=False, disable=not is_main_process(),
    )


def quiet_transformers() -> None:
    """transformers' own warnings and download bars are noise on a command line."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def image_check_task(progress: Progress) -> Callable[[int, int], None]:
    """An `on_progress` for data.read_samples that adds a "checking images" task to `progress` once IMAGE_BAR_MIN or
    more images need decoding (fewer take seconds), and advances it."""
    task = None

    def on_progress(done: int, total: int) -> None:
        nonlocal task
        if task is None and total >= IMAGE_BAR_MIN:
            task = progress.add_task("checking images", total=total, stats="")
        if task is not None:
            progress.update(task, completed=done)

    return on_progress


@contextmanager
def image_check_progress() -> Iterator[Callable[[int, int], None]]:
    """image_check_task on a bar of its own, shown only when the task is added (an empty bar would print a line)."""
    progress = progress_bar()
    advance = image_check_task(progress)

    def on_progress(done: int, total: int) -> None:
        advance(done, total)
        if progress.tasks and not progress.live.is_started:
            progress.start()

    try:
        yield on_progress
    finally:
        if progress.live.is_started:
            progress.stop()
