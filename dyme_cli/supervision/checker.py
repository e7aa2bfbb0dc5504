"""The LLM checker: how well a rollout's thinking uses the image's visual facts, rated low / medium / high and
mapped to a `thinking` reward of 0 / 0.5 / 1 (the paper's visual supervision).

A reply that names no level is asked again (up to PARSE_RETRIES times); a rollout the checker cannot rate (the
server is down, too slow or answers with errors, the replies stay unreadable) keeps the verifier's local thinking
reward, and is counted; each kind of failure is also said once. Ratings are remembered in the run directory, so a
resumed run asks nothing twice.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data import Sample, append_jsonl
from .client import ChatClient, concurrently, failure

LEVELS = {"low": 0.0, "medium": 0.5, "high": 1.0}
PARSE_RETRIES = 2  # further requests when a reply names no level
REPLY_TOKENS = 8

RUBRIC = (
    "You check the reasoning of a small vision-language model about an image. You are given the facts visible in "
    "the image, the question, the correct answer and the model's reasoning. Rate the reasoning:\n"
    "high: it uses the visual facts correctly, its steps are coherent, and they support the correct answer;\n"
    "medium: it uses some facts correctly but misses, misreads or invents others, or its steps only partly "
    "support the answer;\n"
    "low: it ignores or contradicts the facts, or its steps do not support the answer.\n"
    "Reply with one word: low, medium or high."
)


def checker_messages(sample: Sample, thinking: str) -> list[dict]:
    """The rubric and one rollout's reasoning; a sample without facts shows its reference reasoning instead."""
    facts = json.dumps(sample.facts, sort_keys=True) if sample.facts else f"(no table; reference: {sample.reference})"
    user = (f"Facts: {facts}\nQuestion: {sample.question}\nCorrect answer: {sample.answer}\n"
            f"Model's reasoning: {thinking or '(none)'}\nRating:")
    return [{"role": "system", "content": RUBRIC}, {"role": "user", "content": user}]


def parse_rating(reply: str) -> float | None:
    """The reward of the first level a reply names (`High.`, `rating: medium`), else None."""
    match = re.search(r"\b(low|medium|high)\b", reply, flags=re.IGNORECASE)
    return LEVELS[match.group(1).lower()] if match else None


@dataclass
class CheckerCounts:
    calls: int = 0  # requests sent
    cache_hits: int = 0
    fallbacks: int = 0  # rollouts left with the local thinking reward
    unparseable: int = 0  # replies that named no level
    failed: int = 0  # requests that got no reply (the server down, too slow, or answering with an error)

    def metrics(self) -> dict:
        return {f"checker_{name}": value for name, value in vars(self).items()}


@dataclass
class Checker:
    client: ChatClient
    concurrency: int
    budget_s: float
    cache_file: Path | None  # this process's file; every `checker*.jsonl` beside it is read
    on_message: Callable[[str], None]
    counts: CheckerCounts = field(default_factory=CheckerCounts)
    _cache: dict[str, float] = field(default_factory=dict)
    _said: set = field(default_factory=set)  # the kinds of failure already reported
    _counting: threading.Lock = field(default_factory=threading.Lock)  # requests run in threads

    def __post_init__(self):
        if self.cache_file is not None:
            for path in sorted(self.cache_file.parent.glob("checker*.jsonl")):
                for line in path.read_text(encoding="utf-8").splitlines():
                    try:
                        record = json.loads(line)
                        self._cache[record["key"]] = float(record["score"])
                    except (ValueError, KeyError, TypeError):
                        continue  # a torn last line of an interrupted run: rated again

    def rate(self, requests: list[tuple[Sample, str]]) -> list[float | None]:
        """A thinking reward per (sample, thinking), or None where the checker could not rate it (counted)."""
        keys = [_key(sample, thinking) for sample, thinking in requests]
        missing = [i for i, key in enumerate(keys) if key not in self._cache]
        self.counts.cache_hits += len(requests) - len(missing)
        outcomes = concurrently([lambda i=i: self._ask(*requests[i]) for i in missing], self.concurrency, self.budget_s)
        fresh = []
        for i, outcome in zip(missing, outcomes):
            if isinstance(outcome, float):
                self._cache[keys[i]] = outcome
                fresh.append({"key": keys[i], "score": outcome})
            elif isinstance(outcome, BaseException):
                self._report(*failure(outcome))
            else:  # not finished within the step's budget
                self._report("budget", f"did not rate every rollout within the step's budget "
                                       f"([supervision].step_budget_s = {self.budget_s:g} s)")
        if fresh and self.cache_file is not None:
            self.cache_file.parent.mkdir(parents=True, exist_ok=True)
            append_jsonl(self.cache_file, fresh)
        scores = [self._cache.get(key) for key in keys]
        self.counts.fallbacks += sum(score is None for score in scores)
        return scores

    def _ask(self, sample: Sample, thinking: str) -> float:
        """The rating of one rollout; NoRating when every reply named no level."""
        messages = checker_messages(sample, thinking)
        for _ in range(1 + PARSE_RETRIES):
            with self._counting:
                self.counts.calls += 1
            try:
                reply = self.client.reply(messages, REPLY_TOKENS)
            except Exception:
                with self._counting:
                    self.counts.failed += 1
                raise
            score = parse_rating(reply)
            if score is not None:
                return score
            with self._counting:
                self.counts.unparseable += 1
        raise NoRating(f"{1 + PARSE_RETRIES} replies named no level (the last: {reply[:60]!r})")

    def _report(self, kind: str, description: str) -> None:
        """Say once per kind of failure what went wrong; training goes on with the local reward."""
        if kind not in self._said:
            self._said.add(kind)
            self.on_message(f"the checker's server {self.client.base_url} {description}; rollouts it cannot rate "
                            "keep the local thinking reward (counted in checker_fallbacks)")


class NoRating(ValueError):
    """Replies that name no level, however often asked."""


def _key(sample: Sample, thinking: str) -> str:
    text = json.dumps([sample.facts, sample.question, sample.answer, sample.reference if not sample.facts else "",
                       thinking], sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
