"""Errors in what a user gave dyme: one class hierarchy, one line each.

Every user-facing error derives from `UserError`; the command line catches `UserError` in one place and prints
its message as one line with exit code 2. Anything else escaping a command is a bug in dyme and keeps its
traceback.
"""

from __future__ import annotations

import signal

from pydantic import ValidationError


class UserError(Exception):
    """A mistake in the user's input (file, recipe key, option, model name); the message is one line naming it."""


class UserFacingWarning(UserWarning):
    """Something the user should know that does not stop the command; the command line prints it as one line."""


class BadArgument(UserError, ValueError):
    """A command argument or option that cannot be used (out of range, malformed)."""


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGTERM from a scheduler or `timeout`, SIGHUP from a closed terminal) raised where Ctrl-C's
    KeyboardInterrupt would be, so that every command stops on it as on Ctrl-C: what it finished kept, one line."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt_exit_code(exc: KeyboardInterrupt) -> int:
    """The shell's convention for a process ended by a signal: 130 for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP."""
    return 128 + getattr(exc, "signum", signal.SIGINT)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none (for wrapping library errors)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def validation_problem(exc: ValidationError, unknown: str | None = None) -> tuple[tuple, str]:
    """(location, message) of the first problem pydantic found.

    An extra (forbidden) field reads `unknown` when given ("unknown key"); pydantic's "Value error, " prefix
    of a validator's own message is dropped.
    """
    first = exc.errors()[0]
    if unknown is not None and first["type"] == "extra_forbidden":
        return first["loc"], unknown
    return first["loc"], first["msg"].removeprefix("Value error, ")
