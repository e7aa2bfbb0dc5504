"""Errors in what a user gave dyme: one class hierarchy, one line each.

Every user-facing error derives from `UserError`; the command line catches `UserError` in one place and prints
its message as one line with exit code 2. Anything else escaping a command is a bug in dyme and keeps its
traceback.
"""

from __future__ import annotations

from pydantic import ValidationError


class UserError(Exception):
    """A mistake in the user's input (file, recipe key, option, model name); the message is one line naming it."""


class UserFacingWarning(UserWarning):
    """Something the user should know that does not stop the command; the command line prints it as one line."""


class BadArgument(UserError, ValueError):
    """A command argument or option that cannot be used (out of range, malformed)."""


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
