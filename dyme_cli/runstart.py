"""How a run starts: `start_run` builds the whole Engine in one call, in the order a run starts: the processes joined
(accelerate), the run directory claimed and checked, the data read, the verifiers loaded, the samples refined, the
base model built, the checkpoint to resume from (the newest intact one) loaded, the recipe recorded, the trackers
started, the optimizer and the Parallel strategy's model prepared, and the resume point restored. The refiner's
template evolution (`evolved_samples`), which the loop asks for during the run, lives here too.
"""

from __future__ import annotations

import random
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator, PartialState

from . import processes
from .checkpoint import LOAD_ERRORS, load_checkpoint, restore_state
from .data import Sample, Samples, target_text, task_lines, user_text
from .errors import first_line
from .modeling import (Policy, check_completion_length, check_reads_images, context_length, gguf_file, is_tiny,
                       load_for_recipe, prepare_for_training, resolve_model_path)
from .optim import build_optimizer
from .plugins import load_verifiers
from .processes import DataParallel, Parallel
from .recipe import Recipe, RecipeError, recipe_to_toml
from .rollout import target_ids
from .rundir import CHECKPOINTS_DIR, SHAPE_KEYS, RunDir, RunDirError, checkpoint_step, describe_changes
from .step import Engine, rollout_sampling
from .supervision import ChatClient, TemplateStore, best_thinking, checker_for, refiner_for, template_store, with_facts
from .traces import Trace
from .verdict import split_completion
from .verify_pool import VerifierPool

Messages = Callable[[str], None]


def quiet(message: str) -> None:
    """What the processes other than the main one do with a message (the main one reports)."""


def start_run(held: ExitStack, recipe: Recipe, run: RunDir, *, total: int, resume: bool, allow_recipe_change: bool,
              on_message: Messages, on_image_check: Callable[[int, int], None] | None) -> Engine:
    """The Engine of `recipe`'s run in `run` (`total` steps), new or resumed; what must last as long as the run
    (the directory's lock, the verifier pool, the trackers) is held by `held`. Every refusal comes before anything
    is written. Under `accelerate launch` every process calls it; the main one alone claims, checks and writes the
    run directory, and its refusals reach every process (processes.on_main)."""
    recipe_toml = recipe_to_toml(recipe)
    # Mixed precision: the weights and AdamW's state stay in [model].dtype (float32 = master weights), the forward
    # passes run under accelerate's autocast in bf16/fp16 (sharded: FSDP2's policy too, processes.distribute). The
    # layout is read first, before the Accelerator would take its FSDP settings; the Accelerator then joins the
    # processes of a launched run.
    parallel = DataParallel(processes.launched_layout(), processes.launched_offload())
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=recipe.model.mixed_precision,
                              log_with=trackers(recipe) or None, project_dir=run.path)
    if not processes.is_main():  # known only now: a PartialState made before the Accelerator sees one process
        on_message, on_image_check = quiet, None
    changes = processes.on_main(lambda: claim_run_dir(held, run, recipe_toml, resume, allow_recipe_change))
    unrefined, test_samples = read_datasets(recipe, on_image_check, on_message)
    verifiers = load_verifiers(task_lines(unrefined, test_samples), recipe.verifier.answer_flag, recipe.verifier.options)
    samples = processes.on_main(lambda: supervised_samples(recipe, run, unrefined, on_message)) \
        if recipe.supervision.uses_llm else unrefined

    torch.manual_seed(recipe.run.seed)
    random.seed(recipe.run.seed)
    texts = [user_text(s, recipe.prompt_template) + " " + target_text(s, recipe.verifier.answer_flag) for s in samples]
    base_path = processes.on_main(lambda: base_model(recipe, run, texts, on_message))
    start = starting_point(recipe, run, base_path, resume, on_message)
    policy = start.policy
    prepare_for_training(policy, recipe.model)
    check_completion_length(recipe.rollout.max_new_tokens, context_length(policy.model.config))
    check_reads_images(policy, recipe.model.name_or_path, samples, f"[data].train {recipe.data.train}")
    check_reads_images(policy, recipe.model.name_or_path, test_samples or [], f"[data].test {recipe.data.test}")
    warn_long_targets(policy, samples, recipe, on_message)
    processes.wait_for_everyone()  # all have loaded their start before damaged checkpoints are moved aside
    if processes.is_main():
        record_start(run, recipe_toml, start, changes, on_message)
        run.record_generation(generation_settings(recipe, policy))
    if recipe.run.report_to:
        accelerator.init_trackers(TRACKING_DIR, config=flat_settings(recipe))
        held.callback(accelerator.end_training)

    policy.model = parallel.prepare(accelerator, policy.model)  # wrapped or sharded first: the optimizer holds
    optimizer, scheduler = build_optimizer(policy.model, recipe, total)  # the parameters this process updates
    optimizer = accelerator.prepare_optimizer(optimizer)
    policy.model.train()
    reference = load_reference(base_path, recipe, accelerator, parallel) if recipe.train.beta > 0 else None
    pool = VerifierPool(verifiers, recipe.verifier.timeout_s, recipe.verifier.workers)
    checker = checker_for(recipe.supervision, run.path / SUPERVISION_DIR, PartialState().process_index, on_message)
    engine = Engine(recipe, policy, samples, pool, optimizer, scheduler, accelerator, total, reference, run.name,
                    checker, unrefined, parallel=parallel, run=run, test_samples=test_samples)
    held.enter_context(pool)
    resume_at(engine, start, on_message)
    return engine


def read_datasets(recipe: Recipe, on_image_check: Callable[[int, int], None] | None, on_message: Messages
                  ) -> tuple[Samples, Samples]:
    """The training and test samples, with a note for each dataset that left samples out."""
    samples = recipe.data.read(recipe.data.train, on_image_check)
    test_samples = recipe.data.read(recipe.data.test, on_image_check) if recipe.data.test else Samples()
    for skipped in filter(None, (samples.skip_note(), test_samples.skip_note())):
        on_message(skipped)
    return samples, test_samples


def supervised_samples(recipe: Recipe, run: RunDir, samples: list[Sample], on_message: Messages) -> list[Sample]:
    """The training samples as the LLM supervision needs them: with the references the refiner rewrote, or, for
    the checker alone (it grounds on facts), with facts read where a sample has none."""
    if recipe.supervision.refiner == "llm":
        return refined_samples(recipe, run, samples, on_message)
    return with_facts(samples, ChatClient(recipe.supervision), recipe.supervision.concurrency,
                      run.path / SUPERVISION_DIR / "facts.jsonl")


def generation_settings(recipe: Recipe, policy: Policy) -> dict:
    """How rollouts are sampled, as the run directory records it."""
    return {"max_new_tokens": recipe.rollout.max_new_tokens, "num_return_sequences": recipe.rollout.num_generations,
            **rollout_sampling(recipe), "eos_token_id": policy.eos_token_ids, "pad_token_id": policy.pad_token_id,
            "suppress_tokens": policy.blocked_token_ids}


def warn_long_targets(policy: Policy, samples: list[Sample], recipe: Recipe, on_message: Messages) -> None:
    """Rollouts are cut at max_new_tokens; a reference target longer than that can never be matched."""
    limit = recipe.rollout.max_new_tokens
    lengths = [len(target_ids(policy, target_text(s, recipe.verifier.answer_flag))) for s in samples]
    too_long = sum(n > limit for n in lengths)
    if too_long:
        on_message(f"warning: {too_long} of {len(samples)} reference targets are longer than "
                   f"[rollout].max_new_tokens = {limit} (longest {max(lengths)} tokens); rollouts of those prompts are truncated")


def load_reference(path: str, recipe: Recipe, accelerator: Accelerator, parallel: Parallel) -> torch.nn.Module:
    """The frozen starting policy, for the KL term (only loaded when beta > 0)."""
    model = load_for_recipe(recipe.model, path).model
    model.requires_grad_(False)
    model.eval()
    return parallel.prepare_frozen(accelerator, model)


def resume_at(engine: Engine, start: Start, on_message: Messages) -> None:
    """The resume point: the trainer state of the checkpoint the run continues from restored, and the logs cut
    back to its step (a run killed after logging a step it had not checkpointed logs that step again)."""
    if start.checkpoint:
        engine.resumed_from = start.checkpoint
        engine.resumed_at = restore_state(engine, start.checkpoint, start.state)
        on_message(f"resumed from {start.checkpoint} (step {engine.resumed_at})")
    for note in engine.run.truncate_logs(engine.resumed_at) if processes.is_main() else []:
        on_message(note)


TRACKING_DIR = "tracking"  # RUN/tracking/: what file-based trackers (TensorBoard, ...) write
SUPERVISION_DIR = "supervision"  # RUN/supervision/: the LLM checker's ratings and the refined references


def refined_samples(recipe: Recipe, run: RunDir, samples: list[Sample], on_message: Callable[[str], None]
                    ) -> list[Sample]:
    """The training samples with the references the LLM refiner rewrote in the run's current template and the
    checks accepted (supervision/)."""
    template = run_templates(recipe, run).current
    refiner = refiner_for(recipe.supervision, run.path / SUPERVISION_DIR / "refined.jsonl", recipe.verifier.answer_flag,
                          template.text)
    on_message(f"refining the reference traces of {len(samples)} samples with {recipe.supervision.model} at "
               f"{recipe.supervision.base_url} (those refined before are read from {SUPERVISION_DIR}/)")
    report = refiner.refine(list(samples), on_progress=every_tenth("refiner", on_message))
    on_message(f"template v{template.version}: " + report.summary()
               + "".join(f"; {reason}" for reason in report.reasons[:1]))
    return report.samples


def every_tenth(what: str, on_message: Callable[[str], None]) -> Callable[[int, int], None]:
    """An `on_progress(done, total)` that says how far `what` is each time it passes another tenth."""
    said = [0]

    def progress(done: int, total: int) -> None:
        tenths = 10 * done // total if total else 10
        if tenths > said[0]:
            said[0] = tenths
            on_message(f"{what}: {done}/{total}")

    return progress


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
    reshaped = run.recipe_changes(recipe_toml, only=SHAPE_KEYS)
    if reshaped:
        raise RunDirError(f"{run.path} was trained with another model: {describe_changes(reshaped)}; its checkpoints "
                          "cannot take that change, not even with --allow-recipe-change; choose another --output")
    changes = run.recipe_changes(recipe_toml)
    if changes and not allow_recipe_change:
        raise RunDirError(f"{run.path} was trained with another recipe: {describe_changes(changes)}; resume with "
                          f"{run.recipe_file}, pass --allow-recipe-change to go on with this one, "
                          "or choose another --output")
    return changes


def base_model(recipe: Recipe, run: RunDir, texts: list[str], on_message: Messages = quiet) -> str:
    """Where the run's starting model is (modeling.resolve_model_path). A tiny model or a GGUF conversion is built
    aside and renamed into base-model/ (RunDir.new_base_model), saying so (it is a quiet phase); one there already
    is used as it is."""
    if run.base_model_dir.exists():
        return resolve_model_path(recipe.model, run.base_model_dir, texts, recipe.run.seed)
    name = recipe.model.name_or_path
    if is_tiny(name):
        on_message(f"building the base model {name} (a tokenizer trained on the data, random weights) in "
                   f"{run.base_model_dir}")
    elif gguf_file(name) is not None:
        on_message(f"converting {name} into an ordinary model directory, once, in {run.base_model_dir}")
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
