"""The LLM refiner: a sample's reference reasoning rewritten into a clean, fact-grounded template, the target that
memorization teaches. A refined trace is rejected (and the original kept) when it concludes another answer than
the gold one or states values the facts and the question do not give (the pseudo-thinking detectors decide).
Refined references are remembered by (sample id, template version), so a resumed run or a second `dyme prepare
refine` pays nothing twice."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data import Sample, append_jsonl, jsonl_records
from ..pseudo_thinking import SampleContext
from ..pseudo_thinking.detectors import flag_trace
from ..verdict import split_completion
from .client import ChatClient, concurrently, failure
from .facts import with_facts

DEFAULT_TEMPLATE = (
    "First say what the question asks. Then read every value it needs from the facts, one per sentence "
    "(\"The red bar is 3.\"). Then compute step by step, one operation per sentence (\"3 - 2 = 1.\"). "
    "End with the result in one sentence."
)
REJECTING_FLAGS = ("ungrounded-value", "misread-value", "conclusion-mismatch")  # a refined target must not teach these
REPLY_TOKENS = 400


def template_version(template: str) -> str:
    return hashlib.sha256(template.encode("utf-8")).hexdigest()[:12]


def refiner_messages(sample: Sample, template: str) -> list[dict]:
    facts = json.dumps(sample.facts, sort_keys=True) if sample.facts else "(none given)"
    system = ("You write the reasoning that leads from an image's facts to the correct answer of a question, "
              f"following this template: {template} Use only values given in the facts or the question. Write "
              "the reasoning only: no final answer line, no preamble.")
    user = (f"Facts: {facts}\nQuestion: {sample.question}\nCorrect answer: {sample.answer}\n"
            f"Current reasoning (may be wrong): {sample.reference or '(none)'}\nReasoning:")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def rejection(sample: Sample, refined: str, answer_flag: str) -> str | None:
    """Why `refined` cannot be the sample's reference, or None: empty, another answer concluded, a value that
    neither the facts nor the question give, or a value read against the facts."""
    if not refined.strip():
        return "empty"
    stated = split_completion(refined, answer_flag).answer
    if stated is not None and stated.strip().lower() != sample.answer.strip().lower():
        return f"it answers {stated!r}, not the gold answer"
    trace = {"kind": "rollout", "completion": f"{refined.strip()} {answer_flag} {sample.answer}",
             "answer": sample.answer, "gold": sample.answer, "correct": True}
    context = SampleContext(question=sample.question, reference="", facts=dict(sample.facts))
    flags = [f for f in flag_trace(trace, context, None, answer_flag) if f.name in REJECTING_FLAGS]
    return f"{flags[0].name}: {flags[0].reason}" if flags else None


@dataclass
class RefineReport:
    samples: list[Sample]  # in input order, the accepted ones with their refined reference
    accepted: int = 0
    rejected: int = 0
    failed: int = 0  # no reply (server down, timeout, budget)
    cached: int = 0
    reasons: list[str] = field(default_factory=list)  # the first few rejections and failures, for the user

    def summary(self) -> str:
        return (f"refined references: {self.accepted} accepted, {self.rejected} rejected (original kept), "
                f"{self.failed} failed (original kept), {self.cached} of them from the cache")


@dataclass
class Refiner:
    client: ChatClient
    template: str
    answer_flag: str
    concurrency: int
    cache_file: Path | None

    def refine(self, samples: list[Sample], on_progress: Callable[[int, int], None] | None = None,
               budget_s: float | None = None) -> RefineReport:
        """Every sample with its refined reference where one was accepted (asked concurrently, remembered)."""
        version = template_version(self.template)
        facts_cache = self.cache_file.with_name(f"{self.cache_file.stem}-facts.jsonl") if self.cache_file else None
        samples = with_facts(samples, self.client, self.concurrency, facts_cache)  # grounding for samples without
        known = self._cached(version)
        todo = [s for s in samples if s.id not in known]
        report = RefineReport(samples=[], cached=len(samples) - len(todo))
        finished = [0]

        def keep(index: int, outcome: str | BaseException) -> None:
            """Judge and remember one reply as it arrives, so an interrupted pass keeps what it finished."""
            sample = todo[index]
            finished[0] += 1
            if isinstance(outcome, str):
                why = rejection(sample, outcome, self.answer_flag)
                known[sample.id] = {"id": sample.id, "template": version, "status": "rejected" if why else "accepted",
                                    "reference": outcome.strip(), "reason": why}
                if self.cache_file is not None:
                    self.cache_file.parent.mkdir(parents=True, exist_ok=True)
                    append_jsonl(self.cache_file, [known[sample.id]])
            if on_progress:
                on_progress(finished[0], len(todo))

        calls = [lambda s=s: self.client.reply(refiner_messages(s, self.template), REPLY_TOKENS) for s in todo]
        for sample, outcome in zip(todo, concurrently(calls, self.concurrency, budget_s, on_done=keep)):
            if not isinstance(outcome, str):
                report.failed += 1
                if len(report.reasons) < 3:
                    why = "no reply in time" if outcome is None else failure(outcome)[1]
                    report.reasons.append(f"{sample.id}: {why}")
        for sample in samples:
            record = known.get(sample.id)
            if record and record["status"] == "accepted":
                report.accepted += 1
                sample = sample.model_copy(update={"reference": record["reference"]})
            elif record:
                report.rejected += 1
                if len(report.reasons) < 3:
                    report.reasons.append(f"{sample.id}: {record['reason']}")
            report.samples.append(sample)
        return report

    def _cached(self, version: str) -> dict[str, dict]:
        if self.cache_file is None or not self.cache_file.is_file():
            return {}
        known = {}
        try:
            for _, record in jsonl_records(self.cache_file, "refiner cache"):
                if record.get("template") == version and "id" in record:
                    known[record["id"]] = record
        except ValueError:  # a torn last line of an interrupted run: those samples are refined again
            pass
        return known
