"""Recipes: defaults, validation messages naming the key, and the resolved recipe written to the run dir."""

import pytest

from dyme_cli.recipe import RecipeError, load_recipe, recipe_from_dict, recipe_to_toml

from conftest import REPO

MINIMAL = {"model": {"name_or_path": "tiny:smolvlm"}, "data": {"train": "t.jsonl"}}


def test_every_shipped_recipe_validates():
    for path in (REPO / "recipes").glob("*.toml"):
        load_recipe(path)


def test_resolved_recipe_round_trips(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "demo.toml")
    path = tmp_path / "resolved.toml"
    path.write_text(recipe_to_toml(recipe))
    assert load_recipe(path) == recipe


def test_defaults_follow_the_paper():
    recipe = recipe_from_dict(MINIMAL)
    assert recipe.rollout.num_generations == 8 and recipe.rollout.max_new_tokens == 300
    assert recipe.train.prompts_per_step == 32 and recipe.train.beta == 0.0
    assert recipe.optim.lr == 8e-5 and recipe.optim.weight_decay == 0.01
    assert recipe.train.clip_high == recipe.train.epsilon


@pytest.mark.parametrize(
    "patch, message",
    [
        ({"train": {"algorithm": "ppo"}}, "[train].algorithm: Input should be 'dyme', 'sft', 'grpo', 'threshold' or 'anneal'"),
        ({"rollout": {"num_generations": 1}}, "[rollout].num_generations: Input should be greater than or equal to 2"),
        ({"model": {"name_or_path": "x", "tiny": {"image_size": 30}}}, "[model].tiny: image_size must be a multiple"),
        ({"extra": {}}, "[extra]: unknown key"),
        ({"train": {"reward_weights": {"accuracy": "high"}}}, "[train.reward_weights].accuracy"),
    ],
)
def test_validation_messages_name_the_key(patch, message):
    with pytest.raises(RecipeError) as info:
        recipe_from_dict({**MINIMAL, **patch}, source="r.toml")
    assert str(info.value).startswith("r.toml: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
