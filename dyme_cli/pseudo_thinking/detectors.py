"""The detectors, one function per flag, and `flag_trace` / `flag_traces` that run them (rules in the package
docstring)."""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable, Mapping, Sequence

from ..traces import Trace
from ..verdict import SplitCompletion, split_completion
from .grounding import (
    COLOURS,
    NUMBER,
    WORD_RE,
    Num,
    Sources,
    find_numbers,
    format_number,
    is_list_marker,
    parse_number,
    sample_sources,
    tokens_as_keys,
    ungrounded_entities,
    ungrounded_numbers,
)
from .misreads import misreads
from .records import FLAGS, Flag, SampleContext
from .references import TOKEN_RE, ReferenceIndex, jaccard, shingles

# Thresholds (see the package docstring).
REPETITION_N = 4
REPETITION_MIN_WORDS = 12
REPETITION_MAX_RATIO = 0.5
PARROT_MIN_SHINGLES = 4

_WORD_OR_NUMBER = re.compile(r"[A-Za-z]+|\d+(?:\.\d+)?")
_SENTENCE_END = re.compile(r"[.!?;\n](?=\s|$)")
_READING = re.compile(r"[A-Za-z]\s*(?:=|:|\bis\b|\bequals\b)\s*" + NUMBER)
_YES_NO = re.compile(r"(?:^|[,.;:!?]\s*|\bso\s+|\bis\s+)(yes|no)\s*(?=[,.;:!?]|$)", re.IGNORECASE | re.MULTILINE)
_CONCLUDES = re.compile(r"\b(?:so|therefore|thus|hence|which\s+(?:gives|makes|means|is)|giving|that\s+(?:gives|makes)|"
                        r"the\s+(?:result|answer|total|difference|sum)\s+is|in\s+total)\b", re.IGNORECASE)
_NUMERIC_ANSWER = re.compile(r"^\$?(" + NUMBER + r")(?:\s+[A-Za-z]+)?$")


# ---------------------------------------------------------------- simple flags


def _no_answer(split: SplitCompletion, answer_flag: str) -> Flag | None:
    if not split.flag_spans:
        return Flag("no-answer", f"no '{answer_flag}' in the completion")
    if split.flag_count > 1:
        return Flag("no-answer", f"'{answer_flag}' appears {split.flag_count} times, expected once",
                    split.flag_spans)
    return None


def _empty_thinking(split: SplitCompletion, answer_flag: str) -> Flag | None:
    if split.thinking:
        return None
    if split.flag_spans:
        return Flag("empty-thinking", f"nothing before '{answer_flag}'", (split.flag_spans[-1],))
    return Flag("empty-thinking", "the completion is empty")


def _truncated(trace: Trace) -> Flag | None:
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
    arithmetic = re.search(NUMBER + r"\s*\)?\s*=\s*\(?\s*" + NUMBER, sentence)
    return readings >= 2 and not arithmetic


def _conclusion_start(thinking: str, start: int, end: int) -> int | None:
    """Where the conclusion clause of the sentence thinking[start:end] begins: after its last "so", "therefore",
    "which gives", "the result is", ... (None when it has none)."""
    markers = list(_CONCLUDES.finditer(thinking, start, end))
    return markers[-1].end() if markers else None


def _numeric_conclusion(thinking: str, numbers: list[Num]) -> Num | None:
    if not numbers:
        return None
    last = numbers[-1]
    start, end = _sentence_bounds(thinking, last.start)
    if _is_reading_list(thinking[start:end]):
        clause = _conclusion_start(thinking, start, end)  # "A is a and B is b, so the result is r"
        if clause is None or clause > last.start or _is_reading_list(thinking[clause:end]):
            return None
    return last


def _candidate_words(answer: str, sources: Sources | None) -> tuple[set[str], bool] | None:
    """The candidate vocabulary of the answer's type, and whether it is yes/no; None for an unknown type."""
    words = {w.lower() for w in WORD_RE.findall(answer)}
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
        hits = [(m.group().lower(), m.span()) for m in WORD_RE.finditer(thinking) if m.group().lower() in candidates]
    if not hits:
        return None
    start, end = _sentence_bounds(thinking, hits[-1][1][0])
    named = {word for word, (a, _) in hits if start <= a < end}
    if len(named) > 1:  # "red is 3 and blue is 5, so blue is the tallest": the clause after the marker decides
        clause = _conclusion_start(thinking, start, end)
        named = {word for word, (a, _) in hits if clause is not None and clause <= a < end}
    return hits[-1] if len(named) == 1 else None


def _conclusion_mismatch(split: SplitCompletion, thinking: str, numbers: list[Num],
                         sources: Sources | None) -> Flag | None:
    answer = split.answer
    if not answer or not split.thinking:
        return None
    numeric = _NUMERIC_ANSWER.match(answer)
    if numeric:
        conclusion = _numeric_conclusion(thinking, numbers)
        if conclusion is None:
            return None
        gold = parse_number(numeric.group(1))
        if abs(conclusion.value - gold) <= 1e-9 * max(1.0, abs(gold)):
            return None
        return Flag("conclusion-mismatch", f"thinking concludes {conclusion.text} but the answer is {answer}",
                    ((conclusion.start, conclusion.end), split.answer_span))
    typed = _candidate_words(answer, sources)
    if typed is None:
        return None
    found = _entity_conclusion(thinking, *typed)
    if found is None:
        return None
    word, span = found
    if word in {w.lower() for w in WORD_RE.findall(answer)}:
        return None
    return Flag("conclusion-mismatch", f"thinking concludes '{thinking[span[0]:span[1]]}' but the answer is "
                f"'{answer}'", (span, split.answer_span))


# ---------------------------------------------------------------- ungrounded-value


def _join(items: list[str]) -> str:
    if len(items) <= 2:
        return " and ".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _ungrounded(thinking: str, numbers: list[Num], sources: Sources) -> Flag | None:
    unsourced, miscomputed = ungrounded_numbers(thinking, numbers, sources)
    bad = [(n.text, n.start, n.end) for n in unsourced]
    bad += [(f"'{w}'", a, b) for w, a, b in ungrounded_entities(thinking, sources)]
    if not bad and not miscomputed:
        return None
    reasons = []
    if bad:
        names = list(dict.fromkeys(text for text, _, _ in sorted(bad, key=lambda item: item[1])))
        verb = "is" if len(names) == 1 else "are"
        reasons.append(f"thinking uses {_join(names)}, which {verb} in neither the question, the facts nor the "
                       "reference, nor computed from them")
    if miscomputed:
        wrong = list(dict.fromkeys(n.text for n in miscomputed))
        reasons.append(f"{_join(wrong)} {'is' if len(wrong) == 1 else 'are'} not what the written arithmetic before "
                       f"{'it gives' if len(wrong) == 1 else 'them gives'}")
    spans = sorted([(a, b) for _, a, b in bad] + [(n.start, n.end) for n in miscomputed])
    return Flag("ungrounded-value", "; ".join(reasons), tuple(spans))


# ---------------------------------------------------------------- misread-value


def _misread(thinking: str, sources: Sources) -> Flag | None:
    found = misreads(thinking, sources)
    if not found:
        return None
    said = [f"{m.what} {m.stated} (the facts: {m.true})" for m in found]
    return Flag("misread-value", f"thinking reads {_join(list(dict.fromkeys(said)))}",
                tuple((m.start, m.end) for m in found))


# ---------------------------------------------------------------- ignores-image


def _ignores_image(split: SplitCompletion, sources: Sources) -> Flag | None:
    thinking = split.thinking
    if not sources.fact_tokens or not thinking:
        return None
    if not sources.fact_strings.isdisjoint(TOKEN_RE.findall(thinking.lower())):
        return None  # fast path: a fact word or a number written as in the facts
    if tokens_as_keys(thinking) & sources.fact_tokens:
        return None
    shown = sorted(str(t) if isinstance(t, str) else format_number(t) for t in sources.fact_tokens)
    more = ", ..." if len(shown) > 8 else ""
    return Flag("ignores-image", f"thinking mentions none of the image facts ({', '.join(shown[:8])}{more})",
                (split.thinking_span,))


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


def _parroted(split: SplitCompletion, trace: Trace, sample: SampleContext | None,
              references: ReferenceIndex | None) -> Flag | None:
    if references is None or not len(references):
        return None
    prompt_id = trace.get("prompt_id")
    if sample is not None:
        own_set: frozenset | None = sample_sources(sample).reference_shingles
    elif prompt_id in references:
        own_set = references.sets[prompt_id]
    else:
        return None
    grams = shingles(split.thinking)
    if len(grams) < PARROT_MIN_SHINGLES:
        return None
    match = references.best_match(grams, exclude=prompt_id)
    if match is None:
        return None
    other, score = match
    own = jaccard(grams, own_set)
    if score <= own:
        return None
    return Flag("parroted-reference", f"thinking copies the reference of {other} (similarity {score:.2f}, "
                f"{own:.2f} with its own)", (split.thinking_span,))


# ---------------------------------------------------------------- flag_trace


def flag_trace(
    trace: Trace, sample: SampleContext | None, references: ReferenceIndex | None, answer_flag: str = "Answer:"
) -> list[Flag]:
    """Every flag that fires for one trace, in FLAGS order (at most one Flag per name)."""
    completion = trace.get("completion") or ""
    split = split_completion(completion, answer_flag)
    # The position-finding detectors read the completion up to the end of the (trimmed) thinking: the leading
    # whitespace stays, so every offset a regex finds in it is a completion offset.
    thinking = completion[:split.thinking_span[1]]
    sources = sample_sources(sample) if sample is not None else None
    numbers = find_numbers(thinking)
    numbers_no_markers = [n for n in numbers if not is_list_marker(thinking, n)]
    found: dict[str, Flag | None] = {
        "no-answer": _no_answer(split, answer_flag),
        "empty-thinking": _empty_thinking(split, answer_flag),
        "truncated": _truncated(trace),
        "conclusion-mismatch": _conclusion_mismatch(split, thinking, numbers_no_markers, sources),
        "ungrounded-value": _ungrounded(thinking, numbers, sources) if sources else None,
        "misread-value": _misread(thinking, sources) if sources else None,
        "ignores-image": _ignores_image(split, sources) if sources else None,
        "repetition": _repetition(completion),
        "parroted-reference": _parroted(split, trace, sample, references),
    }
    if trace.get("correct") is True:
        causes = [found[name] for name in ("ungrounded-value", "misread-value", "conclusion-mismatch") if found[name]]
        if causes:
            spans = tuple(sorted({s for flag in causes for s in flag.spans}))
            reason = "correct answer, but " + "; ".join(f"{flag.name}: {flag.reason}" for flag in causes)
            found["right-for-wrong-reasons"] = Flag("right-for-wrong-reasons", reason, spans)
    return [found[name] for name in FLAGS if found.get(name)]


def context_from_trace(trace: Trace) -> SampleContext | None:
    """The sample context an (eval) trace carries itself, or None when it carries none."""
    if not any(key in trace for key in ("question", "reference", "facts")):
        return None
    return SampleContext(
        question=str(trace.get("question") or ""), reference=str(trace.get("reference") or ""),
        facts=dict(trace.get("facts") or {}),
    )


def sample_contexts(samples: Iterable) -> dict[str, SampleContext]:
    """Contexts by prompt id from `dyme_cli.data.Sample` objects."""
    return {s.id: SampleContext(question=s.question, reference=s.reference, facts=dict(s.facts)) for s in samples}


def flag_traces(
    traces: Sequence[Trace], contexts: Mapping[str, SampleContext] | None = None,
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
