"""The medvqa verifier: closed yes/no answers, open answers by normalised match or gold-token recall."""

import pytest

from dyme_cli.data import Sample
from dyme_cli.plugins import load_verifier
from dyme_verifiers.medvqa import MedVQAVerifier


def _sample(answer, **meta):
    return Sample(id="s", task="medvqa", question="q", answer=answer, meta=meta)


@pytest.mark.parametrize(
    "predicted, gold, correct",
    [
        ("Yes, there is a lesion in the left lung", "yes", True),
        ("yes", "Yes", True),
        ("YES", "yes", True),
        ("Yes.", "yes", True),
        ("yes it is", "yes", True),
        ("No.", "no", True),
        ("no, there isn't", "no", True),
        ("No", "yes", False),
        ("Yes", "no", False),
        ("Not sure", "no", False),  # leading "not" is neither
        ("maybe", "yes", False),
        ("yes and no", "yes", False),  # both words: not a clear answer
        ("Yes, there is no lesion", "no", False),
        ("There is a lesion, yes", "yes", False),  # yes/no must lead
        ("yesterday", "yes", False),
    ],
)
def test_closed_yes_no(predicted, gold, correct):
    verdict = load_verifier("medvqa").verify(f"Looking at the scan. Answer: {predicted}", _sample(gold))
    assert verdict.correct is correct
    assert verdict.rewards["accuracy"] == float(correct)


@pytest.mark.parametrize(
    "predicted, gold, correct, accuracy",
    [
        ("The left lung.", "left lung", True, 1.0),  # articles, punctuation, case
        ("ct", "CT", True, 1.0),
        ("An  MRI", "mri", True, 1.0),
        ("T2-weighted", "t2 weighted", True, 1.0),
        ("left lung and liver", "left lung", True, 1.0),  # every gold token present
        ("lung", "left lung", False, 0.5),
        ("right lung", "left lung", False, 0.5),
        ("CT", "MRI", False, 0.0),
        ("right lower lobe", "left lower lobe", False, 2 / 3),
        ("the liver", "liver, spleen", False, 0.5),
        ("2 nodules", "2 2", False, 0.5),  # multiset: a repeated gold token must repeat
    ],
)
def test_open_answers(predicted, gold, correct, accuracy):
    verdict = load_verifier("medvqa").verify(f"Looking. Answer: {predicted}", _sample(gold))
    assert verdict.correct is correct
    assert verdict.rewards["accuracy"] == pytest.approx(accuracy)


@pytest.mark.parametrize(
    "open_recall, predicted, gold, correct",
    [
        (1.0, "lung", "left lung", False),
        (0.5, "lung", "left lung", True),
        (0.5, "brain", "left lung", False),
        (0.6, "right lower lobe", "left lower lobe", True),  # 2/3 >= 0.6
        (0.7, "right lower lobe", "left lower lobe", False),
    ],
)
def test_open_recall_option(open_recall, predicted, gold, correct):
    verdict = MedVQAVerifier(open_recall=open_recall).verify(f"x. Answer: {predicted}", _sample(gold))
    assert verdict.correct is correct


def test_detail_names_missing_gold_tokens():
    match = MedVQAVerifier().matches("right lower lobe", "left lower lobe", _sample("left lower lobe"))
    assert match.detail == "recall 0.67 of gold tokens (missing: left)"


@pytest.mark.parametrize(
    "predicted, gold, meta, correct, accuracy",
    [
        ("left", "Left", {"answer_type": "CLOSED"}, True, 1.0),
        ("left side", "left", {"answer_type": "closed"}, False, 0.0),  # closed: no partial credit
        ("left side", "left", {"answer_type": "OPEN"}, True, 1.0),
        ("yes, there is", "yes", {"answer_type": "open"}, True, 1.0),  # open rules: gold token present
    ],
)
def test_answer_type_from_meta(predicted, gold, meta, correct, accuracy):
    verdict = load_verifier("medvqa").verify(f"x. Answer: {predicted}", _sample(gold, **meta))
    assert verdict.correct is correct
    assert verdict.rewards["accuracy"] == accuracy


@pytest.mark.parametrize("open_recall", [0, -0.5, 1.5])
def test_invalid_open_recall(open_recall):
    with pytest.raises(ValueError, match="open_recall"):
        MedVQAVerifier(open_recall=open_recall)


def test_no_flag_is_incorrect():
    verdict = load_verifier("medvqa").verify("the answer is yes", _sample("yes"))
    assert verdict.correct is False and verdict.answer is None
    assert verdict.rewards["accuracy"] == 0.0


def test_registered_through_entry_point():
    verifier = load_verifier("medvqa")
    assert isinstance(verifier, MedVQAVerifier) and verifier.name == "medvqa" and verifier.open_recall == 1.0
