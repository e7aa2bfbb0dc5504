"""The training loop: one DyME step after another, with logging and atomic checkpoints.

A step, as in the paper:
    1. sample K rollouts per prompt and verify each;
    2-4. gate each prompt (memorize / explore / skip) and give rows their advantages (dyme.py);
    then update the policy on the rows whose advantage is non-zero (losses.py).
"""

from __future__ import annotations

import math
import random
import signal
import time
import warnings
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
from accelerate import Accelerator, PartialState

from . import dyme, processes, rollout
from .batch import PromptGroup, StepBatch, Target
from .data import Sample, Samples, target_text, task_lines, user_text
from .dyme import Mode
from .errors import UserError, first_line
from .evaluate import EvalReport, evaluate, trace_writer
from .losses import StepTotals, policy_loss
from .modeling import (Policy, check_completion_length, context_length, image_features_frozen, load_for_recipe,
                       prepare_for_training, save_policy)
from .plugins import load_verifiers
from .recipe import Recipe, recipe_to_toml
from .rollout import completion_logprobs, encode_prompt, sampling_settings, target_ids, with_completion
from .rundir import METRICS_FILE, RunDir, RunDirError, state_file
from .runstart import (SUPERVISION_DIR, TRACKING_DIR, Start, base_model, claim_run_dir, evolved_samples,
                       flat_settings, record_start, refined_samples, starting_point, tracked, trackers)
from .supervision import ChatClient, Checker, CheckerCounts, checker_for, with_facts
from .traces import Trace, step_metrics, step_traces
from .verdict import split_completion
from .verify_pool import STOP_SIGNALS, VerifierPool

PROMPT_CACHE_BYTES = 512 * 2**20  # encoded prompts (token ids + pixel values) kept between steps
FAILURE_REPORTS = 3  # steps with verifier failures reported as messages; later ones are only counted
NONFINITE_LIMIT = 3  # steps in a row whose update was skipped for a non-finite loss or gradient before the run stops


class TrainingInterrupted(Exception):
    def __init__(self, step: int, checkpoint: Path, signum: int = signal.SIGINT):
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped after step {step}; checkpoint saved to {checkpoint}")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP


class TrainingDiverged(UserError):
    """The loss or gradient stayed non-finite: the updates were skipped, and going on would learn nothing."""

    def __init__(self, step: int, checkpoint: Path | None):
        since = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        super().__init__(f"step {step}: the loss or gradient was not finite in {NONFINITE_LIMIT} steps in a row "
                         f"(those updates were skipped); lower [optim].lr or check the rewards; {since}")


@dataclass
class Row:
    """One sequence to learn from: a prompt, a completion (rollout or reference target) and its advantage."""

    prompt: dict
    completion_ids: list[int]
    advantage: float
    memorized: bool = False


@dataclass
class Engine:
    """Everything a step needs; built once by `train`."""

    recipe: Recipe
    policy: Policy
    samples: list[Sample]
    verifiers: VerifierPool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    accelerator: Accelerator
    total_steps: int
    reference: torch.nn.Module | None = None
    run_name: str = ""
    checker: Checker | None = None  # [supervision].checker = "llm": the thinking reward comes from it
    unrefined: list[Sample] = field(default_factory=list)  # the samples as read, when the refiner rewrote them
    prompt_cache: dict[str, dict] = field(default_factory=dict)
    prompt_cache_bytes: int = 0


@dataclass
class StepResult:
    metrics: dict
    traces: list[Trace] = field(default_factory=list)
    verifier_failures: list[str] = field(default_factory=list)  # details of verify calls that raised or timed out


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    checkpoint: Path | None
    before: EvalReport | None = None
    after: EvalReport | None = None


# --------------------------------------------------------------------------- the step


def dyme_step(engine: Engine, step: int) -> StepResult:
    """One step of the run. With N processes each one samples, verifies and learns from its own share of the
    step's prompts (processes.py); the gate, the loss's denominators, the metrics and the traces see the whole step."""
    t0 = time.perf_counter()
    prompts = step_samples(engine, step)
    mine = StepBatch(step, [PromptGroup(prompts[i], cached_prompt(engine, prompts[i]))
                            for i in processes.share(len(prompts))])
    sample_rollouts(engine, mine)
    t1 = time.perf_counter()
    verify(engine, mine)
    batch = whole_step(mine, len(prompts))
    gate(engine, batch)
    rows = assemble_rows(mine.groups)
    t2 = time.perf_counter()
    update_stats = update(engine, rows, step_totals(engine.recipe, batch.groups, assemble_rows(batch.groups)))
    t3 = time.perf_counter()

    timing = {"generate": t1 - t0, "verify": t2 - t1, "update": t3 - t2}
    metrics = step_metrics(batch, update_stats=update_stats, timing=timing, lr=engine.scheduler.get_last_lr()[0])
    if engine.checker is not None:
        metrics.update(checker_counts(engine.checker))
    return StepResult(metrics, step_traces(engine.run_name, batch), batch.verifier_failures)


def whole_step(mine: StepBatch, n_prompts: int) -> StepBatch:
    """The step's groups from every process, in prompt order; this process's own groups are the very objects it
    filled (the gate's decisions reach them), the others' are copies without their encoded prompts."""
    if processes.count() == 1:
        return mine
    groups = processes.everyone([replace(g, prompt={}) for g in mine.groups])
    own = processes.share(n_prompts)
    groups[own.start : own.stop] = mine.groups
    return StepBatch(mine.step, groups, processes.everyone(mine.verifier_failures))


def checker_counts(checker: Checker) -> dict:
    """The checker's calls, cache hits, fallbacks and unreadable replies in this step, summed over the processes."""
    counts = checker.counts.metrics()
    checker.counts = CheckerCounts()
    return dict(zip(counts, map(int, processes.summed(list(counts.values())))))


def step_samples(engine: Engine, step: int) -> list[Sample]:
    cfg = engine.recipe
    indices = prompt_indices(len(engine.samples), step, cfg.train.prompts_per_step, cfg.run.seed)
    return [engine.samples[i] for i in indices]


def cached_prompt(engine: Engine, sample: Sample) -> dict:
    """Encoding a prompt (chat template, image processing) is deterministic: do it once per sample,
    up to PROMPT_CACHE_BYTES of tensors."""
    prompt = engine.prompt_cache.get(sample.id)
    if prompt is None:
        prompt = encode_prompt(engine.policy, sample, engine.recipe.prompt_template)
        size = sum(t.numel() * t.element_size() for t in prompt.values())
        if engine.prompt_cache_bytes + size <= PROMPT_CACHE_BYTES:
            engine.prompt_cache[sample.id] = prompt
            engine.prompt_cache_bytes += size
    return prompt


def sample_rollouts(engine: Engine, batch: StepBatch) -> None:
    """K completions per prompt; SFT learns only from references, so it samples none."""
    cfg = engine.recipe.rollout
    if engine.recipe.train.algorithm == "sft":
        return
    completions = rollout.BACKENDS[cfg.backend](
        engine.policy, [g.prompt for g in batch.groups], num_generations=cfg.num_generations,
        max_new_tokens=cfg.max_new_tokens, sampling=rollout_sampling(engine.recipe),
        batch_size=cfg.prompts_per_generate, share_prompt=engine.recipe.model.reuse_prompt,
    )
    for group, group_completions in zip(batch.groups, completions):
        group.completions = group_completions


def rollout_sampling(recipe: Recipe) -> dict:
    """The recipe's sampling settings, complete (rollout.sampling_settings); recorded in the run directory."""
    cfg = recipe.rollout
    return sampling_settings(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k,
                             repetition_penalty=cfg.repetition_penalty)


def verify(engine: Engine, batch: StepBatch) -> None:
    """Every rollout's verdict and weighted reward; failed verify calls are counted in the batch. With the LLM
    checker, its rating of the rollout's thinking replaces the verifier's local `thinking` reward."""
    weights = engine.recipe.train.reward_weights
    verdicts, batch.verifier_failures = engine.verifiers.verify_groups(
        [(g.sample.task, g.sample, [c.text for c in g.completions]) for g in batch.groups])
    for group, group_verdicts in zip(batch.groups, verdicts):
        group.verdicts = group_verdicts
    if engine.checker is not None:
        check_thinking(engine.checker, batch, engine.recipe.verifier.answer_flag)
    for group in batch.groups:
        group.rewards = [dyme.total_reward(v.rewards, weights) for v in group.verdicts]


def check_thinking(checker: Checker, batch: StepBatch, answer_flag: str) -> None:
    """The checker's thinking reward for every rollout it could rate; the others keep the verifier's (counted)."""
    rated = [(g.sample, c, v) for g in batch.groups for c, v in zip(g.completions, g.verdicts)]
    scores = checker.rate([(sample, split_completion(c.text, answer_flag).thinking) for sample, c, _ in rated])
    for (_, _, verdict), score in zip(rated, scores):
        if score is not None:
            verdict.rewards["thinking"] = score


def gate(engine: Engine, batch: StepBatch) -> None:
    """DyME's decision per prompt (dyme.py), and the reference target of every prompt that memorizes."""
    cfg = engine.recipe.train
    decisions = dyme.decide(
        [g.correct for g in batch.groups], [g.rewards for g in batch.groups], algorithm=cfg.algorithm,
        all_correct=cfg.all_correct, scale_rewards=cfg.scale_rewards, eps=cfg.std_eps,
        switch=switch(engine, batch.step, len(batch.groups)),
    )
    for group, decision in zip(batch.groups, decisions):
        group.decision = decision
        if decision.mode is Mode.MEMORIZE:
            group.target = memorization_target(engine.policy, group.sample, engine.recipe.verifier.answer_flag)


def switch(engine: Engine, step: int, n_prompts: int) -> dyme.Switch:
    """The baselines' switching inputs: the threshold, and for SFT annealing the step's memorization probability
    with one draw per prompt (a pure function of seed and step, so a resumed run draws the same)."""
    cfg = engine.recipe.train
    if cfg.algorithm != "anneal":
        return dyme.Switch(threshold=cfg.memorize_below)
    rng = random.Random(f"anneal:{engine.recipe.run.seed}:{step}")
    return dyme.Switch(memorize_probability=dyme.anneal_probability(step, engine.total_steps),
                       draws=[rng.random() for _ in range(n_prompts)])


def memorization_target(policy: Policy, sample: Sample, answer_flag: str) -> Target:
    text = target_text(sample, answer_flag)
    return Target(text, target_ids(policy, text))


def assemble_rows(groups: Sequence[PromptGroup]) -> list[Row]:
    """MEMORIZE -> the reference target with A = 1; EXPLORE -> rollouts with A != 0; nothing else.

    Rows whose advantage is zero contribute no gradient, so they are never forwarded.
    """
    rows = []
    for group in groups:
        if group.decision.mode is Mode.MEMORIZE:
            rows.append(Row(group.prompt, group.target.ids, dyme.MEMORIZE_ADVANTAGE, memorized=True))
        elif group.decision.mode is Mode.EXPLORE:
            rows.extend(Row(group.prompt, c.ids, a) for c, a in zip(group.completions, group.decision.advantages) if a != 0.0)
    return rows


# --------------------------------------------------------------------------- the update


def step_totals(recipe: Recipe, groups: Sequence[PromptGroup], rows: Sequence[Row]) -> StepTotals:
    """The loss's denominators for `[train].loss_scale` (losses.py): the forwarded rows, or every row of the step."""
    micro_batches = math.ceil(len(rows) / recipe.optim.micro_batch_size)
    if recipe.train.loss_scale == "active_rows":
        lengths = [len(row.completion_ids) for row in rows]
    else:
        lengths = [n for group in groups for n in group_row_lengths(group)]
    return StepTotals(len(lengths), sum(lengths), micro_batches, recipe.rollout.max_new_tokens, recipe.train.loss_scale)


def group_row_lengths(group: PromptGroup) -> list[int]:
    """Completion lengths of every row a group holds, as the authors lay it out: its K rollouts, the first one
    replaced by the reference target when the group memorizes (SFT groups hold the target alone)."""
    lengths = [len(c.ids) for c in group.completions]
    if group.target is not None:
        lengths[:1] = [len(group.target.ids)]
    return lengths


def update(engine: Engine, rows: list[Row], totals: StepTotals) -> dict:
    """num_iterations optimizer steps on this process's rows, micro-batched with gradient accumulation; `totals`
    are the whole step's, so that the gradients summed over the processes are the step's (processes.py)."""
    recipe, model = engine.recipe, engine.policy.model
    forwarded, tokens = processes.summed([len(rows), sum(len(r.completion_ids) for r in rows)])
    stats: dict = {"loss": None, "grad_norm": None, "rows": int(forwarded), "tokens": int(tokens), "nonfinite_updates": 0}
    if forwarded:  # every process takes part in the update, with or without rows of its own
        micro = chunked(by_length(rows), recipe.optim.micro_batch_size)
        reuse = recipe.model.reuse_prompt
        images = {} if reuse and image_features_frozen(model) else None  # one encoding per prompt for the step
        scoring = (engine.policy.pad_token_id, recipe.rollout.temperature, reuse, images)
        with engine.accelerator.autocast():
            old = frozen_logprobs(model, micro, *scoring) if recipe.train.num_iterations > 1 else None
            ref = frozen_logprobs(engine.reference, micro, *scoring) if engine.reference else None
        for _ in range(recipe.train.num_iterations):
            stats.update(optimizer_step(engine, micro, totals, old, ref, images))
            if stats["nonfinite_updates"]:
                break  # the weights did not move: another iteration would compute the same non-finite loss
    with warnings.catch_warnings():
        # A step with nothing to learn (every group skipped) still advances the schedule: lr is a function
        # of the step number, which torch's "scheduler before optimizer" warning does not know.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
        engine.scheduler.step()
    return stats


def optimizer_step(engine: Engine, micro, totals: StepTotals, old, ref, images: dict | None) -> dict:
    recipe, model, accelerator = engine.recipe, engine.policy.model, engine.accelerator
    train_cfg = recipe.train
    engine.optimizer.zero_grad(set_to_none=True)
    loss_sum, clip_sum, kl_sum, nll_sum, nll_tokens = 0.0, 0.0, 0.0, 0.0, 0.0
    for j, batch in enumerate(micro):
        pairs = [with_completion(row.prompt, row.completion_ids) for row in batch]
        with accelerator.autocast():  # the images a prompt's rows share are encoded outside model.forward
            logp, mask = completion_logprobs(model, pairs, engine.policy.pad_token_id, recipe.rollout.temperature,
                                             recipe.model.reuse_prompt, images)
        advantages = torch.tensor([row.advantage for row in batch], device=logp.device)
        loss, info = policy_loss(
            logp, old[j] if old else logp.detach(), advantages, mask,
            loss_type=train_cfg.loss_type, totals=totals, eps_low=train_cfg.epsilon, eps_high=train_cfg.clip_high,
            beta=train_cfg.beta, ref_logp=ref[j] if ref else None,
        )
        accelerator.backward(loss)
        loss_sum += loss.item()
        clip_sum += info["clip_fraction"] * len(batch)
        memorized = torch.tensor([row.memorized for row in batch], device=logp.device)
        nll_sum -= float((logp.detach() * mask)[memorized].sum())
        nll_tokens += float(mask[memorized].sum())
        kl_sum += info.get("kl", 0.0) * len(batch)
    processes.sum_gradients([p for p in model.parameters() if p.requires_grad])
    loss_sum, clip_sum, kl_sum, nll_sum, nll_tokens, forwarded = processes.summed(
        [loss_sum, clip_sum, kl_sum, nll_sum, nll_tokens, sum(len(batch) for batch in micro)])
    grad_norm = float(accelerator.clip_grad_norm_(model.parameters(), recipe.optim.max_grad_norm))
    finite = math.isfinite(loss_sum) and math.isfinite(grad_norm)
    if finite:
        engine.optimizer.step()
    else:  # one NaN/inf gradient would make every weight NaN: skip the update, count it (run_steps stops a streak)
        engine.optimizer.zero_grad(set_to_none=True)
    out = {"loss": loss_sum, "grad_norm": grad_norm, "nonfinite_updates": int(not finite), "clip_fraction": clip_sum / forwarded,
           "memorize_nll": nll_sum / nll_tokens if nll_tokens else None,
           "memory_state_gib": state_bytes(model, engine.optimizer) / 2**30, "memory_peak_gib": peak_bytes() / 2**30}
    if train_cfg.beta > 0:
        out["kl"] = kl_sum / forwarded
    return out


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the weights (tied ones once), their gradients and the optimizer state: what --dry-run estimates."""
    params = list({p.data_ptr(): p for p in model.parameters()}.values())
    tensors = params + [p.grad for p in params if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in tensors)


def peak_bytes() -> int:
    """The process's peak memory so far: allocated GPU memory on a GPU, resident memory on a CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


@torch.no_grad()
def frozen_logprobs(model, micro, pad_id: int, temperature: float, completion_only: bool,
                    images: dict | None) -> list[torch.Tensor]:
    """Log-probs before any update (old policy for mu > 1) or under the frozen reference model."""
    return [completion_logprobs(model, [with_completion(r.prompt, r.completion_ids) for r in batch], pad_id,
                                temperature, completion_only, images)[0]
            for batch in micro]


def by_length(rows: list[Row]) -> list[Row]:
    """Rows ordered by their length (prompt + completion; ties keep their order), so that the micro-batches cut
    from them pad each row little. Every loss sums per-row terms over the step's denominators, so the order
    changes no gradient (only `bnpo` under `active_rows` averages within micro-batches, as TRL does)."""
    return sorted(rows, key=lambda row: row.prompt["input_ids"].shape[-1] + len(row.completion_ids))


def chunked(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --------------------------------------------------------------------------- data order, optimizer, schedule


def prompt_indices(n: int, step: int, per_step: int, seed: int) -> list[int]:
    """Prompts of a step (1-based): consecutive slices of a fresh permutation per epoch.

    A pure function of (step, seed), so a resumed run sees exactly the prompts it would have seen.
    """
    start = (step - 1) * per_step
    return [_epoch_order(n, seed, pos // n)[pos % n] for pos in range(start, start + per_step)]


@lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


# Parameters that get no weight decay: biases and normalisation weights (the transformers Trainer's rule).
NO_DECAY = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def build_optimizer(model: torch.nn.Module, recipe: Recipe, max_steps: int):
    cfg = recipe.optim
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, max_steps, cfg.schedule))
    return optimizer, scheduler


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters in two AdamW groups: with weight decay, and without it for biases and
    normalisation weights (found by transformers' own `get_parameter_names`)."""
    from transformers.trainer_pt_utils import get_parameter_names

    decayed = set(get_parameter_names(model, [torch.nn.LayerNorm], list(NO_DECAY)))
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for name, p in trainable if name in decayed], "weight_decay": weight_decay},
            {"params": [p for name, p in trainable if name not in decayed], "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup over `warmup` steps, then constant, linear or cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(engine: Engine, run: RunDir, step: int) -> Path:
    """Model + processor + optimizer/scheduler/RNG state, written atomically (rundir.new_checkpoint) by the main
    process (every process holds the same weights and optimizer state); the others wait for it."""
    if processes.is_main():
        write_checkpoint(engine, run, step)
    processes.wait_for_everyone()
    return run.checkpoint(step)


def write_checkpoint(engine: Engine, run: RunDir, step: int) -> None:
    with run.new_checkpoint(step, keep=engine.recipe.run.keep_checkpoints) as directory:
        save_policy(engine.policy, directory, engine.accelerator.unwrap_model(engine.policy.model))
        state = {
            "step": step,
            "optimizer": engine.optimizer.state_dict(),
            "scheduler": engine.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        torch.save(state, state_file(directory))


def restore_state(engine: Engine, checkpoint: Path, state: dict) -> int:
    """The optimizer, scheduler and RNG of `state` (read from `checkpoint` by runstart); its step."""
    try:
        engine.optimizer.load_state_dict(state["optimizer"])
    except ValueError as exc:  # e.g. a checkpoint written before biases and norms had their own no-decay group
        raise RunDirError(f"{checkpoint}: its optimizer state does not fit this model and optimizer "
                          f"({first_line(exc)}); resume with the dyme version that wrote it, or start a new run") from None
    engine.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


class StopRequest:
    """The first stop signal asks the loop to stop after the current step (and checkpoint), and says so at once,
    since a step can be long; a second Ctrl-C aborts. A repeated SIGTERM or SIGHUP changes nothing: schedulers
    signal every process of a job and launchers forward the signal again, and the run must still checkpoint."""

    def __init__(self, on_message: Callable[[str], None] = lambda message: None):
        self.signum: int | None = None
        self.on_message = on_message
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        except ValueError:  # not the main thread: no signal handling
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        self.on_message(f"{signal.Signals(signum).name}: stopping after the current step with a checkpoint; "
                        "press Ctrl-C again to stop at once without one")

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False


# --------------------------------------------------------------------------- the run


def train(
    recipe: Recipe,
    *,
    output_dir: Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    allow_recipe_change: bool = False,
    on_step: Callable[[int, int, dict], None] | None = None,
    on_message: Callable[[str], None] = lambda message: None,
    on_image_check: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train `recipe` into its run directory (`output_dir` overrides `[run].output_dir`), or continue the run there
    (`resume`), holding the directory's lock throughout. Every refusal comes before anything is written: another
    process training there, a new run where one is recorded, a resumed one whose recipe changes what it trains
    (unless `allow_recipe_change`). `on_image_check(done, total)` follows the datasets' image checks.

    Under `accelerate launch` every process runs this; the main one alone holds the lock, checks and writes the run
    directory and reports (processes.py)."""
    run = RunDir(Path(output_dir or recipe.run.output_dir))
    total = max_steps or recipe.train.max_steps
    recipe_toml = recipe_to_toml(recipe)
    # Mixed precision: the weights and AdamW's state stay in [model].dtype (float32 = master weights), the forward
    # passes run under accelerate's autocast in bf16/fp16. Made first: it joins the processes of a launched run.
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=recipe.model.mixed_precision,
                              log_with=trackers(recipe) or None, project_dir=run.path)
    if not processes.is_main():
        on_step, on_message, on_image_check = None, (lambda message: None), None
    with ExitStack() as held:
        changes = processes.on_main(lambda: claim_run_dir(held, run, recipe_toml, resume, allow_recipe_change))
        samples = recipe.data.read(recipe.data.train, on_image_check)
        test_samples = recipe.data.read(recipe.data.test, on_image_check) if recipe.data.test else Samples()
        for skipped in filter(None, (samples.skip_note(), test_samples.skip_note())):
            on_message(skipped)
        verifiers = load_verifiers(task_lines(samples, test_samples), recipe.verifier.answer_flag,
                                   recipe.verifier.options)
        unrefined = samples
        if recipe.supervision.refiner == "llm":
            samples = processes.on_main(lambda: refined_samples(recipe, run, unrefined, on_message))
        elif recipe.supervision.checker == "llm":  # the checker grounds on facts: read them where a sample has none
            samples = processes.on_main(lambda: with_facts(unrefined, ChatClient(recipe.supervision),
                                                           recipe.supervision.concurrency,
                                                           run.path / SUPERVISION_DIR / "facts.jsonl"))

        torch.manual_seed(recipe.run.seed)
        random.seed(recipe.run.seed)
        texts = [user_text(s, recipe.prompt_template) + " " + target_text(s, recipe.verifier.answer_flag) for s in samples]
        base_path = processes.on_main(lambda: base_model(recipe, run, texts))
        start = starting_point(recipe, run, base_path, resume, on_message)
        policy = start.policy
        prepare_for_training(policy, recipe.model)

        check_completion_length(recipe.rollout.max_new_tokens, context_length(policy.model.config))
        warn_long_targets(policy, samples, recipe, on_message)
        processes.wait_for_everyone()  # all have loaded their start before damaged checkpoints are moved aside
        if processes.is_main():
            record_start(run, recipe_toml, start, changes, on_message)
            run.record_generation({"max_new_tokens": recipe.rollout.max_new_tokens,
                                   "num_return_sequences": recipe.rollout.num_generations, **rollout_sampling(recipe),
                                   "eos_token_id": policy.eos_token_ids, "pad_token_id": policy.pad_token_id,
                                   "suppress_tokens": policy.blocked_token_ids})
        if recipe.run.report_to:
            accelerator.init_trackers(TRACKING_DIR, config=flat_settings(recipe))
            held.callback(accelerator.end_training)
        optimizer, scheduler = build_optimizer(policy.model, recipe, total)
        # Not wrapped in DDP (whose hooks need the same backward passes on every process): each process accumulates
        # its rows' gradients, and processes.sum_gradients adds them up once per update. `evaluation_mode` is
        # accelerate's name for "device placement and autocast, no wrapper".
        policy.model = accelerator.prepare_model(policy.model, evaluation_mode=True)
        optimizer = accelerator.prepare_optimizer(optimizer)
        policy.model.train()
        reference = load_reference(base_path, recipe, accelerator) if recipe.train.beta > 0 else None
        pool = VerifierPool(verifiers, recipe.verifier.timeout_s, recipe.verifier.workers)
        checker = checker_for(recipe.supervision, run.path / SUPERVISION_DIR, PartialState().process_index, on_message)
        engine = Engine(recipe, policy, samples, pool, optimizer, scheduler, accelerator, total, reference, run.name,
                        checker, unrefined)
        with pool:
            return run_steps(engine, run, start, test_samples, total, on_step, on_message)


def run_steps(engine: Engine, run: RunDir, begin: Start, test_samples: list[Sample], total: int,
              on_step: Callable[[int, int, dict], None] | None, on_message: Callable[[str], None]) -> TrainResult:
    recipe, checkpoint = engine.recipe, begin.checkpoint
    start = 0
    if checkpoint:
        start = restore_state(engine, checkpoint, begin.state)
        on_message(f"resumed from {checkpoint} (step {start})")
    for note in run.truncate_logs(start) if processes.is_main() else []:
        on_message(note)

    result = TrainResult(run.path, start, checkpoint)
    if start >= total:
        on_message(f"the run is already at step {start} of {total}: nothing to train; raise [train].max_steps "
                   "(or pass --max-steps) to train further")
    if recipe.run.eval_before and test_samples and start == 0:
        result.before = run_eval(engine, test_samples, run, 0)

    failure_reports, nonfinite_streak = 0, 0
    with StopRequest(on_message) as stop:
        for step in range(start + 1, total + 1):
            outcome = dyme_step(engine, step)
            if evaluates_at(recipe, step, total) and test_samples:
                report = run_eval(engine, test_samples, run, step)
                outcome.metrics.update(eval_metrics(report))
                if step == total:
                    result.after = report
            if processes.is_main():
                run.append_metrics(outcome.metrics)
                run.append_traces(outcome.traces)
            engine.accelerator.log(tracked(outcome.metrics), step=step)  # the main process's trackers, if any
            failure_reports = report_verifier_failures(step, outcome.verifier_failures, failure_reports, on_message)
            if evolves_at(recipe, step):
                engine.samples = processes.on_main(lambda: evolved_samples(
                    recipe, run, engine.unrefined, outcome.traces, step, on_message)) or engine.samples
            nonfinite_streak = nonfinite_streak + 1 if outcome.metrics["nonfinite_updates"] else 0
            if nonfinite_streak == NONFINITE_LIMIT:
                raise TrainingDiverged(step, result.checkpoint)
            result.steps = step
            if step % recipe.run.save_every == 0 or step == total:
                result.checkpoint = save_checkpoint(engine, run, step)
            if on_step:
                on_step(step, total, outcome.metrics)
            if processes.any_process(stop.requested):  # a signal that reached one process stops them all
                if result.checkpoint != run.checkpoint(step):
                    result.checkpoint = save_checkpoint(engine, run, step)
                raise TrainingInterrupted(step, result.checkpoint, stop.signum or signal.SIGTERM)
    return result


def evaluates_at(recipe: Recipe, step: int, total: int) -> bool:
    """Held-out evaluation after this step: every `[run].eval_every` steps, and after the last with `eval_after`."""
    every = recipe.run.eval_every
    return (step == total and recipe.run.eval_after) or (every is not None and step % every == 0)


def evolves_at(recipe: Recipe, step: int) -> bool:
    every = recipe.supervision.evolve_every
    return every is not None and step % every == 0


def eval_metrics(report: EvalReport) -> dict:
    summary = report.overall.summary()
    return {"eval_accuracy": summary["accuracy"], "eval_format_rate": summary["format_rate"]}


def report_verifier_failures(step: int, failures: list[str], reported: int, on_message: Callable[[str], None]) -> int:
    """Say so when verifier calls fail (raise or time out), for the first few steps where it happens."""
    if failures and reported < FAILURE_REPORTS:
        on_message(f"step {step}: {len(failures)} verifier call(s) failed and count as wrong answers; first: {failures[0]}")
        reported += 1
        if reported == FAILURE_REPORTS:
            on_message(f"further verifier failures are only counted (verifier_errors in {METRICS_FILE})")
    return reported


def warn_long_targets(policy: Policy, samples: list[Sample], recipe: Recipe, on_message: Callable[[str], None]) -> None:
    """Rollouts are cut at max_new_tokens; a reference target longer than that can never be matched."""
    limit = recipe.rollout.max_new_tokens
    lengths = [len(target_ids(policy, target_text(s, recipe.verifier.answer_flag))) for s in samples]
    too_long = sum(n > limit for n in lengths)
    if too_long:
        on_message(f"warning: {too_long} of {len(samples)} reference targets are longer than "
                   f"[rollout].max_new_tokens = {limit} (longest {max(lengths)} tokens); rollouts of those prompts are truncated")


def load_reference(path: str, recipe: Recipe, accelerator: Accelerator) -> torch.nn.Module:
    """The frozen starting policy, for the KL term (only loaded when beta > 0)."""
    model = load_for_recipe(recipe.model, path).model
    model.requires_grad_(False)
    model.eval()
    return accelerator.prepare_model(model, evaluation_mode=True)


def run_eval(engine: Engine, samples: list[Sample], run: RunDir, step: int) -> EvalReport:
    """Greedy held-out accuracy; every completion goes to the run's eval traces, tagged with the step."""
    cfg = engine.recipe.run
    chosen = samples[: cfg.eval_limit] if cfg.eval_limit else samples
    return evaluate(engine.policy, chosen, engine.verifiers, max_new_tokens=engine.recipe.rollout.max_new_tokens,
                    prompt_template=engine.recipe.prompt_template, batch_size=cfg.eval_batch_size,
                    on_group=trace_writer(run.eval_traces_file, run.name, step, engine.recipe.train.reward_weights)
                    if processes.is_main() else None)
