"""Images are checked when a dataset is read, not at the training step that first loads them: an unreadable one
is a one-line error naming file:line (or a counted skip), a verified one is not decoded again while unchanged,
and an image path that leaves the dataset's folder is refused unless allowed."""

import json
import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dyme_cli import data, ui
from dyme_cli.cli import app
from dyme_cli.data import DataError, read_samples
from dyme_cli.inspect_run import inspect
from dyme_cli.recipe import recipe_to_toml
from dyme_cli.trainer import train

from conftest import small_recipe

runner = CliRunner()


@pytest.fixture(autouse=True)
def cache_home(tmp_path, monkeypatch) -> Path:
    """A cache of verified images of this test's own, under $XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "dyme" / "verified-images.json"


def _dataset(chart_data: Path, folder: Path, lines: int = 3, split: str = "train") -> Path:
    """The first `lines` samples of the chart data, with their images, in a folder of their own."""
    (folder / "images").mkdir(parents=True)
    records = [json.loads(line) for line in (chart_data / f"{split}.jsonl").read_text().splitlines()[:lines]]
    for record in records:
        for image in record["images"]:
            shutil.copy(chart_data / image, folder / image)
    path = folder / f"{split}.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no pixel data: a decompression bomb in 57 bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


def _truncated(image: Path, monkeypatch) -> str:
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return "is not a readable image ("


def _not_an_image(image: Path, monkeypatch) -> str:
    image.write_text("<html><body>404 Not Found</body></html>")
    return "is not a readable image (not a format PIL knows)"


def _empty(image: Path, monkeypatch) -> str:
    image.write_bytes(b"")
    return "is empty (0 bytes)"


def _bomb_header(image: Path, monkeypatch) -> str:
    image.write_bytes(_png_claiming(100_000, 100_000))
    return "is refused as a possible decompression bomb"


def _bomb_over_the_warning_limit(image: Path, monkeypatch) -> str:
    """More pixels than MAX_IMAGE_PIXELS but fewer than twice as many: PIL itself only warns."""
    Image.new("RGB", (64, 64)).save(image)  # 4096 pixels; the other images have 1024
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)
    return "is refused as a possible decompression bomb"


def _directory(image: Path, monkeypatch) -> str:
    image.unlink()
    image.mkdir()
    return "is a directory, not an image"


def _missing(image: Path, monkeypatch) -> str:
    image.unlink()
    return "does not exist"


def _text_file(image: Path, monkeypatch) -> str:
    """The sample names notes.txt: the file is a text file, whatever its name."""
    text = image.with_name("notes.txt")
    text.write_text("shopping list: milk, eggs\n")
    jsonl = image.parent.parent / "train.jsonl"
    jsonl.write_text(jsonl.read_text().replace(f"images/{image.name}", "images/notes.txt"))
    return "is not a readable image (not a format PIL knows)"


BAD = [_truncated, _not_an_image, _empty, _bomb_header, _bomb_over_the_warning_limit, _directory, _missing, _text_file]


def _spoil_line_2(path: Path, spoil, monkeypatch) -> tuple[Path, str]:
    """Spoil the image of the dataset's second line; (the image path as the error shows it, the expected problem)."""
    name = json.loads(path.read_text().splitlines()[1])["images"][0]
    problem = spoil(path.parent / name, monkeypatch)
    shown = path.parent / json.loads(path.read_text().splitlines()[1])["images"][0]
    return shown, problem


@pytest.mark.parametrize("spoil", BAD, ids=lambda f: f.__name__.strip("_"))
def test_a_bad_image_fails_naming_file_line_and_image(tmp_path, chart_data, monkeypatch, spoil):
    path = _dataset(chart_data, tmp_path / "data")
    shown, problem = _spoil_line_2(path, spoil, monkeypatch)
    with pytest.raises(DataError) as info:
        read_samples(path)
    message = str(info.value)
    assert message.startswith(f"{path}:2: field 'images': {shown} {problem}") and "\n" not in message


@pytest.mark.parametrize("spoil", BAD, ids=lambda f: f.__name__.strip("_"))
def test_a_bad_image_is_a_counted_skip_with_skip(tmp_path, chart_data, monkeypatch, spoil):
    path = _dataset(chart_data, tmp_path / "data")
    shown, problem = _spoil_line_2(path, spoil, monkeypatch)
    samples = read_samples(path, bad_images="skip")
    assert [s.id for s in samples] == [json.loads(line)["id"] for line in path.read_text().splitlines()[::2]]
    assert len(samples.skipped) == 1 and samples.skipped[0].startswith(f"{path}:2: field 'images': {shown} {problem}")
    note = samples.skip_note()
    assert note.startswith(f"skipped 1 of 3 samples in {path}: unreadable images (first: {path}:2:") and "\n" not in note


def test_every_image_bad_leaves_no_usable_samples(tmp_path, chart_data):
    path = _dataset(chart_data, tmp_path / "data", lines=2)
    for image in (tmp_path / "data" / "images").iterdir():
        image.write_bytes(b"")
    with pytest.raises(DataError, match=f"{path}: no usable samples: every one has an unreadable image "
                                        f"\\(first: {path}:1: field 'images'"):
        read_samples(path, bad_images="skip")


def test_the_line_structure_is_checked_before_any_image(tmp_path, chart_data):
    """A repeated id further down is reported even when an earlier image is unreadable."""
    path = _dataset(chart_data, tmp_path / "data")
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace(json.loads(lines[2])["id"], json.loads(lines[0])["id"])
    path.write_text("\n".join(lines) + "\n")
    (path.parent / json.loads(lines[0])["images"][0]).write_bytes(b"")
    with pytest.raises(DataError, match=f"{path}:3: field 'id'"):
        read_samples(path)


def _counting_decodes(monkeypatch) -> list[Path]:
    decoded: list[Path] = []
    check = data._image_problem

    def counted(path):
        decoded.append(path)
        return check(path)

    monkeypatch.setattr(data, "_image_problem", counted)
    return decoded


def test_a_second_read_of_unchanged_images_decodes_nothing(tmp_path, chart_data, monkeypatch, cache_home):
    path = _dataset(chart_data, tmp_path / "data")
    decoded = _counting_decodes(monkeypatch)
    read_samples(path)
    assert len(decoded) == 3 and cache_home.is_file()
    assert read_samples(path) == read_samples(path)
    assert len(decoded) == 3
    assert not [p for p in cache_home.parent.iterdir() if p != cache_home]  # no temporary file left behind


def test_a_changed_image_is_verified_again(tmp_path, chart_data, monkeypatch):
    path = _dataset(chart_data, tmp_path / "data")
    images = sorted((tmp_path / "data" / "images").iterdir())
    read_samples(path)
    decoded = _counting_decodes(monkeypatch)
    info = images[0].stat()
    os.utime(images[0], ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))  # touched: same bytes, new mtime
    read_samples(path)
    assert decoded == [images[0].resolve()]
    mtime = images[1].stat().st_mtime_ns
    # cut short, the old mtime put back: the size alone tells the change
    images[1].write_bytes(images[1].read_bytes()[: images[1].stat().st_size // 2])
    os.utime(images[1], ns=(mtime, mtime))
    with pytest.raises(DataError, match=f"{path}:2: field 'images'"):
        read_samples(path)
    assert decoded[1:] == [images[1].resolve()]


def test_a_bad_image_is_not_cached_and_is_reported_every_time(tmp_path, chart_data, monkeypatch):
    path = _dataset(chart_data, tmp_path / "data")
    _spoil_line_2(path, _truncated, monkeypatch)
    for _ in range(2):
        assert len(read_samples(path, bad_images="skip").skipped) == 1


@pytest.mark.parametrize("damage", ["{not json", '{"version": 1, "verified": 7}', '["a list"]', "\x00\xff"])
def test_a_damaged_cache_is_ignored_and_rewritten(tmp_path, chart_data, monkeypatch, cache_home, damage):
    path = _dataset(chart_data, tmp_path / "data")
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text(damage, encoding="latin-1")
    decoded = _counting_decodes(monkeypatch)
    assert len(read_samples(path)) == 3 and len(decoded) == 3
    assert len(json.loads(cache_home.read_text())["verified"]) == 3


def test_progress_counts_the_images_to_decode(tmp_path, chart_data):
    path = _dataset(chart_data, tmp_path / "data")
    calls: list[tuple[int, int]] = []
    read_samples(path, on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 3), (1, 3), (2, 3), (3, 3)]
    calls.clear()
    read_samples(path, on_progress=lambda done, total: calls.append((done, total)))
    assert calls == []  # all cached: nothing to show


def _point_line_1_at(path: Path, image: str) -> None:
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    record["images"] = [image]
    path.write_text("\n".join([json.dumps(record), *lines[1:]]) + "\n")


def _outside_image(tmp_path: Path, chart_data: Path) -> Path:
    outside = tmp_path / "private" / "photo.png"
    outside.parent.mkdir()
    shutil.copy(next((chart_data / "images").iterdir()), outside)
    return outside


@pytest.mark.parametrize("kind", ["absolute inside", "absolute outside", "dot-dot", "symlink"])
def test_image_paths_that_leave_the_folder_are_refused_unless_allowed(tmp_path, chart_data, kind):
    path = _dataset(chart_data, tmp_path / "data")
    outside = _outside_image(tmp_path, chart_data)
    inside = next((tmp_path / "data" / "images").iterdir())
    if kind == "symlink":
        (tmp_path / "data" / "images" / "link.png").symlink_to(outside)
    name = {"absolute inside": str(inside), "absolute outside": str(outside), "dot-dot": "../private/photo.png",
            "symlink": "images/link.png"}[kind]
    _point_line_1_at(path, name)
    expected = "is an absolute path" if kind.startswith("absolute") else "leads outside the dataset's folder"
    for bad_images in ("fail", "skip"):  # a refused path is never a quiet skip
        with pytest.raises(DataError) as info:
            read_samples(path, bad_images=bad_images)
        message = str(info.value)
        assert message.startswith(f"{path}:1: field 'images': {name} {expected}") and "\n" not in message
        assert "[data].allow_external_images = true" in message
    assert len(read_samples(path, allow_external_images=True)) == 3


def test_the_recipe_chooses_the_rules(tmp_path, chart_data, monkeypatch):
    path = _dataset(chart_data, tmp_path / "data")
    recipe = small_recipe(chart_data, tmp_path / "run")
    _point_line_1_at(path, str(_outside_image(tmp_path, chart_data)))
    with pytest.raises(DataError, match="is an absolute path"):
        recipe.data.read(path)
    recipe.data.allow_external_images = True
    _spoil_line_2(path, _empty, monkeypatch)
    with pytest.raises(DataError, match="is empty"):
        recipe.data.read(path)
    recipe.data.bad_images = "skip"
    assert len(recipe.data.read(path)) == 2
    assert 'bad_images = "skip"' in recipe_to_toml(recipe) and "allow_external_images = true" in recipe_to_toml(recipe)


def _bad_copy_of(chart_data: Path, folder: Path) -> Path:
    """All of the chart data, with line 7's image cut short."""
    shutil.copytree(chart_data, folder)
    train = folder / "train.jsonl"
    image = folder / json.loads(train.read_text().splitlines()[6])["images"][0]
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    return train


def test_training_skips_a_bad_image_and_says_so(tmp_path, chart_data):
    train_path = _bad_copy_of(chart_data, tmp_path / "data")
    recipe = small_recipe(tmp_path / "data", tmp_path / "run", max_steps=1)
    with pytest.raises(DataError, match=f"{train_path}:7: field 'images'"):
        train(recipe)
    recipe.data.bad_images = "skip"
    messages: list[str] = []
    assert train(recipe, on_message=messages.append).steps == 1
    skipped = [m for m in messages if m.startswith("skipped")]
    assert len(skipped) == 1 and skipped[0].startswith(f"skipped 1 of 48 samples in {train_path}: unreadable images "
                                                       f"(first: {train_path}:7: field 'images'")
    assert any(note.startswith("skipped 1 of 48") for note in inspect(tmp_path / "run").notes)  # the run's rules


def _recipe_file(tmp_path: Path, recipe) -> Path:
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_to_toml(recipe))
    return path


def test_dry_run_with_a_bad_image_exits_2_with_one_line(tmp_path, chart_data):
    train_path = _bad_copy_of(chart_data, tmp_path / "data")
    recipe = small_recipe(tmp_path / "data", tmp_path / "run")
    result = runner.invoke(app, ["train", str(_recipe_file(tmp_path, recipe)), "--dry-run"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "ready to train" not in result.output
    assert f"error: {train_path}:7: field 'images': " in " ".join(result.output.split())


def test_dry_run_with_skip_reports_the_count_and_is_ok(tmp_path, chart_data, monkeypatch):
    monkeypatch.setattr(ui.console, "width", 250)  # the plan's table on one line per row
    train_path = _bad_copy_of(chart_data, tmp_path / "data")
    recipe = small_recipe(tmp_path / "data", tmp_path / "run")
    recipe.data.bad_images = "skip"
    result = runner.invoke(app, ["train", str(_recipe_file(tmp_path, recipe)), "--dry-run"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "47 samples (chart 47); 47 with images; 1 left out (unreadable images)" in text
    assert f"note: skipped 1 of 48 samples in {train_path}" in text


@pytest.mark.parametrize("command", [["eval", "--checkpoint", "tiny:smolvlm"], ["verifiers", "check", "chart", "--calibrate"]])
def test_commands_without_a_recipe_refuse_bad_and_external_images(tmp_path, chart_data, monkeypatch, command):
    path = _dataset(chart_data, tmp_path / "data")
    first_image = json.loads(path.read_text().splitlines()[0])["images"][0]
    _point_line_1_at(path, "../elsewhere.png")
    refused = runner.invoke(app, [*command, "--data", str(path)])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    message = " ".join(refused.output.split())
    assert f"{path}:1: field 'images': ../elsewhere.png leads outside" in message and "--allow-external-images" in message
    _point_line_1_at(path, first_image)
    _spoil_line_2(path, _not_an_image, monkeypatch)
    bad = runner.invoke(app, [*command, "--data", str(path)])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert f"{path}:2: field 'images': " in " ".join(bad.output.split())


@pytest.mark.parametrize("as_json", [False, True])
def test_a_large_image_check_shows_a_progress_bar(tmp_path, chart_data, monkeypatch, as_json):
    monkeypatch.setattr(ui, "IMAGE_BAR_MIN", 3)  # this dataset counts as large
    monkeypatch.setattr(ui.console, "width", 200)
    path = _dataset(chart_data, tmp_path / "data")
    result = runner.invoke(app, ["verifiers", "check", "chart", "--calibrate", "--data", str(path),
                                 *(["--json"] if as_json else [])])
    assert result.exit_code == 0, result.output
    if as_json:
        assert json.loads(result.output)["samples"] == 3  # nothing but the JSON
    else:
        assert "checking images" in result.output and "3/3" in result.output
    again = runner.invoke(app, ["verifiers", "check", "chart", "--calibrate", "--data", str(path)])
    assert "checking images" not in again.output  # verified before: nothing to decode


@pytest.mark.parametrize("dry_run", [True, False])
def test_dyme_train_shows_the_image_check_of_a_large_dataset(tmp_path, chart_data, monkeypatch, dry_run):
    from dyme_cli.recipe import recipe_to_toml

    monkeypatch.setattr(ui, "IMAGE_BAR_MIN", 3)  # this dataset counts as large
    monkeypatch.setattr(ui.console, "width", 200)
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=1)
    recipe.data.train, recipe.data.test = _dataset(chart_data, tmp_path / "data", lines=4), None
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(recipe_to_toml(recipe))
    result = runner.invoke(app, ["train", str(recipe_file), *(["--dry-run"] if dry_run else [])])
    assert result.exit_code == 0, result.output
    assert "checking images" in result.output and "4/4" in result.output
