"""Trusting a verifier before training with it: `dyme verifiers check`.

Two ways to check one: hand-written cases (a completion, a sample, and optionally the verdict expected), or
calibration on a dataset, where each sample's gold completion must be accepted (else a false negative) and
perturbed completions (off-by-one, off-by-10%, sign flip, swapped category, empty answer) must be rejected
(else a false positive). Every call goes through a VerifierPool, so a hanging plugin cannot hang the check.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .data import DataError, Sample, jsonl_records, target_text, validate_sample
from .verdict import Verdict
from .verify_pool import VerifierPool

PERTURBATIONS = ("off-by-one", "off-by-10%", "sign-flip", "swapped-category", "empty-answer")
_NUMERIC_ANSWER = re.compile(r"(?P<prefix>[$€£]?)(?P<number>-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?)(?P<suffix>\s*%?)")


@dataclass
class Case:
    completion: str
    sample: Sample
    expect: bool | None = None


@dataclass
class CaseResult:
    case: Case
    verdict: Verdict
    failed: bool  # the verifier raised or timed out

    @property
    def agrees(self) -> bool | None:
        return None if self.case.expect is None else self.verdict.correct == self.case.expect


def read_cases(path: Path, name: str) -> list[Case]:
    """JSONL lines {"completion": str, "sample": {...}, "expect": bool?}; the sample's id, task and question
    may be left out. A malformed line raises DataError naming the file, line and field."""
    cases = [_parse_case(f"{path}:{lineno}", lineno, record, name) for lineno, record in jsonl_records(path, "cases")]
    if not cases:
        raise DataError(f"{path}: no cases")
    return cases


def _parse_case(where: str, lineno: int, record: dict, name: str) -> Case:
    completion, sample, expect = record.get("completion"), record.get("sample"), record.get("expect")
    if not isinstance(completion, str):
        raise DataError(f"{where}: field 'completion': expected a string")
    if not isinstance(sample, dict):
        raise DataError(f"{where}: field 'sample': expected an object")
    if expect is not None and not isinstance(expect, bool):
        raise DataError(f"{where}: field 'expect': expected true or false")
    sample = validate_sample({"id": f"case-{lineno}", "task": name, "question": "", **sample}, where, prefix="sample.")
    return Case(completion, sample, expect)


def check_cases(pool: VerifierPool, name: str, cases: Sequence[Case]) -> list[CaseResult]:
    results = pool.verify([(name, case.completion, case.sample) for case in cases])
    return [CaseResult(case, verdict, failed) for case, (verdict, failed) in zip(cases, results)]


def case_summary(results: Sequence[CaseResult]) -> dict:
    expected = [r for r in results if r.case.expect is not None]
    return {
        "cases": len(results),
        "with_expect": len(expected),
        "agree": sum(r.agrees for r in expected),
        "false_positives": sum(r.verdict.correct and not r.case.expect for r in expected),
        "false_negatives": sum(not r.verdict.correct and r.case.expect for r in expected),
        "errors": sum(r.failed for r in results),
    }


# --------------------------------------------------------------------------- calibration


@dataclass
class Calibration:
    samples: int = 0
    errors: int = 0  # calls that raised or timed out (they count as rejections)
    gold_rejected: list[dict] = field(default_factory=list)
    tried: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PERTURBATIONS, 0))
    accepted: dict[str, list[dict]] = field(default_factory=lambda: {k: [] for k in PERTURBATIONS})

    @property
    def false_negative_rate(self) -> float:
        return len(self.gold_rejected) / self.samples if self.samples else 0.0

    @property
    def false_positive_rate(self) -> float:
        tried = sum(self.tried.values())
        return sum(len(v) for v in self.accepted.values()) / tried if tried else 0.0

    def to_dict(self, examples: int = 5) -> dict:
        return {
            "samples": self.samples,
            "errors": self.errors,
            "gold_rejected": len(self.gold_rejected),
            "false_negative_rate": self.false_negative_rate,
            "false_positive_rate": self.false_positive_rate,
            "perturbations": {
                kind: {"tried": self.tried[kind], "accepted": len(self.accepted[kind]),
                       "rate": len(self.accepted[kind]) / self.tried[kind] if self.tried[kind] else 0.0}
                for kind in PERTURBATIONS
            },
            "gold_rejected_examples": self.gold_rejected[:examples],
            "accepted_examples": [e for kind in PERTURBATIONS for e in self.accepted[kind][:examples]],
        }


def perturbed_answers(gold: str, categories: Sequence[str], rng: random.Random) -> list[tuple[str, str]]:
    """(kind, wrong answer) pairs for a gold answer: number changes for numeric golds, another category
    from the dataset for the rest, and an empty answer for all."""
    gold = gold.strip()
    numeric = _NUMERIC_ANSWER.fullmatch(gold)
    wrong: list[tuple[str, str]] = []
    if numeric:
        value = float(numeric["number"].replace(",", ""))
        decimals = len(numeric["number"].partition(".")[2])

        def like_gold(x: float) -> str:
            return f"{numeric['prefix']}{_number_text(x, decimals)}{numeric['suffix']}"

        wrong.append(("off-by-one", like_gold(value + 1)))
        if value:
            wrong.append(("off-by-10%", like_gold(value * 1.1)))
            wrong.append(("sign-flip", like_gold(-value)))
    else:
        others = sorted({c for c in categories if c.strip().lower() != gold.lower()})
        if others:
            wrong.append(("swapped-category", rng.choice(others)))
    wrong.append(("empty-answer", ""))
    return wrong


def _number_text(x: float, decimals: int) -> str:
    text = f"{x:.{max(decimals, 6)}f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def calibrate(pool: VerifierPool, name: str, samples: Sequence[Sample], answer_flag: str, seed: int = 0) -> Calibration:
    rng = random.Random(seed)
    categories = [s.answer for s in samples if not _NUMERIC_ANSWER.fullmatch(s.answer.strip())]
    jobs, labels = [], []  # labels: (sample, kind or None for the gold completion, answer)
    for sample in samples:
        jobs.append((name, target_text(sample, answer_flag), sample))
        labels.append((sample, None, sample.answer))
        for kind, answer in perturbed_answers(sample.answer, categories, rng):
            jobs.append((name, target_text(sample, answer_flag, answer), sample))
            labels.append((sample, kind, answer))
    report = Calibration(samples=len(samples))
    for (sample, kind, answer), (verdict, failed) in zip(labels, pool.verify(jobs)):
        report.errors += failed
        example = {"id": sample.id, "gold": sample.answer, "answer": answer, "detail": verdict.detail}
        if kind is None:
            if not verdict.correct:
                report.gold_rejected.append(example)
            continue
        report.tried[kind] += 1
        if verdict.correct:
            report.accepted[kind].append({"perturbation": kind, **example})
    return report
