"""The vqa verifier: answer normalisation, min(#agreeing annotators / 3, 1) accuracy, exact-match fallback."""

import pytest

from dyme_cli.data import Sample
from dyme_cli.plugins import VerifierError, load_verifier
from dyme_verifiers.vqa import VQAVerifier, normalize

# 10 annotators: red x4, dark red x3, maroon x2, two x1
ANNOTATORS = ["red", "Red", "red.", "RED", "dark red", "dark-red", "Dark Red", "maroon", "maroon", "two"]


def _sample(answer="red", answers=None):
    meta = {} if answers is None else {"answers": answers}
    return Sample(id="s", task="vqa", question="What colour is the car?", answer=answer, meta=meta)


@pytest.mark.parametrize(
    "text, normal",
    [
        ("Two", "2"),
        ("ten apples", "10 apples"),
        ("zero", "0"),
        ("twenty", "twenty"),  # only zero..ten are number words
        ("the dog", "dog"),
        ("A Red Car.", "red car"),
        ("an apple!", "apple"),
        ("1,000", "1000"),
        ("3.5", "3.5"),
        ("St. Louis", "st louis"),
        ("don't know", "dont know"),
        ("man's hat", "mans hat"),
        ("t-shirt", "t shirt"),
        ("  many   spaces ", "many spaces"),
        ("yes?", "yes"),
        ("theme", "theme"),  # an article only as a whole word
    ],
)
def test_normalize(text, normal):
    assert normalize(text) == normal


@pytest.mark.parametrize(
    "predicted, correct, accuracy",
    [
        ("red", True, 1.0),  # 4 annotators -> capped at 1
        ("Red.", True, 1.0),
        ("the red", True, 1.0),
        ("dark red", True, 1.0),  # "dark red", "dark-red", "Dark Red": exactly 3
        ("Dark-Red", True, 1.0),
        ("maroon", False, 2 / 3),  # 2 annotators
        ("2", False, 1 / 3),  # "two" normalises to "2"
        ("Two", False, 1 / 3),
        ("blue", False, 0.0),
        ("red car", False, 0.0),  # no partial credit for extra words
    ],
)
def test_accuracy_against_annotators(predicted, correct, accuracy):
    verdict = load_verifier("vqa").verify(f"The car is red. Answer: {predicted}", _sample(answers=ANNOTATORS))
    assert verdict.correct is correct
    assert verdict.rewards["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    "min_accuracy, predicted, correct",
    [
        (2 / 3, "maroon", True),
        (2 / 3, "two", False),
        (0.3, "two", True),
        (0.3, "blue", False),
        (1.0, "dark red", True),
    ],
)
def test_min_accuracy_option(min_accuracy, predicted, correct):
    verifier = load_verifier("vqa", options={"min_accuracy": min_accuracy})
    assert verifier.verify(f"Looking. Answer: {predicted}", _sample(answers=ANNOTATORS)).correct is correct


@pytest.mark.parametrize(
    "predicted, gold, answers, correct, accuracy",
    [
        ("2 dogs", "Two dogs", None, True, 1.0),  # no annotators: normalised exact match with the gold
        ("the dogs", "dogs", None, True, 1.0),
        ("dogs", "two dogs", None, False, 0.0),
        ("cat", "cat", [], True, 1.0),  # an empty annotator list falls back too
        ("two", "3", [2, 2, "2"], True, 1.0),  # annotators win over the gold; numbers read as text
        ("3", "3", [2, 2, "2"], False, 0.0),
    ],
)
def test_fallback_and_numeric_annotators(predicted, gold, answers, correct, accuracy):
    verdict = load_verifier("vqa").verify(f"Counting. Answer: {predicted}", _sample(gold, answers))
    assert (verdict.correct, verdict.rewards["accuracy"]) == (correct, accuracy)


def test_no_answer_is_incorrect_and_detail_names_the_count():
    verifier = VQAVerifier()
    assert verifier.verify("red, I think", _sample(answers=ANNOTATORS)).correct is False
    verdict = verifier.verify("It is maroon. Answer: maroon", _sample(answers=ANNOTATORS))
    assert verdict.detail == "2 of 10 annotators answered 'maroon' (accuracy 0.67)"


@pytest.mark.parametrize("bad", [0, 1.5, -0.1])
def test_min_accuracy_must_be_in_range(bad):
    with pytest.raises(VerifierError, match="min_accuracy must be in"):
        load_verifier("vqa", options={"min_accuracy": bad})
