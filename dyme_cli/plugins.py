"""Verifier plugins, found through the `dyme.verifiers` entry-point group.

The built-in verifiers are registered in that group exactly as a third-party package registers its own,
so the engine has one path for all of them. A verifier class has `name` and `description`, is constructed
with `answer_flag=...` plus its options from the recipe's `[verifier.options.NAME]` table (validated
against the constructor's annotations), and has `verify(completion: str, sample) -> Verdict`.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable, Mapping

from pydantic import ConfigDict, ValidationError, create_model

from .errors import UserError, UserFacingWarning, first_line, validation_problem
from .recipe import env_variable

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
    """Entry-point name -> entry point, for every installed verifier plugin. When two packages register one name,
    the first found is used and a warning names both (one would otherwise shadow the other silently)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        if ep.name in found and found[ep.name].value != ep.value:
            warnings.warn(f"two installed packages register the verifier '{ep.name}': {_origin(found[ep.name])} "
                          f"(used) and {_origin(ep)} (ignored)", UserFacingWarning, stacklevel=2)
        found.setdefault(ep.name, ep)
    return found


def _origin(entry_point: EntryPoint) -> str:
    dist = entry_point.dist
    return f"{dist.name if dist else '?'} ({entry_point.value})"


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
        raise VerifierError(_unknown(name, available))
    try:
        cls = available[name].load()
    except Exception as exc:
        raise VerifierError(f"verifier '{name}' cannot be imported: {type(exc).__name__}: {exc}") from None
    values = validate_options(name, cls, from_environment(name, options or {}))
    try:
        return cls(answer_flag=answer_flag, **values)
    except (TypeError, ValueError) as exc:
        raise VerifierError(f"[verifier.options.{name}]: {first_line(exc)}") from None
    except Exception as exc:  # a third-party constructor failing (a missing resource, a bug) is not dyme's crash
        raise VerifierError(f"verifier '{name}' failed to start: {type(exc).__name__}: {first_line(exc)}") from None


def _unknown(name: str, available: dict[str, EntryPoint]) -> str:
    return f"unknown verifier '{name}' (installed: {', '.join(sorted(available)) or 'none'})"


def load_verifiers(tasks: Iterable[str] | Mapping[str, str], answer_flag: str, options: dict[str, dict] | None = None
                   ) -> dict[str, Any]:
    """One verifier instance per task name used by the data; `options` maps verifier name -> its options. `tasks`
    may map each task to the file:line of its first sample, which an unknown task's error then names."""
    options = options or {}
    used_at = dict(tasks) if isinstance(tasks, Mapping) else {}
    tasks = set(tasks)
    available = installed_verifiers()
    for task in sorted(tasks - set(available)):
        if task in used_at:
            raise VerifierError(f"{used_at[task]}: field 'task': {_unknown(task, available)}")
    for name in sorted(set(options) - tasks):
        if name not in installed_verifiers():
            raise VerifierError(f"[verifier.options.{name}]: unknown verifier '{name}'")
    return {task: load_verifier(task, answer_flag, options.get(task)) for task in sorted(tasks)}


def from_environment(name: str, options: dict) -> dict:
    """Options with every `{ env = "VARIABLE" }` replaced by that variable's value (kept in memory only)."""
    resolved = {}
    for key, value in options.items():
        variable = env_variable(value)
        if variable is not None and variable not in os.environ:
            raise VerifierError(f"[verifier.options.{name}].{key}: the environment variable {variable} is not set")
        resolved[key] = os.environ[variable] if variable is not None else value
    return resolved


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
