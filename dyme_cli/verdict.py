"""What a verifier returns, and the answer-flag rules every verifier shares.

A plugin may import these helpers: `from dyme_cli.verdict import Verdict, split_completion`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass
class Verdict:
    correct: bool  # gates memorization vs exploration
    answer: str | None  # what was extracted after the answer flag
    rewards: dict[str, float] = field(default_factory=dict)  # at least "format" and "accuracy"
    detail: str = ""  # why, for humans


@dataclass(frozen=True)
class SplitCompletion:
    thinking: str  # text before the last answer flag
    answer: str | None  # text after the last answer flag; None when there is no flag
    flag_count: int


def split_completion(completion: str, answer_flag: str = "Answer:") -> SplitCompletion:
    """Split at the last answer flag (case-insensitive); trim the answer and one trailing period."""
    matches = list(re.finditer(re.escape(answer_flag), completion, flags=re.IGNORECASE))
    if not matches:
        return SplitCompletion(completion.strip(), None, 0)
    last = matches[-1]
    answer = completion[last.end():].strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    return SplitCompletion(completion[: last.start()].strip(), answer, len(matches))


def format_reward(split: SplitCompletion) -> float:
    """1 iff the flag appears exactly once and a non-empty thinking part precedes it."""
    return 1.0 if split.flag_count == 1 and split.thinking else 0.0
