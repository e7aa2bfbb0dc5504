"""Pseudo-thinking detectors for logged traces, and the summary `dyme inspect-traces` prints.

A trace is one line of traces.jsonl (see traces.py: run, step, prompt_id, task, kind, rollout, mode,
completion, answer, gold, correct, rewards, reward, advantage, tokens, truncated, detail[, target]; eval
traces also carry question, reference, facts and images). Only `kind == "rollout"` traces are flagged;
memorized targets are the reference itself.

The completion is split as the verifiers split it (`verdict.split_completion`): the *thinking* is the text
before the LAST answer flag (case-insensitive), the *answer* the text after it. Every detector is a pure
function of the trace, its sample context and the reference index. The rules:

no-answer
    The answer flag is missing, or appears more than once.
empty-thinking
    Nothing but whitespace before the last answer flag (or an empty completion without a flag).
truncated
    `trace["truncated"]` is true (generation hit the token limit).
conclusion-mismatch
    The thinking's last stated result differs from the final answer. Numeric answers (a number, optionally
    with `$`, `%` and one unit word) are compared numerically with the last number of the thinking (4 == 4.0),
    except when the last sentence holding a number is a list of readings (two or more `word = n`,
    `word: n`, `word is n` with no `n = n` arithmetic): a list of readings states no result. Other answers
    are compared only when they have a type the detector knows: yes/no (a standalone "yes"/"no" -- at the
    start of a clause or after "so"/"is", followed by punctuation or the end), or a category label (a key of
    a label table in the facts -- a dict of word keys to numbers, e.g. {"red": 3} --, a one-word string in a
    fact list, or a colour word). The conclusion is then the last sentence naming such a candidate, and
    only when it names exactly one distinct candidate ("The blue bar is tallest."); a sentence comparing
    several states no single result. No stated result, no flag.
ungrounded-value
    Needs a sample context. Sources are the question, the facts (keys and values flattened, plus the number
    of entries of every label table or fact list with two or more, "there are 3 bars") and the sample's
    reference trace. Numbers in the thinking are read left to right; a number is grounded when it
      (a) appears in the sources or earlier in the grounded set (numbers compared as numbers, 4 == 4.0);
      (b) is the result of a written chain `a op b op c ... = x` (op in + - * / x × ÷ −, parentheses
          allowed) whose operands are all grounded and whose value, left to right or with the usual
          precedence, equals x (a percentage result may also equal value * 100) -- so "3 + 2 + 4 = 9" is
          grounded; every running prefix of such a chain (3 + 2 = 5) becomes grounded too;
      (c) is an arithmetic result of two grounded numbers of DIFFERENT value (a + b, |a - b|, a * b, a / b,
          100 * a / b); a result written with decimals matches within half its last shown digit.
    Every grounded number joins the grounded set, so "7 - 3 = 4, 4 + 2 = 6" grounds 6 when 7, 3, 2 are.
    List markers are ignored: a number right after "step" or opening a line followed by "." or ")".
    Entity-like words must appear among the words of the sources (lower-cased). Entity-like means: a
    colour word (chart category labels), a capitalised word that does not start a sentence (after the start,
    `. ! ? : ;`, a newline or an opening bracket/quote), or -- when the facts hold a label table (a dict of
    word keys to numbers) -- the word left of `= n` / `: n`; stopwords, sentence words (step, first, ...)
    and generic quantity words (total, sum, difference, ...) never count. An unusual capitalised word in an
    honest trace ("the Image") is a false positive this heuristic accepts.
ignores-image
    The sample has facts, the thinking is not empty, and it mentions none of the fact tokens: the
    lower-cased words and numbers of the scalar facts' keys and values (keys that only hold a nested
    list/dict are structure, not content), stopwords removed, numbers compared as numbers.
repetition
    Degenerate loops: over the completion's lower-cased word tokens (at least 12), the share of word
    4-grams that repeat an earlier 4-gram is above 0.5. The reason quotes the most repeated 4-gram; the
    spans are its occurrences.
parroted-reference
    The thinking (at least 4 word 3-gram shingles) has a Jaccard similarity of word 3-gram shingles >= 0.8
    with the reference of a DIFFERENT prompt, and strictly above its similarity to its own reference (the
    trace's sample reference, else the index's entry for its prompt_id; skipped when neither is known).
    `ReferenceIndex` keeps an inverted index shingle -> prompt ids and uses prefix filtering: a set A can
    reach Jaccard t with B only if B holds one of A's |A| - ceil(t|A|) + 1 rarest shingles, so a lookup
    probes a handful of short posting lists and computes exact Jaccard for the few candidates found.
right-for-wrong-reasons
    `trace["correct"]` is true and the trace has ungrounded-value or conclusion-mismatch.

`summarize` counts rollout traces only; a trace's step None counts as 0. Groups are the rollouts sharing
step and prompt_id (and run and mode, so an eval pass never merges with a training step; a repeated
rollout index starts a new group, for a prompt drawn twice in one step).
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

from . import dyme
from .data import json_object
from .verdict import STOPWORDS, flatten

FLAGS = (
    "no-answer",
    "empty-thinking",
    "truncated",
    "conclusion-mismatch",
    "ungrounded-value",
    "ignores-image",
    "repetition",
    "parroted-reference",
    "right-for-wrong-reasons",
)


@dataclass(frozen=True)
class Flag:
    name: str  # one of FLAGS
    reason: str  # one human line naming the offending text
    spans: tuple[tuple[int, int], ...] = ()  # character spans of the offending text in the trace's completion


@dataclass(frozen=True)
class SampleContext:
    """What the detectors know about a trace's sample (from the trace itself, --data, or the run's dataset)."""

    question: str = ""
    reference: str = ""
    facts: dict = field(default_factory=dict)
    has_images: bool = False


# Thresholds (see the module docstring).
REPETITION_N = 4
REPETITION_MIN_WORDS = 12
REPETITION_MAX_RATIO = 0.5
SHINGLE_N = 3
PARROT_MIN_SHINGLES = 4
PARROT_SIMILARITY = 0.8

COLOURS = frozenset(
    "red green blue orange purple yellow pink brown cyan magenta violet teal gold navy maroon olive lime indigo".split()
)
QUANTITY_WORDS = frozenset(
    """total sum difference product ratio result results value values count average mean median height width
    length step answer percent percentage max min maximum minimum x y n""".split()
)
SENTENCE_WORDS = frozenset("step answer note first then next finally therefore thus hence since because".split())

_NUMBER = r"(?<![\w.])(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?![\w])%?"
_NUMBER_RE = re.compile(_NUMBER)
_WORD_RE = re.compile(r"[A-Za-z]+")
_TOKEN_RE = re.compile(r"[a-z]+|\d+(?:\.\d+)?")
_LOWER_WORD = re.compile(r"[a-z]+")
_CAPITALISED = re.compile(r"\b[A-Z][A-Za-z]+")
_WORD_OR_NUMBER = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?")
_OP_GAP = re.compile(r"[\s()]*([-+*/×x÷−–])[\s()]*")
_EQ_GAP = re.compile(r"[\s()]*=\s*")
_SENTENCE_END = re.compile(r"[.!?;\n](?=\s|$)")
_READING = re.compile(r"[A-Za-z]\s*(?:=|:|\bis\b|\bequals\b)\s*" + _NUMBER)
_LABEL_SLOT = re.compile(r"\b([A-Za-z]+)\s*[=:]\s*" + _NUMBER)
_STEP_BEFORE = re.compile(r"\bstep\s*$", re.IGNORECASE)
_YES_NO = re.compile(r"(?:^|[,.;:!?]\s*|\bso\s+|\bis\s+)(yes|no)\s*(?=[,.;:!?]|$)", re.IGNORECASE | re.MULTILINE)
_NUMERIC_ANSWER = re.compile(r"^\$?(" + _NUMBER + r")(?:\s+[A-Za-z]+)?$")


# ---------------------------------------------------------------- numbers


class _Num(NamedTuple):
    value: float
    start: int
    end: int
    text: str
    decimals: int  # digits shown after the point
    percent: bool


def _parse_number(text: str) -> float:
    return float(text.rstrip("%").replace(",", ""))


def _key(value: float) -> float:
    return round(value, 6)


def _numbers(text: str, offset: int = 0) -> list[_Num]:
    found = []
    for m in _NUMBER_RE.finditer(text):
        raw = m.group()
        digits = raw.rstrip("%")
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        found.append(_Num(_parse_number(raw), m.start() + offset, m.end() + offset, raw, decimals, raw.endswith("%")))
    return found


def _is_list_marker(text: str, num: _Num) -> bool:
    """A number after "step", or opening a line and followed by "." or ")"."""
    before = text[max(0, num.start - 8):num.start]
    if "tep" in before.lower() and _STEP_BEFORE.search(before):
        return True
    if text[num.end:num.end + 1] not in (".", ")"):
        return False
    line_start = text.rfind("\n", 0, num.start) + 1
    return not text[line_start:num.start].strip(" \t-*")


def _tolerance(num: _Num) -> float:
    return 0.5 * 10 ** -num.decimals + 1e-9


# ---------------------------------------------------------------- sources


@dataclass(frozen=True)
class _Sources:
    numbers: frozenset  # keys of every number in question, facts (incl. collection sizes) and reference
    words: frozenset  # lower-cased words of question, facts and reference
    fact_tokens: frozenset  # scalar facts' keys and values: words minus stopwords, numbers as keys
    fact_labels: frozenset  # category labels: keys of label tables, one-word strings of fact lists
    label_table: bool  # facts hold a dict of word keys -> numbers
    fact_strings: frozenset  # fact_tokens as written (lower-cased), for a fast first check
    reference_shingles: frozenset  # word 3-gram shingles of the reference


def _walk_facts(facts: Any, sizes: list[int], scalars: list[str], labels: set[str]) -> bool:
    """Collect collection sizes, scalar key/value text and labels; True if some dict is a label table."""
    table = False
    if isinstance(facts, dict):
        if facts and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in facts.values()):
            table = all(_WORD_RE.fullmatch(str(k)) for k in facts)
            if table:
                labels.update(str(k).lower() for k in facts)
                if len(facts) > 1:
                    sizes.append(len(facts))
        for k, v in facts.items():
            if isinstance(v, (dict, list, tuple)):
                table |= _walk_facts(v, sizes, scalars, labels)
            else:
                scalars.append(f"{k} {v}")
    elif isinstance(facts, (list, tuple)):
        if len(facts) > 1:
            sizes.append(len(facts))
        for v in facts:
            if isinstance(v, (dict, list, tuple)):
                table |= _walk_facts(v, sizes, scalars, labels)
            else:
                scalars.append(str(v))
                if isinstance(v, str) and _WORD_RE.fullmatch(v):
                    labels.add(v.lower())
    return table


def _tokens_as_keys(text: str) -> set:
    out = set()
    for token in _TOKEN_RE.findall(text.lower()):
        if token[0].isdigit():
            out.add(_key(float(token)))
        elif token not in STOPWORDS:
            out.add(token)
    return out


def _build_sources(sample: SampleContext) -> _Sources:
    facts_text = flatten(sample.facts)
    text = f"{sample.question}\n{facts_text}\n{sample.reference}"
    sizes: list[int] = []
    scalars: list[str] = []
    labels: set[str] = set()
    table = _walk_facts(sample.facts, sizes, scalars, labels)
    numbers = {_key(n.value) for n in _numbers(text)} | {_key(float(s)) for s in sizes}
    words = {w.lower() for w in _WORD_RE.findall(text)}
    scalar_text = " ".join(scalars).lower()
    fact_strings = {t for t in _TOKEN_RE.findall(scalar_text) if t not in STOPWORDS}
    return _Sources(frozenset(numbers), frozenset(words), frozenset(_tokens_as_keys(scalar_text)),
                    frozenset(labels), table, frozenset(fact_strings), shingles(sample.reference))


_SOURCES_CACHE: dict[int, tuple[SampleContext, _Sources]] = {}


def _sources(sample: SampleContext) -> _Sources:
    """Per-sample sources, cached by identity (the cache holds the sample, so its id is not reused)."""
    hit = _SOURCES_CACHE.get(id(sample))
    if hit is not None and hit[0] is sample:
        return hit[1]
    if len(_SOURCES_CACHE) > 8192:
        _SOURCES_CACHE.clear()
    built = _build_sources(sample)
    _SOURCES_CACHE[id(sample)] = (sample, built)
    return built


# ---------------------------------------------------------------- splitting


@dataclass(frozen=True)
class _Parts:
    thinking: str  # completion[:flag start] (unstripped, so offsets are completion offsets)
    answer: str | None
    answer_span: tuple[int, int] | None
    flag_spans: tuple[tuple[int, int], ...]


def _split(completion: str, answer_flag: str) -> _Parts:
    flags = tuple(m.span() for m in re.finditer(re.escape(answer_flag), completion, flags=re.IGNORECASE))
    if not flags:
        return _Parts(completion, None, None, flags)
    start, end = flags[-1]
    rest = completion[end:]
    answer = rest.strip()
    if answer.endswith("."):
        answer = answer[:-1].rstrip()
    a_start = end + (len(rest) - len(rest.lstrip()))
    return _Parts(completion[:start], answer, (a_start, a_start + len(answer)), flags)


# ---------------------------------------------------------------- simple flags


def _no_answer(parts: _Parts, answer_flag: str) -> Flag | None:
    if not parts.flag_spans:
        return Flag("no-answer", f"no '{answer_flag}' in the completion")
    if len(parts.flag_spans) > 1:
        return Flag("no-answer", f"'{answer_flag}' appears {len(parts.flag_spans)} times, expected once",
                    parts.flag_spans)
    return None


def _empty_thinking(parts: _Parts, answer_flag: str) -> Flag | None:
    if parts.thinking.strip():
        return None
    if parts.flag_spans:
        return Flag("empty-thinking", f"nothing before '{answer_flag}'", (parts.flag_spans[-1],))
    return Flag("empty-thinking", "the completion is empty")


def _truncated(trace: dict) -> Flag | None:
    if not trace.get("truncated"):
        return None
    tokens = trace.get("tokens")
    detail = f" ({tokens} tokens)" if tokens is not None else ""
    return Flag("truncated", f"generation was cut at the token limit{detail}")


# ---------------------------------------------------------------- conclusion-mismatch


def _sentence_bounds(text: str, pos: int) -> tuple[int, int]:
    start = 0
    for m in _SENTENCE_END.finditer(text, 0, pos):
        start = m.end()
    m = _SENTENCE_END.search(text, pos)
    return start, (m.end() if m else len(text))


def _is_reading_list(sentence: str) -> bool:
    readings = len(_READING.findall(sentence))
    arithmetic = re.search(_NUMBER + r"\s*\)?\s*=\s*\(?\s*" + _NUMBER, sentence)
    return readings >= 2 and not arithmetic


def _numeric_conclusion(thinking: str, numbers: list[_Num]) -> _Num | None:
    if not numbers:
        return None
    last = numbers[-1]
    start, end = _sentence_bounds(thinking, last.start)
    if _is_reading_list(thinking[start:end]):
        return None
    return last


def _candidate_words(answer: str, sources: _Sources | None) -> tuple[set[str], bool] | None:
    """The candidate vocabulary of the answer's type, and whether it is yes/no; None for an unknown type."""
    words = {w.lower() for w in _WORD_RE.findall(answer)}
    if words and words <= {"yes", "no"}:
        return {"yes", "no"}, True
    labels = (sources.fact_labels if sources else frozenset()) | COLOURS
    if words & labels:
        return set(labels), False
    return None


def _entity_conclusion(thinking: str, candidates: set[str], yes_no: bool) -> tuple[str, tuple[int, int]] | None:
    if yes_no:
        hits = [(m.group(1).lower(), m.span(1)) for m in _YES_NO.finditer(thinking)]
    else:
        hits = [(m.group().lower(), m.span()) for m in _WORD_RE.finditer(thinking) if m.group().lower() in candidates]
    if not hits:
        return None
    start, end = _sentence_bounds(thinking, hits[-1][1][0])
    named = {word for word, (a, _) in hits if start <= a < end}
    return hits[-1] if len(named) == 1 else None


def _conclusion_mismatch(parts: _Parts, numbers: list[_Num], sources: _Sources | None) -> Flag | None:
    answer = parts.answer
    if not answer or not parts.thinking.strip():
        return None
    numeric = _NUMERIC_ANSWER.match(answer)
    if numeric:
        conclusion = _numeric_conclusion(parts.thinking, numbers)
        if conclusion is None:
            return None
        gold = _parse_number(numeric.group(1))
        if abs(conclusion.value - gold) <= 1e-9 * max(1.0, abs(gold)):
            return None
        return Flag("conclusion-mismatch", f"thinking concludes {conclusion.text} but the answer is {answer}",
                    ((conclusion.start, conclusion.end), parts.answer_span))
    typed = _candidate_words(answer, sources)
    if typed is None:
        return None
    found = _entity_conclusion(parts.thinking, *typed)
    if found is None:
        return None
    word, span = found
    if word in {w.lower() for w in _WORD_RE.findall(answer)}:
        return None
    return Flag("conclusion-mismatch", f"thinking concludes '{parts.thinking[span[0]:span[1]]}' but the answer is "
                f"'{answer}'", (span, parts.answer_span))


# ---------------------------------------------------------------- ungrounded-value


def _chains(thinking: str, numbers: list[_Num]) -> dict[int, tuple[list[int], list[str]]]:
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


def _matches(value: float, num: _Num) -> bool:
    tol = _tolerance(num)
    return abs(abs(value) - num.value) <= tol or (num.percent and abs(abs(value) * 100 - num.value) <= tol)


def _derivable(num: _Num, grounded: set) -> bool:
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


def _ungrounded_numbers(thinking: str, numbers: list[_Num], sources: _Sources) -> list[_Num]:
    grounded = set(sources.numbers)
    chains = _chains(thinking, numbers)
    is_grounded = [False] * len(numbers)
    bad = []
    for i, num in enumerate(numbers):
        ok = _key(num.value) in grounded or _is_list_marker(thinking, num)
        chain = chains.get(i)
        if not ok and chain and all(is_grounded[j] for j in chain[0]):
            values = [numbers[j].value for j in chain[0]]
            running = _running(values, chain[1])
            exact = _precedence(values, chain[1])
            ok = bool(running and _matches(running[-1], num)) or (exact is not None and _matches(exact, num))
        if not ok:
            ok = _derivable(num, grounded)
        if ok:
            is_grounded[i] = True
            grounded.add(_key(num.value))
            if chain and all(is_grounded[j] for j in chain[0]):
                grounded.update(_key(abs(v)) for v in (_running([numbers[j].value for j in chain[0]], chain[1]) or []))
        else:
            bad.append(num)
    return bad


def _sentence_starts(thinking: str) -> set[int]:
    starts = {0}
    for m in re.finditer(r"(?:[.!?:;]\s+|\n\s*|[(\"'])\W*", thinking):
        starts.add(m.end())
    first = re.match(r"\s*\W*", thinking)
    starts.add(first.end() if first else 0)
    return starts


def _ungrounded_entities(thinking: str, sources: _Sources) -> list[tuple[str, int, int]]:
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


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _ungrounded(parts: _Parts, numbers: list[_Num], sources: _Sources) -> Flag | None:
    bad = [(n.text, n.start, n.end) for n in _ungrounded_numbers(parts.thinking, numbers, sources)]
    bad += [(f"'{w}'", a, b) for w, a, b in _ungrounded_entities(parts.thinking, sources)]
    if not bad:
        return None
    bad.sort(key=lambda item: item[1])
    names = list(dict.fromkeys(text for text, _, _ in bad))
    verb = "is" if len(names) == 1 else "are"
    reason = (f"thinking uses {_join(names)}, which {verb} in neither the question, the facts nor the reference, "
              "nor computed from them")
    return Flag("ungrounded-value", reason, tuple((a, b) for _, a, b in bad))


# ---------------------------------------------------------------- ignores-image


def _ignores_image(parts: _Parts, sources: _Sources) -> Flag | None:
    thinking = parts.thinking
    if not sources.fact_tokens or not thinking.strip():
        return None
    if not sources.fact_strings.isdisjoint(_TOKEN_RE.findall(thinking.lower())):
        return None  # fast path: a fact word or a number written as in the facts
    if _tokens_as_keys(thinking) & sources.fact_tokens:
        return None
    shown = sorted(str(t) if isinstance(t, str) else _fmt(t) for t in sources.fact_tokens)
    more = ", ..." if len(shown) > 8 else ""
    start = len(thinking) - len(thinking.lstrip())
    return Flag("ignores-image", f"thinking mentions none of the image facts ({', '.join(shown[:8])}{more})",
                ((start, len(thinking.rstrip())),))


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ---------------------------------------------------------------- repetition


def _repetition(completion: str) -> Flag | None:
    words = " ".join(_WORD_OR_NUMBER.findall(completion)).lower().split()
    if len(words) < REPETITION_MIN_WORDS:
        return None
    grams = list(zip(*(words[i:] for i in range(REPETITION_N))))
    counts = Counter(grams)
    ratio = 1 - len(counts) / len(grams)
    if ratio <= REPETITION_MAX_RATIO:
        return None
    gram, times = counts.most_common(1)[0]
    found = [m.span() for m in _WORD_OR_NUMBER.finditer(completion)]
    spans = tuple((found[i][0], found[i + REPETITION_N - 1][1]) for i, g in enumerate(grams) if g == gram)
    return Flag("repetition", f"'{' '.join(gram)}' repeats {times} times ({ratio:.0%} of {REPETITION_N}-grams are "
                "repeats)", spans)


# ---------------------------------------------------------------- parroted-reference


def shingles(text: str, n: int = SHINGLE_N) -> frozenset:
    """Word n-gram shingles of lower-cased word/number tokens."""
    tokens = _TOKEN_RE.findall(text.lower())
    return frozenset(zip(*(tokens[i:] for i in range(n))))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class ReferenceIndex:
    """Reference traces by prompt id, with an inverted index shingle -> prompt ids for near-copy lookups."""

    def __init__(self, references: Mapping[str, str], threshold: float = PARROT_SIMILARITY):
        self.threshold = threshold
        self.sets: dict[str, frozenset] = {pid: shingles(text or "") for pid, text in references.items()}
        postings: dict[tuple, list[str]] = defaultdict(list)
        for pid, grams in self.sets.items():
            for gram in grams:
                postings[gram].append(pid)
        self.postings = dict(postings)
        self._df = {gram: len(pids) for gram, pids in self.postings.items()}  # document frequency
        self._matches: dict[tuple[frozenset, str | None], tuple[str, float] | None] = {}

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.sets

    def __len__(self) -> int:
        return len(self.sets)

    def similarity(self, text_or_shingles: str | frozenset, prompt_id: str) -> float:
        grams = shingles(text_or_shingles) if isinstance(text_or_shingles, str) else text_or_shingles
        return jaccard(grams, self.sets.get(prompt_id, frozenset()))

    def best_match(self, text_or_shingles: str | frozenset, exclude: str | None = None) -> tuple[str, float] | None:
        """The most similar reference of another prompt (not `exclude`) with Jaccard >= threshold, or None.

        Prefix filtering: only the |A| - ceil(t|A|) + 1 rarest shingles of A are probed, which every set
        with Jaccard >= t must share one of; the candidates are then scored exactly.
        """
        grams = shingles(text_or_shingles) if isinstance(text_or_shingles, str) else text_or_shingles
        if not grams:
            return None
        key = (grams, exclude)  # rollouts often repeat a trace word for word (K samples, converged prompts)
        if key not in self._matches:
            self._matches[key] = self._best_match(grams, exclude)
        return self._matches[key]

    def _best_match(self, grams: frozenset, exclude: str | None) -> tuple[str, float] | None:
        size = len(grams)
        probe = size - math.ceil(self.threshold * size - 1e-9) + 1
        rarest = sorted(grams, key=lambda gram: self._df.get(gram, 0))[:probe]
        lo, hi = self.threshold * size, size / self.threshold
        best: tuple[str, float] | None = None
        seen = set()
        for gram in rarest:
            for pid in self.postings.get(gram, ()):
                if pid == exclude or pid in seen:
                    continue
                seen.add(pid)
                other = self.sets[pid]
                if not lo - 1e-9 <= len(other) <= hi + 1e-9:
                    continue
                score = jaccard(grams, other)
                if score >= self.threshold and (best is None or score > best[1] or (score == best[1] and pid < best[0])):
                    best = (pid, score)
        return best


def _parroted(parts: _Parts, trace: dict, sample: SampleContext | None, references: ReferenceIndex | None) -> Flag | None:
    if references is None or not len(references):
        return None
    prompt_id = trace.get("prompt_id")
    if sample is not None:
        own_set: frozenset | None = _sources(sample).reference_shingles
    elif prompt_id in references:
        own_set = references.sets[prompt_id]
    else:
        return None
    grams = shingles(parts.thinking)
    if len(grams) < PARROT_MIN_SHINGLES:
        return None
    match = references.best_match(grams, exclude=prompt_id)
    if match is None:
        return None
    other, score = match
    own = jaccard(grams, own_set)
    if score <= own:
        return None
    start = len(parts.thinking) - len(parts.thinking.lstrip())
    return Flag("parroted-reference", f"thinking copies the reference of {other} (similarity {score:.2f}, "
                f"{own:.2f} with its own)", ((start, len(parts.thinking.rstrip())),))


# ---------------------------------------------------------------- flag_trace


def flag_trace(
    trace: dict, sample: SampleContext | None, references: ReferenceIndex | None, answer_flag: str = "Answer:"
) -> list[Flag]:
    """Every flag that fires for one trace, in FLAGS order (at most one Flag per name)."""
    completion = trace.get("completion") or ""
    parts = _split(completion, answer_flag)
    sources = _sources(sample) if sample is not None else None
    numbers = _numbers(parts.thinking)
    numbers_no_markers = [n for n in numbers if not _is_list_marker(parts.thinking, n)]
    found: dict[str, Flag | None] = {
        "no-answer": _no_answer(parts, answer_flag),
        "empty-thinking": _empty_thinking(parts, answer_flag),
        "truncated": _truncated(trace),
        "conclusion-mismatch": _conclusion_mismatch(parts, numbers_no_markers, sources),
        "ungrounded-value": _ungrounded(parts, numbers, sources) if sources else None,
        "ignores-image": _ignores_image(parts, sources) if sources else None,
        "repetition": _repetition(completion),
        "parroted-reference": _parroted(parts, trace, sample, references),
    }
    if trace.get("correct") is True:
        causes = [found[name] for name in ("ungrounded-value", "conclusion-mismatch") if found[name]]
        if causes:
            spans = tuple(sorted({s for flag in causes for s in flag.spans}))
            reason = "correct answer, but " + "; ".join(f"{flag.name}: {flag.reason}" for flag in causes)
            found["right-for-wrong-reasons"] = Flag("right-for-wrong-reasons", reason, spans)
    return [found[name] for name in FLAGS if found.get(name)]


def context_from_trace(trace: dict) -> SampleContext | None:
    """The sample context an (eval) trace carries itself, or None when it carries none."""
    if not any(key in trace for key in ("question", "reference", "facts")):
        return None
    return SampleContext(
        question=str(trace.get("question") or ""), reference=str(trace.get("reference") or ""),
        facts=dict(trace.get("facts") or {}), has_images=bool(trace.get("images")),
    )


def sample_contexts(samples: Iterable) -> dict[str, SampleContext]:
    """Contexts by prompt id from `dyme_cli.data.Sample` objects."""
    return {
        s.id: SampleContext(question=s.question, reference=s.reference, facts=dict(s.facts), has_images=bool(s.images))
        for s in samples
    }


def flag_traces(
    traces: Sequence[dict], contexts: Mapping[str, SampleContext] | None = None,
    references: ReferenceIndex | None = None, answer_flag: str = "Answer:",
) -> list[list[Flag]]:
    """Flags for each trace (parallel list); non-rollout traces get []. A trace's own context wins over `contexts`.

    Without `references`, the index is built from the contexts plus the references eval traces carry."""
    contexts = contexts or {}
    own: dict[int, SampleContext] = {}
    for i, trace in enumerate(traces):
        ctx = context_from_trace(trace)
        if ctx is not None:
            own[i] = ctx
    if references is None:
        refs = {pid: ctx.reference for pid, ctx in contexts.items()}
        for i, ctx in own.items():
            refs.setdefault(traces[i].get("prompt_id"), ctx.reference)
        references = ReferenceIndex(refs)
    # Context objects shared across traces of the same prompt, so per-sample sources are built once.
    shared: dict[tuple, SampleContext] = {}
    out = []
    for i, trace in enumerate(traces):
        if trace.get("kind") != "rollout":
            out.append([])
            continue
        ctx = own.get(i)
        if ctx is not None:
            ctx = shared.setdefault((trace.get("prompt_id"), ctx.question, ctx.reference, repr(ctx.facts)), ctx)
        else:
            ctx = contexts.get(trace.get("prompt_id"))
        out.append(flag_trace(trace, ctx, references, answer_flag))
    return out


# ---------------------------------------------------------------- summary


def _step(trace: dict) -> int:
    return trace.get("step") or 0


def _mode(trace: dict) -> str:
    mode = trace.get("mode")
    return str(mode) if mode is not None else "unknown"


def _groups(rollouts: list[dict]) -> list[list[dict]]:
    """Rollouts sharing run, step, prompt_id and mode; a repeated rollout index starts a new group."""
    current: dict[tuple, int] = {}
    seen: list[set] = []
    groups: list[list[dict]] = []
    for trace in rollouts:
        key = (trace.get("run"), _step(trace), trace.get("prompt_id"), _mode(trace))
        index = trace.get("rollout")
        g = current.get(key)
        if g is None or (index is not None and index in seen[g]):
            g = len(groups)
            current[key] = g
            groups.append([])
            seen.append(set())
        groups[g].append(trace)
        seen[g].add(index)
    return groups


def _rate(n: int, d: int) -> float:
    return n / d if d else 0.0


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _window_summary(steps: list[int], items: list[tuple[dict, set]], groups: list[list[dict]]) -> dict:
    correct = [bool(t["correct"]) for t, _ in items if t.get("correct") is not None]
    rewards = [float(t["reward"]) for t, _ in items if t.get("reward") is not None]
    modes = Counter(_mode(g[0]) for g in groups)
    return {
        "steps": [steps[0], steps[-1]],
        "traces": len(items),
        "accuracy": _mean([float(c) for c in correct]),
        "reward_mean": _mean(rewards),
        "flag_rates": {name: _rate(sum(name in names for _, names in items), len(items)) for name in FLAGS},
        "modes": {mode: n / len(groups) for mode, n in sorted(modes.items())} if groups else {},
    }


def _advantage_collapse(groups: list[list[dict]]) -> dict:
    causes: Counter = Counter()
    considered = 0
    for group in groups:
        rewards = [t.get("reward") for t in group]
        if any(r is None for r in rewards):
            continue
        considered += 1
        causes[dyme.zero_std_cause([bool(t.get("correct")) for t in group], [float(r) for r in rewards])] += 1
    zero = considered - causes[None]
    return {
        "groups": considered,
        "zero_std": _rate(zero, considered),
        "all_correct": _rate(causes["all_correct"], considered),
        "all_wrong": _rate(causes["all_wrong"], considered),
        "mixed": _rate(causes["mixed"], considered),
    }


def summarize(traces: list[dict], flags: list[list[Flag]], windows: int = 10) -> dict:
    """Flag counts and rates, per mode, per step window, and the advantage collapse of the rollout groups."""
    if len(traces) != len(flags):
        raise ValueError(f"traces and flags must be parallel lists ({len(traces)} != {len(flags)})")
    items = [(t, {f.name for f in fl}) for t, fl in zip(traces, flags) if t.get("kind") == "rollout"]
    n = len(items)
    by_mode: dict[str, dict] = {}
    for trace, names in items:
        entry = by_mode.setdefault(_mode(trace), {"traces": 0, "flags": {name: 0 for name in FLAGS}})
        entry["traces"] += 1
        for name in names:
            entry["flags"][name] += 1
    rollouts = [t for t, _ in items]
    groups = _groups(rollouts)
    distinct = sorted({_step(t) for t in rollouts})
    k = min(max(windows, 0), len(distinct))
    window_list = []
    for w in range(k):
        steps = distinct[w * len(distinct) // k:(w + 1) * len(distinct) // k]
        inside = set(steps)
        window_list.append(_window_summary(
            steps, [item for item in items if _step(item[0]) in inside], [g for g in groups if _step(g[0]) in inside]
        ))
    return {
        "traces": n,
        "flagged": sum(1 for _, names in items if names),
        "flags": {name: {"count": (c := sum(name in names for _, names in items)), "rate": _rate(c, n)}
                  for name in FLAGS},
        "by_mode": by_mode,
        "windows": window_list,
        "advantage_collapse": _advantage_collapse(groups),
    }


# ---------------------------------------------------------------- I/O and filters


def load_traces(path: str | Path) -> list[dict]:
    """Every JSON object of a traces JSONL file; a bad line raises DataError naming file:line."""
    path = Path(path)
    out = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if line.strip():
                out.append(json_object(line, f"{path}:{lineno}"))
    return out


def filter_traces(
    traces: Sequence[dict], steps: tuple[int | None, int | None] | None = None, mode: str | None = None
) -> list[dict]:
    """Traces whose step (None -> 0) lies in the inclusive range `steps` (open ends as None) and whose mode is `mode`."""
    lo, hi = steps if steps is not None else (None, None)
    return [
        t for t in traces
        if (lo is None or _step(t) >= lo) and (hi is None or _step(t) <= hi) and (mode is None or t.get("mode") == mode)
    ]
