"""The `dyme` command line: the root app. It registers the commands (dyme_cli/commands/) and turns every
user error the engine raises into one line and exit code 2."""

from __future__ import annotations

import errno
import signal
import sys
import threading
import warnings
from contextlib import contextmanager

import click
import typer
from typer.core import TyperGroup

from .commands import compare, eval as eval_cmd, export, inspect, launch, prepare, report, train, verifiers
from .errors import Interrupted, UserError, UserFacingWarning, first_line, interrupt_exit_code
from .ui import fail, note


class _Commands(TyperGroup):
    """The root group: a UserError from any command is one line on stderr and exit code 2, never a traceback; so is
    an OSError about a path (a directory where a file is expected, a file's child, no permission, a full disk).
    SIGTERM and SIGHUP stop a command as Ctrl-C does (each command keeps what it finished), with one line and the
    signal's exit code."""

    def invoke(self, ctx):
        finished = False
        with warnings.catch_warnings(), _stop_signals_interrupt():
            warnings.showwarning = _show_warning
            try:
                result = super().invoke(ctx)
                finished = True
                return result
            except (typer.Exit, click.exceptions.Exit):  # an exit code of the command's own (a stopped run)
                finished = True
                raise
            except KeyboardInterrupt as exc:
                fail(f"stopped by {exc.args[0] if isinstance(exc, Interrupted) else 'Ctrl-C'}",
                     interrupt_exit_code(exc))
            except UserError as exc:
                fail(str(exc))
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):  # a full disk: what was kept is the files' own rule
                    fail(f"{exc.filename or 'writing'}: {exc.strerror}; free some space (a run continues with --resume)")
                if exc.filename is None:  # not about a path the user named: a bug or a system failure, keep the trace
                    raise
                fail(f"{exc.filename}: {exc.strerror or first_line(exc)}")
            finally:
                if "torch.distributed" in sys.modules:  # else no process group: torch is not imported for nothing
                    from .processes import leave

                    leave(finished)


@contextmanager
def _stop_signals_interrupt():
    """While a command runs, SIGTERM and SIGHUP raise Interrupted in the main thread (`dyme train` handles them
    itself during its steps); a signal the process was told to ignore (SIGHUP under `nohup`) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signals = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None))
               if s is not None and signal.getsignal(s) is not signal.SIG_IGN]
    previous = {s: signal.signal(s, _interrupt) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _interrupt(signum, frame):
    raise Interrupted(signum)


_library_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """dyme's own warnings are one `note:` line; other libraries' keep Python's format."""
    if issubclass(category, UserFacingWarning):
        note(str(message))
    else:
        _library_showwarning(message, category, filename, lineno, file, line)


app = typer.Typer(
    cls=_Commands,
    help="Post-train small vision-language models to think reliably with DyME "
    "(Dynamic Memorization and Exploration).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(prepare.app, name="prepare")
app.command("train")(train.train)
app.command("eval")(eval_cmd.eval_command)
app.command("compare")(compare.compare_command)
app.command("export")(export.export_command)
app.command("inspect-traces")(inspect.inspect_traces)
app.command("report")(report.report_command)
app.add_typer(verifiers.app, name="verifiers")
app.command("launch", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
    launch.launch_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
