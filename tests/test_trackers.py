"""Experiment trackers through accelerate: `[run].report_to` receives every step's metrics, and metrics.jsonl stays
the record."""

import json

import pytest

from dyme_cli.recipe import RecipeError
from dyme_cli.trainer import train

from conftest import small_recipe


def test_tensorboard_receives_every_step_s_metrics_and_the_mode_fractions(tmp_path, chart_data):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=3)
    recipe.run.report_to = ["tensorboard"]
    train(recipe)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tracking"))
    events.Reload()
    for name in ("frac_memorize", "frac_explore", "frac_skip", "memorize_nll", "grad_norm", "lr"):
        scalars = events.Scalars(name)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([m[name] for m in logged], rel=1e-6)


def test_a_tracker_that_is_not_installed_is_a_one_line_error_before_anything_is_written(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=1)
    recipe.run.report_to = ["aim"]
    with pytest.raises(RecipeError, match=r"^\[run\].report_to: 'aim' is not installed \(pip install aim\)$"):
        train(recipe)
    assert not (tmp_path / "run").exists()
