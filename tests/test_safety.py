"""Nothing lost, nothing executed: stop signals checkpoint like Ctrl-C, a trainer state that could run code is
refused, and a dataset with a repeated id is refused before it trains the wrong pairs."""

import json
import os
import pickle
import signal

import pytest
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.rundir import RunDirError, state_file
from dyme_cli.trainer import TrainingInterrupted, train

from conftest import small_recipe

runner = CliRunner()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_finish_the_step_checkpoint_and_stop_like_ctrl_c(tmp_path, chart_data, foreground_signals,
                                                                            signum):
    recipe = small_recipe(chart_data, tmp_path / "run")
    recipe.run.save_every = 100
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def preempted(step, total, metrics):
        if step == 2:
            os.kill(os.getpid(), signum)

    messages = []
    with pytest.raises(TrainingInterrupted) as info:
        train(recipe, on_step=preempted, on_message=messages.append)
    assert info.value.step == 2 and info.value.checkpoint.name == "step-000002"
    assert f"{signal.Signals(signum).name}: stopping after the current step with a checkpoint" in messages[-1]
    assert info.value.signum == signum and info.value.exit_code == 128 + signum
    assert {s: signal.getsignal(s) for s in before} == before  # every handler restored
    assert train(recipe, resume=True).steps == 4


class _Exploit:
    """Unpickling this calls `open(marker, "w")`: what a planted trainer_state.pt could do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_trainer_state_that_could_run_code_is_refused_and_nothing_runs(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=1)
    checkpoint = train(recipe).checkpoint
    marker = tmp_path / "pwned"
    with state_file(checkpoint).open("wb") as handle:
        pickle.dump({"step": 1, "payload": _Exploit(marker)}, handle, protocol=2)
    recipe.train.max_steps = 2
    with pytest.raises(RunDirError, match="refused: it holds objects other than tensors") as info:
        train(recipe, resume=True)
    assert not marker.exists() and "\n" not in str(info.value)


def test_a_damaged_trainer_state_is_a_one_line_error(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=1)
    checkpoint = train(recipe).checkpoint
    state_file(checkpoint).write_bytes(state_file(checkpoint).read_bytes()[:100])  # cut short by a full disk
    recipe.train.max_steps = 2
    with pytest.raises(RunDirError, match="cannot read the trainer state") as info:
        train(recipe, resume=True)
    assert "\n" not in str(info.value)


def test_a_repeated_sample_id_is_refused_naming_both_lines(tmp_path, chart_data):
    records = [json.loads(line) for line in (chart_data / "train.jsonl").read_text().splitlines()[:3]]
    for record in records:
        record["images"] = [str(chart_data / image) for image in record["images"]]
    records[2]["id"] = records[0]["id"]
    data = tmp_path / "dup.jsonl"
    data.write_text("".join(json.dumps(record) + "\n" for record in records))
    result = runner.invoke(app, ["eval", "--checkpoint", "tiny:smolvlm", "--data", str(data)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"{data}:3: field 'id': '{records[0]['id']}' is already the id of line 1" in " ".join(result.output.split())


def test_a_torn_last_log_line_is_dropped_on_resume_and_reported(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=2)
    train(recipe)
    run = tmp_path / "run"
    for name in ("metrics.jsonl", "traces.jsonl"):  # killed while appending step 3's records
        with (run / name).open("a") as handle:
            handle.write('{"step": 3, "loss": 0.')
    recipe.train.max_steps = 3
    messages = []
    train(recipe, resume=True, on_message=messages.append)
    assert sum("dropped a half-written last line" in m for m in messages) == 2
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_a_damaged_log_line_before_the_last_is_a_one_line_error(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=2)
    train(recipe)
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join(["garbage", *lines[1:]]) + "\n")
    recipe.train.max_steps = 3
    with pytest.raises(RunDirError, match=f"{metrics}:1: not a log record"):
        train(recipe, resume=True)


def _poisoned_loss(monkeypatch, steps_to_poison: set[int]):
    """Make the loss NaN in the given steps (what an overflowing model or a bad reward would produce)."""
    import dyme_cli.step as engine_step
    import dyme_cli.trainer as trainer

    real, step = engine_step.policy_loss, {"now": 0}
    real_step = trainer.dyme_step

    def counting_step(engine, n):
        step["now"] = n
        return real_step(engine, n)

    def loss(*args, **kwargs):
        value, info = real(*args, **kwargs)
        return (value * float("nan") if step["now"] in steps_to_poison else value), info

    monkeypatch.setattr(engine_step, "policy_loss", loss)
    monkeypatch.setattr(trainer, "dyme_step", counting_step)


def _weights(checkpoint):
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def test_a_non_finite_update_is_skipped_counted_and_the_weights_stay_finite(tmp_path, chart_data, monkeypatch):
    import math

    import torch

    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=3)
    recipe.run.save_every = 1
    _poisoned_loss(monkeypatch, {3})
    train(recipe)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    strict = [json.loads(line, parse_constant=lambda name: pytest.fail(f"bare {name} in metrics.jsonl")) for line in lines]
    assert [m["nonfinite_updates"] for m in strict] == [0, 0, 1]
    assert strict[2]["loss"] is None and math.isfinite(strict[1]["loss"])
    before, after = (_weights(tmp_path / "run" / "checkpoints" / f"step-00000{n}") for n in (2, 3))
    assert all(torch.isfinite(t).all() and torch.equal(t, before[name]) for name, t in after.items())


def test_a_streak_of_non_finite_updates_stops_the_run_with_one_line(tmp_path, chart_data, monkeypatch):
    from dyme_cli.trainer import NONFINITE_LIMIT

    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=8)
    _poisoned_loss(monkeypatch, set(range(3, 9)))
    recipe_file = tmp_path / "recipe.toml"
    from dyme_cli.recipe import recipe_to_toml

    recipe_file.write_text(recipe_to_toml(recipe))
    result = runner.invoke(app, ["train", str(recipe_file)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    message = " ".join(result.output.split())
    assert f"step {2 + NONFINITE_LIMIT}: the loss or gradient was not finite in {NONFINITE_LIMIT} steps in a row" in message
    assert "step-000004" in message and "[rollout].max_new_tokens" in message  # markup-safe messages
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2 + NONFINITE_LIMIT


def test_an_update_that_makes_a_weight_non_finite_stops_the_run_before_any_checkpoint_holds_it(
        tmp_path, chart_data, monkeypatch):
    """A finite loss and gradient, and still an overflowing optimizer update (here: step 2 writes an infinity into
    one weight after AdamW's step): the run stops with one line at that step, and every checkpoint is finite."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from dyme_cli.recipe import recipe_to_toml

    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=4)
    recipe.run.save_every = 1
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(recipe_to_toml(recipe))
    steps = {"n": 0}

    def overflow(optimizer, args, kwargs):
        steps["n"] += 1
        if steps["n"] == 2:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].view(-1)[0] = float("inf")

    handle = register_optimizer_step_post_hook(overflow)
    try:
        result = runner.invoke(app, ["train", str(recipe_file)])
    finally:
        handle.remove()
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    message = " ".join(result.output.split())
    assert "step 2: the update made some weights non-finite though the loss and gradient were finite" in message
    assert "step-000001" in message, message
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert [c.name for c in checkpoints] == ["step-000001"]
    assert all(torch.isfinite(t).all() for t in _weights(checkpoints[0]).values())


def test_resuming_a_finished_run_says_so_instead_of_showing_an_empty_bar(tmp_path, chart_data):
    from dyme_cli.recipe import recipe_to_toml

    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(recipe_to_toml(small_recipe(chart_data, tmp_path / "run", max_steps=1)))
    assert runner.invoke(app, ["train", str(recipe_file)]).exit_code == 0
    again = runner.invoke(app, ["train", str(recipe_file), "--resume"])
    assert again.exit_code == 0
    assert "the run is already at step 1 of 1: nothing to train" in " ".join(again.output.split())
    assert "0/1" not in again.output and "starting" not in again.output


def test_a_disk_that_fills_up_while_a_checkpoint_is_written_keeps_the_last_one_and_says_how_much_is_needed(
        tmp_path, chart_data, monkeypatch):
    import dyme_cli.checkpoint as checkpoint
    from dyme_cli.checkpoint import CheckpointNotWritten

    recipe = small_recipe(chart_data, tmp_path / "run")  # 4 steps, a checkpoint every 2
    real_save = checkpoint.torch.save

    def save(state, path, *args, **kwargs):
        if state["step"] == 4:  # what torch.save says when the device is full
            raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
        return real_save(state, path, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", save)
    with pytest.raises(CheckpointNotWritten) as info:
        train(recipe)
    run = tmp_path / "run"
    message = str(info.value)
    assert message.startswith(f"step 4: no space left on the device of {run} for its checkpoint (about ")
    assert message.endswith(f"MiB); nothing of it was kept and the last checkpoint is {run / 'checkpoints' / 'step-000002'}; "
                            "free the space and continue with --resume")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002"]  # no half-written step-4
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert train(recipe, resume=True).steps == 4


def test_a_full_disk_while_logging_is_one_line(tmp_path, chart_data, monkeypatch):
    import errno

    import dyme_cli.rundir as rundir

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(rundir, "append_jsonl", full)
    recipe = tmp_path / "recipe.toml"
    from dyme_cli.recipe import recipe_to_toml

    recipe.write_text(recipe_to_toml(small_recipe(chart_data, tmp_path / "run")))
    result = runner.invoke(app, ["train", str(recipe)])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines()[-1] == ("error: writing: No space left on device; free some space (a run "
                                                      "continues with --resume)")


@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to "
                 "allocate 1099511627776 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
], ids=["cpu-allocator", "memory-error"])
def test_a_step_that_runs_out_of_memory_is_one_line_naming_what_to_lower(tmp_path, chart_data, monkeypatch, failure):
    import dyme_cli.trainer as trainer

    real_step = trainer.dyme_step

    def step(engine, number):
        if number == 3:
            raise failure
        return real_step(engine, number)

    monkeypatch.setattr(trainer, "dyme_step", step)
    with pytest.raises(trainer.OutOfMemory) as info:
        train(small_recipe(chart_data, tmp_path / "run"))
    message = str(info.value)
    assert message.startswith("step 3: out of memory (") and "\n" not in message
    assert "lower [optim].micro_batch_size" in message
    assert message.endswith(f"the last checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step-000002'}")
