"""The run directory: the one module that knows its layout.

    RUN/
      .lock                       held (flock) by the dyme process training in RUN; holds its pid
      recipe.toml                 the resolved recipe (every default filled in)
      recipe.toml.step-N          the recipe a resumed run was trained with up to step N, when the user allowed a
                                  change (`--allow-recipe-change`)
      generation.json             the rollouts' generation settings, complete (nothing left to the model's defaults)
      base-model/                 the tiny model as built, or the GGUF model converted (tiny:* and .gguf only)
      metrics.jsonl               one line per step
      traces.jsonl                one line per rollout and per memorized target
      eval_traces.jsonl           every held-out evaluation's completions, tagged with the step
      checkpoints/step-NNNNNN/    model + processor + trainer_state.pt
      checkpoints/step-NNNNNN.damaged
                                  a checkpoint that did not load on `--resume`, kept for the user, no longer counted

The record is never overwritten or lost: a new run refuses a directory that holds anything, a resumed one a recipe
that changes what the run trains (RESUMABLE_KEYS), and a second process the lock. Checkpoints and the base model
are written to a hidden temporary directory, fsynced and renamed into place, and the recipe and generation files
to a temporary file likewise, so a crash never leaves a half-written one where `--resume` would find it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterator, Sequence

from .data import append_jsonl, jsonl_records
from .errors import UserError, first_line
from .recipe import RecipeError, recipe_from_dict, recipe_to_toml, tomllib

LOCK_FILE = ".lock"
RECIPE_FILE = "recipe.toml"
METRICS_FILE = "metrics.jsonl"
TRACES_FILE = "traces.jsonl"
EVAL_TRACES_FILE = "eval_traces.jsonl"  # every held-out evaluation's completions, tagged with the step
GENERATION_FILE = "generation.json"
BASE_MODEL_DIR = "base-model"
CHECKPOINTS_DIR = "checkpoints"
STATE_FILE = "trainer_state.pt"  # optimizer, scheduler, RNG and step, next to the weights
DAMAGED_SUFFIX = ".damaged"
_RECORD = (f"{CHECKPOINTS_DIR}/", METRICS_FILE, TRACES_FILE, EVAL_TRACES_FILE, RECIPE_FILE, GENERATION_FILE,
           f"{BASE_MODEL_DIR}/")  # a run's record, in the order a refusal names what a directory holds
_CHECKPOINT_NAME = re.compile(r"step-(\d+)")

# The recipe keys (`section.key`, fnmatch patterns) a resumed run may change without --allow-recipe-change: they
# say how long the run goes and how it is observed or saved, not what it trains. (`--max-steps` is no recipe key.)
#: Keys that decide the shape of the trained weights: a checkpoint cannot be read under another value, so a resumed
#: run refuses to change them even with --allow-recipe-change (the recorded recipe would no longer describe it).
SHAPE_KEYS = ("model.name_or_path", "model.tiny.*", "model.lora.*")
RESUMABLE_KEYS = ("train.max_steps", "run.save_every", "run.log_every", "run.keep_checkpoints", "run.output_dir",
                  "run.eval_*", "run.report_to", "verifier.workers", "verifier.timeout_s")
CHANGES_SHOWN = 3  # changed keys a refusal names
_ABSENT = object()  # a key one of two recipes compared does not set


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

    # ------------------------------------------------------------------ using the directory

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the directory's lock while a run uses it (RunDirError naming the holder when another process does):
        two processes training into one directory would interleave their records. It is the kernel's lock (flock),
        released when the process ends however it ends; the lock file stays."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOCK_FILE, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                raise RunDirError(f"{self.path} is in use by another dyme process (pid {holder}); wait for it to end, "
                                  "or choose another --output") from None
            handle.truncate(0)
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def contents(self) -> list[str]:
        """What the directory holds (folders with a trailing /), the most telling parts of a run's record first;
        hidden entries aside: the lock, and temporaries of an interrupted write, removed before they are written
        again."""
        if not self.path.is_dir():
            return []
        found = [p.name + ("/" if p.is_dir() else "") for p in self.path.iterdir() if not p.name.startswith(".")]
        return sorted(found, key=lambda name: (_RECORD.index(name) if name in _RECORD else len(_RECORD), name))

    def check_new(self) -> None:
        """RunDirError when the directory holds anything: a new run would overwrite or mix with the record there."""
        held = self.contents()
        if held:
            more = f" and {len(held) - 4} more" if len(held) > 4 else ""
            raise RunDirError(f"{self.path} already holds a run ({', '.join(held[:4])}{more}); pass --resume to "
                              "continue it, or choose another --output")

    # ------------------------------------------------------------------ the recipe and the generation settings

    def recipe_changes(self, recipe_toml: str, only: Sequence[str] | None = None) -> list[str]:
        """How the resolved recipe `recipe_toml` differs from the recorded one, outside RESUMABLE_KEYS (or in the
        keys `only`; the recorded one is read with this version's defaults filled in); none when nothing is recorded. RunDirError when the
        directory holds a run whose recipe.toml is gone (nothing would say what its checkpoints were trained with)."""
        if not self.recipe_file.is_file():
            trained = {f"{CHECKPOINTS_DIR}/", METRICS_FILE, TRACES_FILE} & set(self.contents())
            if trained:  # (a base model alone is what a run stopped before its recipe was recorded leaves)
                raise RunDirError(f"{self.recipe_file} is missing, so nothing says what the run there was trained "
                                  "with; put it back (or a recipe.toml.step-N kept beside it) or choose another "
                                  "--output")
            return []
        try:
            raw = tomllib.loads(self.recipe_file.read_text(encoding="utf-8"))
            recorded = recipe_to_toml(recipe_from_dict(raw, source=str(self.recipe_file)))
        except (tomllib.TOMLDecodeError, RecipeError) as exc:  # (then no key can be compared, the shape's neither)
            return [f"the recorded recipe cannot be read ({first_line(exc)})"] if only is None else []
        return recipe_changes(recorded, recipe_toml, only)

    def record_recipe(self, recipe_toml: str) -> None:
        """Record the resolved recipe."""
        write_durably(self.recipe_file, recipe_toml)

    def keep_recipe(self, step: int) -> Path:
        """Copy the recorded recipe to `recipe.toml.step-N` before a changed one replaces it: the recipe the run was
        trained with up to `step`."""
        kept = free_path(self.path / f"{RECIPE_FILE}.step-{step}")
        write_durably(kept, self.recipe_file.read_text(encoding="utf-8"))
        return kept

    def record_generation(self, settings: dict) -> None:
        write_durably(self.path / GENERATION_FILE, json.dumps(settings, indent=2) + "\n")

    # ------------------------------------------------------------------ base model

    @contextmanager
    def new_base_model(self) -> Iterator[Path]:
        """Yield an empty temporary directory to build the base model into, renamed to base-model/ once built
        (a hub model builds nothing: then it is removed), so that a process stopped while building leaves no
        half-built base-model/ that a later run would load."""
        tmp = self.path / f".tmp-{BASE_MODEL_DIR}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        yield tmp
        if not any(tmp.iterdir()):
            tmp.rmdir()
            return
        sync_tree(tmp)
        tmp.rename(self.base_model_dir)
        fsync_path(self.path)

    # ------------------------------------------------------------------ checkpoints

    def checkpoint(self, step: int) -> Path:
        return self.path / CHECKPOINTS_DIR / f"step-{step:06d}"

    def checkpoint_entries(self) -> list[Path]:
        """Everything in checkpoints/ named like a checkpoint (step-NNNNNN), whole or not, oldest first: what
        `--resume` tries, newest first."""
        root = self.path / CHECKPOINTS_DIR
        if not root.is_dir():
            return []
        return sorted((p for p in root.iterdir() if checkpoint_step(p) is not None), key=checkpoint_step)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (those holding a trainer state), oldest first."""
        return [p for p in self.checkpoint_entries() if p.is_dir() and state_file(p).is_file()]

    def set_aside(self, checkpoint: Path) -> Path:
        """Rename a damaged checkpoint to `step-NNNNNN.damaged`: kept for the user, but no checkpoint any more, so
        that a resumed run neither tries it again, nor counts it as the newest when it rotates checkpoints (which
        would delete an intact one in its favour), nor replaces it when it saves that step again."""
        kept = free_path(checkpoint.with_name(checkpoint.name + DAMAGED_SUFFIX))
        checkpoint.rename(kept)
        fsync_path(checkpoint.parent)
        return kept

    @contextmanager
    def new_checkpoint(self, step: int, keep: int) -> Iterator[Path]:
        """Yield an empty temporary directory to write the checkpoint of `step` into; on success fsync it, rename it
        into place (replacing one of the same step) and delete all but the newest `keep` checkpoints."""
        final = self.checkpoint(step)
        tmp = final.parent / f".tmp-{final.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            yield tmp
            sync_tree(tmp)
        except BaseException:  # a full disk, a signal: the half-written checkpoint goes (and frees its space)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        fsync_path(final.parent)
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
                write_durably(path, "".join(line + "\n" for line in kept))
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


# --------------------------------------------------------------------------- recipe changes


def recipe_changes(recorded: str, new: str, only: Sequence[str] | None = None) -> list[str]:
    """The keys in which two resolved recipes (TOML) differ, outside RESUMABLE_KEYS (or: only those matching the
    patterns `only`), in the recipe's order, each as `[section].key recorded -> new`."""
    before, after = _flat_keys(tomllib.loads(recorded)), _flat_keys(tomllib.loads(new))
    keys = list(after) + [key for key in before if key not in after]
    counted = (lambda key: any(fnmatchcase(key, p) for p in only)) if only is not None else (lambda key: not resumable(key))
    return [f"{_key_label(key)} {_shown(before, key)} -> {_shown(after, key)}" for key in keys
            if before.get(key, _ABSENT) != after.get(key, _ABSENT) and counted(key)]


def resumable(key: str) -> bool:
    """Whether a resumed run may change recipe key `section.key` without --allow-recipe-change."""
    return any(fnmatchcase(key, pattern) for pattern in RESUMABLE_KEYS)


def describe_changes(changes: Sequence[str]) -> str:
    """The first CHANGES_SHOWN changes on one line, and how many more there are."""
    more = f" (and {len(changes) - CHANGES_SHOWN} more)" if len(changes) > CHANGES_SHOWN else ""
    return "; ".join(changes[:CHANGES_SHOWN]) + more


def _flat_keys(table: dict, prefix: str = "") -> dict[str, object]:
    """`{"model": {"tiny": {"hidden_size": 32}}}` -> `{"model.tiny.hidden_size": 32}`."""
    flat: dict[str, object] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flat_keys(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _key_label(key: str) -> str:
    """`model.tiny.hidden_size` -> `[model.tiny].hidden_size`, as recipe errors name keys."""
    table, _, name = key.rpartition(".")
    return f"[{table}].{name}"


def _shown(values: dict, key: str) -> str:
    return json.dumps(values[key]) if key in values else "(not set)"


# --------------------------------------------------------------------------- durable writes


def write_durably(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, fsync it and rename it over `path`: a crash leaves the old
    content or the new one, never a torn or empty file."""
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def sync_tree(directory: Path) -> None:
    """fsync every file under `directory`, then every folder, deepest first: their bytes and names are on disk
    before a rename makes them visible under their final name."""
    for root, _, files in os.walk(directory, topdown=False):
        for name in files:
            fsync_path(Path(root) / name)
        fsync_path(Path(root))


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (which makes the names in it durable: a rename is not, until then)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def free_path(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`, ... : the first that does not exist, so that nothing kept is overwritten."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate
