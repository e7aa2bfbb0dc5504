"""One run across several processes (`accelerate launch` with recipes/accelerate/ddp.yaml, fsdp2.yaml or
fsdp2-zero2.yaml, gloo on the CPU): the same weights as one process, replicated or sharded, every prompt of a step
trained once, one set of logs and checkpoints, resume after a kill with another number of processes, and the same
evaluation table."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dyme_cli import processes
from dyme_cli.data import read_samples, write_samples
from dyme_cli.errors import UserError
from dyme_cli.plan import dry_run
from dyme_cli.prepare.synthetic_math import generate as generate_math
from dyme_cli.recipe import recipe_to_toml
from dyme_cli.step import prompt_indices
from dyme_cli.trainer import train

from conftest import PLUGINS, REPO, small_recipe

ACCELERATE = Path(sys.executable).parent / "accelerate"


def launch(args: list[str], cwd: Path, processes_: int = 2, wait: bool = True, config: str = "ddp",
           path: Path | None = None, via_dyme: bool = False):
    """`accelerate launch --config_file recipes/accelerate/CONFIG.yaml -m dyme_cli ARGS` (or `dyme launch
    --config_file ... ARGS`) with one thread per process (and `path` on the processes' PYTHONPATH)."""
    options = ["--config_file", str(REPO / "recipes" / "accelerate" / f"{config}.yaml"),
               "--num_processes", str(processes_), "--main_process_port", str(_free_port())]
    command = ([sys.executable, "-m", "dyme_cli", "launch", *options, *args] if via_dyme
               else [str(ACCELERATE), "launch", *options, "-m", "dyme_cli", *args])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    if not wait:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def _free_port() -> int:
    """A port nothing listens on now: the default one may still be held by the previous test's job."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launched_until(ready, args: list[str], cwd: Path, config: str = "ddp", via_dyme: bool = False
                    ) -> subprocess.Popen:
    """A launched job, once `ready()` holds (or the job ended, or 4 minutes passed)."""
    job = launch(args, cwd, wait=False, config=config, via_dyme=via_dyme)
    deadline = time.monotonic() + 240
    while not ready() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    return job


def _recipe_file(recipe, path: Path) -> Path:
    path.write_text(recipe_to_toml(recipe))
    return path


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("n, world", [(10, 2), (7, 2), (7, 3), (2, 3)])
def test_shares_are_contiguous_cover_everything_once_and_differ_by_at_most_one(n, world):
    shares = [processes.share(n, process=p, processes=world) for p in range(world)]
    assert [i for s in shares for i in s] == list(range(n))
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def _lora_frozen_vision_checkpointed(recipe) -> None:
    recipe.model.lora = {"r": 4, "alpha": 8, "dropout": 0.0}
    recipe.model.freeze_vision = True
    recipe.model.gradient_checkpointing = True


def _bf16_autocast(recipe) -> None:
    recipe.model.mixed_precision = "bf16"


def _weights(checkpoint: Path) -> dict:
    """Every tensor the checkpoint saved (the full model, or a LoRA adapter)."""
    return {f"{f.name}:{name}": t.float() for f in checkpoint.glob("*.safetensors") for name, t in load_file(str(f)).items()}


def _qwen2_5_vl(recipe) -> None:
    recipe.model.name_or_path = "tiny:qwen2.5-vl"  # 3-D rope positions, a vision tower of its own kind


def _text_only_llama(recipe) -> None:
    """A text-only model on math questions: batches without any image."""
    out = Path(recipe.run.output_dir).parent / "math"
    generate_math(out, n_train=8, n_test=4, seed=0, max_number=20)
    recipe.model.name_or_path = "tiny:llama"
    recipe.data.train, recipe.data.test = str(out / "train.jsonl"), str(out / "test.jsonl")


def _few_images(recipe) -> None:
    """A vision dataset whose samples mostly have no image: a step of 5 prompts holds none or one image, so after
    the deal one process (or both) runs micro-batches without images while the vision tower is trained."""
    source = Path(recipe.data.train)
    out = Path(recipe.run.output_dir).parent / "few-images"
    samples = read_samples(source)
    for index, sample in enumerate(samples):
        if index % 8:
            sample.images = []
    for image in {name for s in samples for name in s.images}:
        (out / image).parent.mkdir(parents=True, exist_ok=True)
        (out / image).write_bytes((source.parent / image).read_bytes())
    write_samples(out / "train.jsonl", samples)
    recipe.data.train, recipe.data.test = str(out / "train.jsonl"), None
    per_step = recipe.train.prompts_per_step
    imaged = [sum(bool(samples[i].images) for i in prompt_indices(len(samples), step, per_step, recipe.run.seed))
              for step in range(1, recipe.train.max_steps + 1)]
    assert 1 in imaged  # one image row in the step: the other process has none


def _kl_reference(recipe) -> None:
    recipe.train.beta = 0.1  # the frozen reference model, sharded too


def _one_prompt_a_step(recipe) -> None:
    recipe.train.prompts_per_step = 1  # one row a step: the second process has none and runs a padding row


def _train_on_one(recipe) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the launched processes (OMP_NUM_THREADS=1): the same float reductions
    try:
        train(recipe)
    finally:
        torch.set_num_threads(threads)


def _state_gib(run: Path) -> float:
    return _lines(run / "metrics.jsonl")[-1]["memory_state_gib"]


SHARDED = {"ddp": False, "fsdp2": True, "fsdp2-zero2": True, "fsdp2-offload": True}


@pytest.mark.parametrize("setup, tolerance, config", [
    (lambda recipe: None, 1e-5, "ddp"),
    (lambda recipe: None, 1e-5, "fsdp2"),
    (lambda recipe: None, 1e-5, "fsdp2-zero2"),
    (_lora_frozen_vision_checkpointed, 1e-5, "ddp"),
    (_lora_frozen_vision_checkpointed, 1e-5, "fsdp2"),
    (_one_prompt_a_step, 1e-5, "fsdp2"),
    (_kl_reference, 1e-5, "fsdp2"),
    (_qwen2_5_vl, 1e-5, "fsdp2"),
    (_text_only_llama, 1e-5, "fsdp2"),
    (_few_images, 1e-5, "ddp"),
    (_few_images, 1e-5, "fsdp2"),
    # bf16 rounds differently in differently padded micro-batches, and AdamW's first steps move every weight by
    # about lr (1e-3) whatever the gradient's size: a few lr apart after 3 steps is the same training
    (_bf16_autocast, 1e-2, "ddp"),
    (_bf16_autocast, 1e-2, "fsdp2"),  # FSDP2's policy: weights gathered in bf16, gradients reduced in fp32
    (lambda recipe: None, 1e-5, "fsdp2-offload"),
], ids=["full-fp32-ddp", "full-fp32-fsdp2", "full-fp32-fsdp2-zero2", "lora-frozen-vision-checkpointing-ddp",
        "lora-frozen-vision-checkpointing-fsdp2", "a-process-without-rows-fsdp2", "kl-reference-fsdp2", "qwen2.5-vl-fsdp2",
        "text-only-llama-fsdp2", "few-images-ddp", "few-images-fsdp2", "bf16-autocast-ddp",
        "bf16-policy-fsdp2", "full-fp32-fsdp2-offload"])
def test_sft_on_two_processes_ends_with_the_weights_of_one(tmp_path, chart_data, setup, tolerance, config):
    """No sampling in SFT: the same global batch gives the same gradient, whichever process holds which rows, and
    whether the weights are replicated or sharded; sharded, each process holds about half the state."""
    recipe = small_recipe(chart_data, tmp_path / "one", algorithm="sft", max_steps=3, prompts_per_step=5)
    setup(recipe)
    _train_on_one(recipe)
    launch(["train", str(_recipe_file(recipe, tmp_path / "recipe.toml")), "--output", str(tmp_path / "two")], tmp_path,
           config=config)
    one, two = (_weights(tmp_path / run / "checkpoints" / "step-000003") for run in ("one", "two"))
    assert one.keys() == two.keys() and one
    assert max(float((one[name] - two[name]).abs().max()) for name in one) < tolerance
    for a, b in zip(_lines(tmp_path / "one" / "metrics.jsonl"), _lines(tmp_path / "two" / "metrics.jsonl"), strict=True):
        assert a["rows"] == b["rows"] == recipe.train.prompts_per_step
        assert b["memorize_nll"] == pytest.approx(a["memorize_nll"], rel=tolerance)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=tolerance)
    ratio = _state_gib(tmp_path / "two") / _state_gib(tmp_path / "one")
    assert ratio <= 0.55 if SHARDED[config] else ratio == pytest.approx(1.0, rel=1e-6)


def test_the_planned_state_of_a_sharded_process_is_the_one_it_holds(tmp_path, chart_data, tiny_model_dir):
    recipe = small_recipe(chart_data, tmp_path / "run", algorithm="sft", max_steps=1, prompts_per_step=4)
    recipe.model.name_or_path = str(tiny_model_dir)
    planned = dry_run(recipe, processes=2, layout="shard").state_bytes
    launch(["train", str(_recipe_file(recipe, tmp_path / "recipe.toml"))], tmp_path, config="fsdp2")
    assert _state_gib(tmp_path / "run") * 2**30 == pytest.approx(planned, rel=0.2)


def test_a_run_of_one_process_resumes_sharded_on_two(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=2, prompts_per_step=4)
    train(recipe)
    recipe_file = _recipe_file(recipe, tmp_path / "recipe.toml")
    done = launch(["train", str(recipe_file), "--resume", "--max-steps", "4"], tmp_path, config="fsdp2")
    assert [m["step"] for m in _lines(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3, 4]
    assert [m["processes"] for m in _lines(tmp_path / "run" / "metrics.jsonl")] == [1, 1, 2, 2]
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    assert "step 2 ran on 1 process, the run goes on with 2: the same run up to float reduction order" in " ".join(
        done.stdout.split())


def _relabelled(chart_data: Path, folder: Path, task: str) -> Path:
    """The chart training samples with their images in `folder`, verified by `task`."""
    samples = read_samples(chart_data / "train.jsonl")
    for sample in samples:
        sample.task = task
    for image in {name for s in samples for name in s.images}:
        (folder / image).parent.mkdir(parents=True, exist_ok=True)
        (folder / image).write_bytes((chart_data / image).read_bytes())
    write_samples(folder / "train.jsonl", samples)
    return folder / "train.jsonl"


@pytest.mark.parametrize("config", ["ddp", "fsdp2", "fsdp2-zero2"])
def test_dyme_on_two_processes_samples_gates_and_learns_as_one(tmp_path, chart_data, example_plugin, config):
    """Rollouts are drawn per prompt and completion, not per process: 1 and 2 processes sample the same
    completions, make the same gate decisions (every mode: the parity verifier rights about half the rollouts)
    and end with the same weights, up to float reduction order."""
    recipe = small_recipe(chart_data, tmp_path / "one", max_steps=3, prompts_per_step=6)
    recipe.data.train = str(_relabelled(chart_data, tmp_path / "data", "parity"))
    _train_on_one(recipe)
    launch(["train", str(_recipe_file(recipe, tmp_path / "recipe.toml")), "--output", str(tmp_path / "two")], tmp_path,
           config=config, path=PLUGINS)

    def rollouts(run):
        return Counter((t["step"], t["prompt_id"], t["completion"]) for t in _lines(tmp_path / run / "traces.jsonl")
                       if t["kind"] == "rollout")

    assert rollouts("one") == rollouts("two") and rollouts("one")
    modes = [[(m[f"n_{mode}"]) for mode in ("memorize", "explore", "skip")] for run in ("one", "two")
             for m in _lines(tmp_path / run / "metrics.jsonl")]
    assert modes[:3] == modes[3:] and all(sum(column) for column in zip(*modes))  # every mode, the same each step
    one, two = (_weights(tmp_path / run / "checkpoints" / "step-000003") for run in ("one", "two"))
    assert one.keys() == two.keys() and max(float((one[name] - two[name]).abs().max()) for name in one) < 1e-5


def _covers_every_prompt_once(run: Path, recipe, steps: range) -> None:
    n = len(read_samples(recipe.data.train))
    traces = _lines(run / "traces.jsonl")
    ids = [s.id for s in read_samples(recipe.data.train)]
    for step in steps:
        expected = Counter(ids[i] for i in prompt_indices(n, step, recipe.train.prompts_per_step, recipe.run.seed))
        rollouts = Counter(t["prompt_id"] for t in traces if t["step"] == step and t["kind"] == "rollout")
        assert rollouts == Counter({pid: k * recipe.rollout.num_generations for pid, k in expected.items()}), step
    assert [m["step"] for m in _lines(run / "metrics.jsonl")] == list(steps)


@pytest.mark.parametrize("config", ["ddp", "fsdp2"])
def test_dyme_on_two_processes_trains_each_prompt_once_and_resumes_after_a_kill_on_one_or_two(tmp_path, chart_data,
                                                                                               config):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=6, prompts_per_step=5)
    recipe.run.save_every = 2
    recipe.run.eval_every, recipe.run.eval_batch_size = 3, 3  # held-out evaluations split between the processes
    recipe_file = _recipe_file(recipe, tmp_path / "recipe.toml")
    run = tmp_path / "run"
    job = _launched_until(lambda: (run / "checkpoints" / "step-000002").is_dir(), ["train", str(recipe_file)], tmp_path,
                          config)
    os.killpg(job.pid, signal.SIGKILL)  # the launcher and both workers, after the first save
    job.wait()
    assert (run / "checkpoints" / "step-000002").is_dir()

    launch(["train", str(recipe_file), "--resume", "--max-steps", "4"], tmp_path, config=config)  # two again
    assert train(recipe, resume=True).steps == 6  # then one
    _covers_every_prompt_once(run, recipe, range(1, 7))
    test_ids = sorted(s.id for s in read_samples(recipe.data.test))
    evaluated = _lines(run / "eval_traces.jsonl")
    assert sorted(t["prompt_id"] for t in evaluated if t["step"] == 6) == test_ids  # each sample once
    assert [m.get("eval_accuracy") is not None for m in _lines(run / "metrics.jsonl")] == [False, False, True] * 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000006"]


def test_evaluation_on_two_processes_gives_the_table_and_completions_of_one(tmp_path, chart_data, tiny_model_dir):
    common = ["eval", "--checkpoint", str(tiny_model_dir), "--data", str(chart_data / "test.jsonl"),
              "--max-new-tokens", "12", "--batch-size", "3"]
    from typer.testing import CliRunner

    from dyme_cli.cli import app

    one = CliRunner().invoke(app, [*common, "--json", str(tmp_path / "one.json"), "--traces", str(tmp_path / "one.jsonl")])
    assert one.exit_code == 0, one.output
    launch([*common, "--json", str(tmp_path / "two.json"), "--traces", str(tmp_path / "two.jsonl")], tmp_path)
    assert json.loads((tmp_path / "two.json").read_text()) == json.loads((tmp_path / "one.json").read_text())
    completions = [{(t["prompt_id"], t["completion"]) for t in _lines(tmp_path / f"{n}.jsonl")} for n in ("one", "two")]
    assert completions[0] == completions[1] and len(completions[0]) == len(read_samples(chart_data / "test.jsonl"))


def test_a_scheduler_sigterm_stops_every_process_after_the_same_step_with_one_checkpoint(tmp_path, chart_data):
    """SIGTERM to the whole job (what SLURM and Kubernetes do; the launcher forwards it to the workers again)."""
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=200, prompts_per_step=4)
    recipe.run.save_every = 1000
    recipe_file = _recipe_file(recipe, tmp_path / "recipe.toml")
    run = tmp_path / "run"
    logged = run / "metrics.jsonl"
    job = _launched_until(lambda: logged.is_file() and logged.read_text().strip(), ["train", str(recipe_file)], tmp_path,
                          via_dyme=True)
    os.killpg(job.pid, signal.SIGTERM)
    output = job.communicate(timeout=120)[0].decode()
    steps = [m["step"] for m in _lines(run / "metrics.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) < 200, output
    assert [p.name for p in (run / "checkpoints").iterdir()] == [f"step-{steps[-1]:06d}"], output
    assert "SIGTERM: stopped after step" in output
    assert job.returncode == 128 + signal.SIGTERM and "Traceback" not in output, output  # the signal's code, no trace
    recipe.train.max_steps = steps[-1] + 1
    assert train(recipe, resume=True).steps == steps[-1] + 1


def test_a_mistake_in_a_launched_run_is_one_line_and_exit_2_like_one_process(tmp_path, chart_data):
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(recipe_to_toml(small_recipe(chart_data, tmp_path / "run")).replace("max_steps", "max_step"))
    job = launch(["train", str(recipe)], tmp_path, wait=False, via_dyme=True)
    output = job.communicate(timeout=300)[0].decode()
    assert job.returncode == 2, output
    assert output.strip().splitlines() == [f"error: {recipe}: [train].max_step: unknown key"]  # no launcher report


@pytest.mark.parametrize("sizes, world", [([5, 1, 9, 3, 3, 7, 2], 2), ([4] * 7, 3), ([10, 1], 3), ([], 2)])
def test_rows_are_dealt_once_each_in_hands_of_equal_count_and_balanced_tokens(sizes, world):
    hands = processes.deal(sizes, world)
    assert sorted(i for hand in hands for i in hand) == list(range(len(sizes)))
    assert max(map(len, hands)) - min(map(len, hands)) <= 1
    totals = [sum(sizes[i] for i in hand) for hand in hands]
    assert max(totals) - min(totals) <= max(sizes, default=0)
    assert processes.deal(sizes, 1) == [list(range(len(sizes)))]  # one process keeps every row, in order


@pytest.mark.parametrize("variables, layout", [
    ({}, "replicate"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}, "shard"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "false"}, "shard-grad-op"),
])
def test_the_layout_is_the_launch_configurations_for_every_run_of_a_process(variables, layout):
    environ = dict(variables)
    assert [processes.launched_layout(environ) for _ in range(2)] == [layout] * 2  # dyme compare: run after run
    assert environ.get("ACCELERATE_USE_FSDP", "false") == "false"  # accelerate's own plugin stays off


@pytest.mark.parametrize("offload", ["true", "false", None])
def test_cpu_offload_is_the_launch_configurations(offload):
    environ = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"} | ({"FSDP_OFFLOAD_PARAMS": offload} if offload else {})
    assert processes.launched_offload(environ) is (offload == "true")


def test_a_launch_configuration_dyme_cannot_follow_is_one_line():
    with pytest.raises(UserError, match="FSDP version 1"):
        processes.launched_layout({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})


_LEAVE = """
import gc, os, sys, weakref
import torch, torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from dyme_cli.processes import leave

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
dist.init_process_group("gloo", rank=0, world_size=1)
gc.disable()  # no collection but leave's
model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
fully_shard(model)
model(torch.ones(3, 2)).sum().backward()
model.cycle = [model]
model = weakref.ref(model)
destroy = dist.destroy_process_group
dist.destroy_process_group = lambda: print("model alive when the group is destroyed:", model() is not None) or destroy()
leave(True)
print("group left:", not dist.is_initialized())
"""


def test_leaving_frees_the_wrapped_model_before_the_group_it_holds():
    """A trained model lies in reference cycles, and its communication state holds the process group: freed only
    at the interpreter's teardown, gloo's threads abort the process now and then ("terminate called without an
    active exception")."""
    done = subprocess.run([sys.executable, "-c", _LEAVE, str(_free_port())], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["model alive when the group is destroyed: False", "group left: True"]
