"""Verifier plugins, found through the `dyme.verifiers` entry-point group.

The built-in verifiers are registered in that group exactly as a third-party package registers its own,
so the engine has one path for all of them. A verifier class has `name` and `description`, is constructed
with `answer_flag=...` plus its options from the recipe's `[verifier.options.NAME]` table (validated
against the constructor's annotations), and has `verify(completion: str, sample) -> Verdict`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable

from pydantic import ConfigDict, ValidationError, create_model

from .errors import UserError, validation_problem

GROUP = "dyme.verifiers"


class VerifierError(UserError, LookupError):
    """A verifier that is not installed or cannot be constructed; one line."""


@dataclass(frozen=True)
class PluginInfo:
    """What `dyme verifiers list` shows about one installed verifier."""

    name: str
    package: str
    version: str
    description: str
    options: dict[str, Any]  # option name -> default
    error: str | None = None  # why the plugin could not be loaded


def installed_verifiers() -> dict[str, EntryPoint]:
    """Entry-point name -> entry point, for every installed verifier plugin."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def plugin_info(entry_point: EntryPoint) -> PluginInfo:
    dist = entry_point.dist
    package, version = (dist.name, dist.version) if dist else ("?", "?")
    try:
        cls = entry_point.load()
        defaults = {name: p.default for name, p in _option_parameters(cls).items()}
    except Exception as exc:  # a broken third-party package must not break the listing
        return PluginInfo(entry_point.name, package, version, "", {}, f"{type(exc).__name__}: {exc}")
    return PluginInfo(entry_point.name, package, version, getattr(cls, "description", ""), defaults)


def load_verifier(name: str, answer_flag: str = "Answer:", options: dict | None = None):
    """Construct the verifier called `name`, with its options validated; VerifierError on any problem."""
    available = installed_verifiers()
    if name not in available:
        known = ", ".join(sorted(available)) or "none"
        raise VerifierError(f"unknown verifier '{name}' (installed: {known})")
    try:
        cls = available[name].load()
    except Exception as exc:
        raise VerifierError(f"verifier '{name}' cannot be imported: {type(exc).__name__}: {exc}") from None
    values = validate_options(name, cls, options or {})
    try:
        return cls(answer_flag=answer_flag, **values)
    except (TypeError, ValueError) as exc:
        raise VerifierError(f"[verifier.options.{name}]: {exc}") from None


def load_verifiers(tasks: Iterable[str], answer_flag: str, options: dict[str, dict] | None = None) -> dict[str, Any]:
    """One verifier instance per task name used by the data; `options` maps verifier name -> its options."""
    options = options or {}
    tasks = set(tasks)
    for name in sorted(set(options) - tasks):
        if name not in installed_verifiers():
            raise VerifierError(f"[verifier.options.{name}]: unknown verifier '{name}'")
    return {task: load_verifier(task, answer_flag, options.get(task)) for task in sorted(tasks)}


def validate_options(name: str, cls: type, options: dict) -> dict:
    """Check options against the constructor's signature: unknown names and wrong types are one-line errors."""
    fields = {
        key: (Any if p.annotation is p.empty else p.annotation, ... if p.default is p.empty else p.default)
        for key, p in _option_parameters(cls).items()
    }
    model = create_model(f"{cls.__name__}Options", __config__=ConfigDict(extra="forbid"), **fields)
    try:
        validated = model.model_validate(options)
    except ValidationError as exc:
        loc, msg = validation_problem(exc, unknown="unknown option")
        key = ".".join(str(p) for p in loc)
        known = ", ".join(fields) or "none"
        raise VerifierError(f"[verifier.options.{name}].{key}: {msg} (options: {known})") from None
    return {key: getattr(validated, key) for key in options}


def _option_parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor's keyword parameters other than answer_flag."""
    params = inspect.signature(cls, eval_str=True).parameters
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {key: p for key, p in params.items() if p.kind in kinds and key != "answer_flag"}
