"""The instruction prompt: the authors' template by default, a recipe key to change it, the same prompt in
training, the in-run eval and `dyme eval`."""

import pytest
from accelerate import Accelerator
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.data import read_samples
from dyme_cli.evaluate import prompt_template_for
from dyme_cli.modeling import load_policy
from dyme_cli.recipe import RecipeError, load_recipe, recipe_from_dict, recipe_to_toml
from dyme_cli.rollout import encode_prompt, prompt_text
from dyme_cli.optim import build_optimizer
from dyme_cli.step import Engine, cached_prompt
from dyme_cli.trainer import train

from conftest import small_recipe

runner = CliRunner()
PAPER = ('Your task is to answer the question below. Give step by step thinking before you answer, and when '
         'you\'re ready to answer, please use the format "Answer: .."\n\nQuestion:\n\n')


def _recipe(**sections):
    return recipe_from_dict({"model": {"name_or_path": "tiny:smolvlm"}, "data": {"train": "t.jsonl"}, **sections})


def test_the_default_template_is_the_papers_instruction_built_from_the_answer_flag():
    assert _recipe().prompt_template == PAPER + "{question}"
    flagged = _recipe(verifier={"answer_flag": "Final answer:"}).prompt_template
    assert 'please use the format "Final answer: .."' in flagged and flagged.endswith("Question:\n\n{question}")
    assert _recipe(data={"train": "t.jsonl", "prompt_template": "{question}"}).prompt_template == "{question}"


def test_the_run_records_the_resolved_template(tmp_path):
    (tmp_path / "recipe.toml").write_text(recipe_to_toml(_recipe(verifier={"answer_flag": "Final:"})))
    recorded = load_recipe(tmp_path / "recipe.toml").data.prompt_template
    assert recorded == PAPER.replace("Answer:", "Final:") + "{question}"


def test_a_template_without_the_placeholder_is_a_one_line_error():
    with pytest.raises(RecipeError, match=r"\[data\]\.prompt_template: must contain the placeholder \{question\}"):
        _recipe(data={"train": "t.jsonl", "prompt_template": "Answer this."})


def test_the_template_goes_through_the_models_chat_template(tiny_model_dir, chart_data):
    policy = load_policy(str(tiny_model_dir))
    sample = read_samples(chart_data / "train.jsonl")[0]
    text = prompt_text(policy.processor, False, sample, PAPER + "{question}")
    # the tiny SmolVLM template: <|im_start|>User:<image>TEXT<end_of_utterance>\nAssistant:
    assert text == f"<|im_start|>User:<image>{PAPER}{sample.question}<end_of_utterance>\nAssistant:"
    assert prompt_text(policy.processor, False, sample) == f"<|im_start|>User:<image>{sample.question}<end_of_utterance>\nAssistant:"
    # braces in a question are text, not format fields
    odd = sample.model_copy(update={"question": "What is {x}?"})
    assert "What is {x}?" in prompt_text(policy.processor, False, odd, "Q: {question}")


def test_training_encodes_prompts_with_the_recipes_template(tiny_model_dir, chart_data, tmp_path):
    policy = load_policy(str(tiny_model_dir))
    recipe = small_recipe(chart_data, tmp_path)
    optimizer, scheduler = build_optimizer(policy.model, recipe, 4)
    engine = Engine(recipe, policy, read_samples(chart_data / "train.jsonl"), None, optimizer, scheduler,
                    Accelerator(cpu=True), 4)
    sample = engine.samples[0]
    decoded = policy.tokenizer.decode(cached_prompt(engine, sample).prompt["input_ids"][0])
    assert PAPER.strip() in decoded and decoded.endswith("Assistant:")
    assert cached_prompt(engine, sample).prompt["input_ids"].equal(encode_prompt(policy, sample, recipe.prompt_template)["input_ids"])


def test_dyme_eval_takes_the_template_the_run_recorded(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=1)
    recipe.data.prompt_template = "Look at the chart. {question}"
    checkpoint = train(recipe).checkpoint
    assert prompt_template_for(str(checkpoint), "Answer:") == "Look at the chart. {question}"
    recorded = tmp_path / "run" / "recipe.toml"
    recorded.write_text(recorded.read_text().replace('prompt_template = "Look at the chart. {question}"\n', ""))
    assert prompt_template_for(str(checkpoint), "Answer:") == "{question}"  # a run from before templates existed
    assert prompt_template_for(str(tmp_path / "elsewhere"), "Final:") == PAPER.replace("Answer:", "Final:") + "{question}"


def test_dyme_eval_rejects_a_template_without_the_placeholder(tmp_path, chart_data):
    result = runner.invoke(app, ["eval", "--checkpoint", "x", "--data", str(chart_data / "test.jsonl"),
                                 "--prompt-template", "no placeholder"])
    assert result.exit_code == 2 and "--prompt-template must contain {question}" in result.output
