"""Console output shared by the command modules: one rich console for results, one for errors, the progress bar."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import typer
from rich.console import Console
from rich.errors import MarkupError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text

from .errors import BadArgument

# Output that is no terminal (a file, a pipe, a scheduler's log) has no width to fit: tables are laid out 160
# columns wide there (COLUMNS, when set, wins), so that a column name or a number is never cut to 80.
LOG_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160
console = Console(width=LOG_WIDTH)
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
    process only); on output that is no terminal (a file, a pipe, a scheduler's log), PlainProgress's lines."""
    if not console.is_terminal:
        return PlainProgress()
    return StatsBelowProgress(*bar_columns(), console=console, transient=False, disable=not is_main_process())


def bar_columns() -> list:
    """The live bar's columns: what, a bar, done/total, elapsed, ETA (a task's `stats` go below, StatsBelowProgress)."""
    return [TextColumn("[bold]{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("eta"), TimeRemainingColumn()]


class StatsBelowProgress(Progress):
    """The bar on one line and each task's `stats` on the next, so that neither is cut on an 80-column terminal."""

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            if task.visible and task.fields.get("stats"):
                yield Text.from_markup("  " + task.fields["stats"])


class PlainProgress(Progress):
    """Progress for output that is no terminal: nothing live, one plain line when a task is added, when its
    description changes, each time it passes another tenth of its total, and when it completes (elapsed and ETA
    included), so that a log file shows how far a long phase is."""

    def __init__(self):
        super().__init__(console=console, disable=True)
        self._said: dict = {}  # task -> (description, tenths passed)

    def add_task(self, description, *args, **kwargs):
        task = super().add_task(description, *args, **kwargs)
        self._say(task)
        return task

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._say(task_id)

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._say(task_id)

    def _say(self, task_id) -> None:
        if not is_main_process():
            return
        task = next(task for task in self.tasks if task.id == task_id)
        tenths = int(10 * task.completed / task.total) if task.total else 0
        if self._said.get(task_id) == (task.description, tenths):
            return
        self._said[task_id] = (task.description, tenths)
        if task.total:
            where = f"{task.completed:g}/{task.total:g} "
        else:  # no total: the count so far, once there is one
            where = f"{task.completed:g} " if task.completed else ""
        eta = f" eta={clock(task.time_remaining)}" if task.time_remaining is not None and task.total else ""
        stats = f" {plain(task.fields['stats'])}" if task.fields.get("stats") else ""
        self.console.print(f"{plain(task.description)}: {where}elapsed={clock(task.elapsed or 0)}{eta}{stats}",
                           markup=False, highlight=False, soft_wrap=True)


def plain(markup: str) -> str:
    """Rich markup as the text it shows (escaped brackets unescaped); text that is no valid markup, as it is."""
    try:
        return Text.from_markup(markup).plain
    except MarkupError:
        return markup


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


def clock(seconds: float) -> str:
    """`1:02:03` for a duration in seconds."""
    whole = int(seconds)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class StepLog:
    """Plain step lines (step_line) for output that is no terminal: one every `every` steps, at the last step, at an
    evaluation, and where the caller says (a checkpoint); the pace is that of the steps seen since `restart`."""

    def __init__(self, every: int, prefix: str = ""):
        self.every = every
        self.restart(prefix)

    def restart(self, prefix: str = "") -> None:
        self.prefix, self.started, self.steps = prefix, None, 0

    def step(self, metrics, total: int, checkpoint: Path | None = None) -> None:
        self.steps += 1
        if self.started is None:  # the first step's own duration counts towards the pace
            self.started = time.monotonic() - (metrics.time_generate + metrics.time_verify + metrics.time_update)
        step = metrics.step
        if checkpoint or step % self.every == 0 or step == total or metrics.eval_accuracy is not None:
            console.print(self.prefix + step_line(metrics, total, time.monotonic() - self.started, self.steps,
                                                  checkpoint), markup=False, highlight=False, soft_wrap=True)


def step_line(metrics, total: int, elapsed_s: float, done: int, checkpoint: Path | None = None) -> str:
    """One step (traces.StepMetrics) as a plain `key=value` line for a log file: progress and time, the reward by
    component, rollout accuracy, mode shares, loss, gradient norm, throughput, memory; the held-out scores and the
    checkpoint where the step has them. `done` steps took `elapsed_s` (the ETA is their pace)."""
    from .dyme import Mode

    def number(value, digits: int = 3) -> str:
        return "-" if value is None else f"{value:.{digits}g}"

    eta = elapsed_s / done * (total - metrics.step) if done else None
    parts = [f"step={metrics.step}/{total}", f"elapsed={clock(elapsed_s)}", f"eta={'-' if eta is None else clock(eta)}",
             f"reward={number(metrics.reward_mean)}"]
    parts += [f"reward/{name}={number(mean)}" for name, (mean, _) in sorted(metrics.rewards.items())]
    parts += [f"acc={number(metrics.accuracy)}"]
    parts += [f"{mode.value}={metrics.mode_fraction(mode):.2f}" for mode in Mode]
    update = metrics.update
    parts += [f"loss={number(update.loss, 4)}", f"grad_norm={number(update.grad_norm)}",
              f"tok/s={'-' if metrics.tokens_per_s is None else f'{metrics.tokens_per_s:.0f}'}",
              f"mem_gib={number(update.memory_peak_gib)}"]
    if metrics.eval_accuracy is not None:
        parts += [f"eval_acc={metrics.eval_accuracy:.3f}", f"eval_format={metrics.eval_format_rate:.3f}"]
    if checkpoint is not None:
        parts.append(f"checkpoint={checkpoint}")
    return " ".join(parts)


def live_stats(m) -> str:
    """The progress line's figures of a step (traces.StepMetrics)."""
    from .dyme import Mode

    acc = "-" if m.accuracy is None else f"{m.accuracy:.2f}"
    reward = "-" if m.reward_mean is None else f"{m.reward_mean:.2f}"
    return (f"acc {acc} · reward {reward} · mem {m.mode_fraction(Mode.MEMORIZE):.2f} "
            f"exp {m.mode_fraction(Mode.EXPLORE):.2f} skip {m.mode_fraction(Mode.SKIP):.2f}")
