"""Generation settings are the recipe's alone: nothing is inherited from a model's generation_config, and the run
directory records them; processor options from the recipe reach training and its checkpoints."""

import json
import math

import pytest
import torch
from transformers import GenerationConfig

from dyme_cli.data import read_samples
from dyme_cli.modeling import load_policy
from dyme_cli.rollout import SeededSampling, encode_prompt, generate, sampling_settings
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


@pytest.mark.parametrize("settings, expected", [
    # softmax([2, 1, 0, -1] / 0.5) over the 3 largest, by hand: exp(4), exp(2), exp(0) over their sum
    ({"temperature": 0.5, "top_k": 3}, [math.exp(4), math.exp(2), 1.0, 0.0]),
    # softmax([2, 1, 0, -1]) = 0.644, 0.237, 0.087, 0.032: top-p 0.8 keeps the first two (0.881 >= 0.8)
    ({"top_p": 0.8}, [math.exp(2), math.exp(1), 0.0, 0.0]),
    ({}, [math.exp(2), math.exp(1), 1.0, math.exp(-1)]),
])
def test_seeded_sampling_draws_from_the_tempered_and_filtered_distribution(settings, expected):
    draws = 20_000
    sampler = SeededSampling(range(draws), sampling_settings(**settings), torch.device("cpu"))
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).repeat(draws, 1)
    chosen = sampler(torch.zeros(draws, 1, dtype=torch.long), scores)
    assert (chosen.isfinite().sum(-1) == 1).all()  # one token left to sample in each row
    counts = torch.bincount(chosen.argmax(-1), minlength=4)
    probabilities = torch.tensor(expected) / sum(expected)
    # within 4.5 standard deviations of a binomial count: a false alarm about once in 150,000 runs
    assert (counts - draws * probabilities).abs().le(4.5 * (draws * probabilities * (1 - probabilities)).sqrt() + 1e-9).all()


@pytest.mark.parametrize("share_prompt", [True, False])
def test_a_seeded_completion_depends_on_its_prompt_and_seed_alone(tiny_model_dir, chart_data, share_prompt):
    """Not on the process's random state, the other prompts of its batch, or its place in it: what makes a run's
    rollouts the same on any number of processes."""
    policy = load_policy(str(tiny_model_dir))
    prompts = [encode_prompt(policy, s) for s in read_samples(chart_data / "train.jsonl")[:3]]
    sampling = sampling_settings(temperature=1.0)

    def completions(indices, seeds, batch_size, torch_seed):
        torch.manual_seed(torch_seed)
        groups = generate(policy, [prompts[i] for i in indices], num_generations=3, max_new_tokens=10,
                          sampling=sampling, batch_size=batch_size, share_prompt=share_prompt, seeds=seeds)
        return {i: [c.ids for c in group] for i, group in zip(indices, groups)}

    together = completions([0, 1, 2], [10, 11, 12], batch_size=3, torch_seed=0)
    assert completions([2, 0], [12, 10], batch_size=2, torch_seed=1) == {i: together[i] for i in (2, 0)}
    assert completions([1], [11], batch_size=1, torch_seed=2) == {1: together[1]}
    assert completions([1], [99], batch_size=1, torch_seed=0) != {1: together[1]}  # another seed, other samples
    assert len({tuple(ids) for ids in together[0]}) > 1  # the K completions of a prompt are different draws
