"""The flag names and the two small records every part of the package shares: a Flag and a sample's context."""

from __future__ import annotations

from dataclasses import dataclass, field

FLAGS = (
    "no-answer",
    "empty-thinking",
    "truncated",
    "conclusion-mismatch",
    "ungrounded-value",
    "misread-value",
    "ignores-image",
    "repetition",
    "parroted-reference",
    "right-for-wrong-reasons",
)


@dataclass(frozen=True)
class Flag:
    name: str  # one of FLAGS
    reason: str  # one human line naming the offending text
    spans: tuple[tuple[int, int], ...] = ()  # character spans of the offending text in the trace's completion


@dataclass(frozen=True)
class SampleContext:
    """What the detectors know about a trace's sample (from the trace itself, --data, or the run's dataset)."""

    question: str = ""
    reference: str = ""
    facts: dict = field(default_factory=dict)
