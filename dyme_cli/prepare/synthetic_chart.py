"""Synthetic chart QA: bar charts whose heights encode integers, with questions and reference traces.

Every chart has `n` bars (3-5) coloured in a fixed palette order; the table behind it is kept as the
sample's `facts`. Reference quality mirrors the paper's data:
  high   - every value in the trace is true;
  medium - pseudo thinking: bars the question does not depend on get wrong values, the answer stays right;
  low    - verbose, unstructured trace that still ends at the right answer.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from PIL import Image, ImageDraw

from ..data import Sample
from ..errors import BadArgument
from .splits import write_splits

PALETTE = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "orange": (245, 150, 20),
    "purple": (150, 50, 190),
}
KINDS = ("value", "largest", "smallest", "difference", "sum")
Quality = Literal["high", "medium", "low"]


@dataclass(frozen=True)
class Chart:
    values: dict[str, int]  # bar name (colour) -> value, in drawing order
    max_value: int  # the value axis runs from 0 to max_value + 1


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str
    asked: tuple[str, ...]  # bars whose values the answer depends on
    goal: str  # what the trace sets out to do, restated from the question
    conclusion: str  # the reasoning step that produces the answer, from true values


def random_chart(rng: random.Random, min_bars: int, max_bars: int, max_value: int) -> Chart:
    n = rng.randint(min_bars, max_bars)
    names = list(PALETTE)[:n]
    values = rng.sample(range(1, max_value + 1), n)  # distinct, so largest/smallest are unambiguous
    return Chart(dict(zip(names, values)), max_value)


def render(chart: Chart, size: int) -> Image.Image:
    """White canvas, a baseline, one solid bar per value; height proportional to the value.

    Each bar is centred in an equal-width column of the full image, so a vision encoder whose patch
    grid has one column per bar sees each bar inside its own patch column.
    """
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    margin = max(1, size // 16)
    base_y = size - margin
    unit = (base_y - margin) / (chart.max_value + 1)
    slot = size / len(chart.values)
    for i, (name, value) in enumerate(chart.values.items()):
        draw.rectangle([i * slot + slot * 0.15, base_y - value * unit, (i + 1) * slot - slot * 0.15, base_y],
                       fill=PALETTE[name])
    draw.line([0, base_y, size, base_y], fill="black", width=1)
    return image


def _value(chart: Chart, rng: random.Random) -> Question:
    name = rng.choice(list(chart.values))
    v = chart.values[name]
    text = f"What is the value of the {name} bar?"
    return Question("value", text, str(v), (name,), f"Find the {name} bar.", f"The {name} bar is {v}.")


def _extreme(largest: bool) -> Callable[[Chart, random.Random], Question]:
    word = "largest" if largest else "smallest"

    def make(chart: Chart, rng: random.Random) -> Question:
        pick = max if largest else min
        name = pick(chart.values, key=chart.values.get)
        text = f"Which bar has the {word} value?"
        conclusion = f"The {word} is {name} ({chart.values[name]})."
        return Question(word, text, name, tuple(chart.values), f"Find the {word} bar.", conclusion)

    return make


def _difference(chart: Chart, rng: random.Random) -> Question:
    a, b = rng.sample(list(chart.values), 2)
    if chart.values[a] < chart.values[b]:
        a, b = b, a
    va, vb = chart.values[a], chart.values[b]
    text = f"How much larger is the {a} bar than the {b} bar?"
    steps = f"The {a} bar is {va} and the {b} bar is {vb}. {va} - {vb} = {va - vb}."
    return Question("difference", text, str(va - vb), (a, b), f"Compare the {a} and {b} bars.", steps)


def _sum(chart: Chart, rng: random.Random) -> Question:
    """Added one bar at a time, so each step of the trace is a single two-number addition."""
    values = list(chart.values.values())
    steps, running = [], values[0]
    for value in values[1:]:
        steps.append(f"{running} + {value} = {running + value}.")
        running += value
    text = "What is the sum of all bar values?"
    return Question("sum", text, str(running), tuple(chart.values), "Add up all bars.", " ".join(steps))


QUESTION_MAKERS = {
    "value": _value,
    "largest": _extreme(True),
    "smallest": _extreme(False),
    "difference": _difference,
    "sum": _sum,
}


def _stated_values(chart: Chart, question: Question, quality: Quality, rng: random.Random) -> dict[str, int]:
    """The values the trace claims. `medium` corrupts bars the answer does not depend on."""
    stated = dict(chart.values)
    if quality != "medium":
        return stated
    if question.kind in ("largest", "smallest"):
        # Every bar matters for an extreme, so corrupt the others while keeping the same winner.
        winner = question.answer
        for name in stated:
            if name != winner:
                stated[name] = _wrong_but_consistent(chart, name, winner, question.kind, rng)
        return stated
    for name in stated:
        if name not in question.asked:
            stated[name] = _wrong_value(chart.values[name], rng)
    return stated


def _wrong_value(true: int, rng: random.Random) -> int:
    return rng.choice([v for v in range(max(1, true - 3), true + 4) if v != true])


def _wrong_but_consistent(chart: Chart, name: str, winner: str, kind: str, rng: random.Random) -> int:
    w = chart.values[winner]
    true = chart.values[name]
    lo, hi = (1, w - 1) if kind == "largest" else (w + 1, w + 9)
    choices = [v for v in range(lo, hi + 1) if v != true]
    return rng.choice(choices) if choices else true


def reference_trace(chart: Chart, question: Question, quality: Quality, rng: random.Random) -> str:
    stated = _stated_values(chart, question, quality, rng)
    readings = ", ".join(f"{name} = {value}" for name, value in stated.items())
    if quality != "low":
        return f"{question.goal} {readings}. {question.conclusion}"
    order = list(stated.items())
    rng.shuffle(order)
    rambling = " and then ".join(f"the {name} one looks like about {value}" for name, value in order)
    return (
        "Okay so let me think about this chart, there are some coloured bars here and I need to look at "
        f"them carefully, {rambling}, hmm, so going back to the question, {question.conclusion} "
        "I think that is it, yes."
    )


def make_sample(
    index: int, split: str, rng: random.Random, *, min_bars: int, max_bars: int, max_value: int,
    quality: Quality, kinds: tuple[str, ...],
) -> tuple[Sample, Chart]:
    chart = random_chart(rng, min_bars, max_bars, max_value)
    question = QUESTION_MAKERS[rng.choice(kinds)](chart, rng)
    trace_rng = random.Random(rng.random())  # one draw whatever the quality: same charts and questions
    sample = Sample(
        id=f"chart-{split}-{index:05d}",
        task="chart",
        question=question.text,
        answer=question.answer,
        images=[f"images/{split}-{index:05d}.png"],
        reference=reference_trace(chart, question, quality, trace_rng),
        facts={"chart": "bar", "values": chart.values},
        meta={"kind": question.kind, "source": "synthetic-chart", "reference_quality": quality},
    )
    return sample, chart


def generate(
    out: Path, *, n_train: int = 2000, n_test: int = 200, seed: int = 0, quality: Quality = "high",
    min_bars: int = 3, max_bars: int = 5, max_value: int = 9, image_size: int = 64,
    kinds: tuple[str, ...] = KINDS,
) -> dict[str, int]:
    """Write train.jsonl, test.jsonl and images/ under `out`. Same seed, same bytes."""
    if n_train < 0 or n_test < 0:
        raise BadArgument("n_train and n_test must be at least 0")
    if not 3 <= min_bars <= max_bars <= len(PALETTE):
        raise BadArgument(f"bars must satisfy 3 <= min <= max <= {len(PALETTE)}")
    if max_value < max_bars:
        raise BadArgument("max_value must be at least the number of bars (values are distinct)")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise BadArgument(f"unknown question kind(s): {', '.join(sorted(unknown))}; choose from {', '.join(KINDS)}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def make(i: int, split: str, rng: random.Random, q: str) -> Sample:
        sample, chart = make_sample(
            i, split, rng, min_bars=min_bars, max_bars=max_bars, max_value=max_value, quality=q, kinds=kinds
        )
        render(chart, image_size).save(out / sample.images[0])
        return sample

    return write_splits(out, n_train=n_train, n_test=n_test, seed=seed, quality=quality, make=make)
