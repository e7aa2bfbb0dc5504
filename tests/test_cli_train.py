"""End to end through the CLI and the trainer: run directory, checkpoints, resume, bad recipes."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.recipe import load_recipe
from dyme_cli.trainer import train

from conftest import REPO, small_recipe

runner = CliRunner()


def test_demo_recipe_three_steps(tmp_path, monkeypatch, chart_data):
    # The demo recipe reads data/chart/ relative to the working directory.
    (tmp_path / "data").mkdir()
    shutil.copytree(chart_data, tmp_path / "data" / "chart")
    monkeypatch.chdir(tmp_path)
    demo = load_recipe(REPO / "recipes" / "demo.toml")
    prompts, k = demo.train.prompts_per_step, demo.rollout.num_generations
    result = runner.invoke(app, ["train", str(REPO / "recipes" / "demo.toml"), "--max-steps", "3", "--output", "run"])
    assert result.exit_code == 0, result.output
    assert "held-out accuracy before training" in result.output and "held-out accuracy after training" in result.output

    run = tmp_path / "run"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3]
    for m in metrics:
        assert m["n_memorize"] + m["n_explore"] + m["n_skip"] == prompts
        assert m["frac_memorize"] + m["frac_explore"] + m["frac_skip"] == pytest.approx(1.0)
        assert {"loss", "lr", "grad_norm", "accuracy", "time_generate", "tokens_per_s", "zero_std_all_wrong"} <= set(m)
    traces = [json.loads(line) for line in (run / "traces.jsonl").read_text().splitlines()]
    rollouts = [t for t in traces if t["kind"] == "rollout"]
    targets = [t for t in traces if t["kind"] == "target"]
    assert len(rollouts) == 3 * prompts * k
    assert len(targets) == sum(m["n_memorize"] for m in metrics)
    assert all(t["target"].endswith("Answer: " + t["gold"]) and t["advantage"] == 1.0 for t in targets)

    from transformers import AutoModelForImageTextToText, AutoProcessor

    checkpoint = run / "checkpoints" / "step-000003"
    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    AutoProcessor.from_pretrained(checkpoint)
    saved, state = load_file(str(checkpoint / "model.safetensors")), model.state_dict()
    assert all(torch.equal(saved[k], state[k]) for k in saved)  # reloaded exactly
    base = load_file(str(run / "base-model" / "model.safetensors"))
    assert any(not torch.equal(saved[k], base[k]) for k in saved)  # and training changed it
    assert "step 3" not in (run / "recipe.toml").read_text()  # the resolved recipe, not a log
    assert 'name_or_path = "tiny:smolvlm"' in (run / "recipe.toml").read_text()


def _weights(checkpoint: Path) -> dict:
    return load_file(str(checkpoint / "model.safetensors"))


class _Crash(Exception):
    pass


def _crash_after(step_to_crash):
    def on_step(step, total, metrics):
        if step == step_to_crash:
            raise _Crash

    return on_step


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path, chart_data):
    overrides = dict(optim={"schedule": "cosine", "warmup_steps": 1}, num_iterations=2)
    straight = train(small_recipe(chart_data, tmp_path / "straight", **overrides))
    assert straight.steps == 4

    recipe = small_recipe(chart_data, tmp_path / "resumed", **overrides)
    with pytest.raises(_Crash):
        train(recipe, on_step=_crash_after(2))  # dies right after the step-2 checkpoint
    resumed = train(recipe, resume=True)
    assert resumed.steps == 4

    a, b = _weights(straight.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    lines_a = (tmp_path / "straight" / "traces.jsonl").read_text().replace("straight", "R")
    lines_b = (tmp_path / "resumed" / "traces.jsonl").read_text().replace("resumed", "R")
    assert lines_a == lines_b


def test_a_fresh_run_refuses_to_overwrite_checkpoints(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run")
    messages = []
    train(recipe, max_steps=2, on_message=messages.append)
    # small_recipe cuts rollouts at 12 tokens, shorter than every reference target: the user is told.
    assert any("48 of 48 reference targets are longer than [rollout].max_new_tokens = 12" in m for m in messages)
    from dyme_cli.rundir import RunDirError

    with pytest.raises(RunDirError, match="--resume"):
        train(recipe, max_steps=2)


@pytest.mark.parametrize(
    "body, key",
    [
        ('[model]\nname_or_path = "tiny:smolvlm"\n[data]\ntrain = "x.jsonl"\n[train]\nloss_type = "ppo"\n', "[train].loss_type"),
        ('[model]\nname_or_path = "tiny:smolvlm"\n[data]\ntrain = "x.jsonl"\n[rollout]\nnum_generatons = 4\n', "[rollout].num_generatons"),
        ('[model]\nname_or_path = "tiny:smolvlm"\n[data]\ntrain = "x.jsonl"\n[optim]\nlr = -1\n', "[optim].lr"),
        ('[model]\nname_or_path = "tiny:smolvlm"\n', "[data]"),
        ('[model\nname = 1\n', "not valid TOML"),
    ],
)
def test_bad_recipe_exits_2_with_one_line_naming_the_key(tmp_path, body, key):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    result = runner.invoke(app, ["train", str(path)])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1, message
    assert key in message and str(path) in message
    assert "Traceback" not in message


def test_missing_dataset_is_one_line(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text(f'[model]\nname_or_path = "tiny:smolvlm"\n[data]\ntrain = "{tmp_path}/nope.jsonl"\n')
    result = runner.invoke(app, ["train", str(path), "--output", str(tmp_path / "run")])
    assert result.exit_code == 2 and "nope.jsonl: dataset file not found" in result.output


def test_help_pages():
    for args in (["--help"], ["prepare", "--help"], ["train", "--help"], ["prepare", "synthetic-chart", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output


def test_ctrl_c_finishes_the_step_saves_and_stops(tmp_path, chart_data, foreground_signals):
    import os
    import signal

    from dyme_cli.trainer import TrainingInterrupted

    recipe = small_recipe(chart_data, tmp_path / "run")
    recipe.run.save_every = 100

    def press_ctrl_c(step, total, metrics):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as info:
        train(recipe, on_step=press_ctrl_c)
    assert info.value.step == 1  # the step that was running when Ctrl-C came is finished and saved
    assert info.value.checkpoint.name == "step-000001" and (info.value.checkpoint / "trainer_state.pt").is_file()
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    resumed = train(recipe, resume=True)
    assert resumed.steps == 4


def test_unreachable_hub_model_is_a_one_line_error(offline_hub):
    from dyme_cli.modeling import ModelLoadError, load_policy

    with pytest.raises(ModelLoadError) as info:
        load_policy("HuggingFaceTB/SmolVLM-256M-Instruct")
    assert "cannot load model 'HuggingFaceTB/SmolVLM-256M-Instruct'" in str(info.value)
    assert "\n" not in str(info.value)


def test_eval_command_scores_a_checkpoint(tmp_path, chart_data, tiny_model_dir):
    out = tmp_path / "eval.json"
    data = chart_data / "test.jsonl"
    result = runner.invoke(app, ["eval", "--checkpoint", str(tiny_model_dir), "--data", str(data),
                                 "--max-new-tokens", "8", "--json", str(out)])
    assert result.exit_code == 0, result.output
    (numbers,) = json.loads(out.read_text())["checkpoints"].values()
    assert numbers["overall"]["n"] == 8
    assert sum(k["n"] for k in numbers["by_kind"].values()) == 8
    assert 0.0 <= numbers["overall"]["accuracy"] <= 1.0


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("algorithm", ["sft", "grpo"])
def test_baselines_run_in_the_same_engine(tmp_path, chart_data, algorithm):
    result = train(small_recipe(chart_data, tmp_path / algorithm, algorithm=algorithm), max_steps=2)
    metrics = _records(result.run_dir / "metrics.jsonl")
    traces = _records(result.run_dir / "traces.jsonl")
    if algorithm == "sft":  # every prompt memorized, no rollouts sampled
        assert all(m["n_memorize"] == 4 and m["accuracy"] is None for m in metrics)
        assert {t["kind"] for t in traces} == {"target"} and len(traces) == 8
    else:  # GRPO never memorizes, even when every rollout is wrong
        assert all(m["n_memorize"] == 0 for m in metrics)
        assert {t["kind"] for t in traces} == {"rollout"} and len(traces) == 2 * 4 * 2


def test_a_checkpoint_with_the_optimizer_state_by_parameter_index_still_resumes(tmp_path, chart_data):
    """Before sharding, checkpoints held torch's own optimizer state_dict (parameters by index, in group order)."""
    recipe = small_recipe(chart_data, tmp_path / "run")
    train(recipe, max_steps=2)
    state_path = tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.pt"
    state = torch.load(state_path, weights_only=True)
    by_name = state["optimizer"]
    index = {name: i for i, name in enumerate(n for group in by_name["param_groups"] for n in group["params"])}
    state["optimizer"] = {
        "state": {index[name]: value for name, value in by_name["state"].items()},
        "param_groups": [{**group, "params": [index[n] for n in group["params"]]} for group in by_name["param_groups"]],
    }
    torch.save(state, state_path)
    resumed = train(recipe, max_steps=4, resume=True)
    assert resumed.steps == 4
    assert [m["step"] for m in _records(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]


def test_resuming_from_an_optimizer_state_that_does_not_fit_is_one_line(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run")
    train(recipe, max_steps=2)
    state_path = tmp_path / "run" / "checkpoints" / "step-000002" / "trainer_state.pt"
    state = torch.load(state_path, weights_only=False)
    groups = state["optimizer"]["param_groups"]
    groups[0]["params"] += groups.pop(1)["params"]  # one group, as an older version wrote it
    torch.save(state, state_path)
    recipe_file = tmp_path / "run" / "recipe.toml"
    result = runner.invoke(app, ["train", str(recipe_file), "--resume", "--max-steps", "4"])
    assert result.exit_code == 2
    assert "its optimizer state does not fit this model and optimizer" in " ".join(result.output.split())


def test_output_that_is_no_terminal_gets_a_plain_line_per_log_every_steps_evaluation_and_checkpoint(tmp_path,
                                                                                                     chart_data):
    from dyme_cli.recipe import recipe_to_toml

    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=5)
    recipe.run.log_every, recipe.run.save_every, recipe.run.eval_every, recipe.run.eval_limit = 2, 3, 5, 4
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_to_toml(recipe))
    result = runner.invoke(app, ["train", str(path)])  # CliRunner's output is no terminal, as a file or a pipe is
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("step=")]
    assert [line.split()[0] for line in lines] == ["step=2/5", "step=3/5", "step=4/5", "step=5/5"]
    for line in lines:
        keys = [part.split("=")[0] for part in line.split()]
        assert keys[:4] == ["step", "elapsed", "eta", "reward"]
        assert {"reward/accuracy", "reward/format", "acc", "memorize", "explore", "skip", "loss", "grad_norm",
                "tok/s", "mem_gib"} <= set(keys)
    assert lines[1].endswith(f"checkpoint={tmp_path / 'run' / 'checkpoints' / 'step-000003'}")
    assert "eval_acc=" in lines[3] and "checkpoint=" in lines[3] and "eval_acc=" not in lines[2]
    assert not [line for line in result.output.splitlines() if "━━━ " in line and "/5 " in line]  # no bar in a log


def test_the_live_display_fits_80_columns_without_cutting_a_number():
    from rich.console import Console

    from dyme_cli.ui import StatsBelowProgress, bar_columns

    terminal = Console(width=80, force_terminal=True, record=True)
    display = StatsBelowProgress(*bar_columns(), console=terminal)
    stats = "acc 0.12 · reward 0.34 · mem 0.50 exp 0.25 skip 0.25"
    task = display.add_task("step 12345", total=100000, stats=stats)
    display.update(task, completed=12345)
    terminal.print(*display.get_renderables())
    text = terminal.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "12345/100000" in text and stats in text and "…" not in text
