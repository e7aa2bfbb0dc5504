"""Precision: fp32 master weights with bf16 autocast keep small updates that pure bf16 weights lose; no weight decay
on biases and norms; the linear schedule; tempered log-probabilities."""

import math

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from dyme_cli.data import read_samples
from dyme_cli.modeling import load_policy, prepare_for_training
from dyme_cli.recipe import LoraSection, ModelSection
from dyme_cli.rollout import encode_prompt
from dyme_cli.scoring import completion_logprobs, with_completion
from dyme_cli.optim import build_optimizer, lr_factor
from dyme_cli.trainer import train

from conftest import small_recipe


def _changed(run_dir, keys=None) -> float:
    """Share of weight elements (of `keys`, default all) that one optimizer step changed, in their stored dtype."""
    before = load_file(str(run_dir / "base-model" / "model.safetensors"))
    after = load_file(str(run_dir / "checkpoints" / "step-000001" / "model.safetensors"))
    keys = [k for k in before if keys is None or k in keys]
    changed = sum(int((after[k] != before[k].to(after[k].dtype)).sum()) for k in keys)
    return changed / sum(before[k].numel() for k in keys)


def test_an_update_at_the_paper_lr_changes_fp32_master_weights_under_bf16_autocast(chart_data, tmp_path):
    # One SFT step (every prompt memorized, so every weight gets a gradient) at the GPU recipes' lr 8e-5.
    settings = dict(algorithm="sft", max_steps=1, optim={"lr": 8e-5, "weight_decay": 0.0})
    mixed = small_recipe(chart_data, tmp_path / "mixed", **settings)
    mixed.model.mixed_precision = "bf16"  # the GPU recipes' setting: float32 weights, bf16 compute
    pure = small_recipe(chart_data, tmp_path / "pure", **settings)
    pure.model.dtype = "bfloat16"  # the explicit memory-saving choice: weights and AdamW state in bf16
    train(mixed)
    AcceleratorState._reset_state()  # one accelerate state per process, as in two `dyme train` processes
    train(pure)
    # AdamW's first step moves every weight that has a gradient by about lr: the fp32 master weights keep it ...
    assert _changed(tmp_path / "mixed") > 0.99
    # ... while in bf16 a weight near 1 (the normalisation weights) has an ulp of 2^-7: a step of 8e-5 is lost.
    norms = [k for k, v in load_file(str(tmp_path / "pure" / "base-model" / "model.safetensors")).items()
             if "norm" in k and bool((v == 1).all())]
    assert norms and _changed(tmp_path / "mixed", norms) > 0.99
    assert _changed(tmp_path / "pure", norms) == 0.0


def test_no_weight_decay_on_biases_and_normalisation_weights(tiny_model_dir, chart_data, tmp_path):
    policy = load_policy(str(tiny_model_dir))
    recipe = small_recipe(chart_data, tmp_path, optim={"weight_decay": 0.1})
    optimizer, _ = build_optimizer(policy.model, recipe, 4)
    by_param = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    norms = {id(p) for m in policy.model.modules() if "Norm" in type(m).__name__ for p in m.parameters(recurse=False)}
    for name, p in policy.model.named_parameters():
        expected = 0.0 if name.endswith("bias") or id(p) in norms else 0.1
        assert by_param[id(p)] == expected, name
    assert sorted(set(by_param.values())) == [0.0, 0.1]


def test_linear_schedule_by_hand():
    assert [lr_factor(s, 2, 10, "linear") for s in (0, 1)] == pytest.approx([1 / 3, 2 / 3])  # warmup
    assert [lr_factor(s, 2, 10, "linear") for s in (2, 6, 10, 12)] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert lr_factor(6, 2, 10, "cosine") == pytest.approx(0.5 * (1 + math.cos(math.pi / 2)))


def test_log_probabilities_are_those_of_the_tempered_sampling_policy(tiny_model_dir, chart_data):
    policy = load_policy(str(tiny_model_dir))
    policy.model.eval()
    sample = read_samples(chart_data / "train.jsonl")[0]
    ids = policy.tokenizer("red = 5", add_special_tokens=False)["input_ids"]
    row, prompt_len = with_completion(encode_prompt(policy, sample), ids)
    logp, _ = completion_logprobs(policy.model, [(row, prompt_len)], policy.pad_token_id, temperature=2.0)
    with torch.no_grad():
        logits = policy.model(**row).logits[0].float()
    expected = [torch.log_softmax(logits[t - 1] / 2.0, -1)[row["input_ids"][0, t]].item()
                for t in range(prompt_len, prompt_len + len(ids))]
    assert logp[0].tolist() == pytest.approx(expected, abs=1e-5)
    untempered, _ = completion_logprobs(policy.model, [(row, prompt_len)], policy.pad_token_id)
    assert not torch.allclose(untempered, logp)


def test_lora_adapters_train_in_fp32_over_a_bf16_base(tiny_model_dir):
    policy = load_policy(str(tiny_model_dir), "bfloat16")
    prepare_for_training(policy, ModelSection(name_or_path="x", dtype="bfloat16", lora=LoraSection(r=4)))
    trainable = {p.dtype for p in policy.model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in policy.model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
