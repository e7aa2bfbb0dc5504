"""`dyme report`: the curves of runs as one HTML page of PNG plots, checked in a headless browser."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.run_report import PANELS
from dyme_cli.trainer import train

from conftest import small_recipe

runner = CliRunner()
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, chart_data) -> list[Path]:
    """Two short runs of other seeds, with held-out evaluations every 2 steps."""
    runs = []
    for seed in (1, 2):
        recipe = small_recipe(chart_data, tmp_path_factory.mktemp(f"seed{seed}") / f"seed-{seed}", max_steps=4)
        recipe.run.seed, recipe.run.eval_every, recipe.run.eval_limit = seed, 2, 4
        train(recipe)
        runs.append(recipe.run.output_dir)
    return runs


def _images(page: str) -> list[Image.Image]:
    return [Image.open(BytesIO(base64.b64decode(data)))
            for data in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)]


def test_a_report_of_two_runs_has_every_panel_as_a_png_with_both_runs(two_runs, tmp_path):
    out = tmp_path / "report.html"
    result = runner.invoke(app, ["report", *map(str, two_runs), "--out", str(out)])
    assert result.exit_code == 0, result.output
    page = out.read_text()
    images = _images(page)
    assert len(images) == 1 + len(PANELS) + 1  # rewards by component, the metric panels, the flag rates
    assert all(image.format == "PNG" and image.size == (700, 300) for image in images)
    titles = re.findall(r'alt="([^"]+)"', page)
    assert titles[:3] == ["reward by component", "mode shares", "rollout and held-out accuracy"]
    assert "<td>seed-1</td>" in page and "<td>seed-2</td>" in page and "<td>4</td>" in page


def test_a_run_still_writing_its_last_line_is_reported_without_it(two_runs, tmp_path):
    run = tmp_path / "running"
    shutil.copytree(two_runs[0], run)
    with (run / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 5, "loss": ')  # the trainer is writing step 5
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert "the last line of metrics.jsonl is still being written; left out" in page and "<td>4</td>" in page


def test_a_folder_that_is_no_run_is_one_line(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2 and result.output.strip() == (
        f"error: {tmp_path}: no metrics.jsonl (not a run directory, or no step has finished yet)")


def _screenshot(page: Path, shot: Path) -> Image.Image:
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=800,3600", f"--screenshot={shot}", page.as_uri()],
                   check=True, capture_output=True, timeout=300)
    return Image.open(shot).convert("L")


def _inked(image: Image.Image) -> int:
    """Pixels that are not (near) white: text, axes, lines."""
    return sum(count for value, count in enumerate(image.histogram()) if value < 200)


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium (apt-get install chromium)")
def test_the_page_shows_its_plots_in_a_headless_browser(two_runs, tmp_path):
    page = tmp_path / "report.html"
    assert runner.invoke(app, ["report", *map(str, two_runs), "--out", str(page)]).exit_code == 0
    bare = tmp_path / "bare.html"  # the same page without its plots
    bare.write_text(re.sub(r"<img [^>]*>", "", page.read_text()))
    shown, without = _screenshot(page, tmp_path / "page.png"), _screenshot(bare, tmp_path / "bare.png")
    assert _inked(shown) > 10 * max(_inked(without), 1)  # the plots were decoded and drawn, not broken images
