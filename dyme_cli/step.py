"""One DyME step, top to bottom, as in the paper:

    rollout   K completions per prompt, through the run's rollout Backend (rollout.py);
    verify    each completion's verdict and weighted reward (verifier plugins, the optional LLM checker);
    gate      per prompt: none correct -> memorize, some -> explore with GRPO advantages, all -> skip (dyme.py);
    assemble  the rows with a non-zero advantage: a memorized prompt is its reference target with A = 1;
    update    num_iterations optimizer steps on those rows (losses.py, scoring.py).

With N processes each one samples and verifies its share of the step's prompts, and learns from a share of the
whole step's rows balanced by token count, in as many micro-batches as every other process (the run's Parallel,
processes.py); the gate, the loss's denominators, the metrics and the traces see the whole step.
"""

from __future__ import annotations

import math
import random
import time
import warnings
from dataclasses import astuple, dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from accelerate import Accelerator

from . import dyme, processes
from .batch import PromptGroup, Row, StepBatch, Target
from .data import Sample, target_text
from .dyme import Mode
from .losses import StepTotals, policy_loss
from .modeling import Policy, image_features_frozen
from .optim import peak_bytes, state_bytes, whole
from .processes import DataParallel, Parallel
from .recipe import Recipe
from .rollout import BACKENDS, Backend, PromptInput, prompt_input, sampling_settings, target_ids
from .rundir import RunDir
from .scoring import Scoring, shares_prefix
from .supervision import Checker, CheckerCounts
from .traces import StepMetrics, Trace, UpdateStats, step_metrics, step_traces
from .verdict import split_completion
from .verify_pool import VerifierPool

PROMPT_CACHE_BYTES = 512 * 2**20  # encoded prompts (token ids + pixel values) kept between steps


@dataclass
class Engine:
    """Everything a step needs (runstart.start_run builds it for a run). Built by hand, it samples with the
    recipe's rollout backend and spreads over the processes as `DataParallel` with replicated weights."""

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
    backend: Backend | None = None
    parallel: Parallel = field(default_factory=DataParallel)
    run: RunDir | None = None
    test_samples: list[Sample] = field(default_factory=list)
    resumed_from: Path | None = None  # the checkpoint the run continues from
    resumed_at: int = 0  # its step
    prompt_cache: dict[str, PromptInput] = field(default_factory=dict)
    prompt_cache_bytes: int = 0

    def __post_init__(self):
        if self.backend is None:
            self.backend = BACKENDS[self.recipe.rollout.backend](self.policy, share_prompt=self.recipe.model.reuse_prompt)


@dataclass
class StepResult:
    metrics: StepMetrics
    traces: list[Trace] = field(default_factory=list)
    verifier_failures: list[str] = field(default_factory=list)  # details of verify calls that raised or timed out


def dyme_step(engine: Engine, step: int) -> StepResult:
    t0 = time.perf_counter()
    prompts = step_samples(engine, step)
    own = engine.parallel.share(len(prompts))
    mine = StepBatch(step, [prompt_group(engine, prompts[i]) for i in own])
    sample_rollouts(engine, mine, rollout_seeds(engine.recipe.run.seed, step, own))
    t1 = time.perf_counter()
    verify(engine, mine)
    batch = whole_step(engine.parallel, mine, len(prompts))
    gate(engine, batch)
    rows = assemble_rows(batch.groups)
    t2 = time.perf_counter()
    stats = update(engine, dealt_micro_batches(engine, rows), step_totals(engine.recipe, batch.groups, rows))
    t3 = time.perf_counter()

    timing = {"generate": t1 - t0, "verify": t2 - t1, "update": t3 - t2}
    metrics = step_metrics(batch, update=stats, timing=timing, lr=engine.scheduler.get_last_lr()[0])
    if engine.checker is not None:
        metrics.checker = checker_counts(engine.checker)
    return StepResult(metrics, step_traces(engine.run_name, batch), batch.verifier_failures)


# --------------------------------------------------------------------------- the step's prompts


def step_samples(engine: Engine, step: int) -> list[Sample]:
    cfg = engine.recipe
    indices = prompt_indices(len(engine.samples), step, cfg.train.prompts_per_step, cfg.run.seed)
    return [engine.samples[i] for i in indices]


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


def cached_prompt(engine: Engine, sample: Sample) -> PromptInput:
    """Rendering and encoding a prompt (chat template, image processing) is deterministic: do it once per sample,
    up to PROMPT_CACHE_BYTES of tensors."""
    cached = engine.prompt_cache.get(sample.id)
    if cached is None:
        cached = prompt_input(engine.policy, sample, engine.recipe.prompt_template, engine.recipe.rollout.max_new_tokens)
        size = sum(t.numel() * t.element_size() for t in cached.prompt.values())
        if engine.prompt_cache_bytes + size <= PROMPT_CACHE_BYTES:
            engine.prompt_cache[sample.id] = cached
            engine.prompt_cache_bytes += size
    return cached


def prompt_group(engine: Engine, sample: Sample) -> PromptGroup:
    """The step's record of one prompt, its rendering and encoding from the cache (the sample itself is the
    current one: a refined reference replaces the one read)."""
    cached = cached_prompt(engine, sample)
    return PromptGroup(sample, cached.prompt, text=cached.text, prompt_tokens=cached.prompt["input_ids"].shape[-1])


# --------------------------------------------------------------------------- rollout, verify, gate, assemble


def sample_rollouts(engine: Engine, batch: StepBatch, seeds: Sequence[int]) -> None:
    """K completions per prompt, each drawn with its prompt's seed; a method that learns from the references alone
    (SFT) samples none."""
    cfg = engine.recipe.rollout
    if not dyme.METHODS[engine.recipe.train.algorithm].samples:
        return
    with engine.parallel.gathered(engine.policy.model):
        completions = engine.backend.generate(batch.groups, num_generations=cfg.num_generations,
                                              max_new_tokens=cfg.max_new_tokens,
                                              sampling=rollout_sampling(engine.recipe),
                                              batch_size=cfg.prompts_per_generate, seeds=seeds)
    for group, group_completions in zip(batch.groups, completions):
        group.completions = group_completions


def rollout_seeds(seed: int, step: int, indices: Sequence[int]) -> list[int]:
    """The sampling seed of each prompt at `indices` of a step: a function of the run's seed, the step and the
    prompt's place in it, so that a run samples the same rollouts on any number of processes, and on resume."""
    return [random.Random(f"rollout:{seed}:{step}:{i}").getrandbits(63) for i in indices]


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


def whole_step(parallel: Parallel, mine: StepBatch, n_prompts: int) -> StepBatch:
    """The step's groups from every process, in prompt order; this process's own groups are the very objects it
    filled (the gate's decisions reach them), the others' are copies without their encoded prompts."""
    if processes.count() == 1:
        return mine
    groups = processes.everyone([replace(g, prompt={}) for g in mine.groups])
    own = parallel.share(n_prompts)
    groups[own.start : own.stop] = mine.groups
    return StepBatch(mine.step, groups, processes.everyone(mine.verifier_failures))


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
    """The switching inputs of the methods that use them: the threshold, and for SFT annealing the step's
    memorization probability with one draw per prompt (a pure function of seed and step, so a resumed run draws
    the same; no global random state is touched)."""
    rng = random.Random(f"anneal:{engine.recipe.run.seed}:{step}")
    return dyme.Switch(threshold=engine.recipe.train.memorize_below,
                       memorize_probability=dyme.anneal_probability(step, engine.total_steps),
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
        of_group = {"sample": group.sample, "prompt_tokens": group.prompt_tokens}
        if group.decision.mode is Mode.MEMORIZE:
            rows.append(Row(group.prompt, group.target.ids, dyme.MEMORIZE_ADVANTAGE, memorized=True, **of_group))
        elif group.decision.mode is Mode.EXPLORE:
            rows.extend(Row(group.prompt, c.ids, a, **of_group)
                        for c, a in zip(group.completions, group.decision.advantages) if a != 0.0)
    return rows


def dealt_micro_batches(engine: Engine, rows: list[Row]) -> list[list[Row]]:
    """This process's micro-batches: its share of the step's rows balanced by token count (the run's Parallel),
    encoded, and packed by prompt where the update reads a prompt once for its rows (a prompt's rows meet in one
    micro-batch where they fit: `packed_by_prompt`), else cut in order of length. Every process runs as many
    micro-batches as the one with most rows, because the model's hooks make the same collective calls on every
    process: one with fewer pads with zero-weight copies of the step's shortest row."""
    if not rows:
        return []
    size = engine.recipe.optim.micro_batch_size
    mine = [rows[i] for i in engine.parallel.deal_rows([row.tokens for row in rows])]
    if shares_prefix(engine.policy.model, engine.recipe.model):
        micro = packed_by_prompt(encoded(engine, mine), size)
    else:
        micro = chunked(by_length(encoded(engine, mine)), size)
    missing = math.ceil(math.ceil(len(rows) / processes.count()) / size) - len(micro)
    if missing:
        padding = replace(min(rows, key=lambda row: row.tokens), advantage=0.0, memorized=False, weight=0.0)
        micro += [encoded(engine, [padding])] * missing
    return micro


def encoded(engine: Engine, rows: list[Row]) -> list[Row]:
    """`rows`, each with its encoded prompt: a row of a prompt another process sampled is encoded here, once per
    prompt (the rows of a prompt share its tensors, so its images are encoded once for them)."""
    prompts = {row.sample.id: cached_prompt(engine, row.sample).prompt for row in rows if not row.prompt}
    return [row if row.prompt else replace(row, prompt=prompts[row.sample.id]) for row in rows]


def checker_counts(checker: Checker) -> dict[str, int]:
    """The checker's calls, cache hits, fallbacks and unreadable replies in this step, summed over the processes."""
    counts = checker.counts.metrics()
    checker.counts = CheckerCounts()
    return dict(zip(counts, map(int, processes.summed(list(counts.values())))))


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


def update(engine: Engine, micro: list[list[Row]], totals: StepTotals) -> UpdateStats:
    """num_iterations optimizer steps on this process's micro-batches, with gradient accumulation; `totals` are
    the whole step's, so that the gradients summed over the processes are the step's. Then the rollout backend
    gets the new weights, and the schedule advances."""
    recipe, model = engine.recipe, engine.policy.model
    padded = [row for batch in micro for row in batch]
    rows = [row for row in padded if row.weight]
    forwarded, tokens = processes.summed([len(rows), sum(len(r.completion_ids) for r in rows)])
    stats = UpdateStats(rows=int(forwarded), tokens=int(tokens))
    if forwarded:  # every process takes part in the update, with or without rows of its own
        reuse, frozen = recipe.model.reuse_prompt, image_features_frozen(model)
        uneven = engine.parallel.uneven_images(model, any(row.has_images for row in padded),
                                               any(not row.has_images for row in padded))
        # Images encoded once per prompt, before the forward; trained features then enter the model's forward as an
        # input with a gradient, which FSDP's hooks follow only on the processes that have images: with rows
        # without images on some processes, each row's images are encoded in the forward instead
        scoring = Scoring(engine.policy.pad_token_id, recipe.rollout.temperature, completion_only=reuse,
                          image_features={} if reuse and frozen else None, images_once=frozen or not uneven,
                          shared_prefix=shares_prefix(model, recipe.model))
        with engine.accelerator.autocast():
            old = scoring.frozen(model, micro) if recipe.train.num_iterations > 1 else None
            ref = scoring.frozen(engine.reference, micro) if engine.reference else None
        for _ in range(recipe.train.num_iterations):
            stats = optimizer_step(engine, micro, totals, scoring, old, ref, stats)
            if stats.nonfinite_updates:
                break  # the weights did not move: another iteration would compute the same non-finite loss
        engine.backend.sync_weights(model)
    with warnings.catch_warnings():
        # A step with nothing to learn (every group skipped) still advances the schedule: lr is a function
        # of the step number, which torch's "scheduler before optimizer" warning does not know.
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler")
        engine.scheduler.step()
    return stats


@dataclass
class MicroSums:
    """What an optimizer step's micro-batches add up, then sum over the processes."""

    loss: float = 0.0
    clipped: float = 0.0  # clip fraction x rows
    kl: float = 0.0  # mean KL x rows
    memorized_nll: float = 0.0  # negative log-likelihood of the memorized targets' tokens
    memorized_tokens: float = 0.0
    rows: int = 0

    def summed(self) -> MicroSums:
        return MicroSums(*processes.summed(astuple(self)))


def optimizer_step(engine: Engine, micro: list[list[Row]], totals: StepTotals, scoring: Scoring,
                   old: list[torch.Tensor] | None, ref: list[torch.Tensor] | None, stats: UpdateStats) -> UpdateStats:
    recipe, model, accelerator = engine.recipe, engine.policy.model, engine.accelerator
    cfg = recipe.train
    engine.optimizer.zero_grad(set_to_none=True)
    sums = MicroSums()
    for j, batch in enumerate(micro):
        with accelerator.autocast():  # the images a prompt's rows share are encoded outside model.forward
            logp, mask = scoring.logprobs(model, batch)
        advantages = torch.tensor([row.advantage for row in batch], device=logp.device)
        mask = mask * torch.tensor([row.weight for row in batch], device=logp.device).unsqueeze(1)  # padding: 0
        loss, info = policy_loss(
            logp, old[j] if old else logp.detach(), advantages, mask,
            loss_type=cfg.loss_type, totals=totals, eps_low=cfg.epsilon, eps_high=cfg.clip_high,
            beta=cfg.beta, ref_logp=ref[j] if ref else None,
        )
        accelerator.backward(loss)
        memorized = torch.tensor([row.memorized for row in batch], device=logp.device)
        learned = sum(1 for row in batch if row.weight)
        sums.loss += loss.item()
        sums.clipped += info["clip_fraction"] * learned
        sums.memorized_nll -= float((logp.detach() * mask)[memorized].sum())
        sums.memorized_tokens += float(mask[memorized].sum())
        sums.kl += info.get("kl", 0.0) * learned
        sums.rows += learned
    sums = sums.summed()
    grad_norm = float(whole(accelerator.clip_grad_norm_(model.parameters(), recipe.optim.max_grad_norm)))
    finite = math.isfinite(sums.loss) and math.isfinite(grad_norm)
    if finite:
        engine.optimizer.step()
    else:  # one NaN/inf gradient would make every weight NaN: skip the update, count it (the loop stops a streak)
        engine.optimizer.zero_grad(set_to_none=True)
    return replace(
        stats, loss=sums.loss, grad_norm=grad_norm, nonfinite_updates=int(not finite),
        clip_fraction=sums.clipped / sums.rows,
        memorize_nll=sums.memorized_nll / sums.memorized_tokens if sums.memorized_tokens else None,
        kl=sums.kl / sums.rows if cfg.beta > 0 else None,
        memory_state_gib=state_bytes(model, engine.optimizer) / 2**30, memory_peak_gib=peak_bytes() / 2**30,
    )


def by_length(rows: list[Row]) -> list[Row]:
    """Rows ordered by their length (prompt + completion; ties keep their order), so that the micro-batches cut
    from them pad each row little. Every loss sums per-row terms over the step's denominators, so the order
    changes no gradient (only `bnpo` under `active_rows` averages within micro-batches, as TRL does)."""
    return sorted(rows, key=lambda row: row.prompt["input_ids"].shape[-1] + len(row.completion_ids))


def packed_by_prompt(rows: list[Row], size: int) -> list[list[Row]]:
    """`rows` in as many micro-batches of at most `size` rows as cutting them in order would make, a prompt's rows
    kept in one where they fit: the prompts, most rows first, each go to the fullest micro-batch with room for all
    of its rows, or, where none has, over the emptiest ones in turn."""
    groups: dict[int, list[Row]] = {}
    for row in rows:
        groups.setdefault(id(row.prompt["input_ids"]), []).append(row)
    micro: list[list[Row]] = [[] for _ in range(math.ceil(len(rows) / size))]
    for group in sorted(groups.values(), key=len, reverse=True):
        room = [m for m in micro if size - len(m) >= len(group)]
        if room:
            max(room, key=len).extend(group)
            continue
        while group:
            emptiest = min(micro, key=len)
            taken = size - len(emptiest)
            emptiest.extend(group[:taken])
            group = group[taken:]
    return micro


def chunked(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
