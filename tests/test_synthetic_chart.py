"""The synthetic chart generator: determinism, facts vs pixels, answers, and reference quality levels."""

import re

import pytest
from PIL import Image

from dyme_cli.data import read_samples
from dyme_cli.prepare.synthetic_chart import PALETTE, generate

from conftest import folder_digest


def test_same_seed_same_bytes_other_seed_other_data(tmp_path):
    generate(tmp_path / "a", n_train=20, n_test=5, seed=7)
    generate(tmp_path / "b", n_train=20, n_test=5, seed=7)
    generate(tmp_path / "c", n_train=20, n_test=5, seed=8)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b") != folder_digest(tmp_path / "c")


def _bar_heights(image_path):
    """Measure each palette colour's column height in the image (an independent reading of the chart)."""
    image = Image.open(image_path).convert("RGB")
    width, height = image.size
    pixels = image.load()
    heights = {}
    for name, rgb in PALETTE.items():
        rows = {y for x in range(width) for y in range(height) if pixels[x, y] == rgb}
        if rows:
            heights[name] = len(rows)
    return heights


def test_answers_follow_from_the_facts_and_the_pixels(tmp_path):
    generate(tmp_path, n_train=60, n_test=0, seed=1, image_size=96)
    samples = read_samples(tmp_path / "train.jsonl")
    kinds = {s.meta["kind"] for s in samples}
    assert kinds == {"value", "largest", "smallest", "difference", "sum"}
    for s in samples:
        values = s.facts["values"]
        assert 3 <= len(values) <= 5
        heights = _bar_heights(s.image_paths()[0])
        assert list(heights) == list(values)  # one bar per fact, in drawing order
        order_by_pixels = sorted(heights, key=heights.get)
        assert order_by_pixels == sorted(values, key=values.get)
        q = s.question
        if s.meta["kind"] == "value":
            colour = re.search(r"the (\w+) bar", q).group(1)
            assert s.answer == str(values[colour])
        elif s.meta["kind"] == "largest":
            assert s.answer == order_by_pixels[-1]
        elif s.meta["kind"] == "smallest":
            assert s.answer == order_by_pixels[0]
        elif s.meta["kind"] == "difference":
            a, b = re.findall(r"the (\w+) bar", q)
            assert int(s.answer) == values[a] - values[b] > 0
        else:
            assert int(s.answer) == sum(values.values())


def _stated(reference):
    return {name: int(v) for name, v in re.findall(r"(\w+) = (\d+)", reference) if name in PALETTE}


def test_reference_quality_levels(tmp_path):
    for quality in ("high", "medium", "low"):
        generate(tmp_path / quality, n_train=80, n_test=0, seed=2, quality=quality)
    high = read_samples(tmp_path / "high" / "train.jsonl")
    medium = read_samples(tmp_path / "medium" / "train.jsonl")
    low = read_samples(tmp_path / "low" / "train.jsonl")
    wrong_somewhere = 0
    for h, m, lo in zip(high, medium, low):
        assert h.question == m.question == lo.question and h.answer == m.answer == lo.answer
        assert _stated(h.reference) == h.facts["values"]  # high: every value true
        stated = _stated(m.reference)
        wrong = {k for k in stated if stated[k] != m.facts["values"][k]}
        wrong_somewhere += bool(wrong)
        if m.meta["kind"] == "value":  # the asked bar is always stated truly
            asked = re.search(r"the (\w+) bar", m.question).group(1)
            assert asked not in wrong and wrong == set(stated) - {asked}
        if m.meta["kind"] in ("largest", "smallest"):  # pseudo thinking that still supports the answer
            pick = max if m.meta["kind"] == "largest" else min
            assert pick(stated, key=stated.get) == m.answer
        assert len(lo.reference.split()) > 2 * len(h.reference.split())  # verbose
    assert wrong_somewhere > len(medium) // 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="bars"):
        generate(tmp_path, n_train=1, n_test=0, min_bars=2)
    with pytest.raises(ValueError, match="unknown question kind"):
        generate(tmp_path, n_train=1, n_test=0, kinds=("median",))


def test_the_prepare_command_writes_the_dataset(tmp_path):
    from typer.testing import CliRunner

    from dyme_cli.cli import app
    from dyme_cli.data import read_samples

    result = CliRunner().invoke(app, ["prepare", "synthetic-chart", "--out", str(tmp_path / "d"), "--n-train", "5",
                                      "--n-test", "2", "--min-bars", "3", "--max-bars", "3"])
    assert result.exit_code == 0, result.output
    assert "wrote 5 train and 2 test samples" in result.output
    assert len(read_samples(tmp_path / "d" / "train.jsonl")) == 5 and len(read_samples(tmp_path / "d" / "test.jsonl")) == 2


def test_the_prepare_command_replaces_a_dataset_only_when_asked(tmp_path):
    from typer.testing import CliRunner

    from dyme_cli.cli import app
    from dyme_cli.data import read_samples

    args = ["prepare", "synthetic-chart", "--out", str(tmp_path / "d"), "--n-test", "2", "--min-bars", "3",
            "--max-bars", "3"]
    assert CliRunner().invoke(app, [*args, "--n-train", "5"]).exit_code == 0
    before = (tmp_path / "d" / "train.jsonl").read_bytes()
    refused = CliRunner().invoke(app, [*args, "--n-train", "3"])
    assert refused.exit_code == 2 and "already holds train.jsonl, test.jsonl" in " ".join(refused.output.split())
    assert (tmp_path / "d" / "train.jsonl").read_bytes() == before
    assert CliRunner().invoke(app, [*args, "--n-train", "3", "--overwrite"]).exit_code == 0
    assert len(read_samples(tmp_path / "d" / "train.jsonl")) == 3
