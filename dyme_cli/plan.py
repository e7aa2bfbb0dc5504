"""`dyme train RECIPE --dry-run`: check everything a run needs and print its plan, without training.

Checked: the datasets (readable, counts per task), the verifiers (installed, options valid), the model
(config resolvable: a local directory, a hub id when the hub is reachable, or a tiny family), and the batch
arithmetic. The plan gives rollouts and rows per step, generate calls, micro-batches, optimizer steps, the
precision of weights, optimizer state and compute, a rough memory figure for the weights, gradients and AdamW
state (activations are not included), and the first training prompt as the model will read it, with its token
and image-token counts.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from .dyme import METHODS
from .data import DataError, Sample, task_lines, user_text
from .errors import first_line
from .hub import is_hub_id
from .plugins import VerifierError, installed_verifiers, load_verifiers
from .recipe import Recipe

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
COMPUTE_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}  # [model].mixed_precision


@dataclass
class Plan:
    facts: list[tuple[str, str]] = field(default_factory=list)  # (what, value), in order
    problems: list[str] = field(default_factory=list)  # each stops a real run
    notes: list[str] = field(default_factory=list)  # worth knowing, not fatal
    state_bytes: float | None = None  # a process's weights, gradients and optimizer state (model config known)

    def add(self, what: str, value) -> None:
        self.facts.append((what, str(value)))


def dry_run(recipe: Recipe, max_steps: int | None = None, on_image_check: Callable[[int, int], None] | None = None,
            processes: int = 1, layout: str = "replicate", offload: bool = False) -> Plan:
    """The plan of `recipe` (trained for `max_steps` instead of [train].max_steps when given) on `processes`
    processes with the model laid out as `layout` (processes.LAYOUTS), its sharded state in host memory with
    `offload`; `on_image_check` as in data.read_samples."""
    if max_steps:
        recipe = recipe.model_copy(update={"train": recipe.train.model_copy(update={"max_steps": max_steps})})
    plan = Plan()
    tasks, first = _check_data(recipe, plan, on_image_check)
    _check_verifiers(recipe, tasks, plan)
    _check_batches(recipe, plan, processes, layout)
    _check_supervision(recipe, plan)
    _check_precision(recipe, plan)
    config = _check_model(recipe, plan, processes if layout != "replicate" else 1, offload)
    prompt_tokens = _check_prompt(recipe, plan, first, config) if first is not None else 1
    _check_context(recipe, plan, config, prompt_tokens)
    return plan


def _check_context(recipe: Recipe, plan: Plan, config, prompt_tokens: int) -> None:
    """The first prompt plus a full-length completion must fit the model's positions (a tiny model's are fixed)."""
    from .modeling import check_completion_length, context_length, is_tiny
    from .recipe import RecipeError
    from .tiny_models import CONTEXT_LENGTH

    context = CONTEXT_LENGTH if is_tiny(recipe.model.name_or_path) else context_length(config) if config else None
    try:
        check_completion_length(recipe.rollout.max_new_tokens, context, prompt_tokens)
    except RecipeError as exc:
        plan.problems.append(str(exc))


def _check_data(recipe: Recipe, plan: Plan, on_image_check: Callable[[int, int], None] | None
                ) -> tuple[dict[str, str], Sample | None]:
    """The tasks the data uses (-> the file:line of their first sample), and the first training sample (None when
    the training data is unusable)."""
    tasks: dict[str, str] = {}
    first = None
    for split, path in (("train", recipe.data.train), ("test", recipe.data.test)):
        if path is None:
            continue
        try:
            samples = recipe.data.read(path, on_image_check)
        except DataError as exc:
            plan.problems.append(str(exc))
            continue
        counts = Counter(s.task for s in samples)
        tasks = {**task_lines(samples), **tasks}
        with_images = sum(bool(s.images) for s in samples)
        no_reference = sum(not s.reference.strip() for s in samples)
        per_task = ", ".join(f"{task} {n}" for task, n in sorted(counts.items()))
        skipped = f"; {len(samples.skipped)} left out (unreadable images)" if samples.skipped else ""
        plan.add(f"{split} data", f"{path}: {len(samples)} samples ({per_task}); {with_images} with images{skipped}")
        if samples.skipped:
            plan.notes.append(samples.skip_note())
        if split == "train":
            first = samples[0]
            if no_reference:
                plan.notes.append(f"{no_reference} training samples have no reference trace: memorizing them teaches "
                                  "only the answer flag and the answer")
            if len(samples) < recipe.train.prompts_per_step:
                plan.notes.append(f"[train].prompts_per_step = {recipe.train.prompts_per_step} is more than the "
                                  f"{len(samples)} training samples; prompts repeat within a step")
    if (recipe.run.eval_before or recipe.run.eval_after) and recipe.data.test is None:
        plan.notes.append("[run].eval_before/eval_after need [data].test; no held-out evaluation will run")
    return tasks, first


def _check_verifiers(recipe: Recipe, tasks: dict[str, str], plan: Plan) -> None:
    try:
        load_verifiers(tasks, recipe.verifier.answer_flag, recipe.verifier.options)
    except VerifierError as exc:
        plan.problems.append(str(exc))
        return
    installed = installed_verifiers()
    names = ", ".join(f"{t} ({installed[t].dist.name if installed[t].dist else '?'})" for t in sorted(tasks))
    plan.add("verifiers", f"{names or 'none'}; {recipe.verifier.workers} worker processes, "
                          f"{recipe.verifier.timeout_s:g} s per call")


def _check_batches(recipe: Recipe, plan: Plan, processes: int, layout: str) -> None:
    train, rollout, optim = recipe.train, recipe.rollout, recipe.optim
    if processes > 1:
        _per_process(recipe, plan, processes, layout)
    prompts, k = train.prompts_per_step, rollout.num_generations
    samples = METHODS[train.algorithm].samples
    rollouts = prompts * k if samples else 0
    max_rows = prompts * k if samples else prompts  # a memorized prompt is 1 row, an explored one K
    plan.add("algorithm", f"{train.algorithm} (loss {train.loss_type}, beta {train.beta:g})")
    plan.add("rollouts per step", f"{prompts} prompts x K={k} = {rollouts}" if rollouts else "none (sft)")
    if rollouts:
        plan.add("generate calls per step", math.ceil(prompts / rollout.prompts_per_generate))
    plan.add("rows per step", f"at most {max_rows} (only rows with a non-zero advantage are trained)")
    plan.add("micro-batches per update", f"at most {math.ceil(max_rows / optim.micro_batch_size)}, "
                                         f"{optim.micro_batch_size} rows each")
    plan.add("optimizer steps", f"{train.max_steps * train.num_iterations} ({train.max_steps} steps x mu="
                                f"{train.num_iterations})")
    plan.add("tokens per rollout", f"at most {rollout.max_new_tokens}")
    if samples and k < 2:
        plan.problems.append("[rollout].num_generations must be at least 2 for group advantages")
    if recipe.run.save_every > train.max_steps:
        plan.notes.append(f"[run].save_every = {recipe.run.save_every} > [train].max_steps: only the final "
                          "checkpoint is written")


def _check_supervision(recipe: Recipe, plan: Plan) -> None:
    """The LLM checker and refiner, if any (the server is not called: a dry run sends nothing)."""
    section = recipe.supervision
    if not section.uses_llm:
        return
    evolve = f", template evolution every {section.evolve_every} steps" if section.evolve_every else ""
    plan.add("supervision", f"checker {section.checker}, refiner {section.refiner}{evolve}: {section.model} at "
                            f"{section.base_url}, {section.concurrency} requests at once, {section.timeout_s:g} s each, "
                            f"at most {section.step_budget_s:g} s of rating per step")
    if section.api_key_env and section.api_key_env not in os.environ:
        plan.problems.append(f"[supervision].api_key_env: the environment variable {section.api_key_env} is not set")


LAYOUT_PLANS = {
    "replicate": "each with a whole copy of the weights, gradients and optimizer state (DDP); gradients are summed "
                 "in the backward pass",
    "shard": "weights, gradients and optimizer state sharded between them (FSDP2 full shard): a decoder layer's "
             "weights are gathered for its forward and again for its backward, and the whole weights for the "
             "step's rollouts",
    "shard-grad-op": "weights, gradients and optimizer state sharded between them (FSDP2, ZeRO-2 layout): a decoder "
                     "layer's weights are gathered once per micro-batch and kept to its backward, and the whole "
                     "weights for the step's rollouts",
}


def _per_process(recipe: Recipe, plan: Plan, processes: int, layout: str) -> None:
    """What each of N processes does in a step: it samples a contiguous share of the prompts (processes.share,
    shares differing by one prompt at most) and learns from a share of the step's rows (processes.deal, hands
    differing by one row at most)."""
    train, rollout, optim = recipe.train, recipe.rollout, recipe.optim
    most = -(-train.prompts_per_step // processes)
    step_rows = train.prompts_per_step * (rollout.num_generations if METHODS[train.algorithm].samples else 1)
    rows = -(-step_rows // processes)
    plan.add("processes", f"{processes}, {LAYOUT_PLANS[layout]} (the memory figure below is per process)")
    plan.add("per process and step", f"at most {most} prompts, {rows} rows, {math.ceil(rows / optim.micro_batch_size)} "
                                     f"micro-batches of {optim.micro_batch_size}")
    if train.prompts_per_step < processes:
        plan.notes.append(f"[train].prompts_per_step = {train.prompts_per_step} is less than the {processes} "
                          "processes: some have no prompt in a step and only wait")


def _check_precision(recipe: Recipe, plan: Plan) -> None:
    section = recipe.model
    compute = section.dtype if section.mixed_precision == "no" else f"{section.mixed_precision} autocast (accelerate)"
    if section.lora is not None:
        plan.add("precision", f"frozen base weights in {section.dtype}, LoRA adapters and their AdamW state in "
                              f"float32; compute in {compute}")
    elif section.dtype == "float32":
        plan.add("precision", f"float32 weights and AdamW state; compute in {compute}")
    else:
        plan.add("precision", f"{section.dtype} weights and AdamW state, no float32 master copy; compute in {compute}")
        plan.notes.append(f'[model].dtype = "{section.dtype}" trains the weights in {section.dtype}: updates '
                          "below half a unit of its last place (up to 0.4% of a weight's size in bfloat16) are lost; "
                          'dtype = "float32" with mixed_precision = "bf16" keeps them at the cost of memory')


def _check_model(recipe: Recipe, plan: Plan, shards: int = 1, offload: bool = False):
    """The model's config (None for a tiny model or one that cannot be resolved). The memory figure is a process's,
    with the weights and their state split in `shards` (in host memory with `offload`)."""
    from .modeling import DEFAULT_LORA_TARGETS, ModelLoadError, is_tiny, model_class_for, tiny_family

    section = recipe.model
    if is_tiny(section.name_or_path):
        try:
            tiny_family(section.name_or_path)
        except ModelLoadError as exc:
            plan.problems.append(str(exc))
            return None
        plan.add("model", f"{section.name_or_path}: built from a config in the run directory at the first run")
        return None
    config = _model_config(section, plan)
    if config is None:
        return None
    model_class, text_only = model_class_for(config)
    total, trainable = _parameter_counts(model_class, config, section, DEFAULT_LORA_TARGETS)
    kind = "text-only causal LM" if text_only else "vision-language model"
    plan.add("model", f"{section.name_or_path}: {config.model_type}, {kind}, {total / 1e6:.1f}M parameters, "
                      f"{trainable / 1e6:.2f}M trainable" + (" (LoRA)" if section.lora else ""))
    weights = total * BYTES[section.dtype]
    trained_bytes = BYTES["float32"] if section.lora is not None else BYTES[section.dtype]  # PEFT: fp32 adapters
    state = trainable * 3 * trained_bytes  # gradients + AdamW's two moments
    reference = weights if recipe.train.beta > 0 else 0
    weights, state, reference = weights / shards, state / shards, reference / shards
    plan.state_bytes = weights + state
    # Sharded, FSDP2's mixed-precision policy gathers the weights in the compute dtype (processes.precision_policy)
    gathered_bytes = total * BYTES[COMPUTE_DTYPES.get(section.mixed_precision, section.dtype)]
    gathered = f"; the rollouts gather the whole weights ({_gib(gathered_bytes)})" if shards > 1 else ""
    where = " in host memory (CPU offload)" if offload else ""
    plan.add("memory (rough)", f"{_gib(weights + state + reference)}{where} = weights {_gib(weights)} + gradients and "
                               f"optimizer state {_gib(state)}" + (f" + reference model {_gib(reference)}" if reference else "")
             + f"{gathered}; activations come on top")
    return config


def _check_prompt(recipe: Recipe, plan: Plan, sample: Sample, config) -> int:
    """The first training prompt as the model reads it (chat template, image tokens), when the processor is at hand;
    returns its token count (1 when it cannot be encoded yet)."""
    from jinja2 import TemplateError

    from .modeling import load_processor, model_class_for
    from .rollout import encode_text, image_token_count, prompt_text

    template = recipe.prompt_template
    if config is None:
        plan.add("prompt (user turn)", user_text(sample, template))
        plan.notes.append("the prompt is shown without the model's chat template, which is not available yet")
        return 1
    section = recipe.model
    text_only = model_class_for(config)[1]
    try:
        processor = load_processor(section.name_or_path, text_only, section.trust_remote_code, section.processor)
        text = prompt_text(processor, text_only, sample, template)
        ids = encode_text(processor, text_only, sample, text)["input_ids"]
    except (OSError, ValueError, TypeError, TemplateError) as exc:
        plan.problems.append(f"[model].processor: cannot encode the first prompt ({sample.id}): {first_line(exc)}")
        return 1
    plan.add("prompt", text)
    plan.add("prompt tokens", f"{ids.shape[-1]} for sample {sample.id}, {image_token_count(processor, ids)} of them "
                              "image tokens (set with [model].processor)")
    return int(ids.shape[-1])


def _model_config(section, plan: Plan):
    from .modeling import ModelLoadError, hub_only, load_config

    try:
        return load_config(section.name_or_path, section.trust_remote_code)
    except ModelLoadError as exc:
        plan.problems.append(f"[model].name_or_path: {exc}")
        return None
    except (OSError, ValueError) as exc:
        reason = first_line(exc)
        if is_hub_id(section.name_or_path):
            plan.add("model", f"{section.name_or_path}: not checked (see the note)")
            plan.notes.append(f"model '{section.name_or_path}' not checked: {hub_only(section.name_or_path)}the hub "
                              f"is unreachable or the id is unknown ({reason})")
        else:
            plan.problems.append(f"[model].name_or_path: cannot load '{section.name_or_path}': {reason}")
        return None


def _parameter_counts(model_class, config, section, default_targets: str) -> tuple[int, int]:
    """(total, trainable) from the architecture alone: the model is built on the meta device (no memory)."""
    import torch

    from .modeling import vision_towers

    with torch.device("meta"):
        model = model_class.from_config(config, trust_remote_code=section.trust_remote_code)
    total = sum(p.numel() for p in model.parameters())
    if section.lora is not None:
        pattern = re.compile(section.lora.target_modules or default_targets)
        linears = [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and pattern.fullmatch(name)]
        return total, sum(section.lora.r * (m.in_features + m.out_features) for m in linears)
    frozen = sum(p.numel() for tower in vision_towers(model) for p in tower.parameters()) if section.freeze_vision else 0
    return total, total - frozen


def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f} GiB" if n_bytes >= 2**30 / 10 else f"{n_bytes / 2**20:.2f} MiB"
