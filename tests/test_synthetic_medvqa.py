"""The synthetic medvqa generator: schema, determinism, facts vs pixels, answers, quality levels, CLI."""

import dataclasses
import re

import pytest
from PIL import Image
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.data import read_samples, target_text
from dyme_cli.plugins import load_verifier
from dyme_cli.prepare.synthetic_medvqa import generate
from dyme_cli.pseudo_thinking import flag_trace, sample_contexts

from conftest import folder_digest

runner = CliRunner()
STATED = re.compile(r"in the ((?:upper|lower) (?:left|right)) region, radius (\d+)")
BRIGHT = 170  # lesions are drawn at 215-250, the organ at 90-130


@pytest.fixture(scope="module")
def by_quality(tmp_path_factory):
    root = tmp_path_factory.mktemp("medvqa")
    for quality in ("high", "medium", "low"):
        generate(root / quality, n_train=60, n_test=4, seed=2, quality=quality)
    return {q: read_samples(root / q / "train.jsonl") for q in ("high", "medium", "low")}


def test_counts_and_schema(tmp_path):
    assert generate(tmp_path, n_train=12, n_test=3, seed=1, image_size=80) == {"train": 12, "test": 3}
    train, test = read_samples(tmp_path / "train.jsonl"), read_samples(tmp_path / "test.jsonl")
    assert [s.images for s in test] == [[f"images/test-{i:05d}.png"] for i in range(3)]
    for s in train + test:
        assert s.task == "medvqa" and s.facts["organ"] in ("lungs", "brain")
        assert s.meta["answer_type"] == ("closed" if s.meta["kind"] == "abnormality" else "open")
        with Image.open(s.image_paths()[0]) as image:
            assert image.size == (80, 80)
    assert {s.meta["reference_quality"] for s in test} == {"high"}


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(tmp_path / "a", n_train=20, n_test=5, seed=7)
    generate(tmp_path / "b", n_train=20, n_test=5, seed=7)
    generate(tmp_path / "c", n_train=20, n_test=5, seed=8)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b") != folder_digest(tmp_path / "c")


def _blobs(image_path):
    """Connected bright regions (4-neighbour flood fill) as lists of pixels: an independent reading of the scan."""
    image = Image.open(image_path).convert("L")
    width, height = image.size
    pixels = image.load()
    seen, blobs = set(), []
    for start in ((x, y) for y in range(height) for x in range(width)):
        if start in seen or pixels[start] < BRIGHT:
            continue
        seen.add(start)
        stack, blob = [start], []
        while stack:
            x, y = stack.pop()
            blob.append((x, y))
            for nxt in ((x + 1, y), (x - 1, y), (x, y + 1), (x, y - 1)):
                if 0 <= nxt[0] < width and 0 <= nxt[1] < height and nxt not in seen and pixels[nxt] >= BRIGHT:
                    seen.add(nxt)
                    stack.append(nxt)
        blobs.append(blob)
    return blobs, width


def _region(x, y, width):
    middle = (width - 1) / 2
    return f"{'upper' if y < middle else 'lower'} {'left' if x < middle else 'right'}"


def test_answers_follow_from_the_facts_and_the_pixels(by_quality):
    samples = by_quality["high"]
    assert {s.meta["kind"] for s in samples} == {"abnormality", "count", "side", "location"}
    for s in samples:
        lesions = s.facts["lesions"]
        blobs, width = _blobs(s.image_paths()[0])
        assert len(blobs) == len(lesions) == s.facts["count"] <= 3
        found = sorted((sum(x for x, _ in b) / len(b), sum(y for _, y in b) / len(b), b) for b in blobs)
        for (cx, cy, blob), lesion in zip(found, sorted(lesions, key=lambda lesion: (lesion["x"], lesion["y"]))):
            assert (cx, cy) == (lesion["x"], lesion["y"])  # a symmetric disc around the fact's centre
            assert max(x for x, _ in blob) - min(x for x, _ in blob) == 2 * lesion["radius"]
            assert _region(cx, cy, width) == lesion["region"] and lesion["region"].endswith(lesion["side"])
        kind = s.meta["kind"]
        if kind == "abnormality":
            assert s.answer == ("yes" if blobs else "no")
        elif kind == "count":
            assert s.answer == str(len(blobs))
        elif kind == "side":
            assert blobs and {lesion["side"] for lesion in lesions} == {s.answer}
        else:
            assert s.answer == max(lesions, key=lambda lesion: lesion["radius"])["region"]
            assert len({lesion["radius"] for lesion in lesions}) == len(lesions)  # the largest is unique


def test_every_gold_completion_is_accepted(by_quality):
    verifier = load_verifier("medvqa")
    for samples in by_quality.values():
        for s in samples:
            verdict = verifier.verify(target_text(s, "Answer:"), s)
            assert verdict.correct and verdict.rewards["accuracy"] == 1.0, (s.id, verdict.detail)


def _stated(reference):
    return [(region, int(radius)) for region, radius in STATED.findall(reference)]


def _true(sample):
    return [(lesion["region"], lesion["radius"]) for lesion in sample.facts["lesions"]]


def _flags(sample, honest_sources_only=False):
    context = sample_contexts([sample])[sample.id]
    if honest_sources_only:  # a reference grounds its own values: judge it by question and facts alone
        context = dataclasses.replace(context, reference="")
    completion = target_text(sample, "Answer:")
    trace = {"kind": "rollout", "completion": completion, "correct": True, "truncated": False, "prompt_id": sample.id}
    return {flag.name: [completion[a:b] for a, b in flag.spans] for flag in flag_trace(trace, context, None)}


def test_reference_quality_levels(by_quality):
    high, medium, low = by_quality["high"], by_quality["medium"], by_quality["low"]
    flagged = 0
    for h, m, lo in zip(high, medium, low):
        assert h.question == m.question == lo.question and h.answer == m.answer == lo.answer
        assert h.reference.startswith(("Check", "Count", "Find")) and "The scan shows" in h.reference
        assert _stated(h.reference) == _true(h)  # high: every finding true
        for honest in (False, True):
            assert {"ungrounded-value", "conclusion-mismatch"}.isdisjoint(_flags(h, honest))
        assert len(lo.reference.split()) > 2 * len(h.reference.split())  # verbose
        stated, true = _stated(m.reference), _true(m)
        assert len(stated) == len(true)
        if not true:  # nothing to get wrong
            assert m.reference == h.reference
            continue
        assert stated != true  # pseudo thinking: wrong findings, same answer
        kind = m.meta["kind"]
        if kind == "side":
            assert {region.split()[1] for region, _ in stated} == {m.answer}
        if kind == "location":
            assert max(stated, key=lambda finding: finding[1])[0] == m.answer
        wrong_radii = {str(r) for (_, r), (_, t) in zip(stated, true) if r != t}
        ungrounded = _flags(m, honest_sources_only=True).get("ungrounded-value", [])
        assert set(ungrounded) <= wrong_radii  # the detector only ever points at a wrong radius
        flagged += bool(ungrounded)
    assert flagged  # radii are small numbers: coordinate differences in the facts ground most slips


def test_cli_writes_the_data(tmp_path):
    out = tmp_path / "medvqa"
    result = runner.invoke(app, ["prepare", "synthetic-medvqa", "--out", str(out), "--n-train", "6", "--n-test", "2",
                                 "--image-size", "96", "--kinds", "count, side"])
    assert result.exit_code == 0, result.output
    samples = read_samples(out / "train.jsonl")
    assert len(samples) == 6 and {s.meta["kind"] for s in samples} <= {"count", "side"}
    assert len(list((out / "images").glob("*.png"))) == 8


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image-size", "32"], "image size must be between 64 and 512"),
        (["--kinds", "count,size"], "unknown question kind(s): size"),
        (["--kinds", ","], "none given"),
        (["--reference-quality", "great"], "not 'great'"),
        (["--n-test", "-1"], "--n-test -1: must be between 1 and 10,000,000"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    result = runner.invoke(app, ["prepare", "synthetic-medvqa", "--out", str(tmp_path), *args])
    assert result.exit_code == 2
    assert result.output.strip().startswith("error:") and message in result.output
    assert len(result.output.strip().splitlines()) == 1
