"""The synthetic math generator: schema, determinism, answers replayed from the facts, quality levels, CLI."""

import dataclasses
import operator
import re

import pytest
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.data import read_samples, target_text
from dyme_cli.plugins import load_verifier
from dyme_cli.prepare.synthetic_math import generate
from dyme_cli.pseudo_thinking import flag_trace, sample_contexts

from conftest import folder_digest

runner = CliRunner()
EQUATION = re.compile(r"(\d+) ([-+×÷]) (\d+) = (\d+)")
APPLY = {"+": operator.add, "-": operator.sub, "×": operator.mul, "÷": operator.floordiv}


@pytest.fixture(scope="module")
def by_quality(tmp_path_factory):
    root = tmp_path_factory.mktemp("math")
    for quality in ("high", "medium", "low"):
        generate(root / quality, n_train=60, n_test=4, seed=2, quality=quality)
    return {q: read_samples(root / q / "train.jsonl") for q in ("high", "medium", "low")}


def test_counts_and_schema(tmp_path):
    assert generate(tmp_path, n_train=12, n_test=3, seed=1, max_number=30) == {"train": 12, "test": 3}
    train, test = read_samples(tmp_path / "train.jsonl"), read_samples(tmp_path / "test.jsonl")
    assert [s.id for s in test] == [f"math-test-{i:05d}" for i in range(3)]
    for s in train + test:
        assert s.task == "math" and s.images == [] and s.question.endswith("have now?")
        assert 2 <= s.meta["steps"] <= 4 and s.meta["kind"] == f"{s.meta['steps']}-step"
        assert 1 <= int(s.answer) <= 30
    assert {s.meta["reference_quality"] for s in test} == {"high"}
    assert not (tmp_path / "images").exists()


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(tmp_path / "a", n_train=20, n_test=5, seed=7)
    generate(tmp_path / "b", n_train=20, n_test=5, seed=7)
    generate(tmp_path / "c", n_train=20, n_test=5, seed=8)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b") != folder_digest(tmp_path / "c")


def _operand(event):
    if "groups" in event:
        return event["groups"] * event["each"]
    return event.get("amount") or event.get("factor") or event.get("parts")


def test_answers_replay_from_the_facts(by_quality):
    for s in by_quality["high"]:
        facts = s.facts
        total, operations = facts["start"], 0
        assert s.question.startswith(f"{facts['person']} has {total} {facts['item']}.")
        for event in facts["events"]:
            operand = _operand(event)
            if event["op"] == "÷":
                assert total % operand == 0  # exact division
            total = APPLY[event["op"]](total, operand)
            assert 1 <= total <= 50
            operations += 2 if "groups" in event else 1
            for value in (v for v in event.values() if isinstance(v, int)):
                assert str(value) in s.question
        assert str(total) == s.answer and operations == s.meta["steps"]


def test_every_gold_completion_is_accepted(by_quality):
    verifier = load_verifier("math")
    for samples in by_quality.values():
        for s in samples:
            verdict = verifier.verify(target_text(s, "Answer:"), s)
            assert verdict.correct, (s.id, verdict.detail)


def _wrong_equations(reference):
    return [m.group() for m in EQUATION.finditer(reference)
            if APPLY[m.group(2)](int(m.group(1)), int(m.group(3))) != int(m.group(4))]


def _flags(sample, honest_sources_only=False):
    context = sample_contexts([sample])[sample.id]
    if honest_sources_only:  # a reference grounds its own values: judge it by question and facts alone
        context = dataclasses.replace(context, reference="")
    trace = {"kind": "rollout", "completion": target_text(sample, "Answer:"), "correct": True, "truncated": False,
             "prompt_id": sample.id}
    return {flag.name for flag in flag_trace(trace, context, None)}


def test_reference_quality_levels(by_quality):
    high, medium, low = by_quality["high"], by_quality["medium"], by_quality["low"]
    flagged = 0
    for h, m, lo in zip(high, medium, low):
        assert h.question == m.question == lo.question and h.answer == m.answer == lo.answer
        assert h.reference.startswith("Find how many") and EQUATION.search(h.reference)
        assert _wrong_equations(h.reference) == []  # high: every value true
        assert _flags(h).isdisjoint({"ungrounded-value", "conclusion-mismatch"})
        assert _flags(h, honest_sources_only=True).isdisjoint({"ungrounded-value", "conclusion-mismatch"})
        wrong = _wrong_equations(m.reference)
        assert wrong and EQUATION.findall(m.reference)[-1] not in wrong  # pseudo thinking, right last step
        assert re.findall(r"\d+", m.reference)[-1] == m.answer  # and it ends at the right answer
        flagged += "ungrounded-value" in _flags(m, honest_sources_only=True)
        assert len(lo.reference.split()) > 1.5 * len(h.reference.split())  # verbose
    assert flagged > len(medium) // 2  # most slips are not explained by the question's numbers


def test_cli_writes_the_data(tmp_path):
    out = tmp_path / "math"
    result = runner.invoke(app, ["prepare", "synthetic-math", "--out", str(out), "--n-train", "5", "--n-test", "2",
                                 "--reference-quality", "medium", "--min-steps", "3", "--max-steps", "3"])
    assert result.exit_code == 0, result.output
    samples = read_samples(out / "train.jsonl")
    assert len(samples) == 5 and {s.meta["kind"] for s in samples} == {"3-step"}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--min-steps", "5", "--max-steps", "3"], "min_steps <= max_steps"),
        (["--min-steps", "1"], "2 <= min_steps"),
        (["--max-number", "5"], "max_number must be at least 10"),
        (["--reference-quality", "great"], "not 'great'"),
        (["--n-train", "0"], "--n-train 0: must be between 1 and 10,000,000"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["prepare", "synthetic-math", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
