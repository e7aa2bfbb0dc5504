"""Verifier plugins, found through the `dyme.verifiers` entry-point group.

The built-in verifiers are registered in that group exactly as a third-party package would register
its own, so the engine has one path for all of them. A verifier class has `name`, `description`, is
constructed with `answer_flag=...` plus the recipe's `[verifier].options`, and has
`verify(completion: str, sample) -> Verdict`.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, Iterable

from .verdict import Verdict

GROUP = "dyme.verifiers"


class VerifierError(LookupError):
    """A verifier that is not installed or cannot be constructed; one line."""


def installed_verifiers() -> dict[str, Any]:
    """Entry-point name -> entry point, for every installed verifier plugin."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def load_verifier(name: str, answer_flag: str = "Answer:", options: dict | None = None):
    available = installed_verifiers()
    if name not in available:
        known = ", ".join(sorted(available)) or "none"
        raise VerifierError(f"unknown verifier '{name}' (installed: {known})")
    try:
        cls = available[name].load()
        return cls(answer_flag=answer_flag, **(options or {}))
    except TypeError as exc:
        raise VerifierError(f"verifier '{name}': bad [verifier].options: {exc}") from None
    except ValueError as exc:
        raise VerifierError(f"verifier '{name}': {exc}") from None


def load_verifiers(tasks: Iterable[str], answer_flag: str, options: dict | None = None) -> dict[str, Any]:
    """One verifier instance per task name used by the data."""
    return {task: load_verifier(task, answer_flag, options) for task in sorted(set(tasks))}


def safe_verify(verifier, completion: str, sample) -> tuple[Verdict, bool]:
    """Run a verifier; an exception becomes an incorrect verdict with zero rewards. Returns (verdict, failed)."""
    try:
        verdict = verifier.verify(completion, sample)
    except Exception as exc:  # a plugin's bug must not stop training; it is counted and logged
        detail = f"verifier '{getattr(verifier, 'name', '?')}' raised {type(exc).__name__}: {exc}"
        return Verdict(False, None, {"format": 0.0, "accuracy": 0.0}, detail), True
    return verdict, False
