"""Every supported model family end to end on a tiny random model built from its config: one DyME step
(with LoRA for some), a checkpoint that transformers (or PEFT) reloads with the same weights, and evaluation."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dyme_cli.modeling import load_policy
from dyme_cli.prepare.synthetic_math import generate as generate_math
from dyme_cli.recipe import recipe_from_dict
from dyme_cli.trainer import train

FAMILIES = {  # family -> (model class, text-only, LoRA)
    "smolvlm": ("Idefics3ForConditionalGeneration", False, False),
    "qwen2-vl": ("Qwen2VLForConditionalGeneration", False, True),
    "qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", False, False),
    "qwen3-vl": ("Qwen3VLForConditionalGeneration", False, False),
    "llava-onevision": ("LlavaOnevisionForConditionalGeneration", False, True),
    "llama": ("LlamaForCausalLM", True, True),
    "qwen2": ("Qwen2ForCausalLM", True, False),
}


@pytest.fixture(scope="module")
def math_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("math")
    generate_math(out, n_train=8, n_test=4, seed=0, max_number=20)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_dyme_step_save_reload_evaluate(family, tmp_path, chart_data, math_data):
    class_name, text_only, lora = FAMILIES[family]
    data = math_data if text_only else chart_data
    model = {"name_or_path": f"tiny:{family}", "tiny": {"image_size": 32, "hidden_size": 32, "vision_hidden_size": 32,
                                                         "intermediate_size": 64}}
    if lora:
        model["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    recipe = recipe_from_dict({
        "run": {"output_dir": str(tmp_path / "run"), "seed": 0, "save_every": 1, "eval_after": True, "eval_limit": 3},
        "model": model,
        "data": {"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl")},
        "rollout": {"num_generations": 2, "max_new_tokens": 8},
        "train": {"max_steps": 1, "prompts_per_step": 3},
        "optim": {"lr": 1e-2, "micro_batch_size": 4},
    })
    result = train(recipe)
    assert result.steps == 1 and result.after is not None and result.after.overall.prompts == 3
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["n_memorize"] + metrics["n_explore"] + metrics["n_skip"] == 3 and metrics["rows"] > 0

    checkpoint = result.checkpoint
    policy = load_policy(str(checkpoint))  # through the Auto classes (adapters merged on their base)
    assert type(policy.model).__name__ == class_name and policy.text_only is text_only
    base = load_policy(str(tmp_path / "run" / "base-model")).model
    if lora:
        adapter = load_file(checkpoint / "adapter_model.safetensors")
        assert adapter and all("lora_" in k for k in adapter) and not any("vision" in k or "visual" in k for k in adapter)
    else:
        saved = load_file(checkpoint / "model.safetensors")
        reloaded = dict(policy.model.named_parameters())
        changed = [n for n, p in base.named_parameters() if not torch.equal(p, reloaded[n])]
        assert changed, "one step with a non-zero learning rate changes some weights"
        assert saved  # plain safetensors checkpoint
        vision = [n for n in changed if any(t in n for t in ("vision_model", "vision_tower", "visual"))]
        assert not vision  # freeze_vision is the default


@pytest.mark.parametrize("family", list(FAMILIES))
def test_completion_logprobs_of_padded_rows_match_unpadded_forwards(family, tmp_path, chart_data, math_data):
    """The update's log-probs of right-padded rows with prompts of different lengths are those of an unpadded
    forward of each whole sequence, in every family."""
    from dyme_cli.data import read_samples
    from dyme_cli.modeling import resolve_model_path
    from dyme_cli.recipe import ModelSection
    from dyme_cli.rollout import completion_logprobs, encode_prompt, with_completion

    text_only = FAMILIES[family][1]
    samples = read_samples((math_data if text_only else chart_data) / "train.jsonl")
    short, long = min(samples, key=lambda s: len(s.question)), max(samples, key=lambda s: len(s.question))
    section = ModelSection(name_or_path=f"tiny:{family}", tiny={"image_size": 32, "hidden_size": 32,
                                                                 "vision_hidden_size": 32, "intermediate_size": 64})
    path = resolve_model_path(section, tmp_path / "model", [s.question + " " + s.answer for s in samples], 0)
    policy = load_policy(path)
    policy.model.eval()
    completions = [policy.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("so it is 5", "7")]
    pairs = [with_completion(encode_prompt(policy, s), ids) for s, ids in zip((short, long), completions)]
    assert pairs[0][1] != pairs[1][1]  # prompts of different lengths
    with torch.no_grad():
        logp, mask = completion_logprobs(policy.model, pairs, policy.pad_token_id)
    for i, (row, prompt_len) in enumerate(pairs):
        with torch.no_grad():
            logits = policy.model(**row).logits[0]
        ids = row["input_ids"][0]
        expected = [torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(prompt_len, len(ids))]
        assert logp[i, : len(expected)].tolist() == pytest.approx(expected, abs=1e-5)
        assert mask[i].tolist() == [1.0] * len(expected) + [0.0] * (mask.shape[1] - len(expected))
