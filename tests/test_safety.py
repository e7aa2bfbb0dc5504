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
def test_sigterm_and_sighup_finish_the_step_checkpoint_and_stop_like_ctrl_c(tmp_path, chart_data, signum):
    recipe = small_recipe(chart_data, tmp_path / "run")
    recipe.run.save_every = 100
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}

    def preempted(step, total, metrics):
        if step == 2:
            os.kill(os.getpid(), signum)

    with pytest.raises(TrainingInterrupted) as info:
        train(recipe, on_step=preempted)
    assert info.value.step == 2 and info.value.checkpoint.name == "step-000002"
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
