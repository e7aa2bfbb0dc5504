"""What one training step carries: a named record per prompt, filled in stage by stage.

    sample + encoded prompt ─► completions (rollout) ─► verdicts, rewards (verify) ─► decision (gate)
                                                                                  └► target (memorize)
    groups ─► Rows (assemble: the rows with a non-zero advantage) ─► the update
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

from .data import Sample
from .dyme import GroupDecision
from .verdict import Verdict

if TYPE_CHECKING:  # the records are read without torch (dyme inspect-traces)
    from .rollout import Completion


class Target(NamedTuple):
    """A memorization target: the text learned (reference + answer flag + gold answer) and its token ids."""

    text: str
    ids: list[int]


@dataclass
class PromptGroup:
    """One prompt of a step and everything the step learns about it; a rollout Backend reads its sample, text and
    prompt (rollout.PromptInput)."""

    sample: Sample
    prompt: dict  # the encoded prompt: input ids, attention mask, pixel values, ...
    completions: list[Completion] = field(default_factory=list)  # K rollouts; none for SFT
    verdicts: list[Verdict] = field(default_factory=list)  # one per completion
    rewards: list[float] = field(default_factory=list)  # weighted total reward per completion
    decision: GroupDecision | None = None  # memorize / explore / skip, with per-rollout advantages
    target: Target | None = None  # the reference target, when the group memorizes
    text: str = ""  # the rendered prompt (rollout.PromptInput), for backends that encode prompts themselves
    prompt_tokens: int = 0  # the encoded prompt's length (known on every process, the encoding on one)

    @property
    def correct(self) -> list[bool]:
        return [v.correct for v in self.verdicts]


@dataclass
class Row:
    """One sequence the update learns from: an encoded prompt, a completion (a rollout or the reference target)
    and its advantage. A row of a prompt another process sampled has no encoded prompt until it is dealt here."""

    prompt: dict
    completion_ids: list[int]
    advantage: float
    memorized: bool = False
    sample: Sample | None = None  # whose prompt it is
    prompt_tokens: int = 0
    weight: float = 1.0  # 0 for padding: forwarded so that every process makes the same calls, learned from not at all

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + len(self.completion_ids)

    @property
    def has_images(self) -> bool:
        """Whether its encoded prompt holds pixels (a vision model's sample with images)."""
        return any(key.startswith("pixel_") for key in self.prompt)


@dataclass
class StepBatch:
    step: int
    groups: list[PromptGroup]
    verifier_failures: list[str] = field(default_factory=list)  # details of verify calls that raised or timed out
