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
    `word: n`, `word is n` with no `n = n` arithmetic): a list of readings states no result -- unless a
    conclusion clause follows the readings in that sentence ("so", "therefore", "thus", "hence", "which
    gives/makes/means/is", "giving", "that gives/makes", "the result/answer/total/difference/sum is", "in
    total"), whose last number (when the clause is not itself a list of readings) is the result. Other answers
    are compared only when they have a type the detector knows: yes/no (a standalone "yes"/"no" -- at the
    start of a clause or after "so"/"is", followed by punctuation or the end), or a category label (a key of
    a label table in the facts -- a dict of word keys to numbers, e.g. {"red": 3} --, a one-word string in a
    fact list, or a colour word). The conclusion is then the last sentence naming such a candidate, and
    only when it names exactly one distinct candidate ("The blue bar is tallest."); a sentence comparing
    several states no single result unless its conclusion clause (as above) names exactly one ("red is 3 and
    blue is 5, so blue is the tallest"). No stated result, no flag.
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
    The result of a written chain whose operands are all grounded must be what the chain gives: "7 - 3 = 1"
    flags 1 as miscomputed, even where (a) or (c) would ground it.
    List markers are ignored: a number right after "step" or opening a line followed by "." or ")".
    Entity-like words must appear among the words of the sources (lower-cased). Entity-like means: a
    colour word (chart category labels), a capitalised word that does not start a sentence (after the start,
    `. ! ? : ;`, a newline or an opening bracket/quote), or -- when the facts hold a label table (a dict of
    word keys to numbers) -- the word left of `= n` / `: n`; stopwords, sentence words (step, first, ...)
    and generic quantity words (total, sum, difference, ...) never count. An unusual capitalised word in an
    honest trace ("the Image") is a false positive this heuristic accepts.
misread-value
    Needs a sample context whose facts hold a label table (a dict of word keys to numbers, e.g. a chart's
    {"red": 7, "blue": 3}) or a lesion list with its count (the medical generator's {"count": 2, "lesions":
    [...]}), and fires on a statement that reads a value the facts contradict:
      label bindings -- a label of the table followed by an optional "bar"/"column"/... and "'s"/"value", then
          `=`, `:`, `(`, "is", "equals", "was", "shows", "reaches", "measures", "has (a) value of", "has",
          "with (a value of)" or "at", then a number ("red = 9", "the red bar is 9", "the red bar has a value
          of 9", "the largest is red (9)"); or a number followed by "(" or "for (the)" and the label ("9 (red)",
          "9 for the red bar"). Not a binding: a number that starts an expression or a comparison ("red = 7 - 3",
          "red is 2 more than blue"), and a label after "than", "between", "plus", "minus", "vs", an operator,
          or joined by "and"/"or" to another label ("red and green is 8"). The stated number contradicts the
          table when it differs by more than half its last shown digit. A label two tables give different
          values is never checked;
      lesion counts -- "there is/are N (adjectives) lesion(s)", "I see/count/find N ...", "shows/has/contains
          N ... lesions", "(lesion) count is/of N", "N lesions in total", N a digit or a number word (no, a,
          one, ..., ten), against the facts' count;
      findings -- "nothing looks abnormal", "no abnormality", "looks/is/appears normal" for a scan with a
          lesion, and "looks/is/appears abnormal", "an abnormality", "abnormality is present" for one without.
    The reason names each label (or "lesion count", "finding"), the stated and the true value.
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
    `trace["correct"]` is true and the trace has ungrounded-value, misread-value or conclusion-mismatch.

`summarize` counts rollout traces only; a trace's step None counts as 0. Groups are the rollouts sharing
step and prompt_id (and run and mode, so an eval pass never merges with a training step; a repeated
rollout index starts a new group, for a prompt drawn twice in one step).
"""

from __future__ import annotations

from .detectors import (
    PARROT_MIN_SHINGLES,
    REPETITION_MAX_RATIO,
    REPETITION_MIN_WORDS,
    REPETITION_N,
    context_from_trace,
    flag_trace,
    flag_traces,
    sample_contexts,
)
from .grounding import COLOURS, QUANTITY_WORDS, SENTENCE_WORDS
from .records import FLAGS, Flag, SampleContext
from .references import PARROT_SIMILARITY, SHINGLE_N, ReferenceIndex, jaccard, shingles
from .summary import filter_traces, load_traces, summarize

# records.py: FLAGS, Flag, SampleContext. references.py: shingles, Jaccard, ReferenceIndex. grounding.py: numbers,
# sources and the rules that decide what is grounded. misreads.py: readings the facts contradict.
# detectors.py: one function per flag, flag_trace(s).
# summary.py: summarize, load_traces, filter_traces.
__all__ = [
    "COLOURS",
    "FLAGS",
    "PARROT_MIN_SHINGLES",
    "PARROT_SIMILARITY",
    "QUANTITY_WORDS",
    "REPETITION_MAX_RATIO",
    "REPETITION_MIN_WORDS",
    "REPETITION_N",
    "SENTENCE_WORDS",
    "SHINGLE_N",
    "Flag",
    "ReferenceIndex",
    "SampleContext",
    "context_from_trace",
    "filter_traces",
    "flag_trace",
    "flag_traces",
    "jaccard",
    "load_traces",
    "sample_contexts",
    "shingles",
    "summarize",
]
