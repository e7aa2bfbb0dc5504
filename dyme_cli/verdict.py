"""What a verifier returns, and the answer-flag rules every verifier shares.

A plugin may subclass `AnswerVerifier` (it implements the shared rules and asks only for `matches`), or
use the helpers directly: `from dyme_cli.verdict import Verdict, split_completion, format_reward, last_boxed`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Verdict:
    correct: bool  # gates memorization vs exploration
    answer: str | None  # what was extracted after the answer flag
    rewards: dict[str, float] = field(default_factory=dict)  # at least "format" and "accuracy"
    detail: str = ""  # why, for humans


Span = tuple[int, int]  # [start, end) character offsets into the completion


@dataclass(frozen=True)
class SplitCompletion:
    thinking: str  # text before the last answer flag, trimmed
    answer: str | None  # text after the last answer flag, trimmed, one trailing period removed; None: no flag
    flag_spans: tuple[Span, ...] = ()  # every occurrence of the answer flag
    thinking_span: Span = (0, 0)  # where `thinking` lies in the completion
    answer_span: Span | None = None  # where `answer` lies in the completion

    @property
    def flag_count(self) -> int:
        return len(self.flag_spans)


def split_completion(completion: str, answer_flag: str = "Answer:") -> SplitCompletion:
    """Split at the last answer flag (case-insensitive); trim the answer and one trailing period.

    The one rule every verifier and `dyme inspect-traces` use; the spans locate each part in the completion.
    """
    flags = tuple(m.span() for m in re.finditer(re.escape(answer_flag), completion, flags=re.IGNORECASE))
    if not flags:
        return SplitCompletion(completion.strip(), None, flags, _trimmed_span(completion, 0, len(completion)))
    start, end = flags[-1]
    answer_start, answer_end = _trimmed_span(completion, end, len(completion))
    if completion[answer_start:answer_end].endswith("."):
        answer_end = max(answer_start, len(completion[:answer_end - 1].rstrip()))
    thinking_span = _trimmed_span(completion, 0, start)
    return SplitCompletion(completion[slice(*thinking_span)], completion[answer_start:answer_end], flags,
                           thinking_span, (answer_start, answer_end))


def _trimmed_span(text: str, start: int, end: int) -> Span:
    """The span of text[start:end] without its leading and trailing whitespace."""
    part = text[start:end]
    lead = len(part) - len(part.lstrip())
    return (start + lead, start + len(part.rstrip())) if part.strip() else (start + lead, start + lead)


def format_reward(split: SplitCompletion) -> float:
    """1 iff the flag appears exactly once and a non-empty thinking part precedes it."""
    return 1.0 if split.flag_count == 1 and split.thinking else 0.0


STOPWORDS = frozenset(
    """a an the and or but if then so of to in on at by for with from as is are was were be been being it its this
    that these those there here i you he she we they me my our your their what which who whom whose how why when
    where do does did done not no yes can could would should will shall may might must has have had let lets us
    about into over under than too very just also all any each both some such only own same other more most
    answer think look looks see shows show okay ok hmm well""".split()
)
_WORD = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
_BOXED = re.compile(r"\\boxed\s*\{")


def keywords(text: str) -> set[str]:
    """Lower-cased word and number tokens, minus stopwords."""
    return {t for t in _WORD.findall(text.lower()) if t not in STOPWORDS}


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` in `text`, or None when there is none (or it is unclosed)."""
    starts = list(_BOXED.finditer(text))
    if not starts:
        return None
    depth, begin = 1, starts[-1].end()
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i].strip()
    return None


def flatten(value: Any) -> str:
    """Facts (nested dicts and lists) as one text of keys and values."""
    if isinstance(value, dict):
        return " ".join(f"{k} {flatten(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(flatten(v) for v in value)
    return str(value)


def thinking_reward(thinking: str, sample) -> float:
    """Keyword F1 between the thinking and the sample's reference trace plus its visual facts."""
    predicted = keywords(thinking)
    gold = keywords(f"{sample.reference} {flatten(sample.facts)}")
    overlap = len(predicted & gold)
    if not overlap:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class Match:
    """How a predicted answer compares with the gold one."""

    correct: bool
    detail: str
    accuracy: float | None = None  # the accuracy reward; None means 1.0 if correct else 0.0


class AnswerVerifier:
    """The shared rules: answer after the last flag, `format` and `thinking` rewards, no answer -> incorrect.

    Subclasses set `name` and `description` and implement `matches(predicted, gold, sample)`; they may
    override `extract` to find the answer another way (math also reads a final `\\boxed{...}`).
    """

    name = ""
    description = ""

    def __init__(self, answer_flag: str = "Answer:"):
        if not answer_flag.strip():
            raise ValueError("answer_flag must not be empty")
        self.answer_flag = answer_flag

    def extract(self, split: SplitCompletion) -> str | None:
        return split.answer

    def matches(self, predicted: str, gold: str, sample) -> Match:
        raise NotImplementedError

    def verify(self, completion: str, sample) -> Verdict:
        split = split_completion(completion, self.answer_flag)
        rewards = {"format": format_reward(split), "accuracy": 0.0, "thinking": thinking_reward(split.thinking, sample)}
        answer = self.extract(split)
        if answer is None:
            return Verdict(False, None, rewards, f"no '{self.answer_flag}' in the completion")
        if not answer:
            return Verdict(False, answer, rewards, f"nothing after '{self.answer_flag}'")
        match = self.matches(answer, str(sample.answer), sample)
        rewards["accuracy"] = float(match.correct) if match.accuracy is None else match.accuracy
        return Verdict(match.correct, answer, rewards, match.detail)
