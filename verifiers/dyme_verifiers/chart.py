"""Chart QA verifier: ChartQA relaxed accuracy.

Numbers are correct within `tolerance` relative to the *gold* value; `45%`, `45` and `0.45` are the same
percentage; `,` and `$` are stripped; 4-digit years (1000-2100) in the gold must match exactly when
`exact_years` is on; anything non-numeric is a case-insensitive exact match.
"""

from __future__ import annotations

import re

from dyme_cli.verdict import AnswerVerifier, Match

_NUMBER = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")


def _clean(text: str) -> str:
    return text.strip().replace(",", "").replace("$", "").strip()


def _as_number(text: str) -> tuple[float, bool] | None:
    """(value, had_percent_sign) or None when the text is not a plain number."""
    text = _clean(text)
    percent = text.endswith("%")
    if percent:
        text = text[:-1].strip()
    if not _NUMBER.match(text):
        return None
    return float(text), percent


def _is_year(value: float) -> bool:
    return value.is_integer() and 1000 <= value <= 2100


class ChartVerifier(AnswerVerifier):
    name = "chart"
    description = "Chart QA relaxed accuracy: numbers within 5% of the gold, text exact (case-insensitive)."

    def __init__(self, answer_flag: str = "Answer:", tolerance: float = 0.05, exact_years: bool = True):
        super().__init__(answer_flag)
        if tolerance < 0:
            raise ValueError("tolerance must be >= 0")
        self.tolerance = tolerance
        self.exact_years = exact_years

    def matches(self, predicted: str, gold: str, sample=None) -> Match:
        gold_num, pred_num = _as_number(gold), _as_number(predicted)
        if gold_num is None or pred_num is None:
            same = predicted.strip().lower() == gold.strip().lower()
            return Match(same, "exact match" if same else f"'{predicted}' != '{gold}'")
        (g, g_pct), (p, p_pct) = gold_num, pred_num
        if self.exact_years and _is_year(g) and not g_pct:
            return Match(p == g, "year matches" if p == g else f"year {predicted} != {gold}")
        candidates = {p, p * 100, p / 100} if g_pct != p_pct else {p}
        for candidate in candidates:
            if self._close(candidate, g):
                return Match(True, f"{predicted} within {self.tolerance:.0%} of {gold}")
        return Match(False, f"{predicted} not within {self.tolerance:.0%} of {gold}")

    def _close(self, predicted: float, gold: float) -> bool:
        if gold == 0:
            return predicted == 0
        return abs(predicted - gold) / abs(gold) <= self.tolerance
