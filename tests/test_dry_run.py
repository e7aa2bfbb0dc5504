"""`dyme train RECIPE --dry-run`: every shipped recipe validates, the plan's numbers are right, and the
parameter counts match real models."""

import shutil
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from typer.testing import CliRunner

from dyme_cli import ui
from dyme_cli.cli import app
from dyme_cli.modeling import DEFAULT_LORA_TARGETS, load_policy, vision_towers
from dyme_cli.plan import dry_run
from dyme_cli.prepare import synthetic_chart, synthetic_math, synthetic_medvqa
from dyme_cli.recipe import load_recipe

from conftest import REPO, small_recipe

runner = CliRunner()
GENERATORS = {"chart": synthetic_chart.generate, "math": synthetic_math.generate, "medvqa": synthetic_medvqa.generate}


@pytest.mark.parametrize("recipe_path", sorted((REPO / "recipes").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_passes_the_dry_run(recipe_path, tmp_path, monkeypatch, offline_hub):
    """Fixture data is written where the recipe expects it; hub models are reported as not checked."""
    recipe = load_recipe(recipe_path)
    monkeypatch.chdir(tmp_path)
    task = {"demo": "chart", "chart": "chart", "math": "math", "medvqa": "medvqa"}[recipe_path.stem]
    folder = Path(recipe.data.train).parent
    GENERATORS[task](folder, n_train=6, n_test=3, seed=0)
    monkeypatch.setattr(ui.console, "width", 200)
    result = runner.invoke(app, ["train", str(recipe_path), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "ok: the recipe is ready to train" in result.output
    text = " ".join(result.output.replace("│", " ").split())
    k, prompts = recipe.rollout.num_generations, recipe.train.prompts_per_step
    assert f"{prompts} prompts x K={k} = {prompts * k}" in text
    assert f"train data {recipe.data.train}: 6 samples ({task} 6)" in text
    if not recipe.model.name_or_path.startswith("tiny:"):
        assert f"model '{recipe.model.name_or_path}' not checked" in text
    assert not (tmp_path / recipe.run.output_dir).exists()  # nothing trained, nothing written


@pytest.mark.parametrize("lora", [False, True])
def test_parameter_counts_match_a_real_model(chart_data, tiny_model_dir, tmp_path, lora):
    recipe = small_recipe(chart_data, tmp_path / "run")
    recipe.model.name_or_path = str(tiny_model_dir)
    recipe.model.freeze_vision = True
    if lora:
        recipe.model.lora = {"r": 4}
    plan = dict(dry_run(recipe).facts)
    model = load_policy(str(tiny_model_dir)).model
    total = sum(p.numel() for p in model.parameters())
    if lora:
        peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=DEFAULT_LORA_TARGETS))
        trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    else:
        trainable = total - sum(p.numel() for tower in vision_towers(model) for p in tower.parameters())
    assert f"{total / 1e6:.1f}M parameters, {trainable / 1e6:.2f}M trainable" in plan["model"]
    assert plan["rows per step"].startswith("at most 8 ")  # 4 prompts x K = 2
    assert plan["micro-batches per update"] == "at most 3, 3 rows each"


def test_problems_exit_2_and_are_all_reported(tmp_path, chart_data, offline_hub):
    recipe_file = tmp_path / "r.toml"
    recipe_file.write_text(
        f'[model]\nname_or_path = "{tmp_path}/no-model"\n[data]\ntrain = "{tmp_path}/missing.jsonl"\n'
        f'test = "{chart_data}/test.jsonl"\n[verifier.options.nope]\nx = 1\n')
    result = runner.invoke(app, ["train", str(recipe_file), "--dry-run"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert f"{tmp_path}/missing.jsonl: dataset file not found" in text
    assert "[verifier.options.nope]: unknown verifier 'nope'" in text
    assert f"cannot load '{tmp_path}/no-model'" in text


@pytest.mark.parametrize("processor_options, image_tokens", [
    ("", 4),  # the tiny SmolVLM: one 32-px view, 4 tokens after pixel shuffle
    ("[model.processor]\ndo_image_splitting = true\nsize = { longest_edge = 64 }\n", 20),  # 2 x 2 crops + global view
])
def test_chart_recipe_dry_run_shows_the_prompt_the_precision_and_the_image_tokens(
        processor_options, image_tokens, tmp_path, monkeypatch, tiny_model_dir, chart_data):
    """recipes/chart.toml on fixture data; the hub is out of reach, so the tiny SmolVLM stands in for SmolVLM-256M."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(chart_data, tmp_path / "data" / "chartqa")
    recipe = (REPO / "recipes" / "chart.toml").read_text()
    recipe = recipe.replace('"HuggingFaceTB/SmolVLM-256M-Instruct"', f'"{tiny_model_dir}"')
    (tmp_path / "chart.toml").write_text(recipe.replace("[data]", processor_options + "[data]", 1))
    monkeypatch.setattr(ui.console, "width", 250)
    result = runner.invoke(app, ["train", "chart.toml", "--dry-run"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "precision float32 weights and AdamW state; compute in bf16 autocast (accelerate)" in text
    assert ('prompt <|im_start|>User:<image>Your task is to answer the question below. Give step by step thinking '
            'before you answer, and when you\'re ready to answer, please use the format "Answer: .." Question:') in text
    assert f", {image_tokens} of them image tokens" in text


@pytest.mark.parametrize("processes, prompts, rows, micro", [(2, 3, 5, 2), (4, 2, 3, 1), (5, 1, 2, 1)])
def test_the_plan_for_several_processes_gives_each_one_s_share(chart_data, tmp_path, processes, prompts, rows, micro):
    recipe = small_recipe(chart_data, tmp_path / "run", prompts_per_step=5)  # K = 2, micro-batches of 3 rows
    plan = dict(dry_run(recipe, processes=processes).facts)
    assert plan["per process and step"] == f"at most {prompts} prompts, {rows} rows, {micro} micro-batches of 3"
    assert plan["processes"].startswith(f"{processes}, each with a whole copy of the weights, gradients and optimizer")
    assert "processes" not in dict(dry_run(recipe).facts)


def test_a_sharded_plan_gives_each_process_its_share_of_the_state(chart_data, tmp_path, tiny_model_dir):
    recipe = small_recipe(chart_data, tmp_path / "run")
    recipe.model.name_or_path = str(tiny_model_dir)
    whole = dry_run(recipe, processes=4).state_bytes
    sharded = dry_run(recipe, processes=4, layout="shard")
    assert whole and sharded.state_bytes == pytest.approx(whole / 4)
    assert dict(sharded.facts)["processes"].startswith("4, weights, gradients and optimizer state sharded")
    assert "the rollouts gather the whole weights" in dict(sharded.facts)["memory (rough)"]
    assert "host memory" not in dict(sharded.facts)["memory (rough)"]
    offloaded = dry_run(recipe, processes=4, layout="shard", offload=True)
    assert offloaded.state_bytes == sharded.state_bytes
    assert "in host memory (CPU offload)" in dict(offloaded.facts)["memory (rough)"]


def _gathered_gib(plan) -> str:
    return dict(plan.facts)["memory (rough)"].split("gather the whole weights (")[1].split(")")[0]


def test_sharded_bf16_compute_gathers_the_weights_at_two_bytes_a_parameter(chart_data, tmp_path, tiny_model_dir):
    recipe = small_recipe(chart_data, tmp_path / "run")
    recipe.model.name_or_path = str(tiny_model_dir)
    fp32 = _gathered_gib(dry_run(recipe, processes=2, layout="shard"))
    recipe.model.mixed_precision = "bf16"
    bf16 = _gathered_gib(dry_run(recipe, processes=2, layout="shard"))
    (fp32_value, unit), (bf16_value, bf16_unit) = fp32.split(), bf16.split()
    assert unit == bf16_unit and float(bf16_value) == pytest.approx(float(fp32_value) / 2, rel=0.05)
