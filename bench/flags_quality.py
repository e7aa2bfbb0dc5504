"""Precision and recall of the pseudo-thinking flags on a labelled set built from the synthetic generators.

Every high-quality reference trace of the chart, math and medical generators (each of them reads every value
right) becomes one trace per controlled fault below, or stays as it is; each trace is labelled with the flags its
fault must raise, and `flag_trace` (what `dyme inspect-traces` and `dyme compare` run) is scored against those
labels. A flag on a trace whose labels do not hold it is a false positive.

  fault                chart  math  medical   labels
  none                   x     x      x       (none)
  misread-asked          x                    misread-value: the asked bar's reading is another bar's value
  misread-other          x                    misread-value: a bar the answer does not use, likewise
  misread-count                       x       misread-value: the lesion count stated as another number
  flipped-finding                     x       misread-value: "nothing looks abnormal" for a scan with a lesion, ...
  wrong-arithmetic       x     x              ungrounded-value: a written result off by one (and
                                              conclusion-mismatch when it is the thinking's last result)
  wrong-conclusion       x     x      x       conclusion-mismatch: the final answer differs from the thinking's
  hidden-conclusion      x                    conclusion-mismatch: "A is a and B is b, so the result is r", then
                                              an answer other than r
  invented-label         x                    ungrounded-value: a reading for a colour the chart does not have
  truncated              x     x      x       truncated: cut at 60% with no answer
  repeated               x     x      x       repetition: a loop of the first sentence, three times as many
                                              words as the rest
A trace whose answer is still the gold one is also labelled right-for-wrong-reasons when it has any of
misread-value, ungrounded-value or conclusion-mismatch.

    python bench/flags_quality.py [--seed 9001] [--per-generator 40]

The labelled set comes from generator seed --seed (9001 by default: the benchmark's own); the rules were written
and adjusted on seed 1 only (`--seed 1`).
"""

from __future__ import annotations

import argparse
import random
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dyme_cli.data import Sample, read_samples  # noqa: E402
from dyme_cli.prepare import synthetic_chart, synthetic_math, synthetic_medvqa  # noqa: E402
from dyme_cli.pseudo_thinking import SampleContext, flag_trace  # noqa: E402

SCORED = ("misread-value", "ungrounded-value", "conclusion-mismatch", "right-for-wrong-reasons", "truncated",
          "repetition")
GROUNDING = ("misread-value", "ungrounded-value", "conclusion-mismatch")
EXTRA_COLOURS = ("pink", "brown", "cyan", "teal", "navy")
COUNT_WORDS = ("no", "one", "two", "three", "four")


@dataclass
class Case:
    generator: str
    fault: str
    thinking: str
    answer: str
    gold: str
    labels: set[str]
    sample: Sample
    truncated: bool = False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=9001)
    parser.add_argument("--per-generator", type=int, default=40, help="samples drawn from each generator")
    args = parser.parse_args()
    cases = labelled_set(args.seed, args.per_generator)
    began = time.perf_counter()
    fired = [{f.name for f in flag_trace(trace_of(c), context_of(c), None)} for c in cases]
    seconds = time.perf_counter() - began
    report(cases, fired, args.seed, seconds)


def labelled_set(seed: int, n: int) -> list[Case]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthetic_chart.generate(tmp / "chart", n_train=n, n_test=0, seed=seed)
        synthetic_math.generate(tmp / "math", n_train=n, n_test=0, seed=seed)
        synthetic_medvqa.generate(tmp / "medical", n_train=n, n_test=0, seed=seed)
        cases = []
        for generator, faults in (("chart", CHART_FAULTS), ("math", MATH_FAULTS), ("medical", MEDICAL_FAULTS)):
            for sample in read_samples(tmp / generator / "train.jsonl"):
                for fault, make in faults.items():
                    case = make(sample, rng)
                    if case is not None:
                        thinking, answer, labels, *truncated = case
                        cases.append(Case(generator, fault, thinking, answer, sample.answer, labels, sample,
                                          bool(truncated)))
    for case in cases:
        if case.answer == case.gold and case.labels & set(GROUNDING):
            case.labels.add("right-for-wrong-reasons")
    return cases


def trace_of(case: Case) -> dict:
    completion = case.thinking if case.truncated else f"{case.thinking} Answer: {case.answer}"
    return {"kind": "rollout", "prompt_id": case.sample.id, "completion": completion, "truncated": case.truncated,
            "correct": not case.truncated and case.answer == case.gold}


def context_of(case: Case) -> SampleContext:
    return SampleContext(question=case.sample.question, reference=case.sample.reference, facts=dict(case.sample.facts))


# ---------------------------------------------------------------- faults every generator gets


def unperturbed(sample: Sample, rng) -> tuple:
    return sample.reference, sample.answer, set()


def truncated(sample: Sample, rng) -> tuple:
    text = sample.reference
    return text[: int(len(text) * 0.6)], "", {"truncated"}, True


def repeated(sample: Sample, rng) -> tuple:
    """A degenerate loop: the first sentence repeated until it holds three times as many words as the rest."""
    first, _, rest = sample.reference.partition(". ")
    times = max(2, -(-3 * len(rest.split()) // len(first.split())))
    return " ".join([first + "."] * times) + " " + rest, sample.answer, {"repetition"}


def wrong_conclusion(sample: Sample, rng) -> tuple | None:
    other = other_answer(sample, rng)
    return None if other is None else (sample.reference, other, {"conclusion-mismatch"})


def other_answer(sample: Sample, rng) -> str | None:
    gold = sample.answer
    if gold.lstrip("-").isdigit():
        return str(int(gold) + rng.choice((1, 2)))
    if gold in ("yes", "no"):
        return "no" if gold == "yes" else "yes"
    values = sample.facts.get("values")
    if isinstance(values, dict) and gold in values:
        return rng.choice([label for label in values if label != gold])
    return None  # a region or a side: a conclusion the detector has no type for


_EQUATION_RESULT = re.compile(r"(\d+(?:\s*[-+×x*/÷]\s*\d+)+\s*=\s*)(\d+)")


def wrong_arithmetic(sample: Sample, rng) -> tuple | None:
    """The first written result off by one; also a conclusion mismatch when it is the thinking's last number."""
    text = sample.reference
    m = _EQUATION_RESULT.search(text)
    if m is None:
        return None
    wrong = str(int(m.group(2)) + rng.choice((-1, 1)))
    changed = text[: m.start(2)] + wrong + text[m.end(2):]
    labels = {"ungrounded-value"}
    if not re.search(r"\d", text[m.end(2):]):
        labels.add("conclusion-mismatch")
    return changed, sample.answer, labels


# ---------------------------------------------------------------- chart


def _asked_labels(sample: Sample) -> list[str]:
    values = sample.facts["values"]
    asked = [label for label in values if re.search(rf"\b{label}\b", sample.question)]
    return asked or ([sample.answer] if sample.answer in values else list(values))


def _misread(sample: Sample, rng, asked: bool) -> tuple | None:
    values = sample.facts["values"]
    used = _asked_labels(sample)
    pool = used if asked else [label for label in values if label not in used]
    if not pool:
        return None
    label = rng.choice(pool)
    others = sorted({v for k, v in values.items() if v != values[label]})
    if not others:
        return None
    reading = f"{label} = {values[label]}"
    if reading not in sample.reference:
        return None
    changed = sample.reference.replace(reading, f"{label} = {rng.choice(others)}", 1)
    return changed, sample.answer, {"misread-value"}


def misread_asked(sample: Sample, rng) -> tuple | None:
    return _misread(sample, rng, asked=True)


def misread_other(sample: Sample, rng) -> tuple | None:
    return _misread(sample, rng, asked=False)


def hidden_conclusion(sample: Sample, rng) -> tuple | None:
    """The last sentence rewritten as two readings and a conclusion in one sentence, answered otherwise."""
    if not sample.answer.isdigit():
        return None
    values = sample.facts["values"]
    first, second = _asked_labels(sample)[:2] if len(_asked_labels(sample)) > 1 else list(values)[:2]
    body = sample.reference.rsplit(". ", 1)[0]
    thinking = f"{body}. {first} is {values[first]} and {second} is {values[second]}, so the result is {sample.answer}."
    return thinking, str(int(sample.answer) + 1), {"conclusion-mismatch"}


def invented_label(sample: Sample, rng) -> tuple | None:
    values = sample.facts["values"]
    colour = next(c for c in EXTRA_COLOURS if c not in values)
    last = list(values)[-1]
    reading = f"{last} = {values[last]}"
    if reading not in sample.reference:
        return None
    changed = sample.reference.replace(reading, f"{reading}, {colour} = {rng.choice(list(values.values()))}", 1)
    return changed, sample.answer, {"ungrounded-value"}


# ---------------------------------------------------------------- medical


_COUNT_STATEMENT = re.compile(r"There (?:is|are) (no|one|two|three) bright lesions?")


def misread_count(sample: Sample, rng) -> tuple | None:
    m = _COUNT_STATEMENT.search(sample.reference)
    if m is None:
        return None
    word = rng.choice([w for w in COUNT_WORDS if w != m.group(1)])
    statement = f"There {'is' if word == 'one' else 'are'} {word} bright lesion{'' if word == 'one' else 's'}"
    return sample.reference[: m.start()] + statement + sample.reference[m.end():], sample.answer, {"misread-value"}


_FINDINGS = ("A bright lesion is abnormal", "Nothing looks abnormal")  # the generator's own two findings


def flipped_finding(sample: Sample, rng) -> tuple | None:
    for said, flipped in (_FINDINGS, _FINDINGS[::-1]):
        if said in sample.reference:
            return sample.reference.replace(said, flipped, 1), sample.answer, {"misread-value"}
    return None


COMMON = {"none": unperturbed, "wrong-conclusion": wrong_conclusion, "truncated": truncated, "repeated": repeated}
CHART_FAULTS = {**COMMON, "misread-asked": misread_asked, "misread-other": misread_other,
                "wrong-arithmetic": wrong_arithmetic, "hidden-conclusion": hidden_conclusion,
                "invented-label": invented_label}
MATH_FAULTS = {**COMMON, "wrong-arithmetic": wrong_arithmetic}
MEDICAL_FAULTS = {**COMMON, "misread-count": misread_count, "flipped-finding": flipped_finding}


# ---------------------------------------------------------------- report


def report(cases: list[Case], fired: list[set[str]], seed: int, seconds: float) -> None:
    print(f"{len(cases)} labelled traces (generator seed {seed}): "
          + ", ".join(f"{g} {sum(c.generator == g for c in cases)}" for g in ("chart", "math", "medical"))
          + f"; flagged in {seconds:.2f} s")
    print(f"\n{'flag':26} {'labelled':>8} {'fired':>6} {'true +':>6} {'precision':>9} {'recall':>7}")
    for name in SCORED:
        labelled = sum(name in c.labels for c in cases)
        fires = sum(name in f for f in fired)
        hits = sum(name in c.labels and name in f for c, f in zip(cases, fired))
        precision = f"{hits / fires:.3f}" if fires else "-"
        recall = f"{hits / labelled:.3f}" if labelled else "-"
        print(f"{name:26} {labelled:8} {fires:6} {hits:6} {precision:>9} {recall:>7}")
    print(f"\n{'generator / fault':34} {'traces':>6} {'labels all found':>16} {'extra grounding flags':>21}")
    for key in sorted({(c.generator, c.fault) for c in cases}):
        group = [(c, f) for c, f in zip(cases, fired) if (c.generator, c.fault) == key]
        found = sum(c.labels <= f for c, f in group)
        extra = sum(bool((f - c.labels) & set(GROUNDING + ("right-for-wrong-reasons",))) for c, f in group)
        print(f"{' / '.join(key):34} {len(group):6} {found:16} {extra:21}")
    misses = [(c, f) for c, f in zip(cases, fired) if (c.labels ^ f) & set(SCORED)]
    for c, f in misses[:8]:
        print(f"\n[{c.generator} / {c.fault}] labels {sorted(c.labels & set(SCORED))}, fired {sorted(f & set(SCORED))}"
              f"\n  {trace_of(c)['completion']}")


if __name__ == "__main__":
    main()
