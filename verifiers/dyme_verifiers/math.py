"""Math verifier: symbolic and numeric equivalence through `math_verify`.

- The answer is the text after the last answer flag; if that text holds `\\boxed{...}`, the content of the
  last one (nested braces allowed). With no flag at all, a `\\boxed{...}` anywhere in the completion is the
  answer; with neither, the answer is missing and the completion is incorrect.
- Gold and answer are read the same way: a unicode minus becomes `-`, a bare `pi` becomes `\\pi`, English
  words ("apples", "dollars", "cm", "the answer is") are dropped, and the rest is parsed by math-verify as
  one LaTeX or plain expression, so `\\frac{1}{2}` = `0.5` = `1/2`, `72.0` = `72`, `1,000` = `1000`,
  `$18` = `18`, `x = 5` = `5`, `(1, 2]` and `\\{1, 2\\}` are an interval and a set.
- An answer with words between two numbers ("18 apples and 3 pears") is ambiguous and incorrect.
- math-verify reads `(1, 2)` as an open interval or as a pair, so it also equals a gold `\\{1, 2\\}`;
  `(1, 2)` and `[1, 2]` still differ.
- Percentages follow math-verify: `50%` equals both a gold `50` and a gold `0.5`.
- Floats are compared after rounding to `float_rounding` decimals (math-verify's rule), so `\\sqrt{2}` is
  `1.414214` but not `1.41`.
- A gold that math-verify cannot parse is compared as a string (case, spaces, `$` and
  `\\text{}` ignored).
- math-verify's own timeouts use `signal.alarm`, which only works in the main thread, so they are off
  here (`parsing_timeout=None`, `timeout_seconds=None`): the caller enforces the deadline.
"""

from __future__ import annotations

import logging
import re

from math_verify import parse, verify

from dyme_cli.verdict import AnswerVerifier, Match, SplitCompletion, last_boxed

_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}(?![a-zA-Z])")  # a run of letters that is no LaTeX command
_MATH_WORDS = frozenset({"sqrt", "pi", "sin", "cos", "tan", "log", "ln", "exp"})
_BARE_PI = re.compile(r"(?<![\\a-zA-Z])pi(?![a-zA-Z])")
_TEXT = re.compile(r"\\text\{([^{}]*)\}")


class _CallerEnforcesDeadline(logging.Filter):
    """Drops math-verify's warning that its timeout is off: dyme's verifier pool enforces the deadline."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


for _logger in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_logger).addFilter(_CallerEnforcesDeadline())


def _prose(text: str) -> list[re.Match]:
    return [m for m in _WORD.finditer(text) if m.group().lower() not in _MATH_WORDS]


def _ambiguous(text: str) -> bool:
    """True when an English word stands between two digits: "18 apples and 3 pears"."""
    digits = [m.start() for m in re.finditer(r"\d", text)]
    return bool(digits) and any(digits[0] < m.start() < digits[-1] for m in _prose(text))


def _as_math(text: str) -> str:
    """Unicode minus to `-`, bare `pi` to `\\pi`, English words dropped."""
    text = _BARE_PI.sub(r"\\pi", text.replace("\u2212", "-"))
    for m in reversed(_prose(text)):
        text = text[: m.start()] + text[m.end():]
    return text.strip()


def _parse(text: str) -> list:
    return parse(f"\\boxed{{{_as_math(text)}}}", parsing_timeout=None, raise_on_error=False)


def _plain(text: str) -> str:
    return " ".join(_TEXT.sub(r"\1", text).replace("$", "").lower().split())


class MathVerifier(AnswerVerifier):
    name = "math"
    description = "Math answers: symbolic/numeric equivalence with math-verify; reads a final \\boxed{...}."

    def __init__(self, answer_flag: str = "Answer:", float_rounding: int = 6):
        super().__init__(answer_flag)
        if float_rounding < 0:
            raise ValueError("float_rounding must be >= 0")
        self.float_rounding = float_rounding

    def extract(self, split: SplitCompletion) -> str | None:
        if split.answer is None:
            return last_boxed(split.thinking)
        boxed = last_boxed(split.answer)
        return split.answer if boxed is None else boxed

    def matches(self, predicted: str, gold: str, sample=None) -> Match:
        gold_math = _parse(gold)
        if not gold_math:
            same = _plain(predicted) == _plain(gold)
            return Match(same, f"gold '{gold}' is not math; compared as text: " + ("same" if same else "different"))
        if _ambiguous(predicted):
            return Match(False, f"'{predicted}' is ambiguous: words between numbers")
        predicted_math = _parse(predicted)
        if not predicted_math:
            return Match(False, f"'{predicted}' cannot be read as math")
        same = verify(gold_math, predicted_math, float_rounding=self.float_rounding, timeout_seconds=None,
                      raise_on_error=False)
        return Match(same, f"{predicted} = {gold}" if same else f"'{predicted}' != '{gold}'")
