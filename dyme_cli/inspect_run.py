"""What `dyme inspect-traces` works on: the traces of a run directory or a traces file, the samples they came
from, and the flags of every trace (the detectors are in pseudo_thinking/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import DataError, Sample, read_samples
from .errors import BadArgument
from .pseudo_thinking import Flag, filter_traces, flag_traces, load_traces, sample_contexts, summarize
from .rundir import RunDir
from .traces import Trace


@dataclass
class Inspection:
    traces: list[Trace]
    flags: list[list[Flag]]
    samples: dict[str, Sample]  # by prompt id, for questions and image thumbnails
    summary: dict
    notes: list[str]  # things the user should know (a recorded dataset that is gone, ...)

    def rollouts(self, flag: str | None = None, only_flagged: bool = False) -> list[tuple[Trace, list[Flag]]]:
        """The rollout traces with their flags; only those with `flag`, or with any flag (`only_flagged`)."""
        return [(t, f) for t, f in zip(self.traces, self.flags) if t.get("kind") == "rollout"
                and (flag is None or any(x.name == flag for x in f)) and (not only_flagged or f)]


def parse_steps(text: str | None) -> tuple[int | None, int | None] | None:
    """`A:B`, `A:`, `:B` or `A` (one step) -> an inclusive range with open ends as None."""
    if text is None:
        return None
    low, sep, high = text.partition(":")
    try:
        bounds = (int(low) if low.strip() else None, int(high) if high.strip() else None)
    except ValueError:
        raise BadArgument(f"--step '{text}': expected A:B, A:, :B or a single step number") from None
    return bounds if sep else (bounds[0], bounds[0])


def traces_file(path: Path) -> Path:
    """A traces JSONL file, or the traces.jsonl of a run directory."""
    if path.is_dir():
        path = RunDir(path).traces_file
    if not path.is_file():
        raise DataError(f"{path}: no traces file (give a run directory or a traces .jsonl file)")
    return path


def recorded_datasets(run_dir: Path, notes: list[str]) -> tuple[list[Path], str | None]:
    """The train/test datasets and answer flag a run's recipe.toml recorded (empty, None without a usable one)."""
    from .recipe import RecipeError, load_recipe

    recipe_file = RunDir(run_dir).recipe_file
    if not recipe_file.is_file():
        return [], None
    try:
        recipe = load_recipe(recipe_file)
    except RecipeError as exc:
        notes.append(f"cannot use the run's recipe ({exc}); pass --data")
        return [], None
    return [p for p in (recipe.data.train, recipe.data.test) if p is not None], recipe.verifier.answer_flag


def inspect(path: Path, *, data: list[Path] = (), steps=None, mode: str | None = None, answer_flag: str | None = None,
            windows: int = 10) -> Inspection:
    """Load, filter and flag the traces at `path`. Samples come from `data`, else from the run's recorded
    datasets; eval traces carry their own."""
    notes: list[str] = []
    source = traces_file(path)
    recorded, recorded_flag = recorded_datasets(path, notes) if path.is_dir() else ([], None)
    datasets = list(data) or recorded
    samples: dict[str, Sample] = {}
    for dataset in datasets:
        if not data and not Path(dataset).is_file():
            notes.append(f"dataset {dataset} recorded in {RunDir(path).recipe_file} not found; pass --data to check grounding")
            continue
        samples.update({s.id: s for s in read_samples(dataset)})
    traces = filter_traces(load_traces(source), steps, mode)
    samples.update(_samples_carried_by(traces, samples))
    flags = flag_traces(traces, sample_contexts(samples.values()), answer_flag=answer_flag or recorded_flag or "Answer:")
    if not samples and traces:
        notes.append("no sample data: ungrounded-value, ignores-image and parroted-reference were not checked")
    return Inspection(traces, flags, samples, summarize(traces, flags, windows=windows), notes)


def _samples_carried_by(traces: list[Trace], known: dict[str, Sample]) -> dict[str, Sample]:
    """Samples rebuilt from eval traces, which carry question, reference, facts and image paths."""
    carried = {}
    for trace in traces:
        pid = trace.get("prompt_id")
        if pid in known or pid in carried or "question" not in trace:
            continue
        carried[pid] = Sample(id=str(pid), task=str(trace.get("task", "")), question=trace["question"],
                              answer=str(trace.get("gold", "")), images=list(trace.get("images") or []),
                              reference=trace.get("reference") or "", facts=trace.get("facts") or {})
    return carried
