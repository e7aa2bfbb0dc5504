"""How a run starts: the run directory claimed and checked, the samples refined, the base model built, the
checkpoint to resume from (the newest intact one), the recorded recipe, and the experiment trackers. Everything here
happens before the first step (and, for the refiner's template, when it evolves); trainer.train calls it in order.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors import SafetensorError

from .data import Sample
from .errors import first_line
from .modeling import ModelLoadError, Policy, load_for_recipe, resolve_model_path
from .recipe import Recipe, RecipeError
from .rundir import CHECKPOINTS_DIR, RunDir, RunDirError, checkpoint_step, describe_changes, state_file
from .supervision import ChatClient, TemplateStore, best_thinking, refiner_for, template_store
from .traces import Trace
from .verdict import split_completion


def load_state(path: Path) -> dict:
    """The trainer state, unpickled safely: tensors, containers and numbers only (torch's `weights_only`), so a
    checkpoint from someone else cannot run code on `--resume`."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RunDirError(f"{path}: refused: it holds objects other than tensors and plain values, which could run "
                          f"code when loaded ({first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise RunDirError(f"{path}: cannot read the trainer state ({first_line(exc)})") from None




TRACKING_DIR = "tracking"  # RUN/tracking/: what file-based trackers (TensorBoard, ...) write
SUPERVISION_DIR = "supervision"  # RUN/supervision/: the LLM checker's ratings and the refined references


def refined_samples(recipe: Recipe, run: RunDir, samples: list[Sample], on_message: Callable[[str], None]
                    ) -> list[Sample]:
    """The training samples with the references the LLM refiner rewrote in the run's current template and the
    checks accepted (supervision/)."""
    template = run_templates(recipe, run).current
    refiner = refiner_for(recipe.supervision, run.path / SUPERVISION_DIR / "refined.jsonl", recipe.verifier.answer_flag,
                          template.text)
    report = refiner.refine(list(samples))
    on_message(f"template v{template.version}: " + report.summary()
               + "".join(f"; {reason}" for reason in report.reasons[:1]))
    return report.samples


def run_templates(recipe: Recipe, run: RunDir) -> TemplateStore:
    return template_store(recipe.supervision, run.path / SUPERVISION_DIR / "templates")


def evolved_samples(recipe: Recipe, run: RunDir, unrefined: list[Sample], traces: list[Trace], step: int,
                    on_message: Callable[[str], None]) -> list[Sample] | None:
    """Template evolution (supervision/templates.py): the step's first correct rollout the checker rated high may
    give the refiner a new template; when it does, the training samples are refined again with it. None: no change
    (no such rollout, the comparison kept the template, or the server failed, which is said and skipped)."""
    from openai import APIError

    flag = recipe.verifier.answer_flag
    best = best_thinking([(split_completion(t["completion"], flag).thinking, f"{t['prompt_id']}#{t['rollout']}",
                           t["rewards"].get("thinking"), t["correct"]) for t in traces if t["kind"] == "rollout"])
    if best is None:
        return None
    try:
        new = run_templates(recipe, run).evolve(ChatClient(recipe.supervision), best[0], step, best[1])
    except APIError as exc:
        on_message(f"step {step}: template evolution skipped ({type(exc).__name__})")
        return None
    if new is None:
        return None
    on_message(f"step {step}: the refiner's template is now v{new.version} (from rollout {best[1]})")
    return refined_samples(recipe, run, unrefined, on_message)


def trackers(recipe: Recipe) -> list[str]:
    """[run].report_to, each checked to be installed: accelerate would leave out a missing one without a word."""
    from accelerate.tracking import get_available_trackers

    available = {str(tracker) for tracker in get_available_trackers()}
    for name in recipe.run.report_to:
        if name not in available:
            raise RecipeError(f"[run].report_to: '{name}' is not installed (pip install {name.replace('_', '-')})")
    return list(recipe.run.report_to)


def flat_settings(recipe: Recipe) -> dict:
    """The recipe as `section.key = value` pairs of plain values, what trackers show as a run's settings."""
    flat = {}
    for section, values in recipe.model_dump(mode="json").items():
        for key, value in values.items():
            if isinstance(value, (str, int, float, bool)):
                flat[f"{section}.{key}"] = value
    return flat


def tracked(metrics: dict) -> dict:
    """The metrics trackers take: the numbers (a value that is None this step is left out)."""
    return {key: value for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def claim_run_dir(held: ExitStack, run: RunDir, recipe_toml: str, resume: bool, allow_recipe_change: bool
                  ) -> list[str]:
    """Take the run directory's lock for as long as `held` lasts, then check_run_dir."""
    held.enter_context(run.locked())
    return check_run_dir(run, recipe_toml, resume, allow_recipe_change)


def check_run_dir(run: RunDir, recipe_toml: str, resume: bool, allow_recipe_change: bool) -> list[str]:
    """Refuse what would overwrite or mix with the record in `run`: a new run where anything is recorded, a resumed
    one whose recipe changes what the run trains (RunDir.recipe_changes) unless the user allows it. Returns the
    changes allowed, for record_start."""
    if not resume:
        run.check_new()
        return []
    changes = run.recipe_changes(recipe_toml)
    if changes and not allow_recipe_change:
        raise RunDirError(f"{run.path} was trained with another recipe: {describe_changes(changes)}; resume with "
                          f"{run.recipe_file}, pass --allow-recipe-change to go on with this one, "
                          "or choose another --output")
    return changes


def base_model(recipe: Recipe, run: RunDir, texts: list[str]) -> str:
    """Where the run's starting model is (modeling.resolve_model_path). A tiny model or a GGUF conversion is built
    aside and renamed into base-model/ (RunDir.new_base_model); one there already is used as it is."""
    if run.base_model_dir.exists():
        return resolve_model_path(recipe.model, run.base_model_dir, texts, recipe.run.seed)
    with run.new_base_model() as building:
        path = resolve_model_path(recipe.model, building, texts, recipe.run.seed)
    return str(run.base_model_dir.resolve()) if run.base_model_dir.exists() else path


@dataclass
class Start:
    """What a run starts from: the policy, the checkpoint it was loaded from (None: the base model) with its trainer
    state (read once, restored once the optimizer exists), and the newer checkpoints passed over because they did
    not load, each with why."""

    policy: Policy
    checkpoint: Path | None = None
    state: dict | None = None
    damaged: list[tuple[Path, str]] = field(default_factory=list)


def starting_point(recipe: Recipe, run: RunDir, base_path: str, resume: bool,
                   on_message: Callable[[str], None]) -> Start:
    """Resuming, the newest checkpoint that loads, with the damaged newer ones passed over (RunDirError when none
    loads); otherwise the base model."""
    entries = run.checkpoint_entries() if resume else []
    if resume and not entries:
        on_message(f"no checkpoint in {run.path}; starting from scratch")
    if not entries:
        return Start(load_base(recipe, run, base_path))
    damaged: list[tuple[Path, str]] = []
    for checkpoint in reversed(entries):
        try:
            return Start(*load_checkpoint(recipe, checkpoint), damaged=damaged)
        except RunDirError as exc:
            damaged.append((checkpoint, str(exc)))
    (newest, why), older = damaged[0], len(damaged) - 1
    raise RunDirError(f"{run.path}: no intact checkpoint to resume from: {CHECKPOINTS_DIR}/{newest.name} is damaged "
                      f"({why})" + (f", and {older} older one(s) too" if older else "")
                      + f"; move {CHECKPOINTS_DIR}/ aside to start over, or choose another --output")


STATE_KEYS = ("step", "optimizer", "scheduler", "rng")  # what save_checkpoint writes and restore_state reads
LOAD_ERRORS = (ModelLoadError, SafetensorError, OSError, RuntimeError)  # weights that are missing, cut short, garbled


def load_checkpoint(recipe: Recipe, checkpoint: Path) -> tuple[Policy, Path, dict]:
    """The policy saved in `checkpoint`, the checkpoint, and its trainer state, found to be its step's; RunDirError
    saying what is damaged otherwise."""
    if not checkpoint.is_dir():
        raise RunDirError("not a directory")
    state = checked_state(state_file(checkpoint), checkpoint_step(checkpoint))
    try:
        # A LoRA checkpoint holds only the adapter: it is loaded on its base model, trainable, not merged.
        return load_for_recipe(recipe.model, str(checkpoint), merge_adapter=False), checkpoint, state
    except LOAD_ERRORS as exc:
        raise RunDirError(f"its weights do not load: {first_line(exc)}") from None


def checked_state(path: Path, step: int) -> dict:
    """The trainer state in `path`; RunDirError unless it is one as save_checkpoint writes it, of step `step`."""
    state = load_state(path)
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        raise RunDirError(f"{path}: not a trainer state")
    if state["step"] != step:
        raise RunDirError(f"{path}: the trainer state of step {state['step']}, not of step {step}")
    return state


def load_base(recipe: Recipe, run: RunDir, base_path: str) -> Policy:
    """The starting policy of a run without a checkpoint. A base-model/ that does not load was left half-built (by
    a dyme that built it in place) or damaged: say what to delete."""
    try:
        return load_for_recipe(recipe.model, base_path, merge_adapter=False)
    except LOAD_ERRORS as exc:
        if Path(base_path) != run.base_model_dir.resolve():
            raise
        raise RunDirError(f"{run.base_model_dir} is half-built or damaged: delete it (it is built again from the "
                          f"recipe) and run again with --resume ({first_line(exc)})") from None


def record_start(run: RunDir, recipe_toml: str, start: Start, changes: list[str],
                 on_message: Callable[[str], None]) -> None:
    """Write what the checks let through: damaged checkpoints set aside (RunDir.set_aside), and the recipe, the
    recorded one kept when the user allowed a change."""
    for checkpoint, why in start.damaged:
        kept = run.set_aside(checkpoint)
        on_message(f"{CHECKPOINTS_DIR}/{checkpoint.name} is damaged ({why}); kept as {CHECKPOINTS_DIR}/{kept.name}; "
                   f"resuming from {start.checkpoint.name}")
    if changes:
        step = checkpoint_step(start.checkpoint) if start.checkpoint else 0
        kept = run.keep_recipe(step)
        on_message(f"the recipe changes what the run trains ({describe_changes(changes)}); going on with it as "
                   f"allowed; the recipe of the steps up to {step} is kept as {kept}")
    run.record_recipe(recipe_toml)
