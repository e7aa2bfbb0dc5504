"""Synthetic math word problems (GSM8K style): one person's count of one kind of item changes step by step.

Rules:
- A problem is a start count plus events, one sentence each ("She buys 3 bags with 4 apples each."); an
  event is one or two operations (+, -, ×, ÷). The number of operations is drawn from
  [min_steps, max_steps]; it is `meta.steps`, and `meta.kind` is "{steps}-step".
- Every number in the question, every intermediate result and the answer is an integer in
  [1, max_number]; divisions are exact. The question asks for the count after the last event.
- `facts` hold the given quantities: person, item, start, and one entry per event with its operator and
  operands ({"event": "buys groups", "op": "+", "groups": 3, "each": 4}); replaying them gives the answer.
- The reference states the goal, reads the start, writes one equation per operation and ends at the
  answer ("Ava starts with 12 apples. ... 3 × 4 = 12, so 12 + 12 = 24. ... So Ava has 19 apples now.").
  Reference quality:
    high   - every value is true and is given in the question or computed in a written equation;
    medium - pseudo thinking: at least one intermediate result is written wrong ("3 × 4 = 14") while the
             next step goes on from the true value, so the answer stays right;
    low    - verbose, unstructured prose that still ends at the right answer.
  The test split always has high-quality references.
"""

from __future__ import annotations

import operator
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional, Union

from ..data import Sample
from ..errors import BadArgument
from .splits import write_splits

Quality = Literal["high", "medium", "low"]
QUALITIES = ("high", "medium", "low")
PEOPLE = (("Ava", "She"), ("Ben", "He"), ("Mia", "She"), ("Leo", "He"), ("Zoe", "She"), ("Omar", "He"),
          ("Nora", "She"), ("Ravi", "He"), ("Lily", "She"), ("Sam", "He"))
ITEMS = (("apples", "bags", "bag"), ("marbles", "jars", "jar"), ("stickers", "packs", "pack"),
         ("pencils", "boxes", "box"), ("cookies", "tins", "tin"), ("shells", "buckets", "bucket"),
         ("beads", "bags", "bag"), ("cards", "packs", "pack"))
APPLY = {"+": operator.add, "-": operator.sub, "×": operator.mul, "÷": operator.floordiv}  # divisions are exact
MAX_GROUPS = 5  # largest number of bags, friends or shares in one event
MAX_STEPS = 6
MIN_MAX_NUMBER = 10


@dataclass(frozen=True)
class Story:
    name: str
    pronoun: str  # "She" / "He", capitalised
    item: str  # plural
    containers: str  # plural
    container: str  # singular
    friend: str  # someone to give items to


@dataclass(frozen=True)
class Operation:
    left: int
    op: str  # "+", "-", "×" or "÷"
    right: int

    @property
    def result(self) -> int:
        return APPLY[self.op](self.left, self.right)


@dataclass(frozen=True)
class Event:
    sentence: str  # how the question tells it
    trace: tuple[Union[str, Operation], ...]  # reference text, operations written as equations
    facts: dict

    @property
    def operations(self) -> list[Operation]:
        return [part for part in self.trace if isinstance(part, Operation)]

    @property
    def total(self) -> int:
        """The count after the event: the result of its last operation."""
        return self.operations[-1].result


@dataclass(frozen=True)
class Problem:
    story: Story
    start: int
    events: tuple[Event, ...]

    @property
    def answer(self) -> int:
        return self.events[-1].total

    @property
    def question(self) -> str:
        s = self.story
        told = " ".join(event.sentence for event in self.events)
        return f"{s.name} has {self.start} {s.item}. {told} How many {s.item} does {s.name} have now?"

    @property
    def operations(self) -> list[Operation]:
        return [op for event in self.events for op in event.operations]

    @property
    def given(self) -> list[int]:
        """The numbers the question states, in order."""
        return [self.start] + [v for event in self.events for v in event.facts.values() if isinstance(v, int)]

    @property
    def facts(self) -> dict:
        s = self.story
        return {"person": s.name, "item": s.item, "start": self.start,
                "events": [event.facts for event in self.events]}


def _noun(n: int, item: str) -> str:
    """"apple" for 1, "apples" otherwise: every item name is a regular plural."""
    return item[:-1] if n == 1 else item


def _count(n: int, item: str) -> str:
    return f"{n} {_noun(n, item)}"


def _upto(rng: random.Random, low: int, high: int) -> Optional[int]:
    """A number in [low, high], or None when the range is empty."""
    return rng.randint(low, high) if low <= high else None


def _groups(rng: random.Random, room: int) -> Optional[tuple[int, int]]:
    """(groups, each), both at least 2, with groups * each <= room."""
    groups = _upto(rng, 2, min(MAX_GROUPS, room // 2))
    if groups is None:
        return None
    return groups, rng.randint(2, room // groups)


def _gain(rng: random.Random, s: Story, total: int, limit: int) -> Optional[Event]:
    n = _upto(rng, 1, limit - total)
    if n is None:
        return None
    verb = rng.choice(("finds", "buys", "is given"))
    trace = (f"{s.pronoun} {verb} {n} more, so ", Operation(total, "+", n), ".")
    return Event(f"{s.pronoun} {verb} {n} more {_noun(n, s.item)}.", trace, {"event": "gains", "op": "+", "amount": n})


def _buy_groups(rng: random.Random, s: Story, total: int, limit: int) -> Optional[Event]:
    picked = _groups(rng, limit - total)
    if picked is None:
        return None
    groups, each = picked
    trace = (f"{groups} {s.containers} of {each} make ", Operation(groups, "×", each), ", so ",
             Operation(total, "+", groups * each), ".")
    return Event(f"{s.pronoun} buys {groups} {s.containers} with {each} {s.item} each.", trace,
                 {"event": "buys groups", "op": "+", "groups": groups, "each": each})


def _give(rng: random.Random, s: Story, total: int, limit: int) -> Optional[Event]:
    n = _upto(rng, 1, total - 1)
    if n is None:
        return None
    trace = (f"Giving {n} to {s.friend} leaves ", Operation(total, "-", n), ".")
    return Event(f"{s.pronoun} gives {_count(n, s.item)} to {s.friend}.", trace,
                 {"event": "gives", "op": "-", "amount": n})


def _give_groups(rng: random.Random, s: Story, total: int, limit: int) -> Optional[Event]:
    picked = _groups(rng, total - 1)
    if picked is None:
        return None
    friends, each = picked
    trace = (f"{friends} friends get {each} each, ", Operation(friends, "×", each), ", so ",
             Operation(total, "-", friends * each), ".")
    return Event(f"{s.pronoun} gives {each} {s.item} to each of {friends} friends.", trace,
                 {"event": "gives groups", "op": "-", "groups": friends, "each": each})


def _multiply(rng: random.Random, s: Story, total: int, limit: int) -> Optional[Event]:
    factor = _upto(rng, 2, min(MAX_GROUPS, limit // total))
    if factor is None:
        return None
    pronoun = s.pronoun.lower()
    trace = (f"{factor} times as many is ", Operation(total, "×", factor), ".")
    return Event(f"{s.pronoun} gets more until {pronoun} has {factor} times as many {s.item} as before.", trace,
                 {"event": "multiplies", "op": "×", "factor": factor})


def _share(rng: random.Random, s: Story, total: int, limit: int) -> Optional[Event]:
    divisors = [k for k in range(2, MAX_GROUPS + 1) if total % k == 0]
    if not divisors:
        return None
    parts = rng.choice(divisors)
    trace = (f"Keeping one of {parts} equal {s.containers} leaves ", Operation(total, "÷", parts), ".")
    return Event(f"{s.pronoun} packs them equally into {parts} {s.containers} and keeps one {s.container}.", trace,
                 {"event": "shares", "op": "÷", "parts": parts})


EventMaker = Callable[[random.Random, Story, int, int], Optional[Event]]
# (maker, number of operations); _gain or _give always fits, so a problem can always be finished.
EVENTS: tuple[tuple[EventMaker, int], ...] = (
    (_gain, 1), (_give, 1), (_multiply, 1), (_share, 1), (_buy_groups, 2), (_give_groups, 2),
)


def random_story(rng: random.Random) -> Story:
    (name, pronoun), (friend, _) = rng.sample(PEOPLE, 2)
    item, containers, container = rng.choice(ITEMS)
    return Story(name, pronoun, item, containers, container, friend)


def _next_event(rng: random.Random, story: Story, total: int, limit: int, steps_left: int) -> Event:
    makers = [maker for maker, cost in EVENTS if cost <= steps_left]
    rng.shuffle(makers)
    for maker in makers:
        event = maker(rng, story, total, limit)
        if event is not None:
            return event
    raise AssertionError(f"no event fits a count of {total} under {limit}")  # _gain or _give always fits


def random_problem(rng: random.Random, min_steps: int, max_steps: int, max_number: int) -> Problem:
    story = random_story(rng)
    start = rng.randint(2, max_number // 2)
    steps_left, total, events = rng.randint(min_steps, max_steps), start, []
    while steps_left:
        event = _next_event(rng, story, total, max_number, steps_left)
        events.append(event)
        steps_left -= len(event.operations)
        total = event.total
    return Problem(story, start, tuple(events))


def _wrong_value(true: int, avoid: set[int], rng: random.Random) -> int:
    """A nearby slip: within 3 of the true value, not negative, preferably none of the problem's true values."""
    near = [v for v in range(max(0, true - 3), true + 4) if v != true]
    fresh = [v for v in near if v not in avoid]
    return rng.choice(fresh or near)


def _stated_results(problem: Problem, quality: Quality, rng: random.Random) -> list[int]:
    """The result the trace writes for each operation; `medium` gets some intermediate ones wrong."""
    stated = [op.result for op in problem.operations]
    if quality != "medium":
        return stated
    true_values = set(problem.given) | set(stated)
    intermediate = range(len(stated) - 1)  # the last result is the answer, which stays right
    for i in rng.sample(intermediate, rng.randint(1, len(intermediate))):
        stated[i] = _wrong_value(stated[i], true_values, rng)
    return stated


def _equation(op: Operation, result: int) -> str:
    return f"{op.left} {op.op} {op.right} = {result}"


def _structured_trace(problem: Problem, stated: list[int]) -> str:
    s = problem.story
    results = iter(stated)
    steps = "".join(
        part if isinstance(part, str) else _equation(part, next(results))
        for event in problem.events for part in (*event.trace, " ")
    )
    return (f"Find how many {s.item} {s.name} has at the end. {s.name} starts with {problem.start} {s.item}. "
            f"{steps}So {s.name} has {_count(problem.answer, s.item)} now.")


def _rambling_trace(problem: Problem, rng: random.Random) -> str:
    s = problem.story
    numbers = problem.given
    rng.shuffle(numbers)
    steps = ", and then ".join(f"I think {_equation(op, op.result)}" for op in problem.operations)
    return (
        f"Okay so this is one of those word problems about {s.name} and some {s.item}, there are quite a lot of "
        f"numbers in it, like {', '.join(map(str, numbers))}, and I have to keep track of all of them, hmm, let "
        f"me read it again slowly, {s.name} had {problem.start} at first and then things keep happening to the "
        f"{s.item}, so going one thing at a time, {steps}, and after all of that it should come out as "
        f"{_count(problem.answer, s.item)} in the end I think, yes."
    )


def reference_trace(problem: Problem, quality: Quality, rng: random.Random) -> str:
    if quality == "low":
        return _rambling_trace(problem, rng)
    return _structured_trace(problem, _stated_results(problem, quality, rng))


def make_sample(
    index: int, split: str, rng: random.Random, *, min_steps: int, max_steps: int, max_number: int,
    quality: Quality,
) -> Sample:
    problem = random_problem(rng, min_steps, max_steps, max_number)
    trace_rng = random.Random(rng.random())  # one draw whatever the quality: same problems for every quality
    steps = len(problem.operations)
    return Sample(
        id=f"math-{split}-{index:05d}",
        task="math",
        question=problem.question,
        answer=str(problem.answer),
        reference=reference_trace(problem, quality, trace_rng),
        facts=problem.facts,
        meta={"kind": f"{steps}-step", "steps": steps, "source": "synthetic-math", "reference_quality": quality},
    )


def validate(*, n_train: int, n_test: int, quality: str, min_steps: int, max_steps: int, max_number: int) -> None:
    """BadArgument with a one-line message for the first bad argument."""
    if n_train < 1 or n_test < 0:
        raise BadArgument("n_train must be at least 1 and n_test at least 0")
    if quality not in QUALITIES:
        raise BadArgument(f"reference quality must be high, medium or low, not '{quality}'")
    if not 2 <= min_steps <= max_steps <= MAX_STEPS:
        raise BadArgument(f"steps must satisfy 2 <= min_steps <= max_steps <= {MAX_STEPS}")
    if max_number < MIN_MAX_NUMBER:
        raise BadArgument(f"max_number must be at least {MIN_MAX_NUMBER}")


def generate(
    out: Path, *, n_train: int = 2000, n_test: int = 200, seed: int = 0, quality: Quality = "high",
    min_steps: int = 2, max_steps: int = 4, max_number: int = 50,
) -> dict[str, int]:
    """Write train.jsonl and test.jsonl under `out` (text only, no images). Same seed, same bytes."""
    validate(n_train=n_train, n_test=n_test, quality=quality, min_steps=min_steps, max_steps=max_steps,
             max_number=max_number)
    def make(i: int, split: str, rng: random.Random, q: str) -> Sample:
        return make_sample(i, split, rng, min_steps=min_steps, max_steps=max_steps, max_number=max_number, quality=q)

    return write_splits(out, n_train=n_train, n_test=n_test, seed=seed, quality=quality, make=make)
