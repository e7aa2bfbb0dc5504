"""Verifier plugins, found through the `dyme.verifiers` entry-point group.

The built-in verifiers are registered in that group exactly as a third-party package registers its own,
so the engine has one path for all of them. A verifier class has `name` and `description`, is constructed
with `answer_flag=...` plus its options from the recipe's `[verifier.options.NAME]` table (validated
against the constructor's annotations), and has `verify(completion: str, sample) -> Verdict`.

A plugin is third-party code: its import and its constructor run in a child process under a deadline (like its
verify calls, verify_pool.py), so that one that hangs, exits the process or crashes the interpreter is a one-line
error instead of a command that never ends or ends without a word.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import signal
import warnings
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Iterable, Mapping

from pydantic import ConfigDict, ValidationError, create_model

from .errors import UserError, UserFacingWarning, first_line, validation_problem
from .recipe import env_variable

GROUP = "dyme.verifiers"
START_DEADLINE_S = 120.0  # importing and constructing the verifiers a command uses, or listing them all


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


def plugin_infos() -> list[PluginInfo]:
    """What `dyme verifiers list` shows about every installed verifier, sorted by name; the plugins' modules are
    imported in a child process (in_child)."""
    found = sorted(installed_verifiers().items())
    described = in_child(_describe, [ep.value for _, ep in found], what="listing the installed verifiers")
    infos = []
    for (name, entry_point), (description, options, error) in zip(found, described):
        dist = entry_point.dist
        package, version = (dist.name, dist.version) if dist else ("?", "?")
        infos.append(PluginInfo(name, package, version, description, options, error))
    return infos


def _describe(values: list[str]) -> list[tuple[str, dict[str, Any], str | None]]:
    """(description, option defaults, why it cannot be loaded) of each entry point `module:Class`."""
    described = []
    for value in values:
        try:
            cls = EntryPoint(name="", value=value, group=GROUP).load()
            defaults = {name: p.default for name, p in _option_parameters(cls).items()}
            described.append((getattr(cls, "description", ""), defaults, None))
        except Exception as exc:  # a broken third-party package must not break the listing
            described.append(("", {}, f"{type(exc).__name__}: {exc}"))
    return described


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
        if name not in available:
            raise VerifierError(f"[verifier.options.{name}]: unknown verifier '{name}'")
    for name in sorted(tasks):  # a secret's missing variable is named before any child starts (it reads them too)
        from_environment(name, options.get(name, {}))
    return in_child(_construct, sorted(tasks), answer_flag, options,
                    what=f"starting the verifiers {', '.join(sorted(tasks))}")


def _construct(tasks: list[str], answer_flag: str, options: dict[str, dict]) -> dict[str, Any]:
    return {task: load_verifier(task, answer_flag, options.get(task)) for task in tasks}


def in_child(function, *args, what: str, timeout_s: float | None = None):
    """`function(*args)` run in a new child process and its result sent back (so it must be picklable, as verifiers
    must be for their worker processes). VerifierError, one line naming `what`, when it raises, takes longer than
    `timeout_s` (default START_DEADLINE_S) or ends the child without an answer."""
    timeout_s = START_DEADLINE_S if timeout_s is None else timeout_s
    context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=_answer, args=(sender, function, args), daemon=True)
    child.start()
    sender.close()
    try:
        if not receiver.poll(timeout_s):
            raise VerifierError(f"{what}: no answer within {timeout_s:g} s (a verifier plugin whose import or "
                                "constructor does not return?)")
        try:
            succeeded, value = receiver.recv()
        except (EOFError, OSError):
            child.join(5)
            raise VerifierError(f"{what}: the process ended (exit code {child.exitcode}) without an answer (a "
                                "verifier plugin that exits or crashes the interpreter?)") from None
    finally:
        if child.is_alive():
            child.kill()
        child.join()
        receiver.close()
    if not succeeded:
        raise VerifierError(value)
    return value


def _answer(sender, function, args) -> None:
    """The child's side of in_child: (True, result) or (False, one line) back to the parent."""
    for signum in (signal.SIGINT, signal.SIGTERM):  # the parent stops on them, and kills this process
        signal.signal(signum, signal.SIG_IGN)
    try:
        answer = (True, function(*args))
    except UserError as exc:
        answer = (False, str(exc))
    except BaseException as exc:  # noqa: BLE001 (a plugin's SystemExit or KeyboardInterrupt too)
        answer = (False, f"{type(exc).__name__}: {first_line(exc)}")
    try:
        sender.send(answer)
    except Exception as exc:  # noqa: BLE001
        sender.send((False, f"the result cannot be sent back (verifiers must be picklable): {first_line(exc)}"))


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
