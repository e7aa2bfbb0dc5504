"""The DyME rule, per prompt and per step. Pure functions, no I/O, no torch.

For each prompt with K verified rollouts:
  no rollout correct   -> MEMORIZE: learn the reference target as one row with advantage 1;
  some correct         -> EXPLORE:  GRPO advantages A_i = (r_i - mean(r)) / (std(r) + eps);
  all correct          -> SKIP (nothing to learn), or EXPLORE when `all_correct = "explore"`.
The methods, each one row of METHODS (what the recipe, the gate and `dyme compare` read):
`algorithm = "sft"` memorizes every prompt; `algorithm = "grpo"` never memorizes. The paper's other switching
strategies, for comparison: `threshold` memorizes a prompt while fewer than a fraction t of its rollouts are correct
(explores otherwise); `anneal` (SFT annealing) memorizes each prompt with a probability that falls linearly from 1
at the first step to 0 at the last, whatever its rollouts, and explores otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Sequence


class Mode(str, Enum):
    MEMORIZE = "memorize"
    EXPLORE = "explore"
    SKIP = "skip"


MEMORIZE_ADVANTAGE = 1.0


@dataclass(frozen=True)
class GroupDecision:
    mode: Mode
    advantages: list[float]  # one per rollout; all zero unless the group explores


@dataclass(frozen=True)
class Switch:
    """What decides memorization besides the rollouts: `threshold` for `algorithm = "threshold"`, and for
    `anneal` the step's probability of memorizing with one uniform draw in [0, 1) per prompt."""

    threshold: float = 0.5
    memorize_probability: float = 0.0
    draws: Sequence[float] = ()


def gate(correct: Sequence[bool], algorithm: str, all_correct: str, switch: Switch = Switch(), draw: float = 1.0
         ) -> Mode:
    """Which mode a prompt's group takes, from the correctness of its rollouts (and, for `anneal`, its draw)."""
    n_correct = sum(correct)
    if METHODS[algorithm].memorizes(n_correct / len(correct) if correct else 0.0, switch, draw):
        return Mode.MEMORIZE
    if n_correct == len(correct) and all_correct == Mode.SKIP.value:
        return Mode.SKIP
    return Mode.EXPLORE


#: (fraction of the group's rollouts that are correct, the step's Switch, the prompt's draw) -> memorize?
MemorizeRule = Callable[[float, Switch, float], bool]


@dataclass(frozen=True)
class Method:
    """A way of training that `dyme compare` can run: one algorithm of the recipe (`memorizes`, the gate's rule),
    or `phases`, algorithms trained one after the other, each phase starting from the previous one's checkpoint."""

    memorizes: MemorizeRule | None = None
    samples: bool = True  # draws K rollouts per prompt; SFT learns from the references alone
    phases: tuple[str, ...] = ()


#: The one table of methods: the recipe's `[train].algorithm` choices (the rows with a rule), `dyme compare`'s
#: methods and their phases, and its default list, in this order. A new baseline is a row here.
METHODS: dict[str, Method] = {
    "dyme": Method(lambda correct, switch, draw: correct == 0.0),
    "sft": Method(lambda correct, switch, draw: True, samples=False),
    "grpo": Method(lambda correct, switch, draw: False),
    "sft-grpo": Method(phases=("sft", "grpo")),
    "threshold": Method(lambda correct, switch, draw: correct < switch.threshold),
    "anneal": Method(lambda correct, switch, draw: draw < switch.memorize_probability),
}
ALGORITHMS = tuple(name for name, method in METHODS.items() if method.memorizes is not None)


def phases(method: str) -> tuple[str, ...]:
    """The algorithms a method trains, in order: itself, or its phases."""
    return METHODS[method].phases or (method,)


def anneal_probability(step: int, total: int) -> float:
    """SFT annealing's chance of memorizing a prompt at `step` (1-based): 1 at the first step, 0 at the last."""
    return 1.0 - (step - 1) / max(1, total - 1)


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
    switch: Switch = Switch(),
) -> list[GroupDecision]:
    """Gate every group of the step and give each rollout its advantage."""
    flat = [r for group in rewards for r in group]
    batch_std = std(flat)
    draws = switch.draws or [1.0] * len(correct)
    decisions = []
    for group_correct, group_rewards, draw in zip(correct, rewards, draws):
        mode = gate(group_correct, algorithm, all_correct, switch, draw)
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
