"""The summary `dyme inspect-traces` prints (flag rates, per mode, per step window, advantage collapse), and
reading and filtering traces (rules in the package docstring)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

from pydantic import TypeAdapter, ValidationError

from .. import dyme
from ..data import DataError, jsonl_records
from ..errors import validation_problem
from ..traces import Trace
from .records import FLAGS, Flag

# ---------------------------------------------------------------- summary


def _step(trace: Trace) -> int:
    return trace.get("step") or 0


def _mode(trace: Trace) -> str:
    mode = trace.get("mode")
    return str(mode) if mode is not None else "unknown"


def _groups(rollouts: list[Trace]) -> list[list[Trace]]:
    """Rollouts sharing run, step, prompt_id and mode; a repeated rollout index starts a new group."""
    current: dict[tuple, int] = {}
    seen: list[set] = []
    groups: list[list[Trace]] = []
    for trace in rollouts:
        key = (trace.get("run"), _step(trace), trace.get("prompt_id"), _mode(trace))
        index = trace.get("rollout")
        g = current.get(key)
        if g is None or (index is not None and index in seen[g]):
            g = len(groups)
            current[key] = g
            groups.append([])
            seen.append(set())
        groups[g].append(trace)
        seen[g].add(index)
    return groups


def _rate(n: int, d: int) -> float:
    return n / d if d else 0.0


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _window_summary(steps: list[int], items: list[tuple[Trace, set]], groups: list[list[Trace]]) -> dict:
    correct = [bool(t["correct"]) for t, _ in items if t.get("correct") is not None]
    rewards = [float(t["reward"]) for t, _ in items if t.get("reward") is not None]
    modes = Counter(_mode(g[0]) for g in groups)
    return {
        "steps": [steps[0], steps[-1]],
        "traces": len(items),
        "accuracy": _mean([float(c) for c in correct]),
        "reward_mean": _mean(rewards),
        "flag_rates": {name: _rate(sum(name in names for _, names in items), len(items)) for name in FLAGS},
        "modes": {mode: n / len(groups) for mode, n in sorted(modes.items())} if groups else {},
    }


def _advantage_collapse(groups: list[list[Trace]]) -> dict:
    causes: Counter = Counter()
    considered = 0
    for group in groups:
        rewards = [t.get("reward") for t in group]
        if any(r is None for r in rewards):
            continue
        considered += 1
        causes[dyme.zero_std_cause([bool(t.get("correct")) for t in group], [float(r) for r in rewards])] += 1
    zero = considered - causes[None]
    return {
        "groups": considered,
        "zero_std": _rate(zero, considered),
        "all_correct": _rate(causes["all_correct"], considered),
        "all_wrong": _rate(causes["all_wrong"], considered),
        "mixed": _rate(causes["mixed"], considered),
    }


def summarize(traces: list[Trace], flags: list[list[Flag]], windows: int = 10) -> dict:
    """Flag counts and rates, per mode, per step window, and the advantage collapse of the rollout groups."""
    if len(traces) != len(flags):
        raise ValueError(f"traces and flags must be parallel lists ({len(traces)} != {len(flags)})")
    items = [(t, {f.name for f in fl}) for t, fl in zip(traces, flags) if t.get("kind") == "rollout"]
    n = len(items)
    by_mode: dict[str, dict] = {}
    for trace, names in items:
        entry = by_mode.setdefault(_mode(trace), {"traces": 0, "flags": {name: 0 for name in FLAGS}})
        entry["traces"] += 1
        for name in names:
            entry["flags"][name] += 1
    rollouts = [t for t, _ in items]
    groups = _groups(rollouts)
    distinct = sorted({_step(t) for t in rollouts})
    k = min(max(windows, 0), len(distinct))
    window_list = []
    for w in range(k):
        steps = distinct[w * len(distinct) // k:(w + 1) * len(distinct) // k]
        inside = set(steps)
        window_list.append(_window_summary(
            steps, [item for item in items if _step(item[0]) in inside], [g for g in groups if _step(g[0]) in inside]
        ))
    return {
        "traces": n,
        "flagged": sum(1 for _, names in items if names),
        "flags": {name: {"count": (c := sum(name in names for _, names in items)), "rate": _rate(c, n)}
                  for name in FLAGS},
        "by_mode": by_mode,
        "windows": window_list,
        "advantage_collapse": _advantage_collapse(groups),
    }


# ---------------------------------------------------------------- I/O and filters


def load_traces(path: str | Path) -> list[Trace]:
    """Every trace of a traces JSONL file; a line that is not a JSON object, or whose fields have the wrong types,
    raises DataError naming file:line and the field."""
    return [_typed_trace(record, f"{path}:{lineno}") for lineno, record in jsonl_records(Path(path), "traces")]


_TRACE = TypeAdapter(Trace)


def _typed_trace(record: dict, where: str) -> Trace:
    try:
        _TRACE.validate_python(record, strict=True)
    except ValidationError as exc:
        loc, msg = validation_problem(exc)
        raise DataError(f"{where}: field '{'.'.join(str(p) for p in loc)}': {msg}") from None
    return record  # as written: validation only checks the types (and keeps keys the Trace type does not name)


def filter_traces(
    traces: Sequence[Trace], steps: tuple[int | None, int | None] | None = None, mode: str | None = None
) -> list[Trace]:
    """Traces whose step (None -> 0) lies in the inclusive range `steps` (open ends as None) and whose mode is `mode`."""
    lo, hi = steps if steps is not None else (None, None)
    return [
        t for t in traces
        if (lo is None or _step(t) >= lo) and (hi is None or _step(t) <= hi) and (mode is None or t.get("mode") == mode)
    ]
