"""The chart verifier through the same entry-point lookup the engine uses."""

import pytest

from dyme_cli.data import Sample
from dyme_cli.plugins import VerifierError, load_verifier, safe_verify


def _sample(answer):
    return Sample(id="s", task="chart", question="q", answer=answer)


@pytest.mark.parametrize(
    "completion, gold, correct",
    [
        ("red = 5. Answer: 5", "5", True),
        ("thinking. answer: 5.", "5", True),  # flag is case-insensitive, trailing period dropped
        ("x. Answer: 4 Answer: 7", "7", True),  # the last flag counts
        ("x. Answer: 1,000", "1000", True),
        ("x. Answer: $102", "100", True),  # within 5% of the gold
        ("x. Answer: 106", "100", False),
        ("x. Answer: 95.5", "100", True),
        ("x. Answer: 45%", "45", True),
        ("x. Answer: 0.45", "45%", True),
        ("x. Answer: 2018", "2017", False),  # years must match exactly
        ("x. Answer: 2017", "2017", True),
        ("x. Answer: Blue", "blue", True),
        ("x. Answer: blue bar", "blue", False),
        ("x. Answer: 0", "0", True),
        ("the answer is 5", "5", False),  # no flag, no answer
    ],
)
def test_relaxed_accuracy(completion, gold, correct):
    verdict = load_verifier("chart").verify(completion, _sample(gold))
    assert verdict.correct is correct
    assert verdict.rewards["accuracy"] == float(correct)


def test_format_reward_needs_one_flag_after_thinking():
    v = load_verifier("chart")
    assert v.verify("red = 5. Answer: 5", _sample("5")).rewards["format"] == 1.0
    assert v.verify("Answer: 5", _sample("5")).rewards["format"] == 0.0
    assert v.verify("a Answer: 5 Answer: 5", _sample("5")).rewards["format"] == 0.0


def test_unknown_verifier_names_the_installed_ones():
    with pytest.raises(VerifierError, match=r"unknown verifier 'nope' \(installed: .*chart"):
        load_verifier("nope")


def test_a_raising_verifier_is_contained():
    class Broken:
        name = "broken"

        def verify(self, completion, sample):
            raise RuntimeError("boom")

    verdict, failed = safe_verify(Broken(), "x", _sample("1"))
    assert failed and not verdict.correct and verdict.rewards == {"format": 0.0, "accuracy": 0.0}
    assert "RuntimeError: boom" in verdict.detail
