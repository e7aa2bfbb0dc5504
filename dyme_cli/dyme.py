"""The DyME rule, per prompt and per step. Pure functions, no I/O, no torch.

For each prompt with K verified rollouts:
  no rollout correct   -> MEMORIZE: learn the reference target as one row with advantage 1;
  some correct         -> EXPLORE:  GRPO advantages A_i = (r_i - mean(r)) / (std(r) + eps);
  all correct          -> SKIP (nothing to learn), or EXPLORE when `all_correct = "explore"`.
`algorithm = "sft"` memorizes every prompt; `algorithm = "grpo"` never memorizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Sequence


class Mode(str, Enum):
    MEMORIZE = "memorize"
    EXPLORE = "explore"
    SKIP = "skip"


MEMORIZE_ADVANTAGE = 1.0


@dataclass(frozen=True)
class GroupDecision:
    mode: Mode
    advantages: list[float]  # one per rollout; all zero unless the group explores


def gate(correct: Sequence[bool], algorithm: str, all_correct: str) -> Mode:
    """Which mode a prompt's group takes, from the correctness of its rollouts."""
    if algorithm == "sft":
        return Mode.MEMORIZE
    n_correct = sum(correct)
    if n_correct == 0 and algorithm == "dyme":
        return Mode.MEMORIZE
    if n_correct == len(correct) and all_correct == "skip":
        return Mode.SKIP
    return Mode.EXPLORE


def total_reward(components: dict[str, float], weights: dict[str, float]) -> float:
    """Weighted sum of a verdict's reward components; components without a weight count zero."""
    return sum(weights.get(name, 0.0) * value for name, value in components.items())


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def std(values: Sequence[float]) -> float:
    """Sample standard deviation (n - 1), as torch.std; 0 for fewer than two values."""
    if len(values) < 2:
        return 0.0
    m = mean(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def group_advantages(rewards: Sequence[float], scale: str, eps: float, batch_std: float) -> list[float]:
    """A_i = r_i - mean(r), divided by (std + eps) of the group (`group`) or of the whole step (`batch`)."""
    centered = [r - mean(rewards) for r in rewards]
    if scale == "none":
        return centered
    spread = std(rewards) if scale == "group" else batch_std
    return [c / (spread + eps) for c in centered]


def decide(
    correct: Sequence[Sequence[bool]],
    rewards: Sequence[Sequence[float]],
    *,
    algorithm: str = "dyme",
    all_correct: str = "skip",
    scale_rewards: str = "group",
    eps: float = 1e-4,
) -> list[GroupDecision]:
    """Gate every group of the step and give each rollout its advantage."""
    flat = [r for group in rewards for r in group]
    batch_std = std(flat)
    decisions = []
    for group_correct, group_rewards in zip(correct, rewards):
        mode = gate(group_correct, algorithm, all_correct)
        if mode is Mode.EXPLORE:
            advantages = group_advantages(group_rewards, scale_rewards, eps, batch_std)
        else:
            advantages = [0.0] * len(group_rewards)
        decisions.append(GroupDecision(mode, advantages))
    return decisions


def zero_std_cause(correct: Sequence[bool], rewards: Sequence[float]) -> str | None:
    """Why a group's rewards have no spread (advantage collapse): all_correct, all_wrong or mixed; None if they do."""
    if not rewards or std(rewards) > 0:
        return None
    if all(correct):
        return "all_correct"
    if not any(correct):
        return "all_wrong"
    return "mixed"
