"""What `dyme inspect-traces` works on: the traces of a run directory or a traces file, the samples they came
from, and the flags of every trace (the detectors are in pseudo_thinking/)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .data import DataError, Sample, read_samples
from .dyme import Mode
from .errors import BadArgument
from .pseudo_thinking import Flag, filter_traces, flag_traces, load_traces, sample_contexts, summarize
from .recipe import Recipe, RecipeError, load_recipe
from .rundir import RunDir
from .traces import Trace
from .verdict import split_completion


@dataclass
class Inspection:
    traces: list[Trace]
    flags: list[list[Flag]]
    samples: dict[str, Sample]  # by prompt id, for questions and image thumbnails
    summary: dict
    notes: list[str]  # things the user should know (a recorded dataset that is gone, ...)
    answer_flag: str = "Answer:"

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
    if None not in bounds and bounds[0] > bounds[1]:
        raise BadArgument(f"--step '{text}': the first step is after the last; did you mean {high}:{low}?")
    return bounds if sep else (bounds[0], bounds[0])


TRACE_MODES = (*(mode.value for mode in Mode), "eval")  # what --mode selects: a training mode, or held-out evaluation


def check_mode(mode: str | None) -> None:
    if mode is not None and mode not in TRACE_MODES:
        raise BadArgument(f"--mode '{mode}': expected one of {', '.join(TRACE_MODES)}")


def traces_file(path: Path) -> Path:
    """A traces JSONL file, or the traces.jsonl of a run directory."""
    if path.is_dir():
        path = RunDir(path).traces_file
    if not path.is_file():
        raise DataError(f"{path}: no traces file (give a run directory or a traces .jsonl file)")
    return path


def recorded_recipe(run_dir: Path, notes: list[str]) -> Recipe | None:
    """The recipe.toml a run recorded, for its datasets, their image rules and its answer flag (None without a
    usable one)."""
    recipe_file = RunDir(run_dir).recipe_file
    if not recipe_file.is_file():
        return None
    try:
        return load_recipe(recipe_file)
    except RecipeError as exc:
        notes.append(f"cannot use the run's recipe ({exc}); pass --data")
        return None


def inspect(path: Path, *, data: list[Path] = (), steps=None, mode: str | None = None, answer_flag: str | None = None,
            windows: int = 10) -> Inspection:
    """Load, filter and flag the traces at `path`. Samples come from `data`, else from the run's recorded
    datasets; eval traces carry their own."""
    check_mode(mode)
    notes: list[str] = []
    source = traces_file(path)
    recipe = recorded_recipe(path, notes) if path.is_dir() else None
    recorded = [p for p in (recipe.data.train, recipe.data.test) if p is not None] if recipe else []
    read = recipe.data.read if recipe else read_samples  # the images of a run's data are checked by its rules
    samples: dict[str, Sample] = {}
    for dataset in list(data) or recorded:
        if not data and not Path(dataset).is_file():
            notes.append(f"dataset {dataset} recorded in {RunDir(path).recipe_file} not found; pass --data to check grounding")
            continue
        dataset_samples = read(dataset)
        if dataset_samples.skipped:
            notes.append(dataset_samples.skip_note())
        samples.update({s.id: s for s in dataset_samples})
    traces = filter_traces(load_traces(source), steps, mode)
    if not traces:
        notes.append(f"no trace in {source} matches the chosen steps and mode")
    samples.update(_samples_carried_by(traces, samples))
    answer_flag = answer_flag or (recipe.verifier.answer_flag if recipe else "Answer:")
    flags = flag_traces(traces, sample_contexts(samples.values()), answer_flag=answer_flag)
    if not samples and traces:
        notes.append("no sample data: ungrounded-value, ignores-image and parroted-reference were not checked")
    return Inspection(traces, flags, samples, summarize(traces, flags, windows=windows), notes, answer_flag)


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


GROUNDING_FLAGS = ("ungrounded-value", "ignores-image", "right-for-wrong-reasons")  # what the checker also judges
EXAMPLES = 3


def checker_agreement(inspection: Inspection, checker) -> dict:
    """The LLM checker's rating of every rollout whose sample is known, against the grounding detectors: how often
    it rates low what they leave unflagged, and high what they flag (supervision/checker.py)."""
    rated = [(t, f, inspection.samples[t["prompt_id"]]) for t, f in inspection.rollouts()
             if t.get("prompt_id") in inspection.samples]
    scores = checker.rate([(sample, split_completion(t.get("completion") or "", inspection.answer_flag).thinking)
                           for t, _, sample in rated])
    low_unflagged, high_flagged = [], []
    for (trace, flags, _), score in zip(rated, scores):
        flagged = [f.name for f in flags if f.name in GROUNDING_FLAGS]
        where = {"step": trace.get("step"), "prompt_id": trace.get("prompt_id"), "rollout": trace.get("rollout"),
                 "rating": score, "flags": flagged}
        if score == 0.0 and not flagged:
            low_unflagged.append(where)
        elif score == 1.0 and flagged:
            high_flagged.append(where)
    ratings = [s for s in scores if s is not None]
    return {"rated": len(ratings), "unrated": len(scores) - len(ratings),
            "mean_rating": sum(ratings) / len(ratings) if ratings else None,
            "low_but_unflagged": len(low_unflagged), "high_but_flagged": len(high_flagged),
            "examples": low_unflagged[:EXAMPLES] + high_flagged[:EXAMPLES]}
