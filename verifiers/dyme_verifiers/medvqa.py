"""Medical VQA verifier (SLAKE / VQA-RAD / PathVQA style): closed yes/no and open free-text answers.

Texts are normalised by lower-casing, turning punctuation into spaces, dropping the articles a/an/the and
collapsing whitespace. A question is closed when `sample.meta["answer_type"]` says "closed" (any case, as
SLAKE and VQA-RAD carry it), open when it says "open", and otherwise closed iff the gold is yes or no.

- Closed, yes/no gold: the prediction's leading word must be the gold's ("Yes, there is a lesion" -> yes,
  "no, there isn't" -> no), and the opposite word must not appear anywhere; "not sure", "maybe" and answers
  holding both words are neither. Accuracy reward 1/0.
- Closed, other gold ("left or right?"): normalised exact match, accuracy 1/0.
- Open: normalised exact match is correct with accuracy 1.0; otherwise the accuracy reward is the token
  recall, the share of gold tokens found in the prediction counted as a multiset (a gold token that occurs
  twice must occur twice), and the answer is correct iff recall >= `open_recall` (default 1.0: every gold
  token present, extra predicted tokens allowed).
"""

from __future__ import annotations

import re
from collections import Counter

from dyme_cli.verdict import AnswerVerifier, Match

_PUNCTUATION = re.compile(r"[^\w\s]|_")
_ARTICLES = frozenset({"a", "an", "the"})
_YES_NO = ("yes", "no")


def _tokens(text: str) -> list[str]:
    """Lower-cased words with punctuation and the articles a/an/the removed."""
    return [t for t in _PUNCTUATION.sub(" ", text.lower()).split() if t not in _ARTICLES]


def _yes_no(text: str) -> str | None:
    """'yes' or 'no' when the text leads with exactly one of them and never says the other; else None."""
    tokens = _tokens(text)
    if not tokens or tokens[0] not in _YES_NO:
        return None
    other = "no" if tokens[0] == "yes" else "yes"
    return None if other in tokens else tokens[0]


def _recall(predicted: list[str], gold: list[str]) -> tuple[float, list[str]]:
    """Multiset share of gold tokens found in the prediction, and the gold tokens it lacks."""
    gold_counts = Counter(gold)
    missing = gold_counts - Counter(predicted)
    found = sum(gold_counts.values()) - sum(missing.values())
    return (found / len(gold) if gold else 0.0), list(missing.elements())


def _is_closed(gold: str, sample) -> bool:
    answer_type = str(getattr(sample, "meta", {}).get("answer_type", "")).lower()
    if answer_type in ("closed", "open"):
        return answer_type == "closed"
    return " ".join(_tokens(gold)) in _YES_NO


class MedVQAVerifier(AnswerVerifier):
    name = "medvqa"
    description = "Medical VQA: closed yes/no by the leading word, open answers by gold-token recall."

    def __init__(self, answer_flag: str = "Answer:", open_recall: float = 1.0):
        if not 0 < open_recall <= 1:
            raise ValueError(f"open_recall must be in (0, 1], got {open_recall}")
        super().__init__(answer_flag)
        self.open_recall = open_recall

    def matches(self, predicted: str, gold: str, sample) -> Match:
        pred_tokens, gold_tokens = _tokens(predicted), _tokens(gold)
        if _is_closed(gold, sample):
            return self._closed(predicted, pred_tokens, gold_tokens)
        if pred_tokens == gold_tokens:
            return Match(True, "exact match after normalisation", 1.0)
        recall, missing = _recall(pred_tokens, gold_tokens)
        detail = f"recall {recall:.2f} of gold tokens"
        if missing:
            detail += f" (missing: {', '.join(missing)})"
        return Match(recall >= self.open_recall, detail, recall)

    def _closed(self, predicted: str, pred_tokens: list[str], gold_tokens: list[str]) -> Match:
        gold = " ".join(gold_tokens)
        if gold not in _YES_NO:
            same = pred_tokens == gold_tokens
            return Match(same, "exact match after normalisation" if same else f"'{predicted}' != '{gold}'")
        said = _yes_no(predicted)
        if said is None:
            return Match(False, f"'{predicted}' is not a clear yes or no")
        return Match(said == gold, f"said {said}, gold {gold}")
