"""The chart verifier through the same entry-point lookup the engine uses."""

import pytest

from dyme_cli.data import Sample
from dyme_cli.plugins import VerifierError, load_verifier


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
        ("x. Answer: 105", "100", True),  # the 5% bound is inclusive
        ("x. Answer: 94", "100", False),
        ("x. Answer: 3100", "3000", True),  # 3.3%; not a year (above 2100)
        ("x. Answer: -5", "-5", True),
        ("x. Answer: 5", "-5", False),  # sign matters
        ("x. Answer: 45", "45%", True),
        ("x. Answer: 50%", "0.5", True),
        ("x. Answer: 0.5", "50", False),  # percent forms only apply when one side has a % sign
        ("x. Answer: 1.2 million", "1.2", False),  # not a plain number: exact text match
        ("x. Answer: 2,017", "2017", True),
        ("x. Answer: 2017.0", "2017", True),
        ("x. Answer: 1999", "2000", False),
        ("x. Answer: 0.01", "0", False),  # zero gold needs exactly zero
        ("x. Answer: blue.", "Blue", True),
        ("x. Answer:   RED  ", "red", True),
        ("x. Answer: ", "5", False),  # empty answer
        ("Answer: 5", "5", True),  # correct, though the format reward is 0
        ("x. Answer: $1,000.50", "1000.5", True),
        ("x. Answer: .5", "0.5", True),
        ("x. Answer: 4.9", "5", True),
        ("x. Answer: 5.3", "5", False),  # 6%
    ],
)
def test_relaxed_accuracy(completion, gold, correct):
    verdict = load_verifier("chart").verify(completion, _sample(gold))
    assert verdict.correct is correct
    assert verdict.rewards["accuracy"] == float(correct)


def test_years_follow_the_tolerance_when_exact_years_is_off():
    sample = _sample("2017")
    assert not load_verifier("chart").verify("x. Answer: 2018", sample).correct
    assert load_verifier("chart", options={"exact_years": False}).verify("x. Answer: 2018", sample).correct


def test_format_reward_needs_one_flag_after_thinking():
    v = load_verifier("chart")
    assert v.verify("red = 5. Answer: 5", _sample("5")).rewards["format"] == 1.0
    assert v.verify("Answer: 5", _sample("5")).rewards["format"] == 0.0
    assert v.verify("a Answer: 5 Answer: 5", _sample("5")).rewards["format"] == 0.0


def test_unknown_verifier_names_the_installed_ones():
    with pytest.raises(VerifierError, match=r"unknown verifier 'nope' \(installed: .*chart"):
        load_verifier("nope")


def test_thinking_reward_is_keyword_f1_against_reference_and_facts():
    sample = Sample(id="s", task="chart", question="q", answer="4", reference="The chart shows red = 7, blue = 3. 7 - 3 = 4.",
                    facts={"values": {"red": 7, "blue": 3}})
    v = load_verifier("chart")
    # gold keywords: chart red 7 blue 3 4 values (stopwords "the", "shows" dropped) -> 7 words
    perfect = v.verify("The chart shows red = 7, blue = 3. 7 - 3 = 4. Answer: 4", sample).rewards["thinking"]
    assert perfect == pytest.approx(2 * 1 * (6 / 7) / (1 + 6 / 7))  # predicted {chart red 7 blue 3 4}: P = 1, R = 6/7
    wrong = v.verify("The chart shows red = 9, blue = 3. 9 - 3 = 6. Answer: 6", sample).rewards["thinking"]
    # predicted {chart red 9 blue 3 6}: overlap {chart red blue 3} -> P = 4/6, R = 4/7
    assert wrong == pytest.approx(2 * (4 / 6) * (4 / 7) / (4 / 6 + 4 / 7))
    assert v.verify("Answer: 4", sample).rewards["thinking"] == 0.0
