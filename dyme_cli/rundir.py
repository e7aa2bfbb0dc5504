"""The run directory: the one module that knows its layout.

    RUN/
      recipe.toml                 the resolved recipe (every default filled in)
      generation.json             the rollouts' generation settings, complete (nothing left to the model's defaults)
      base-model/                 the tiny model as built, or the GGUF model converted (tiny:* and .gguf only)
      metrics.jsonl               one line per step
      traces.jsonl                one line per rollout and per memorized target
      checkpoints/step-NNNNNN/    model + processor + trainer_state.pt

Checkpoints are written to a hidden temporary directory and renamed into place, so a crash never leaves a
half-written checkpoint where `--resume` would find it.
"""

from __future__ import annotations

import json
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .data import append_jsonl, jsonl_records
from .errors import UserError

RECIPE_FILE = "recipe.toml"
METRICS_FILE = "metrics.jsonl"
TRACES_FILE = "traces.jsonl"
EVAL_TRACES_FILE = "eval_traces.jsonl"  # every held-out evaluation's completions, tagged with the step
GENERATION_FILE = "generation.json"
BASE_MODEL_DIR = "base-model"
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.pt"  # optimizer, scheduler, RNG and step, next to the weights
_CHECKPOINT_NAME = re.compile(r"step-(\d+)")


class RunDirError(UserError):
    """The run directory cannot be used as asked (it would overwrite an earlier run)."""


def checkpoint_step(path: str | Path) -> int | None:
    """The training step a checkpoint directory name records (`.../step-000700` -> 700), else None."""
    match = _CHECKPOINT_NAME.fullmatch(Path(str(path).rstrip("/")).name)
    return int(match.group(1)) if match else None


def checkpoint_label(path: str | Path) -> str | None:
    """`run/step-000700` for a checkpoint inside a run directory, else None."""
    path = Path(path)
    return f"{path.parent.parent.name}/{path.name}" if path.parent.name == CHECKPOINTS_DIR else None


def run_recipe_file(checkpoint: str | Path) -> Path | None:
    """The recorded recipe of the run a checkpoint belongs to (`RUN/checkpoints/step-N` -> `RUN/recipe.toml`);
    None for a directory that is not a run's checkpoint."""
    path = Path(checkpoint)
    return path.parent.parent / RECIPE_FILE if path.parent.name == CHECKPOINTS_DIR else None


def state_file(checkpoint: Path) -> Path:
    return Path(checkpoint) / STATE_FILE


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def recipe_file(self) -> Path:
        return self.path / RECIPE_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def traces_file(self) -> Path:
        return self.path / TRACES_FILE

    @property
    def eval_traces_file(self) -> Path:
        return self.path / EVAL_TRACES_FILE

    @property
    def base_model_dir(self) -> Path:
        return self.path / BASE_MODEL_DIR

    def create(self, recipe_toml: str) -> None:
        """Make the directory and record the resolved recipe."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.recipe_file.write_text(recipe_toml, encoding="utf-8")

    def record_generation(self, settings: dict) -> None:
        (self.path / GENERATION_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, step: int) -> Path:
        return self.path / CHECKPOINTS_DIR / f"step-{step:06d}"

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (those holding a trainer state), oldest first."""
        root = self.path / CHECKPOINTS_DIR
        if not root.is_dir():
            return []
        found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None and state_file(p).is_file()]
        return sorted(found, key=checkpoint_step)

    def checkpoints_for(self, resume: bool) -> list[Path]:
        """The checkpoints to resume from; RunDirError when the directory holds some and `resume` is off."""
        found = self.checkpoints()
        if found and not resume:
            raise RunDirError(f"{self.path} already holds checkpoints; pass --resume to continue it, "
                              "or choose another --output")
        return found

    @contextmanager
    def new_checkpoint(self, step: int, keep: int) -> Iterator[Path]:
        """Yield an empty temporary directory to write the checkpoint of `step` into; on success rename it into
        place (replacing one of the same step) and delete all but the newest `keep` checkpoints."""
        final = self.checkpoint(step)
        tmp = final.parent / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        for old in self.checkpoints()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)

    # ------------------------------------------------------------------ logs

    def truncate_logs(self, last_step: int) -> list[str]:
        """Drop log records of steps after `last_step`, the checkpoint a run resumes from (they are produced again).
        A torn last line (the process was killed while appending it) is dropped too; the returned notes say so."""
        notes = []
        for path in (self.metrics_file, self.traces_file, self.eval_traces_file):
            if path.is_file():
                lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
                steps = [_logged_step(path, i, line, last=i == len(lines)) for i, line in enumerate(lines, start=1)]
                if steps and steps[-1] is None:
                    notes.append(f"{path}:{len(lines)}: dropped a half-written last line")
                kept = [line for line, step in zip(lines, steps) if step is not None and step <= last_step]
                path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        return notes

    def metrics(self) -> list[dict]:
        """Every step's metrics record; none before the first step."""
        if not self.metrics_file.is_file():
            return []
        return [record for _, record in jsonl_records(self.metrics_file, "metrics")]

    def append_metrics(self, record: dict) -> None:
        append_jsonl(self.metrics_file, [record])

    def append_traces(self, records: Sequence[dict]) -> None:
        append_jsonl(self.traces_file, records)


def _logged_step(path: Path, lineno: int, line: str, last: bool) -> int | None:
    """The step of a log line; None for a torn last line. A damaged line elsewhere is not a crash artefact: refuse."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        if last:
            return None
        raise RunDirError(f"{path}:{lineno}: not a log record; the run's logs were edited or damaged") from None
