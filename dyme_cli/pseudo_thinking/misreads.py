"""Statements that read a value off the image, and the facts they contradict (rules in the package docstring,
under misread-value): a value bound to a label of the facts' label table ("red = 9", "the red bar is 9",
"9 (red)"), a lesion count ("there are two bright lesions") and a finding ("nothing looks abnormal")."""

from __future__ import annotations

import functools
import re
from typing import NamedTuple

from .grounding import NUMBER, Sources, find_numbers, format_number, same_value

NUMBER_WORDS = {"no": 0, "zero": 0, "a": 1, "an": 1, "one": 1, "single": 1, "two": 2, "three": 3, "four": 4,
                "five": 5, "six": 6, "seven": 7, "eight": 8, "nine": 9, "ten": 10}

# After a label: an optional part name and "value", a binding verb or sign, then the number.
_AFTER_LABEL = re.compile(
    r"(?:\s+(?:bar|column|slice|line|segment|point))?(?:'s)?(?:\s+(?:value|height))?"
    r"\s*(?:[=:(]|\b(?:is|equals|was|shows|reaches|measures)\b(?:\s+(?:a\s+)?(?:value|height)\s+of\b)?"
    r"|\bhas\s+(?:a\s+)?(?:value|height)\s+of\b|\bhas\b|\bwith\s+(?:a\s+)?(?:value\s+of\b)?|\bat\b)\s*"
    r"(" + NUMBER + r")")
# A number after the binding that starts an expression or a comparison does not state the label's value.
_NOT_A_READING = re.compile(r"\s*(?:[-+*/×÷−–x]\s*\d|\b(?:more|less|fewer|larger|smaller|higher|lower|bigger|"
                            r"greater|taller|shorter|times|than)\b)")
# Before a label: a comparison or an operator means the binding is about a combination ("between red and
# green is 4", "red - green = 6"); so does a label joined to it by "and"/"or" ("red and green is 8").
_PAIRED_BEFORE = re.compile(r"(?:\b(?:than|between|plus|minus|vs|versus)\s+(?:the\s+)?|[-+*/×÷−–]\s*(?:the\s+)?)$",
                            re.IGNORECASE)
_PARTS = r"(?:\s+(?:bar|column|slice|line|segment|point)s?)?"
# A number, then the label: "9 (red)", "9 for red", "9 for the red bar".
_BEFORE_LABEL = re.compile(r"(" + NUMBER + r")\s*(?:\(\s*|\bfor\s+(?:the\s+)?)$")

_COUNT_WORD = r"(\d+|" + "|".join(NUMBER_WORDS) + r")"
_COUNTS = re.compile(
    r"\b(?:there\s+(?:is|are)|(?:i\s+)?(?:see|count|find)|shows?|has|have|contains?|with)\s+(?:only\s+)?"
    + _COUNT_WORD + r"\s+(?:single\s+)?(?:(?:bright|dark|visible|small|large|round|distinct|separate)\s+){0,2}"
    r"lesions?\b"
    r"|\b(?:lesion\s+)?count\s+(?:is|=|:|of)\s+" + _COUNT_WORD + r"\b"
    r"|\b" + _COUNT_WORD + r"\s+lesions?\s+in\s+total\b", re.IGNORECASE)
_NORMAL = re.compile(r"\b(?:nothing\s+(?:looks|is|appears|seems)\s+abnormal|no\s+abnormalit(?:y|ies)|"
                     r"(?:looks|is|appears|seems)\s+(?:completely\s+)?normal)\b", re.IGNORECASE)
_ABNORMAL = re.compile(r"\b(?:(?:looks|is|appears|seems)\s+abnormal|an\s+abnormality|abnormalit(?:y|ies)\s+"
                       r"(?:is|are)\s+(?:present|visible|seen))\b", re.IGNORECASE)


class Misread(NamedTuple):
    what: str  # the label, "lesion count" or "finding"
    stated: str  # as the trace states it
    true: str  # what the facts say
    start: int
    end: int


def misreads(thinking: str, sources: Sources) -> list[Misread]:
    """Every statement in `thinking` that reads a value the facts contradict, in text order."""
    found = _label_misreads(thinking, sources.label_values) if sources.label_values else []
    if sources.lesion_count is not None:
        found += _count_misreads(thinking, sources.lesion_count) + _finding_misreads(thinking, sources.lesion_count)
    return sorted(found, key=lambda m: m.start)


@functools.lru_cache(maxsize=4096)
def _label_patterns(labels: tuple[str, ...]) -> tuple[re.Pattern, re.Pattern]:
    """A label anywhere, and a label joined by "and"/"or" right before a position (compiled once per label set)."""
    alternatives = "|".join(map(re.escape, sorted(labels, key=len, reverse=True)))
    return (re.compile(r"\b(" + alternatives + r")\b", re.IGNORECASE),
            re.compile(r"\b(?:" + alternatives + r")" + _PARTS + r"\s+(?:and|or|&)\s+(?:the\s+)?$", re.IGNORECASE))


def _label_misreads(thinking: str, values: dict) -> list[Misread]:
    labels, conjoined = _label_patterns(tuple(sorted(values)))
    out = []
    for m in labels.finditer(thinking):
        true = values[m.group(1).lower()]
        for number, start, end in _bound_numbers(thinking, m, conjoined):
            if not same_value(true, find_numbers(number)[0]):
                out.append(Misread(m.group(1), number, format_number(true), min(start, m.start()), max(end, m.end())))
    return out


def _bound_numbers(thinking: str, label: re.Match, conjoined: re.Pattern) -> list[tuple[str, int, int]]:
    """The numbers a statement binds to the label at `label`: after it ("red = 9") or before it ("9 (red)")."""
    out = []
    after = _AFTER_LABEL.match(thinking, label.end())
    before_text = max(0, label.start() - 40), label.start()
    if (after and not _NOT_A_READING.match(thinking, after.end())
            and not _PAIRED_BEFORE.search(thinking, *before_text) and not conjoined.search(thinking, *before_text)):
        out.append((after.group(1), after.start(1), after.end(1)))
    before = _BEFORE_LABEL.search(thinking, max(0, label.start() - 24), label.start())
    if before:
        out.append((before.group(1), before.start(1), before.end(1)))
    return out


def _count_misreads(thinking: str, count: int) -> list[Misread]:
    out = []
    for m in _COUNTS.finditer(thinking):
        group = next(i for i in range(1, 4) if m.group(i) is not None)
        word = m.group(group)
        stated = int(word) if word.isdigit() else NUMBER_WORDS[word.lower()]
        if stated != count:
            out.append(Misread("lesion count", word, str(count), m.start(), m.end()))
    return out


def _finding_misreads(thinking: str, count: int) -> list[Misread]:
    normal = [m.span() for m in _NORMAL.finditer(thinking)]
    if count > 0:
        return [Misread("finding", thinking[a:b], "abnormal", a, b) for a, b in normal]
    abnormal = [m.span() for m in _ABNORMAL.finditer(thinking) if not any(a <= m.start() < b for a, b in normal)]
    return [Misread("finding", thinking[a:b], "normal", a, b) for a, b in abnormal]
