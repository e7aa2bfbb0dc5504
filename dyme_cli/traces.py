"""Per-step records: one metrics line per step, one trace line per rollout and per memorized target.

`Trace` is the typed shape of a traces.jsonl line, written by training and `dyme eval` and read by
`dyme inspect-traces` (inspect_run, pseudo_thinking, report_html). It is a plain dict on disk and in memory;
readers use `.get`, since traces from hand-made files or older runs may lack keys.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Sequence

from typing_extensions import TypedDict  # pydantic validates it (inspect-traces) on every supported Python

from . import dyme
from .batch import PromptGroup, StepBatch
from .data import Sample
from .dyme import Mode
from .verdict import Verdict

if TYPE_CHECKING:  # traces are read without torch (dyme inspect-traces)
    from .rollout import Completion


class Trace(TypedDict, total=False):
    run: str  # the run directory's name (training) or the checkpoint's label (eval)
    step: int | None
    prompt_id: str
    task: str  # the verifier that scored it
    kind: str  # "rollout" (sampled) or "target" (a memorized reference)
    rollout: int | None  # index within the prompt's group; None for a target
    mode: str  # memorize / explore / skip, or "eval"
    completion: str
    answer: str | None  # extracted by the verifier
    gold: str
    correct: bool
    rewards: dict[str, float]  # the verdict's reward components
    reward: float | None  # their weighted total
    advantage: float | None
    tokens: int
    truncated: bool
    detail: str
    target: str  # targets only: the text learned
    # eval traces also carry their sample, so they can be inspected without the dataset:
    question: str
    reference: str
    facts: dict[str, Any]
    images: list[str]


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return dyme.mean(values), dyme.std(values)


def step_metrics(batch: StepBatch, *, update_stats: dict, timing: dict, lr: float) -> dict:
    groups = batch.groups
    n_groups = len(groups)
    modes = Counter(g.decision.mode.value for g in groups)
    completions = [c for g in groups for c in g.completions]
    flat_verdicts = [v for g in groups for v in g.verdicts]
    flat_rewards = [r for g in groups for r in g.rewards]
    causes = Counter(dyme.zero_std_cause(g.correct, g.rewards) for g in groups if g.rewards)
    generated = sum(len(c.ids) for c in completions)
    seconds = sum(timing.values())
    metrics = {
        "step": batch.step,
        "loss": update_stats["loss"],
        "lr": lr,
        "grad_norm": update_stats["grad_norm"],
        "rows": update_stats["rows"],
        "reward_mean": _mean_std(flat_rewards)[0],
        "reward_std": _mean_std(flat_rewards)[1],
        "accuracy": (sum(v.correct for v in flat_verdicts) / len(flat_verdicts)) if flat_verdicts else None,
        "completion_tokens_mean": generated / len(completions) if completions else None,
        "truncated_frac": (sum(c.truncated for c in completions) / len(completions)) if completions else None,
        "verifier_errors": len(batch.verifier_failures),
        "time_generate": timing["generate"],
        "time_verify": timing["verify"],
        "time_update": timing["update"],
        "tokens_per_s": (generated + update_stats["tokens"]) / seconds if seconds > 0 else None,
    }
    for mode in Mode:
        metrics[f"n_{mode.value}"] = modes.get(mode.value, 0)
        metrics[f"frac_{mode.value}"] = modes.get(mode.value, 0) / n_groups if n_groups else 0.0
    for cause in ("all_correct", "all_wrong", "mixed"):
        metrics[f"zero_std_{cause}"] = causes.get(cause, 0) / n_groups if n_groups else 0.0
    components = sorted({name for v in flat_verdicts for name in v.rewards})
    for name in components:
        mean, spread = _mean_std([v.rewards.get(name, 0.0) for v in flat_verdicts])
        metrics[f"reward/{name}_mean"], metrics[f"reward/{name}_std"] = mean, spread
    for key in ("nonfinite_updates", "memorize_nll", "clip_fraction", "kl", "memory_state_gib", "memory_peak_gib"):
        if key in update_stats:
            metrics[key] = update_stats[key]
    return metrics


def rollout_trace(*, run: str, step: int, sample: Sample, task: str, index: int, mode: str, completion: Completion,
                  verdict: Verdict, reward: float, advantage: float | None) -> Trace:
    """One rollout's trace line (training and `dyme eval` write the same format)."""
    return Trace(
        run=run, step=step, prompt_id=sample.id, task=task, kind="rollout",
        rollout=index, mode=mode, completion=completion.text,
        answer=verdict.answer, gold=sample.answer, correct=verdict.correct,
        rewards=verdict.rewards, reward=reward, advantage=advantage,
        tokens=len(completion.ids), truncated=completion.truncated, detail=verdict.detail,
    )


def target_trace(*, run: str, step: int, group: PromptGroup) -> Trace:
    """The trace line of a memorized reference target."""
    sample, target = group.sample, group.target
    return Trace(
        run=run, step=step, prompt_id=sample.id, task=sample.task, kind="target",
        rollout=None, mode=Mode.MEMORIZE.value, completion=target.text, target=target.text,
        answer=sample.answer, gold=sample.answer, correct=True, rewards={}, reward=None,
        advantage=dyme.MEMORIZE_ADVANTAGE, tokens=len(target.ids), truncated=False, detail="reference target",
    )


def step_traces(run: str, batch: StepBatch) -> list[Trace]:
    records = []
    for group in batch.groups:
        rollouts = zip(group.completions, group.verdicts, group.rewards, group.decision.advantages)
        for index, (completion, verdict, reward, advantage) in enumerate(rollouts):
            records.append(rollout_trace(
                run=run, step=batch.step, sample=group.sample, task=group.sample.task, index=index,
                mode=group.decision.mode.value, completion=completion, verdict=verdict, reward=reward,
                advantage=advantage,
            ))
        if group.target is not None:
            records.append(target_trace(run=run, step=batch.step, group=group))
    return records


def eval_traces(*, run: str, step: int, sample: Sample, task: str, group: Sequence[tuple[Completion, Verdict]],
                reward_weights: dict[str, float]) -> list[Trace]:
    """Trace lines for one evaluated prompt, mode "eval". They carry the sample's question, reference, facts
    and image paths, so `dyme inspect-traces` needs no dataset to check them."""
    context = {"question": sample.question, "reference": sample.reference, "facts": sample.facts,
               "images": [str(p.resolve()) for p in sample.image_paths()]}
    return [
        Trace(**rollout_trace(run=run, step=step, sample=sample, task=task, index=index, mode="eval",
                              completion=completion, verdict=verdict,
                              reward=dyme.total_reward(verdict.rewards, reward_weights), advantage=None),
              **context)
        for index, (completion, verdict) in enumerate(group)
    ]
