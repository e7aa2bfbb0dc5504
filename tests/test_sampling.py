"""Generation settings are the recipe's alone: nothing is inherited from a model's generation_config, and the run
directory records them; processor options from the recipe reach training and its checkpoints."""

import json

import torch
from transformers import GenerationConfig

from dyme_cli.data import read_samples
from dyme_cli.modeling import load_policy
from dyme_cli.rollout import encode_prompt, generate, sampling_settings
from dyme_cli.trainer import train

from conftest import small_recipe


def _sample_ids(policy, prompts, sampling):
    torch.manual_seed(0)
    groups = generate(policy, prompts, num_generations=3, max_new_tokens=8, sampling=sampling)
    return [c.ids for group in groups for c in group]


def test_a_models_own_sampling_defaults_are_not_inherited(tiny_model_dir, chart_data):
    policy = load_policy(str(tiny_model_dir))
    prompts = [encode_prompt(policy, s) for s in read_samples(chart_data / "train.jsonl")[:2]]
    sampling = sampling_settings(temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0)
    clean = _sample_ids(policy, prompts, sampling)
    # What models ship in their generation_config: a repetition penalty, a top-k, a low temperature, other filters.
    shipped = {"repetition_penalty": 1.3, "top_k": 1, "temperature": 0.2, "no_repeat_ngram_size": 1, "min_p": 0.99,
               "typical_p": 0.2, "epsilon_cutoff": 0.2, "eta_cutoff": 0.99}
    policy.model.generation_config = GenerationConfig(**{**policy.model.generation_config.to_dict(), **shipped})
    assert _sample_ids(policy, prompts, sampling) == clean
    # ... while the same settings passed by the recipe do change the samples
    assert _sample_ids(policy, prompts, sampling_settings(top_k=1, repetition_penalty=1.3)) != clean


def test_the_run_records_its_generation_settings_and_processor_options(chart_data, tmp_path):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=1)
    recipe.rollout.top_k, recipe.rollout.repetition_penalty = 7, 1.1
    recipe.model.processor = {"do_image_splitting": True, "size": {"longest_edge": 64}}
    checkpoint = train(recipe).checkpoint
    recorded = json.loads((tmp_path / "run" / "generation.json").read_text())
    assert {k: recorded[k] for k in ("do_sample", "temperature", "top_p", "top_k", "repetition_penalty")} == {
        "do_sample": True, "temperature": 1.0, "top_p": 1.0, "top_k": 7, "repetition_penalty": 1.1}
    assert recorded["max_new_tokens"] == 12 and recorded["num_return_sequences"] == 2
    # the checkpoint's processor tiles as the recipe asked: 2 x 2 crops + a global view
    sample = read_samples(chart_data / "train.jsonl")[0]
    assert encode_prompt(load_policy(str(checkpoint)), sample)["pixel_values"].shape[1] == 5
