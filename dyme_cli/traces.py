"""Per-step records: one metrics line per step, one trace line per rollout and per memorized target."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

from . import dyme
from .dyme import GroupDecision, Mode


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return dyme.mean(values), dyme.std(values)


def step_metrics(
    *, step, groups, verdicts, rewards, decisions: Sequence[GroupDecision], rows, update_stats, timing,
    verifier_errors: int, lr: float,
) -> dict:
    n_groups = len(decisions)
    modes = Counter(d.mode.value for d in decisions)
    completions = [c for group in groups for c in group]
    flat_verdicts = [v for group in verdicts for v in group]
    flat_rewards = [r for group in rewards for r in group]
    causes = Counter(
        dyme.zero_std_cause([v.correct for v in group_v], group_r) for group_v, group_r in zip(verdicts, rewards) if group_r
    )
    generated = sum(len(c.ids) for c in completions)
    seconds = sum(timing.values())
    metrics = {
        "step": step,
        "loss": update_stats["loss"],
        "lr": lr,
        "grad_norm": update_stats["grad_norm"],
        "rows": update_stats["rows"],
        "reward_mean": _mean_std(flat_rewards)[0],
        "reward_std": _mean_std(flat_rewards)[1],
        "accuracy": (sum(v.correct for v in flat_verdicts) / len(flat_verdicts)) if flat_verdicts else None,
        "completion_tokens_mean": generated / len(completions) if completions else None,
        "truncated_frac": (sum(c.truncated for c in completions) / len(completions)) if completions else None,
        "verifier_errors": verifier_errors,
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
    for key in ("memorize_nll", "clip_fraction", "kl"):
        if key in update_stats:
            metrics[key] = update_stats[key]
    return metrics


def rollout_record(*, run, step, sample, task, index, mode, completion, verdict, reward, advantage) -> dict:
    """One rollout's trace line (training and `dyme eval` write the same format)."""
    return {
        "run": run, "step": step, "prompt_id": sample.id, "task": task, "kind": "rollout",
        "rollout": index, "mode": mode, "completion": completion.text,
        "answer": verdict.answer, "gold": sample.answer, "correct": verdict.correct,
        "rewards": verdict.rewards, "reward": reward, "advantage": advantage,
        "tokens": len(completion.ids), "truncated": completion.truncated, "detail": verdict.detail,
    }


def step_traces(*, run, step, samples, groups, verdicts, rewards, decisions, targets) -> list[dict]:
    records = []
    for sample, group, group_v, group_r, decision, target in zip(samples, groups, verdicts, rewards, decisions, targets):
        for index, (completion, verdict, reward, advantage) in enumerate(zip(group, group_v, group_r, decision.advantages)):
            records.append(rollout_record(
                run=run, step=step, sample=sample, task=sample.task, index=index, mode=decision.mode.value,
                completion=completion, verdict=verdict, reward=reward, advantage=advantage,
            ))
        if target is not None:
            text, ids = target
            records.append({
                "run": run, "step": step, "prompt_id": sample.id, "task": sample.task, "kind": "target",
                "rollout": None, "mode": Mode.MEMORIZE.value, "completion": text, "target": text,
                "answer": sample.answer, "gold": sample.answer, "correct": True, "rewards": {}, "reward": None,
                "advantage": dyme.MEMORIZE_ADVANTAGE, "tokens": len(ids), "truncated": False, "detail": "reference target",
            })
    return records


def eval_traces(*, run, step, sample, task, group, reward_weights: dict[str, float]) -> list[dict]:
    """Trace lines for one evaluated prompt, mode "eval". They carry the sample's question, reference, facts
    and image paths, so `dyme inspect-traces` needs no dataset to check them."""
    context = {"question": sample.question, "reference": sample.reference, "facts": sample.facts,
               "images": [str(p.resolve()) for p in sample.image_paths()]}
    return [
        {**rollout_record(run=run, step=step, sample=sample, task=task, index=index, mode="eval", completion=completion,
                          verdict=verdict, reward=dyme.total_reward(verdict.rewards, reward_weights), advantage=None),
         **context}
        for index, (completion, verdict) in enumerate(group)
    ]
