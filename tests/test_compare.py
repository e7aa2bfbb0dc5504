"""`dyme compare` and what it stands on: held-out accuracy during training (eval_every, eval traces), the
learning-rate choice on a validation split, the SFT→GRPO phases, read-back of finished runs, flag rates."""

import json

import pytest
from typer.testing import CliRunner

from dyme_cli import compare as compare_module
from dyme_cli.cli import app
from dyme_cli.compare import chosen_lr, compare, flag_rates
from dyme_cli.errors import BadArgument
from dyme_cli.pseudo_thinking import load_traces
from dyme_cli.recipe import load_recipe
from dyme_cli.rundir import RunDir
from dyme_cli.trainer import train

from conftest import small_recipe

runner = CliRunner()


def test_eval_every_logs_held_out_accuracy_and_keeps_every_evaluations_completions(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=4)
    recipe.run.eval_before, recipe.run.eval_after, recipe.run.eval_every = True, True, 3
    result = train(recipe)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "eval_accuracy" in m] == [3, 4]  # every 3 steps, and after the last
    assert metrics[-1]["eval_accuracy"] == result.after.overall.summary()["accuracy"]
    traces = load_traces(RunDir(tmp_path / "run").eval_traces_file)
    assert sorted({t["step"] for t in traces}) == [0, 3, 4]
    assert all(sum(t["step"] == step for t in traces) == 8 for step in (0, 3, 4))  # the 8 test samples each time
    last = [t for t in traces if t["step"] == 4]
    assert sum(t["correct"] for t in last) / 8 == result.after.overall.summary()["accuracy"]


def test_held_out_evaluations_leave_the_training_trajectory_unchanged(tmp_path, chart_data):
    losses = {}
    for every in (None, 1):
        recipe = small_recipe(chart_data, tmp_path / f"run-{every}", max_steps=3)
        recipe.run.eval_every = every
        train(recipe)
        lines = (tmp_path / f"run-{every}" / "metrics.jsonl").read_text().splitlines()
        losses[every] = [(m["loss"], m["accuracy"]) for m in map(json.loads, lines)]
    assert losses[None] == losses[1]


def test_the_best_validation_accuracy_wins_and_a_tie_goes_to_the_smaller_lr():
    assert chosen_lr({1e-3: 0.4, 3e-3: 0.6, 1e-2: 0.5}) == 3e-3
    assert chosen_lr({3e-3: 0.6, 1e-3: 0.6}) == 1e-3
    assert chosen_lr({5e-4: None}) == 5e-4


def _eval_trace(step, completion, correct):
    return {"run": "r", "step": step, "kind": "rollout", "mode": "eval", "prompt_id": f"p{step}-{completion[:3]}",
            "rollout": 0, "task": "chart", "completion": completion, "correct": correct, "gold": "1",
            "question": "What is the value of the red bar?", "reference": "red = 1, green = 2, blue = 3.",
            "facts": {"chart": "bar", "values": {"red": 1, "green": 2, "blue": 3}}}


def test_flag_rates_count_the_held_out_completions_of_the_last_step_only(tmp_path):
    run = RunDir(tmp_path)
    traces = [_eval_trace(0, "red = 17. Answer: 1", True),  # an earlier evaluation: not counted
              _eval_trace(5, "red = 1, green = 17. The red bar is 1. Answer: 1", True),  # invented value, right answer
              _eval_trace(5, "red = 1, green = 2. The red bar is 1. Answer: 1", True),
              _eval_trace(5, "red = 1, green = 2. The red bar is 1. Answer: 2", False),  # concludes 1, answers 2
              _eval_trace(5, "red = 1. The red bar is 1. Answer: 1", True)]
    run.eval_traces_file.write_text("".join(json.dumps(t) + "\n" for t in traces))
    assert flag_rates(run, 5) == {"ungrounded-value": 0.25, "misread-value": 0.25, "right-for-wrong-reasons": 0.25,
                                  "conclusion-mismatch": 0.25}


def test_compare_selects_on_validation_runs_phases_and_reads_finished_runs_back(tmp_path, chart_data, monkeypatch):
    recipe = small_recipe(chart_data, tmp_path / "unused", max_steps=2)
    recipe.run.eval_every = 1
    out = tmp_path / "cmp"
    kwargs = dict(methods=["dyme", "sft-grpo"], seeds=[0], lrs=[2e-3, 1e-3], val=chart_data / "test.jsonl", out=out,
                  selection_seed=7)
    first = compare(recipe, **kwargs)

    assert set(first.selection) == {"dyme", "sft-grpo"}
    for method, validation in first.selection.items():
        assert set(validation) == {1e-3, 2e-3} and all(0.0 <= a <= 1.0 for a in validation.values())
        assert first.lr(method) == chosen_lr(validation)
    assert (out / "select" / "dyme-lr0.001-seed7" / "metrics.jsonl").is_file()
    dyme_run, staged = first.runs
    assert [s for s, _ in dyme_run.curve] == [0, 1, 2]
    # SFT for 1 of the 2 steps, then GRPO from the SFT checkpoint: one curve over steps 0..2
    assert [s for s, _ in staged.curve] == [0, 1, 2]
    phase2 = load_recipe(out / "test" / f"sft-grpo-lr{first.lr('sft-grpo'):g}-seed0" / "2-grpo" / "recipe.toml")
    assert phase2.model.name_or_path.endswith("1-sft/checkpoints/step-000001")
    assert staged.modes["memorize"] == pytest.approx(0.5)  # 1 SFT step of 4 prompts, then 1 GRPO step of 4
    assert dyme_run.curve[0] == staged.curve[0]  # the same start
    saved = json.loads((out / "compare.json").read_text())
    assert saved["chosen_lr"] == {m: first.lr(m) for m in first.selection}
    assert (out / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(compare_module, "train", no_training)
    again = compare(recipe, **kwargs)
    assert again.to_dict() == first.to_dict()

    recipe.rollout.max_new_tokens += 1  # another recipe in the same folder is refused, not mixed in
    with pytest.raises(BadArgument, match="another recipe"):
        compare(recipe, **kwargs)


@pytest.mark.parametrize("args, message", [
    (["--methods", "dyme,ppo"], "unknown method(s) ppo"),
    (["--lrs", "1e-3,3e-3"], "needs a validation split"),
    (["--lrs", "1e-3,x"], "--lrs '1e-3,x'"),
    (["--lrs", "dyme=1e-3,ppo=1e-3"], "unknown method(s) ppo"),
    (["--methods", "sft-grpo", "--max-steps", "1"], "sft-grpo needs at least 2 steps"),
    (["--seeds", "0,1000", "--lrs", "1e-3,3e-3", "--val", "v.jsonl"], "selection seed 1000 is also a test seed"),
])
def test_compare_refuses_bad_choices_in_one_line(tmp_path, chart_data, args, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nname_or_path = "tiny:smolvlm"\n[data]\ntrain = "{chart_data}/train.jsonl"\n'
                      f'test = "{chart_data}/test.jsonl"\n')
    result = runner.invoke(app, ["compare", str(recipe), "--out", str(tmp_path / "o"), *args])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_a_fixed_learning_rate_skips_the_selection_for_that_method(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "unused", max_steps=1)
    out = tmp_path / "cmp"
    result = compare(recipe, methods=["sft"], seeds=[0], lrs=[1e-3, 2e-3], method_lrs={"sft": 5e-4},
                     val=chart_data / "test.jsonl", out=out)
    assert result.selection == {"sft": {5e-4: None}} and result.lr("sft") == 5e-4
    assert not (out / "select").exists() and (out / "test" / "sft-lr0.0005-seed0").is_dir()


def test_sft_annealing_memorizes_every_prompt_at_the_first_step_and_none_at_the_last(tmp_path, chart_data):
    train(small_recipe(chart_data, tmp_path / "run", algorithm="anneal", max_steps=3))
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["frac_memorize"] == 1.0 and metrics[-1]["frac_memorize"] == 0.0


def test_threshold_zero_never_memorizes_where_dyme_would(tmp_path, chart_data):
    # A fresh model's groups are all wrong: DyME memorizes them; a threshold of 0 has no group below it
    for algorithm, memorized in (("dyme", 1.0), ("threshold", 0.0)):
        train(small_recipe(chart_data, tmp_path / algorithm, algorithm=algorithm, memorize_below=0.0, max_steps=1))
        (metrics,) = [json.loads(line) for line in (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()]
        assert metrics["accuracy"] == 0.0 and metrics["frac_memorize"] == memorized


def test_compare_command_prints_what_compare_json_holds(tmp_path, chart_data):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[model]\nname_or_path = "tiny:smolvlm"\nfreeze_vision = false\n'
                      f'[model.tiny]\nimage_size = 32\nhidden_size = 32\nvision_hidden_size = 32\n'
                      f'[data]\ntrain = "{chart_data}/train.jsonl"\ntest = "{chart_data}/test.jsonl"\n'
                      f'[rollout]\nnum_generations = 2\nmax_new_tokens = 12\n[train]\nprompts_per_step = 4\n')
    result = runner.invoke(app, ["compare", str(recipe), "--methods", "sft,dyme", "--seeds", "0,1", "--max-steps", "1",
                                 "--out", str(tmp_path / "o")], terminal_width=200)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "o" / "compare.json").read_text())
    assert [s["method"] for s in saved["summary"]] == ["sft", "dyme"] and len(saved["runs"]) == 4
    for summary in saved["summary"]:
        mean, sd = summary["accuracy"]
        assert f"{100 * mean:.1f} ± {100 * sd:.1f}" in result.output
    assert "mean ± sd over 2 seeds" in result.output


def test_bench_real_compare_renders_the_charts_as_text_a_verifier_still_scores(tmp_path):
    """bench/real_compare.py's task for a text-only model: every bar's value is written into the question, the
    image is gone, the gold answer and the facts the flags read stay; the warm-up set keeps answers only."""
    import re

    import real_compare
    from dyme_cli.data import read_samples, target_text
    from dyme_cli.plugins import load_verifier
    from dyme_cli.prepare.synthetic_chart import generate

    generate(tmp_path / "charts", n_train=12, n_test=0, seed=3, quality="medium", min_bars=3, max_bars=3, max_value=5)
    charts = read_samples(tmp_path / "charts" / "train.jsonl")
    text = read_samples(real_compare.as_text(tmp_path / "charts" / "train.jsonl", tmp_path / "text.jsonl"))
    answers = read_samples(real_compare.as_text(tmp_path / "charts" / "train.jsonl", tmp_path / "answers.jsonl",
                                                answers_only=True))
    verifier = load_verifier("chart")
    for chart, sample, answer_only in zip(charts, text, answers, strict=True):
        stated = dict(re.findall(r"(\w+) (\d+)[,.]", sample.question.split(". ")[0] + "."))
        assert {bar: int(v) for bar, v in stated.items()} == chart.facts["values"]
        assert sample.question.endswith(chart.question) and sample.images == [] and sample.facts == chart.facts
        assert (sample.answer, sample.reference) == (chart.answer, chart.reference)
        assert verifier.verify(target_text(sample, "Answer:"), sample).correct
        assert answer_only.reference == "" and answer_only.answer == chart.answer


def test_a_comparison_in_a_log_shows_each_run_and_its_steps(tmp_path, chart_data):
    """Output that is no terminal: a line when a run starts and one per [run].log_every steps of it, labelled."""
    from dyme_cli.recipe import recipe_to_toml

    recipe = small_recipe(chart_data, tmp_path / "unused", max_steps=2)
    recipe.run.log_every = 1
    path = tmp_path / "recipe.toml"
    path.write_text(recipe_to_toml(recipe))
    result = CliRunner().invoke(app, ["compare", str(path), "--methods", "sft", "--seeds", "0", "--out",
                                      str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("test: sft, lr 0.001, seed 0: elapsed=") for line in lines)  # no count of nothing
    steps = [line.split()[6] for line in lines if line.startswith("test: sft, lr 0.001, seed 0: step=")]
    assert steps == ["step=1/2", "step=2/2"]
