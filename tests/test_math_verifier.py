"""The math verifier through the same entry-point lookup the engine uses."""

import threading

import pytest

from dyme_cli.data import Sample
from dyme_cli.plugins import VerifierError, load_verifier
from dyme_verifiers.math import MathVerifier


def _sample(answer):
    return Sample(id="s", task="math", question="q", answer=answer)


@pytest.fixture(scope="module")
def verifier():
    return load_verifier("math")


def test_loaded_through_the_entry_point(verifier):
    assert isinstance(verifier, MathVerifier)
    assert verifier.name == "math" and verifier.float_rounding == 6


@pytest.mark.parametrize(
    "gold, answer",
    [
        ("\\frac{1}{2}", "0.5"),
        ("\\frac{1}{2}", "1/2"),
        ("0.5", "\\frac{1}{2}"),
        ("0.75", "\\dfrac{3}{4}"),
        ("72", "72.0"),
        ("72", "72"),
        ("1000", "1,000"),
        ("1234567", "1,234,567"),
        ("18", "$18"),
        ("18", "18 apples"),
        ("1000", "$1,000"),
        ("20", "20 dollars"),
        ("5", "5 cm"),
        ("5", "5 meters"),
        ("5", "5\\text{ cm}"),
        ("12", "12 square meters"),
        ("7", "The answer is 7"),
        ("50", "50%"),
        ("0.5", "50%"),  # math-verify: x% equals both x and x/100
        ("-5", "-5"),
        ("-5", "\u22125"),  # unicode minus
        ("(1, 2]", "(1,2]"),
        ("\\{1, 2\\}", "\\{2, 1\\}"),
        ("(-\\infty, 3]", "(-\\infty,3]"),
        ("5", "x = 5"),
        ("\\frac{1}{2}", "x = \\frac{1}{2}"),
        ("\\sqrt{2}", "\\sqrt{2}"),
        ("\\sqrt{2}", "sqrt(2)"),
        ("\\sqrt{2}", "1.414214"),  # equal after rounding to 6 decimals
        ("2\\pi", "2\\pi"),
        ("2\\pi", "2*pi"),
        ("$\\frac{1}{2}$", "0.5"),
        ("2", "\\sqrt{4}"),
        ("x+1", "1+x"),
        ("yes", "Yes"),  # not math: compared as text
        ("\\text{Monday}", "monday"),
    ],
)
def test_equivalent_answers_are_correct(verifier, gold, answer):
    verdict = verifier.verify(f"Let me work it out. Answer: {answer}", _sample(gold))
    assert verdict.correct is True, verdict.detail
    assert verdict.answer == answer
    assert verdict.rewards["accuracy"] == 1.0


@pytest.mark.parametrize(
    "gold, answer",
    [
        ("72", "73"),
        ("0.5", "0.51"),
        ("1/2", "1/3"),
        ("-5", "5"),
        ("5", "-5"),
        ("1000", "100"),
        ("1000", "1.000"),
        ("12", "1,2"),
        ("18", "18 apples and 3 pears"),  # ambiguous: two numbers
        ("18", "3 pears and 18 apples"),
        ("5", "x = 5 or x = -5"),
        ("\\sqrt{2}", "1.41"),  # differs at 6 decimals
        ("\\pi", "3.14"),
        ("(1,2)", "[1,2]"),
        ("2", "2\\pi"),
        ("0.5", "50"),
        ("x+1", "x-1"),
        ("\\text{Monday}", "Tuesday"),
    ],
)
def test_near_misses_are_incorrect(verifier, gold, answer):
    verdict = verifier.verify(f"Let me work it out. Answer: {answer}", _sample(gold))
    assert verdict.correct is False, verdict.detail
    assert verdict.rewards["accuracy"] == 0.0


@pytest.mark.parametrize(
    "completion, answer",
    [
        ("so x = 1/2. Answer: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("so x = 1/2. Answer: x is \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("try \\boxed{3}, no. Answer: \\boxed{4} Answer: \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # last flag
        ("first \\boxed{1}, then \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # no flag: last boxed in the text
        ("so the answer is \\boxed{\\frac{\\sqrt{1}}{2}}", "\\frac{\\sqrt{1}}{2}"),  # nested braces
        ("x = 1/2. Answer: 1/2", "1/2"),
    ],
)
def test_boxed_answers_are_extracted(verifier, completion, answer):
    verdict = verifier.verify(completion, _sample("0.5"))
    assert verdict.answer == answer
    assert verdict.correct is True, verdict.detail


def test_no_flag_and_no_boxed_is_incorrect(verifier):
    verdict = verifier.verify("the answer is 5", _sample("5"))
    assert verdict.correct is False and verdict.answer is None
    assert verdict.rewards["accuracy"] == 0.0


@pytest.mark.parametrize("completion", ["work. Answer:", "work. Answer: \\boxed{}", "no flag \\boxed{5"])
def test_empty_or_unclosed_answers_are_incorrect(verifier, completion):
    verdict = verifier.verify(completion, _sample("5"))
    assert verdict.correct is False
    assert verdict.rewards["accuracy"] == 0.0


def test_rewards_carry_format_and_thinking(verifier):
    sample = Sample(id="s", task="math", question="q", answer="4", reference="2 + 2 = 4")
    rewards = verifier.verify("2 + 2 = 4. Answer: 4", sample).rewards
    assert set(rewards) >= {"format", "accuracy", "thinking"}
    assert rewards["format"] == 1.0 and rewards["accuracy"] == 1.0 and rewards["thinking"] > 0
    boxed_only = verifier.verify("2 + 2 = \\boxed{4}", sample)
    assert boxed_only.correct is True and boxed_only.rewards["format"] == 0.0  # no flag: format is 0


def test_details_explain_the_verdict(verifier):
    assert verifier.verify("a. Answer: 1/2", _sample("0.5")).detail == "1/2 = 0.5"
    assert verifier.verify("a. Answer: 3", _sample("4")).detail == "'3' != '4'"
    assert "ambiguous" in verifier.verify("a. Answer: 18 apples and 3 pears", _sample("18")).detail
    assert "not math" in verifier.verify("a. Answer: red", _sample("blue")).detail


def test_verify_works_outside_the_main_thread(verifier):
    results = []

    def run():
        try:
            results.append(verifier.verify("a. Answer: \\frac{1}{2}", _sample("0.5")).correct)
            results.append(verifier.verify("a. Answer: 0.51", _sample("0.5")).correct)
        except Exception as exc:  # a signal-based timeout would raise here
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=30)
    assert results == [True, False]


def test_float_rounding_is_an_option():
    loose = load_verifier("math", options={"float_rounding": 2})
    assert loose.verify("a. Answer: 1.41", _sample("\\sqrt{2}")).correct is True
    with pytest.raises(VerifierError):
        load_verifier("math", options={"float_rounding": -1})
