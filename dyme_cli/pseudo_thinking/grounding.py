"""What counts as grounded: numbers in the text, a sample's sources, the derivation and chain rules, and entity
grounding (rules in the package docstring, under ungrounded-value and ignores-image)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

from ..verdict import STOPWORDS, flatten
from .records import SampleContext
from .references import TOKEN_RE, shingles

COLOURS = frozenset(
    "red green blue orange purple yellow pink brown cyan magenta violet teal gold navy maroon olive lime indigo".split()
)
QUANTITY_WORDS = frozenset(
    """total sum difference product ratio result results value values count average mean median height width
    length step answer percent percentage max min maximum minimum x y n""".split()
)
SENTENCE_WORDS = frozenset("step answer note first then next finally therefore thus hence since because".split())

NUMBER = r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])%?"  # a number as written (pattern text)
_NUMBER_RE = re.compile(NUMBER)
WORD_RE = re.compile(r"[A-Za-z]+")
_LOWER_WORD = re.compile(r"[a-z]+")
_CAPITALISED = re.compile(r"\b[A-Z][A-Za-z]+")
_OP_GAP = re.compile(r"[\s()]*([-+*/×x÷−–])[\s()]*")
_EQ_GAP = re.compile(r"[\s()]*=\s*")
_LABEL_SLOT = re.compile(r"\b([A-Za-z]+)\s*[=:]\s*" + NUMBER)
_STEP_BEFORE = re.compile(r"\bstep\s*$", re.IGNORECASE)


# ---------------------------------------------------------------- numbers


class Num(NamedTuple):
    value: float
    start: int
    end: int
    text: str
    decimals: int  # digits shown after the point
    percent: bool


def parse_number(text: str) -> float:
    return float(text.rstrip("%").replace(",", ""))


def _key(value: float) -> float:
    return round(value, 6)


def find_numbers(text: str, offset: int = 0) -> list[Num]:
    found = []
    for m in _NUMBER_RE.finditer(text):
        raw = m.group()
        digits = raw.rstrip("%")
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        found.append(Num(parse_number(raw), m.start() + offset, m.end() + offset, raw, decimals, raw.endswith("%")))
    return found


def is_list_marker(text: str, num: Num) -> bool:
    """A number after "step", or opening a line and followed by "." or ")"."""
    before = text[max(0, num.start - 8):num.start]
    if "tep" in before.lower() and _STEP_BEFORE.search(before):
        return True
    if text[num.end:num.end + 1] not in (".", ")"):
        return False
    line_start = text.rfind("\n", 0, num.start) + 1
    return not text[line_start:num.start].strip(" \t-*")


def _tolerance(num: Num) -> float:
    return 0.5 * 10 ** -num.decimals + 1e-9


def same_value(value: float, num: Num) -> bool:
    """Whether `num`, as written, states `value` (within half its last shown digit)."""
    return abs(num.value - value) <= _tolerance(num)


def format_number(value: float) -> str:
    """A number as a trace would write it: 4.0 -> "4"."""
    return str(int(value)) if float(value).is_integer() else str(value)


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class Sources:
    numbers: frozenset  # keys of every number in question, facts (incl. collection sizes) and reference
    words: frozenset  # lower-cased words of question, facts and reference
    fact_tokens: frozenset  # scalar facts' keys and values: words minus stopwords, numbers as keys
    fact_labels: frozenset  # category labels: keys of label tables, one-word strings of fact lists
    label_table: bool  # facts hold a dict of word keys -> numbers
    fact_strings: frozenset  # fact_tokens as written (lower-cased), for a fast first check
    reference_shingles: frozenset  # word 3-gram shingles of the reference
    label_values: dict  # label -> its value in the facts' label tables (labels with two values left out)
    lesion_count: int | None  # facts["count"] when the facts list lesions (the medical generator's facts)


def _walk_facts(facts: Any, sizes: list[int], scalars: list[str], labels: set[str],
                tables: list[dict] | None = None) -> bool:
    """Collect collection sizes, scalar key/value text, labels and label tables; True if some dict is a label
    table."""
    tables = [] if tables is None else tables
    table = False
    if isinstance(facts, dict):
        if facts and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in facts.values()):
            table = all(WORD_RE.fullmatch(str(k)) for k in facts)
            if table:
                labels.update(str(k).lower() for k in facts)
                tables.append({str(k).lower(): float(v) for k, v in facts.items()})
                if len(facts) > 1:
                    sizes.append(len(facts))
        for k, v in facts.items():
            if isinstance(v, (dict, list, tuple)):
                table |= _walk_facts(v, sizes, scalars, labels, tables)
            else:
                scalars.append(f"{k} {v}")
    elif isinstance(facts, (list, tuple)):
        if len(facts) > 1:
            sizes.append(len(facts))
        for v in facts:
            if isinstance(v, (dict, list, tuple)):
                table |= _walk_facts(v, sizes, scalars, labels, tables)
            else:
                scalars.append(str(v))
                if isinstance(v, str) and WORD_RE.fullmatch(v):
                    labels.add(v.lower())
    return table


def tokens_as_keys(text: str) -> set:
    out = set()
    for token in TOKEN_RE.findall(text.lower()):
        if token[0].isdigit():
            out.add(_key(float(token)))
        elif token not in STOPWORDS:
            out.add(token)
    return out


def _build_sources(sample: SampleContext) -> Sources:
    facts_text = flatten(sample.facts)
    text = f"{sample.question}\n{facts_text}\n{sample.reference}"
    sizes: list[int] = []
    scalars: list[str] = []
    labels: set[str] = set()
    tables: list[dict] = []
    table = _walk_facts(sample.facts, sizes, scalars, labels, tables)
    numbers = {_key(n.value) for n in find_numbers(text)} | {_key(float(s)) for s in sizes}
    words = {w.lower() for w in WORD_RE.findall(text)}
    scalar_text = " ".join(scalars).lower()
    fact_strings = {t for t in TOKEN_RE.findall(scalar_text) if t not in STOPWORDS}
    return Sources(frozenset(numbers), frozenset(words), frozenset(tokens_as_keys(scalar_text)),
                   frozenset(labels), table, frozenset(fact_strings), shingles(sample.reference),
                   _label_values(tables), _lesion_count(sample.facts))


def _label_values(tables: list[dict]) -> dict:
    """Every label's value over the label tables; a label two tables give different values is left out."""
    values: dict[str, float] = {}
    clashing: set[str] = set()
    for table in tables:
        for label, value in table.items():
            if values.setdefault(label, value) != value:
                clashing.add(label)
    return {label: value for label, value in values.items() if label not in clashing}


def _lesion_count(facts: Any) -> int | None:
    """The number of lesions the facts record: an integer `count` next to a `lesions` list."""
    if isinstance(facts, dict) and isinstance(facts.get("lesions"), list):
        count = facts.get("count")
        if isinstance(count, int) and not isinstance(count, bool):
            return count
    return None


_SOURCES_CACHE: dict[int, tuple[SampleContext, Sources]] = {}


def sample_sources(sample: SampleContext) -> Sources:
    """Per-sample sources, cached by identity (the cache holds the sample, so its id is not reused)."""
    hit = _SOURCES_CACHE.get(id(sample))
    if hit is not None and hit[0] is sample:
        return hit[1]
    if len(_SOURCES_CACHE) > 8192:
        _SOURCES_CACHE.clear()
    built = _build_sources(sample)
    _SOURCES_CACHE[id(sample)] = (sample, built)
    return built


# ---------------------------------------------------------------- grounded numbers


def _chains(thinking: str, numbers: list[Num]) -> dict[int, tuple[list[int], list[str]]]:
    """For each number index that ends a written chain `a op b ... = x`: (operand indices, operators)."""
    out: dict[int, tuple[list[int], list[str]]] = {}
    operands: list[int] = [0] if numbers else []
    ops: list[str] = []
    for i in range(1, len(numbers)):
        gap = thinking[numbers[i - 1].end:numbers[i].start]
        op = _OP_GAP.fullmatch(gap)
        if op:
            operands.append(i)
            ops.append(op.group(1))
            continue
        if ops and _EQ_GAP.fullmatch(gap):
            out[i] = (operands, ops)
        operands, ops = [i], []
    return out


def _apply(a: float, op: str, b: float) -> float | None:
    if op == "+":
        return a + b
    if op in "-−–":
        return a - b
    if op in "*x×":
        return a * b
    if b == 0:
        return None
    return a / b


def _running(values: list[float], ops: list[str]) -> list[float] | None:
    """Left-to-right prefix values of a chain."""
    out, acc = [], values[0]
    for op, v in zip(ops, values[1:]):
        acc = _apply(acc, op, v)
        if acc is None:
            return None
        out.append(acc)
    return out


def _precedence(values: list[float], ops: list[str]) -> float | None:
    terms, current = [], values[0]
    sign_ops = []
    for op, v in zip(ops, values[1:]):
        if op in "+-−–":
            terms.append(current)
            sign_ops.append(op)
            current = v
        else:
            current = _apply(current, op, v)
            if current is None:
                return None
    terms.append(current)
    total = terms[0]
    for op, t in zip(sign_ops, terms[1:]):
        total = total + t if op == "+" else total - t
    return total


def _matches(value: float, num: Num) -> bool:
    tol = _tolerance(num)
    return abs(abs(value) - num.value) <= tol or (num.percent and abs(abs(value) * 100 - num.value) <= tol)


def _derivable(num: Num, grounded: set) -> bool:
    """x = a + b, |a - b|, a * b, a / b or 100 a / b for grounded a != b."""
    x = num.value
    for a in grounded:
        candidates = [x - a, a - x, a + x]
        if a:
            candidates += [x / a, x * a, x * a / 100]
        if x:
            candidates += [a / x, 100 * a / x]
        for b in candidates:
            b = _key(b)
            if b != a and b in grounded:
                return True
    if num.decimals == 0:
        return False
    tol = _tolerance(num)  # rounded ratios and percentages, e.g. 2 / 3 = 0.67, 66.7%
    for a in grounded:
        for b in grounded:
            if a != b and b and (abs(a / b - x) <= tol or abs(100 * a / b - x) <= tol):
                return True
    return False


def ungrounded_numbers(thinking: str, numbers: list[Num], sources: Sources) -> tuple[list[Num], list[Num]]:
    """(numbers grounded by no rule, results of a written chain of grounded operands that the chain does not
    give: "7 - 1 = 5" is miscomputed even though 5 could be grounded otherwise)."""
    grounded = set(sources.numbers)
    chains = _chains(thinking, numbers)
    is_grounded = [False] * len(numbers)
    bad, miscomputed = [], []
    for i, num in enumerate(numbers):
        chain = chains.get(i)
        if chain and all(is_grounded[j] for j in chain[0]):
            values = [numbers[j].value for j in chain[0]]
            running = _running(values, chain[1])
            exact = _precedence(values, chain[1])
            if not (bool(running and _matches(running[-1], num)) or (exact is not None and _matches(exact, num))):
                miscomputed.append(num)
                continue
            ok = True
        else:
            ok = _key(num.value) in grounded or is_list_marker(thinking, num) or _derivable(num, grounded)
        if ok:
            is_grounded[i] = True
            grounded.add(_key(num.value))
            if chain and all(is_grounded[j] for j in chain[0]):
                grounded.update(_key(abs(v)) for v in (_running([numbers[j].value for j in chain[0]], chain[1]) or []))
        else:
            bad.append(num)
    return bad, miscomputed


# ---------------------------------------------------------------- grounded entities


def _sentence_starts(thinking: str) -> set[int]:
    starts = {0}
    for m in re.finditer(r"(?:[.!?:;]\s+|\n\s*|[(\"'])\W*", thinking):
        starts.add(m.end())
    first = re.match(r"\s*\W*", thinking)
    starts.add(first.end() if first else 0)
    return starts


def ungrounded_entities(thinking: str, sources: Sources) -> list[tuple[str, int, int]]:
    found: dict[int, tuple[str, int, int]] = {}
    starts = None
    colours = COLOURS.intersection(_LOWER_WORD.findall(thinking.lower())) - sources.words
    capitalised = [w for w in set(_CAPITALISED.findall(thinking))
                   if w.lower() not in sources.words and w.lower() not in STOPWORDS]
    suspects = [f"(?i:{c})" for c in colours] + capitalised  # only a few words reach the positional scan
    pattern = re.compile(r"\b(?:" + "|".join(suspects) + r")\b") if suspects else None
    for m in pattern.finditer(thinking) if pattern else ():
        word = m.group()
        lower = word.lower()
        if lower in COLOURS:
            found[m.start()] = (word, m.start(), m.end())
        elif word[0].isupper() and len(word) > 1 and lower not in SENTENCE_WORDS:
            starts = starts if starts is not None else _sentence_starts(thinking)
            if m.start() not in starts:
                found[m.start()] = (word, m.start(), m.end())
    if sources.label_table:
        for m in _LABEL_SLOT.finditer(thinking):
            word = m.group(1)
            lower = word.lower()
            if len(word) > 1 and lower not in sources.words and lower not in STOPWORDS and lower not in QUANTITY_WORDS:
                found[m.start(1)] = (word, m.start(1), m.end(1))
    return [found[k] for k in sorted(found)]
