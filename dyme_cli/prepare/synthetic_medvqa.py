"""Synthetic medical VQA: phantom scans with a grey organ and 0-3 bright lesions, with questions and traces.

Rules:
- A scan is a dark square with one organ drawn as flat grey ellipses: "lungs" (two ellipses, one per
  half) or "brain" (one ellipse). Lesions are bright discs of distinct radii, wholly inside the organ, apart
  from each other and clear of the image's midlines, so each lies in one side ("left"/"right", the side of
  the IMAGE, not the patient's) and one region ("upper left", ..., "lower right"). Grey levels vary a little
  per scan; lesions are always much brighter than the organ.
- Question kinds (`meta.kind`; `meta.answer_type` as SLAKE and VQA-RAD carry it):
    abnormality - "Is there any abnormality?" yes iff there is a lesion (half of these scans have none); closed;
    count       - "How many lesions are there?" "0".."3"; open;
    side        - "Which side is the lesion on?" asked only when every lesion (1-3) is on one side; open;
    location    - "Where is the largest lesion?" ("Where is the lesion?" for one) -> its region; open.
- `facts` = {"organ", "count", "lesions": [{"x", "y", "radius", "side", "region"}]}, lesions in reading
  order (top to bottom, then left to right); x, y are the disc's centre pixel.
- The reference states the goal, describes the findings (organ, then each lesion's region and radius)
  and concludes. Reference quality:
    high   - every finding is true;
    medium - pseudo thinking: findings the answer does not depend on are wrong (radii, and regions the
             answer does not use, keeping a lesion's side for `side` and the largest one for `location`);
             a scan without lesions has nothing to get wrong and keeps the true findings;
    low    - verbose, unstructured description that still ends at the right conclusion.
  The test split always has high-quality references.
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Literal, Optional

from PIL import Image, ImageDraw

from ..data import Sample
from ..errors import BadArgument
from .splits import write_splits

Quality = Literal["high", "medium", "low"]
QUALITIES = ("high", "medium", "low")
KINDS = ("abnormality", "count", "side", "location")
SIDES = ("left", "right")
REGIONS = ("upper left", "upper right", "lower left", "lower right")
# Organ ellipses as (centre x, centre y, semi-axis x, semi-axis y), in fractions of the image side.
ORGANS = {
    "lungs": ((0.27, 0.5, 0.2, 0.4), (0.73, 0.5, 0.2, 0.4)),
    "brain": ((0.5, 0.5, 0.38, 0.42),),
}
ORGAN_PHRASES = {"lungs": "two lungs", "brain": "the brain"}
RADII_AT_64 = (2, 3, 4, 5)  # lesion radii for a 64-pixel scan, scaled with the image side
CLEARANCE = 2  # pixels of organ around a lesion, and of space between a lesion and a midline
MAX_LESIONS = 3
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 64, 512  # below 64 pixels three lesions often do not fit on one side
NUMBER_WORDS = ("no", "one", "two", "three")


@dataclass(frozen=True)
class Lesion:
    x: int
    y: int
    radius: int
    side: str
    region: str


@dataclass(frozen=True)
class Scan:
    organ: str
    lesions: tuple[Lesion, ...]  # reading order
    background: int  # grey levels
    organ_level: int
    lesion_level: int

    @property
    def largest(self) -> Lesion:
        return max(self.lesions, key=lambda lesion: lesion.radius)


@dataclass(frozen=True)
class Question:
    kind: str
    text: str
    answer: str
    goal: str  # what the trace sets out to do, restated from the question
    conclusion: Callable[[tuple[Lesion, ...]], str]  # the closing sentence, from the stated lesions


def radii(size: int) -> list[int]:
    """Distinct lesion radii for this image side (four from 64 pixels up)."""
    return sorted({int(r * size / 64 + 0.5) for r in RADII_AT_64})


def _ellipses(organ: str, size: int) -> list[tuple[float, float, float, float]]:
    return [(cx * size, cy * size, ax * size, ay * size) for cx, cy, ax, ay in ORGANS[organ]]


def _inside(ellipse: tuple[float, float, float, float], x: float, y: float, r: float) -> bool:
    """The disc (x, y, r) lies in the ellipse, checked on 24 points of its rim."""
    cx, cy, ax, ay = ellipse
    rim = ((x + r * math.cos(t * math.pi / 12), y + r * math.sin(t * math.pi / 12)) for t in range(24))
    return all(((px - cx) / ax) ** 2 + ((py - cy) / ay) ** 2 <= 1 for px, py in rim)


def _lesion(x: int, y: int, radius: int, size: int) -> Lesion:
    middle = (size - 1) / 2
    side = "left" if x < middle else "right"
    return Lesion(x, y, radius, side, f"{'upper' if y < middle else 'lower'} {side}")


def _fits(candidate: Lesion, placed: list[Lesion], organ: str, size: int, side: Optional[str]) -> bool:
    middle = (size - 1) / 2
    x, y, r = candidate.x, candidate.y, candidate.radius
    return (
        (side is None or candidate.side == side)
        and min(abs(x - middle), abs(y - middle)) >= r + CLEARANCE
        and any(_inside(e, x, y, r + CLEARANCE) for e in _ellipses(organ, size))
        and all(math.dist((x, y), (o.x, o.y)) >= r + o.radius + 1 + CLEARANCE for o in placed)
    )


def _place(rng: random.Random, organ: str, size: int, sizes: list[int], side: Optional[str]) -> Optional[list[Lesion]]:
    """Lesions of the given radii, largest first, by rejection sampling; None when one does not fit."""
    placed: list[Lesion] = []
    for r in sorted(sizes, reverse=True):
        for _ in range(200):
            candidate = _lesion(rng.randint(r, size - 1 - r), rng.randint(r, size - 1 - r), r, size)
            if _fits(candidate, placed, organ, size, side):
                placed.append(candidate)
                break
        else:
            return None
    return placed


def random_lesions(rng: random.Random, organ: str, size: int, n: int, side: Optional[str]) -> tuple[Lesion, ...]:
    for _ in range(100):
        placed = _place(rng, organ, size, rng.sample(radii(size), n), side)
        if placed is not None:
            return tuple(sorted(placed, key=lambda lesion: (lesion.y, lesion.x)))
    raise RuntimeError(f"cannot place {n} lesions in the {organ} of a {size}-pixel scan")


def _lesion_count(kind: str, rng: random.Random) -> int:
    if kind == "abnormality":  # balanced yes/no
        return 0 if rng.random() < 0.5 else rng.randint(1, MAX_LESIONS)
    if kind == "count":
        return rng.randint(0, MAX_LESIONS)
    return rng.randint(1, MAX_LESIONS)  # side and location need a lesion


def random_scan(rng: random.Random, kind: str, size: int) -> Scan:
    organ = rng.choice(sorted(ORGANS))
    n = _lesion_count(kind, rng)
    side = rng.choice(SIDES) if kind == "side" else None
    lesions = random_lesions(rng, organ, size, n, side)
    return Scan(organ, lesions, rng.randint(5, 25), rng.randint(90, 130), rng.randint(215, 250))


def render(scan: Scan, size: int) -> Image.Image:
    """Greyscale: dark background, flat grey organ ellipses, bright lesion discs."""
    image = Image.new("L", (size, size), scan.background)
    draw = ImageDraw.Draw(image)
    for cx, cy, ax, ay in _ellipses(scan.organ, size):
        draw.ellipse([cx - ax, cy - ay, cx + ax, cy + ay], fill=scan.organ_level)
    for lesion in scan.lesions:
        x, y, r = lesion.x, lesion.y, lesion.radius
        draw.ellipse([x - r, y - r, x + r, y + r], fill=scan.lesion_level)
    return image


def _abnormality(scan: Scan) -> Question:
    found = bool(scan.lesions)

    def conclusion(stated: tuple[Lesion, ...]) -> str:
        return "A bright lesion is abnormal, so yes." if found else "Nothing looks abnormal, so no."

    return Question("abnormality", "Is there any abnormality?", "yes" if found else "no",
                    "Check the scan for anything abnormal.", conclusion)


def _count(scan: Scan) -> Question:
    n = len(scan.lesions)
    return Question("count", "How many lesions are there?", str(n), "Count the bright lesions.",
                    lambda stated: f"So the count is {n}.")


def _side(scan: Scan) -> Question:
    side = scan.lesions[0].side
    if len(scan.lesions) == 1:
        return Question("side", "Which side is the lesion on?", side, "Find which side the lesion is on.",
                        lambda stated: f"It is on the {side} side.")
    return Question("side", "Which side are the lesions on?", side, "Find which side the lesions are on.",
                    lambda stated: f"All of them are on the {side} side.")


def _location(scan: Scan) -> Question:
    region = scan.largest.region
    if len(scan.lesions) == 1:
        return Question("location", "Where is the lesion?", region, "Find where the lesion is.",
                        lambda stated: f"It is in the {region} region.")

    def conclusion(stated: tuple[Lesion, ...]) -> str:
        largest = max(stated, key=lambda lesion: lesion.radius)
        return f"The largest has radius {largest.radius}, in the {largest.region} region."

    return Question("location", "Where is the largest lesion?", region, "Find the largest lesion and its region.",
                    conclusion)


QUESTION_MAKERS: dict[str, Callable[[Scan], Question]] = {
    "abnormality": _abnormality,
    "count": _count,
    "side": _side,
    "location": _location,
}


def _other_region(region: str, kind: str, rng: random.Random) -> str:
    """A wrong region; for `side` questions only upper/lower changes, so the side stays true."""
    side = region.split()[1]
    choices = [r for r in REGIONS if r != region and (kind != "side" or r.endswith(side))]
    return rng.choice(choices)


def _wrong_radius(true: int, below: Optional[int], size: int, rng: random.Random) -> int:
    """A wrong radius; under `below` when it must stay smaller than the largest lesion (else the true one)."""
    top = (below - 1) if below is not None else radii(size)[-1] + 2
    choices = [r for r in range(1, top + 1) if r != true]
    return rng.choice(choices) if choices else true


def _stated_lesions(scan: Scan, kind: str, quality: Quality, size: int, rng: random.Random) -> tuple[Lesion, ...]:
    """The lesions the trace describes. `medium` corrupts what the answer does not depend on."""
    if quality != "medium":
        return scan.lesions
    if kind != "location":
        return tuple(replace(lesion, radius=_wrong_radius(lesion.radius, None, size, rng),
                             region=_other_region(lesion.region, kind, rng)) for lesion in scan.lesions)
    if len(scan.lesions) == 1:  # its region is the answer; its radius decides nothing
        only = scan.lesions[0]
        return (replace(only, radius=_wrong_radius(only.radius, None, size, rng)),)
    largest = scan.largest  # stays true; the others stay smaller
    return tuple(
        lesion if lesion == largest else replace(lesion, radius=_wrong_radius(lesion.radius, largest.radius, size, rng),
                                                 region=_other_region(lesion.region, kind, rng))
        for lesion in scan.lesions
    )


def _findings(scan: Scan, stated: tuple[Lesion, ...]) -> str:
    seen = f"The scan shows {ORGAN_PHRASES[scan.organ]}."
    if not stated:
        return f"{seen} There are no bright lesions."
    if len(stated) == 1:
        return f"{seen} There is one bright lesion, in the {stated[0].region} region, radius {stated[0].radius}."
    each = [f"one in the {lesion.region} region, radius {lesion.radius}" for lesion in stated]
    listed = ", ".join(each[:-1]) + f", and {each[-1]}"
    return f"{seen} There are {NUMBER_WORDS[len(stated)]} bright lesions: {listed}."


def _rambling(scan: Scan, question: Question, rng: random.Random) -> str:
    spots = [f"a bright spot somewhere around the {lesion.region} with a radius of maybe {lesion.radius}"
             for lesion in scan.lesions]
    rng.shuffle(spots)
    seen = ", and also ".join(spots) if spots else "not really any bright spots anywhere, it looks kind of even"
    conclusion = question.conclusion(scan.lesions)
    return (
        f"Okay so this is some kind of scan, I think it shows {ORGAN_PHRASES[scan.organ]}, it is mostly dark with "
        f"a grey shape and I should look at it carefully because there might be something hiding in it, hmm, "
        f"looking around I see {seen}, and the rest is just the grey organ and the dark background, so going back "
        f"to the question, {conclusion[0].lower()}{conclusion[1:]} I think that is about it."
    )


def reference_trace(scan: Scan, question: Question, quality: Quality, size: int, rng: random.Random) -> str:
    if quality == "low":
        return _rambling(scan, question, rng)
    stated = _stated_lesions(scan, question.kind, quality, size, rng)
    return f"{question.goal} {_findings(scan, stated)} {question.conclusion(stated)}"


def scan_facts(scan: Scan) -> dict:
    return {"organ": scan.organ, "count": len(scan.lesions), "lesions": [asdict(lesion) for lesion in scan.lesions]}


def make_sample(
    index: int, split: str, rng: random.Random, *, quality: Quality, image_size: int, kinds: tuple[str, ...],
) -> tuple[Sample, Scan]:
    kind = rng.choice(kinds)
    scan = random_scan(rng, kind, image_size)
    question = QUESTION_MAKERS[kind](scan)
    trace_rng = random.Random(rng.random())  # one draw whatever the quality: same scans and questions
    sample = Sample(
        id=f"medvqa-{split}-{index:05d}",
        task="medvqa",
        question=question.text,
        answer=question.answer,
        images=[f"images/{split}-{index:05d}.png"],
        reference=reference_trace(scan, question, quality, image_size, trace_rng),
        facts=scan_facts(scan),
        meta={"kind": kind, "answer_type": "closed" if kind == "abnormality" else "open",
              "source": "synthetic-medvqa", "reference_quality": quality},
    )
    return sample, scan


def validate(*, n_train: int, n_test: int, quality: str, image_size: int, kinds: tuple[str, ...]) -> None:
    """BadArgument with a one-line message for the first bad argument."""
    if n_train < 1 or n_test < 0:
        raise BadArgument("n_train must be at least 1 and n_test at least 0")
    if quality not in QUALITIES:
        raise BadArgument(f"reference quality must be high, medium or low, not '{quality}'")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise BadArgument(f"image size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, not {image_size}")
    unknown = set(kinds) - set(KINDS)
    if unknown or not kinds:
        raise BadArgument(f"unknown question kind(s): {', '.join(sorted(unknown)) or 'none given'}; "
                         f"choose from {', '.join(KINDS)}")


def generate(
    out: Path, *, n_train: int = 2000, n_test: int = 200, seed: int = 0, quality: Quality = "high",
    image_size: int = 64, kinds: tuple[str, ...] = KINDS,
) -> dict[str, int]:
    """Write train.jsonl, test.jsonl and images/ under `out`. Same seed, same bytes."""
    validate(n_train=n_train, n_test=n_test, quality=quality, image_size=image_size, kinds=kinds)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)

    def make(i: int, split: str, rng: random.Random, q: str) -> Sample:
        sample, scan = make_sample(i, split, rng, quality=q, image_size=image_size, kinds=kinds)
        render(scan, image_size).save(out / sample.images[0])
        return sample

    return write_splits(out, n_train=n_train, n_test=n_test, seed=seed, quality=quality, make=make)
