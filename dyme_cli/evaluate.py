"""Held-out accuracy: greedy rollouts scored by the same verifiers as training."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .data import Sample
from .modeling import Policy
from .rollout import encode_prompt, generate
from .verify_pool import VerifierPool


@dataclass
class Score:
    n: int = 0
    correct: int = 0
    formatted: int = 0
    tokens: int = 0
    truncated: int = 0

    def add(self, correct: bool, formatted: bool, tokens: int, truncated: bool) -> None:
        self.n += 1
        self.correct += correct
        self.formatted += formatted
        self.tokens += tokens
        self.truncated += truncated

    def summary(self) -> dict[str, float]:
        n = max(self.n, 1)
        return {
            "n": self.n,
            "accuracy": self.correct / n,
            "format_rate": self.formatted / n,
            "mean_completion_tokens": self.tokens / n,
            "truncated_rate": self.truncated / n,
        }


@dataclass
class EvalReport:
    overall: Score = field(default_factory=Score)
    by_kind: dict[str, Score] = field(default_factory=lambda: defaultdict(Score))

    @property
    def accuracy(self) -> float:
        return self.overall.summary()["accuracy"]

    def to_dict(self) -> dict:
        return {"overall": self.overall.summary(), "by_kind": {k: s.summary() for k, s in sorted(self.by_kind.items())}}


def evaluate(
    policy: Policy,
    samples: Sequence[Sample],
    verifiers: VerifierPool,
    *,
    max_new_tokens: int,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> EvalReport:
    """Greedy-decode one completion per sample and score it."""
    report = EvalReport()
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [encode_prompt(policy, s) for s in chunk]
        groups = generate(
            policy, prompts, num_generations=1, max_new_tokens=max_new_tokens, greedy=True, batch_size=batch_size
        )
        results = verifiers.verify([(s.task, completion.text, s) for s, (completion,) in zip(chunk, groups)])
        for sample, (completion,), (verdict, _) in zip(chunk, groups, results):
            args = (verdict.correct, verdict.rewards.get("format", 0.0) >= 1.0, len(completion.ids), completion.truncated)
            report.overall.add(*args)
            report.by_kind[str(sample.meta.get("kind", sample.task))].add(*args)
        if on_batch:
            on_batch(len(chunk))
    return report
