"""The run's record is never overwritten or lost: every refusal comes before anything is written (a new run in a
directory that holds one, a resumed run whose recipe changed what it trains, a second process), a half-built base
model says what to delete, damaged checkpoints are passed over and kept aside, and writes are fsynced."""

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.recipe import recipe_to_toml
from dyme_cli.rundir import LOCK_FILE, RunDir, RunDirError, state_file
from dyme_cli.trainer import train

from conftest import REPO, small_recipe

runner = CliRunner()


def _snapshot(run: Path) -> dict[str, tuple[str, int]]:
    """Every entry under `run` (the lock aside) with its bytes' hash and modification time."""
    return {str(p.relative_to(run)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir",
                                      p.stat().st_mtime_ns)
            for p in sorted(run.rglob("*")) if p.name != LOCK_FILE}


def _one_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in output, output
    return lines[0]


# --------------------------------------------------------------------------- a new run


def test_a_new_run_where_one_is_recorded_is_refused_before_it_writes_anything(tmp_path, chart_data):
    run = tmp_path / "run"
    train(small_recipe(chart_data, run, max_steps=1))
    before = _snapshot(run)
    with pytest.raises(RunDirError) as info:
        train(small_recipe(chart_data, run, max_steps=1, optim={"lr": 2e-3}))
    message = str(info.value)
    assert "checkpoints/" in message and "recipe.toml" in message and "\n" not in message
    assert message.endswith("pass --resume to continue it, or choose another --output")
    assert _snapshot(run) == before  # the recipe of the run there is not rewritten, nothing else either


@pytest.mark.parametrize("entry", ["metrics.jsonl", "traces.jsonl", "recipe.toml", "base-model/", "checkpoints/"])
def test_any_part_of_a_run_record_blocks_a_new_run(tmp_path, chart_data, entry):
    run = tmp_path / "run"
    run.mkdir()
    (run / entry).mkdir() if entry.endswith("/") else (run / entry).write_text("{}\n")
    with pytest.raises(RunDirError, match=f"already holds a run \\({entry}\\); pass --resume"):
        train(small_recipe(chart_data, run, max_steps=1))
    assert sorted(p.name for p in run.iterdir()) == sorted([entry.rstrip("/"), LOCK_FILE])


# --------------------------------------------------------------------------- resuming with another recipe


def test_resume_refuses_a_recipe_change_unless_allowed_and_keeps_the_recorded_recipe(tmp_path, chart_data):
    run = tmp_path / "run"
    train(small_recipe(chart_data, run, max_steps=2))
    recorded = (run / "recipe.toml").read_text()
    changed = small_recipe(chart_data, run, max_steps=2, optim={"lr": 2e-3}, num_iterations=2)
    with pytest.raises(RunDirError) as info:
        train(changed, resume=True)
    message = str(info.value)
    assert "[train].num_iterations 1 -> 2; [optim].lr 0.001 -> 0.002" in message and "\n" not in message
    assert "pass --allow-recipe-change" in message
    assert (run / "recipe.toml").read_text() == recorded and not list(run.glob("recipe.toml.*"))

    # how long the run goes and how it is saved and observed may change; the recipe records it
    longer = small_recipe(chart_data, run, max_steps=3)
    longer.run.save_every, longer.run.keep_checkpoints, longer.run.eval_every, longer.run.eval_limit = 1, 3, 3, 2
    longer.verifier.workers, longer.verifier.timeout_s = 1, 9.0
    assert train(longer, resume=True).steps == 3
    assert (run / "recipe.toml").read_text() == recipe_to_toml(longer)

    messages = []
    changed.train.max_steps = 4
    assert train(changed, resume=True, allow_recipe_change=True, on_message=messages.append).steps == 4
    assert any("[optim].lr 0.001 -> 0.002" in m and "recipe.toml.step-3" in m for m in messages), messages
    assert (run / "recipe.toml.step-3").read_text() == recipe_to_toml(longer)
    assert (run / "recipe.toml").read_text() == recipe_to_toml(changed)


def test_a_recorded_recipe_that_cannot_be_read_is_a_change_allowed_on_request_not_another_model(tmp_path, chart_data):
    """A recipe recorded by a newer dyme (a key this one does not know) says nothing about the model's shape."""
    run = tmp_path / "run"
    train(small_recipe(chart_data, run, max_steps=2))
    (run / "recipe.toml").write_text((run / "recipe.toml").read_text().replace("[run]", "[run]\nnewer_key = 1", 1))
    longer = small_recipe(chart_data, run, max_steps=3)
    with pytest.raises(RunDirError, match="the recorded recipe cannot be read .*pass --allow-recipe-change"):
        train(longer, resume=True)
    assert train(longer, resume=True, allow_recipe_change=True).steps == 3


# --------------------------------------------------------------------------- one process per run directory

HOLD_LOCK = """
import sys
from pathlib import Path
from dyme_cli.rundir import RunDir
with RunDir(Path(sys.argv[1])).locked():
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_a_second_process_on_the_run_directory_is_refused_until_the_first_ends(tmp_path, chart_data):
    run = tmp_path / "run"
    run.mkdir()  # empty: fine for a new run
    recipe = small_recipe(chart_data, run, max_steps=1)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=rf"{run} is in use by another dyme process \(pid {holder.pid}\)") as info:
            train(recipe)
        assert "\n" not in str(info.value) and RunDir(run).contents() == []
    finally:
        holder.stdin.close()
        holder.wait(timeout=120)
    assert train(recipe).steps == 1


KILLED_AT_STEP_3 = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import small_recipe
from dyme_cli.trainer import train

def killed(step, total, metrics):
    if step == 3:  # after step 3 is logged; the last checkpoint is step 2's
        os.kill(os.getpid(), signal.SIGKILL)

train(small_recipe(Path(sys.argv[1]), Path(sys.argv[2])), on_step=killed)
"""


def test_kill_9_leaves_no_lock_behind_and_resume_is_bit_identical(tmp_path, chart_data):
    from safetensors.torch import load_file

    straight = train(small_recipe(chart_data, tmp_path / "straight"))
    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", KILLED_AT_STEP_3, str(chart_data), str(run)], cwd=REPO, timeout=600)
    assert killed.returncode == -signal.SIGKILL
    assert [r["step"] for r in RunDir(run).metrics()] == [1, 2, 3]
    resumed = train(small_recipe(chart_data, run), resume=True)
    assert resumed.steps == 4 and [r["step"] for r in RunDir(run).metrics()] == [1, 2, 3, 4]
    a, b = (load_file(str(result.checkpoint / "model.safetensors")) for result in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- the base model


def test_a_half_built_base_model_says_what_to_delete(tmp_path, chart_data, tiny_model_dir):
    run = tmp_path / "run"
    recipe = small_recipe(chart_data, run, max_steps=1)
    shutil.copytree(tiny_model_dir, run / "base-model")
    (run / "base-model" / "model.safetensors").unlink()  # built in place by an earlier dyme, stopped half-way
    with pytest.raises(RunDirError, match=r"already holds a run \(base-model/\); pass --resume"):
        train(recipe)
    with pytest.raises(RunDirError) as info:
        train(recipe, resume=True)
    assert str(info.value).startswith(f"{run / 'base-model'} is half-built or damaged: delete it (it is built "
                                      "again from the recipe) and run again with --resume (")
    assert "\n" not in str(info.value)


def test_a_base_model_build_that_stops_half_way_leaves_no_base_model(tmp_path, chart_data, monkeypatch):
    import dyme_cli.runstart as runstart

    def stopped_while_building(section, base_dir, texts, seed):
        (Path(base_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    run = tmp_path / "run"
    recipe = small_recipe(chart_data, run, max_steps=1)
    with monkeypatch.context() as patch:
        patch.setattr(runstart, "resolve_model_path", stopped_while_building)
        with pytest.raises(KeyboardInterrupt):
            train(recipe)
    assert not (run / "base-model").exists() and RunDir(run).contents() == []
    assert train(recipe).steps == 1  # the temporary build is removed and built again
    assert (run / "base-model" / "model.safetensors").is_file() and not (run / ".tmp-base-model").exists()


# --------------------------------------------------------------------------- damaged checkpoints


def test_damaged_checkpoints_are_passed_over_kept_aside_and_never_counted(tmp_path, chart_data):
    run = tmp_path / "run"
    recipe = small_recipe(chart_data, run, max_steps=4)
    recipe.run.save_every, recipe.run.keep_checkpoints = 1, 4
    train(recipe)
    checkpoints = run / "checkpoints"
    weights = checkpoints / "step-000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short
    state = state_file(checkpoints / "step-000003")
    state.write_bytes(state.read_bytes()[:100])  # cut short
    (checkpoints / "step-000009").write_text("not a checkpoint")  # a stray file
    (checkpoints / "step-000007").mkdir()  # a stray folder
    (checkpoints / "step-000007" / "config.json").write_text("{}")
    damaged = {name: _snapshot(checkpoints / name) if (checkpoints / name).is_dir() else (checkpoints / name).read_text()
               for name in ("step-000009", "step-000007", "step-000004", "step-000003")}

    # keep_checkpoints = 1: were a damaged checkpoint counted as the newest, rotation would delete the new ones
    recipe.train.max_steps, recipe.run.keep_checkpoints = 5, 1
    messages = []
    assert train(recipe, resume=True, on_message=messages.append).steps == 5
    reports = [m for m in messages if " is damaged (" in m]
    assert [m.split()[0] for m in reports] == [f"checkpoints/{name}" for name in damaged], messages
    assert all(m.endswith("; resuming from step-000002") for m in reports)
    assert "its weights do not load" in reports[2] and "cannot read the trainer state" in reports[3]
    assert any(m.startswith("resumed from") and m.endswith("step-000002 (step 2)") for m in messages)
    assert [p.name for p in RunDir(run).checkpoints()] == ["step-000005"]
    for name, before in damaged.items():  # kept, untouched, under a name that is no checkpoint's
        kept = checkpoints / f"{name}.damaged"
        assert (_snapshot(kept) if kept.is_dir() else kept.read_text()) == before
    assert [r["step"] for r in RunDir(run).metrics()] == [1, 2, 3, 4, 5]


def test_no_intact_checkpoint_is_one_line_and_moves_nothing(tmp_path, chart_data):
    run = tmp_path / "run"
    recipe = small_recipe(chart_data, run, max_steps=1)
    train(recipe)
    (run / "checkpoints" / "step-000001" / "model.safetensors").write_bytes(b"\0" * 64)
    before = _snapshot(run)
    recipe.train.max_steps = 2
    with pytest.raises(RunDirError) as info:
        train(recipe, resume=True)
    message = str(info.value)
    assert message.startswith(f"{run}: no intact checkpoint to resume from: checkpoints/step-000001 is damaged (its "
                              "weights do not load: ")
    assert "\n" not in message and _snapshot(run) == before


# --------------------------------------------------------------------------- durable writes


def test_checkpoints_and_records_are_fsynced_before_and_after_their_rename(tmp_path, monkeypatch):
    synced = []
    fsync = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    root = tmp_path.resolve() / "run"
    run = RunDir(root)
    with run.new_checkpoint(3, keep=2) as directory:
        (directory / "model.safetensors").write_bytes(b"weights")
        (directory / "sub").mkdir()
        (directory / "sub" / "x.json").write_text("{}")
    tmp = root / "checkpoints" / ".tmp-step-000003"
    files = [str(tmp / "model.safetensors"), str(tmp / "sub" / "x.json")]
    assert all(synced.index(f) < synced.index(str(tmp)) for f in files)  # every file, before its folder
    assert synced.index(str(tmp / "sub" / "x.json")) < synced.index(str(tmp / "sub")) < synced.index(str(tmp))
    assert synced[-1] == str(root / "checkpoints")  # the rename itself
    assert (root / "checkpoints" / "step-000003" / "sub" / "x.json").is_file()

    synced.clear()
    run.record_recipe("a = 1\n")
    assert synced == [str(root / ".tmp-recipe.toml"), str(root)]
    assert run.recipe_file.read_text() == "a = 1\n" and not (root / ".tmp-recipe.toml").exists()


# --------------------------------------------------------------------------- the command line


def test_the_command_line_refuses_a_directory_in_use_in_one_line(tmp_path, chart_data):
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text(recipe_to_toml(small_recipe(chart_data, tmp_path / "run", max_steps=1)))
    with RunDir(tmp_path / "run").locked():
        result = runner.invoke(app, ["train", str(recipe_file)])
    assert result.exit_code == 2
    assert f"{tmp_path / 'run'} is in use by another dyme process (pid {os.getpid()})" in _one_line(result.output)


def test_the_command_line_refuses_a_changed_recipe_on_resume_in_one_line_unless_allowed(tmp_path, chart_data):
    run = tmp_path / "run"
    train(small_recipe(chart_data, run, max_steps=1))
    changed = tmp_path / "changed.toml"
    changed.write_text(recipe_to_toml(small_recipe(chart_data, run, max_steps=2, optim={"lr": 2e-3})))
    result = runner.invoke(app, ["train", str(changed), "--resume"])
    assert result.exit_code == 2
    line = _one_line(result.output)
    assert "[optim].lr 0.001 -> 0.002" in line and "pass --allow-recipe-change" in line

    result = runner.invoke(app, ["train", str(changed), "--allow-recipe-change"])
    assert result.exit_code == 2 and "--allow-recipe-change goes with --resume" in _one_line(result.output)

    result = runner.invoke(app, ["train", str(changed), "--resume", "--allow-recipe-change"])
    assert result.exit_code == 0, result.output
    assert "lr = 0.001\n" in (run / "recipe.toml.step-1").read_text()
    assert "lr = 0.002\n" in (run / "recipe.toml").read_text()
