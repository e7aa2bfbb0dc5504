"""VQA verifier: the standard VQA accuracy against several annotators' answers (VQAv2, OK-VQA, A-OKVQA).

Answers are normalised before they are compared: lower case; commas inside numbers dropped ("1,000" ->
"1000"); apostrophes dropped ("don't" -> "dont"); a period that is not a decimal point and every other
punctuation mark become spaces; the number words zero..ten become digits ("two" -> "2"); the articles
a/an/the are dropped; whitespace is collapsed.

- With annotators (`sample.meta["answers"]`, a list such as A-OKVQA's 10 direct answers): the accuracy
  reward is min(#annotators whose normalised answer equals the normalised prediction / 3, 1), so three
  agreeing annotators give full credit and one gives 1/3.
- Without them: normalised exact match with `sample.answer`, accuracy 1/0.
- The answer is correct iff its accuracy >= `min_accuracy` (default 1.0: at least three annotators agree).
"""

from __future__ import annotations

import re

from dyme_cli.verdict import AnswerVerifier, Match

_NUMBER_COMMA = re.compile(r"(?<=\d),(?=\d)")
_APOSTROPHE = re.compile(r"['\u2019]")
_NON_DECIMAL_PERIOD = re.compile(r"(?<!\d)\.|\.(?!\d)")
_PUNCTUATION = re.compile(r"[^\w\s.]|_")
_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
_FULL_CREDIT = 3  # annotators whose agreement gives accuracy 1.0


def normalize(text: str) -> str:
    """The VQA normal form of an answer (see the module docstring)."""
    text = _APOSTROPHE.sub("", _NUMBER_COMMA.sub("", text.lower()))
    text = _PUNCTUATION.sub(" ", _NON_DECIMAL_PERIOD.sub(" ", text))
    words = (_NUMBER_WORDS.get(w, w) for w in text.split())
    return " ".join(w for w in words if w not in _ARTICLES)


class VQAVerifier(AnswerVerifier):
    name = "vqa"
    description = "VQA accuracy: min(#annotators agreeing / 3, 1) over meta.answers, else exact match."

    def __init__(self, answer_flag: str = "Answer:", min_accuracy: float = 1.0):
        if not 0 < min_accuracy <= 1:
            raise ValueError(f"min_accuracy must be in (0, 1], got {min_accuracy}")
        super().__init__(answer_flag)
        self.min_accuracy = min_accuracy

    def matches(self, predicted: str, gold: str, sample) -> Match:
        prediction = normalize(predicted)
        annotators = getattr(sample, "meta", {}).get("answers") or []
        if not annotators:
            same = prediction == normalize(gold)
            return Match(same, "exact match after normalisation" if same else f"'{prediction}' != '{normalize(gold)}'")
        agreeing = sum(normalize(str(a)) == prediction for a in annotators)
        accuracy = min(agreeing / _FULL_CREDIT, 1.0)
        detail = f"{agreeing} of {len(annotators)} annotators answered '{prediction}' (accuracy {accuracy:.2f})"
        return Match(accuracy >= self.min_accuracy, detail, accuracy)
