"""`dyme eval`: reproduces training's held-out numbers, pass@K, side-by-side checkpoints, LoRA adapters,
traces in the training format, and partial results on Ctrl-C."""

import json
import os
import signal

import pytest
import torch
from typer.testing import CliRunner

from dyme_cli import ui
from dyme_cli.cli import app
from dyme_cli.data import Sample, read_samples
from dyme_cli.evaluate import EvalReport
from dyme_cli.modeling import load_policy
from dyme_cli.rollout import Completion, encode_prompt
from dyme_cli.trainer import train
from dyme_cli.verdict import Verdict

from conftest import small_recipe

runner = CliRunner()


def _verdict(correct: bool, formatted: bool = True) -> Verdict:
    return Verdict(correct, "x", {"format": float(formatted), "accuracy": float(correct)}, "")


def test_accuracy_and_pass_at_k_by_hand():
    report = EvalReport(k=3)
    a = Sample(id="a", task="chart", question="q", answer="1", meta={"kind": "sum"})
    b = Sample(id="b", task="chart", question="q", answer="1", meta={"kind": "value"})
    c = Sample(id="c", task="chart", question="q", answer="1", meta={"kind": "sum"})
    report.add(a, "chart", [(Completion([1, 2], "", False), _verdict(True)), (Completion([1], "", True), _verdict(False)),
                            (Completion([1], "", False), _verdict(False, formatted=False))])
    report.add(b, "chart", [(Completion([1, 2, 3], "", False), _verdict(False))] * 3)
    report.add(c, "chart", [(Completion([1], "", False), _verdict(True))] * 3)
    overall = report.overall.summary()
    # 9 completions, 4 correct; prompts a and c have a correct completion: pass@3 = 2/3
    assert overall["accuracy"] == pytest.approx(4 / 9) and overall["pass_at_k"] == pytest.approx(2 / 3)
    assert overall["format_rate"] == pytest.approx(8 / 9) and overall["truncated_rate"] == pytest.approx(1 / 9)
    assert overall["mean_completion_tokens"] == pytest.approx((2 + 1 + 1 + 9 + 3) / 9)
    sums = report.to_dict()["by_kind"]["chart/sum"]
    assert sums["n"] == 2 and sums["accuracy"] == pytest.approx(4 / 6) and sums["pass_at_k"] == 1.0
    assert [(t, k) for t, k, _ in report.rows()] == [("chart", "sum"), ("chart", "value"), ("chart", "all"), ("all", "all")]


def test_eval_reproduces_the_numbers_training_printed(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=2)
    recipe.run.eval_after, recipe.run.eval_batch_size = True, 4
    result = train(recipe)
    out = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(result.checkpoint), "--data", str(recipe.data.test), "--json", str(out),
            "--max-new-tokens", str(recipe.rollout.max_new_tokens), "--batch-size", "4"]
    assert runner.invoke(app, args).exit_code == 0
    (evaluated,) = json.loads(out.read_text())["checkpoints"].values()
    # Same completions (same token counts and truncations), same verdicts.
    assert evaluated["overall"] == result.after.overall.summary()
    assert evaluated["overall"]["n"] == 8 and evaluated["overall"]["mean_completion_tokens"] > 0


def test_sampling_k_writes_traces_in_the_training_format(tmp_path, chart_data, tiny_model_dir):
    traces_path, out = tmp_path / "traces.jsonl", tmp_path / "eval.json"
    result = runner.invoke(app, ["eval", "--checkpoint", str(tiny_model_dir), "--data", str(chart_data / "test.jsonl"),
                                 "--samples", "3", "--temperature", "0.7", "--limit", "4", "--max-new-tokens", "6",
                                 "--traces", str(traces_path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "pass@3" in result.output
    traces = [json.loads(line) for line in traces_path.read_text().splitlines()]
    assert len(traces) == 12 and {t["rollout"] for t in traces} == {0, 1, 2}
    training_fields = {"run", "step", "prompt_id", "task", "kind", "rollout", "mode", "completion", "answer", "gold",
                       "correct", "rewards", "reward", "advantage", "tokens", "truncated", "detail"}
    assert all(training_fields <= set(t) and t["mode"] == "eval" and t["kind"] == "rollout" for t in traces)
    samples = {s.id: s for s in read_samples(chart_data / "test.jsonl")}
    for t in traces:  # the sample travels with the trace, so inspect-traces needs no dataset
        assert t["question"] == samples[t["prompt_id"]].question and t["facts"] == samples[t["prompt_id"]].facts
    (numbers,) = json.loads(out.read_text())["checkpoints"].values()
    assert numbers["k"] == 3 and numbers["overall"]["n"] == 4 and numbers["overall"]["completions"] == 12
    assert sum(t["tokens"] for t in traces) / 12 == pytest.approx(numbers["overall"]["mean_completion_tokens"])


def test_several_checkpoints_side_by_side(tmp_path, chart_data, tiny_model_dir, monkeypatch):
    out = tmp_path / "eval.json"
    copy = tmp_path / "run" / "checkpoints" / "step-000005"
    copy.parent.mkdir(parents=True)
    load_policy(str(tiny_model_dir)).model.save_pretrained(copy)
    load_policy(str(tiny_model_dir)).processor.save_pretrained(copy)
    monkeypatch.setattr(ui.console, "width", 200)
    result = runner.invoke(app, ["eval", "--checkpoint", str(tiny_model_dir), "--checkpoint", str(copy),
                                 "--data", str(chart_data / "test.jsonl"), "--max-new-tokens", "6", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "accuracy #1" in result.output and "accuracy #2" in result.output and "#2 run/step-000005" in result.output
    reports = json.loads(out.read_text())["checkpoints"]
    assert list(reports) == [str(tiny_model_dir), "run/step-000005"]
    first, second = reports.values()
    assert first["overall"] == second["overall"]  # same weights, greedy: same numbers


def test_a_lora_adapter_directory_loads_as_base_plus_adapter(tmp_path, chart_data, tiny_model_dir):
    from peft import LoraConfig, get_peft_model

    base = load_policy(str(tiny_model_dir))
    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*text_model.*\.(q_proj|v_proj)", init_lora_weights=False)
    peft_model = get_peft_model(base.model, config)
    adapter_dir = tmp_path / "adapter"
    peft_model.save_pretrained(adapter_dir)
    assert (adapter_dir / "adapter_config.json").is_file() and not (adapter_dir / "config.json").exists()

    loaded = load_policy(str(adapter_dir))
    prompt = encode_prompt(loaded, read_samples(chart_data / "test.jsonl")[0])
    with torch.no_grad():
        expected = peft_model(**prompt).logits
        plain = load_policy(str(tiny_model_dir)).model(**prompt).logits
        got = loaded.model(**prompt).logits
    assert not torch.allclose(expected, plain, atol=1e-4)  # the adapter changes the model ...
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)  # ... and loading applies it

    result = runner.invoke(app, ["eval", "--checkpoint", str(adapter_dir), "--data", str(chart_data / "test.jsonl"),
                                 "--max-new-tokens", "4", "--limit", "2"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_ctrl_c_sigterm_and_sighup_print_and_write_partial_results(tmp_path, chart_data, tiny_model_dir, monkeypatch,
                                                                  foreground_signals, signum):
    import dyme_cli.evaluate as evaluate_module

    real_generate, calls = evaluate_module.TransformersBackend.generate, []

    def generate_then_interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # a scheduler's SIGTERM, a closed terminal's SIGHUP, Ctrl-C's SIGINT
            os.kill(os.getpid(), signum)
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(evaluate_module.TransformersBackend, "generate", generate_then_interrupt)
    out, traces = tmp_path / "eval.json", tmp_path / "traces.jsonl"
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    result = runner.invoke(app, ["eval", "--checkpoint", str(tiny_model_dir), "--data", str(chart_data / "test.jsonl"),
                                 "--batch-size", "3", "--max-new-tokens", "4", "--json", str(out), "--traces", str(traces)])
    assert result.exit_code == 128 + signum
    assert "interrupted; partial results" in result.output
    (numbers,) = json.loads(out.read_text())["checkpoints"].values()
    assert numbers["overall"]["n"] == 3  # the first batch of 3 prompts was scored
    assert len(traces.read_text().splitlines()) == 3  # and its completions written
    assert {s: signal.getsignal(s) for s in before} == before  # the command's handlers are gone with it


def test_unknown_checkpoint_and_verifier_are_one_line_errors(tmp_path, chart_data, offline_hub):
    data = str(chart_data / "test.jsonl")
    missing = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path / "nothing"), "--data", data])
    assert missing.exit_code == 2 and missing.output.strip() == f"error: cannot load model '{tmp_path / 'nothing'}': no such directory"
    unknown = runner.invoke(app, ["eval", "--checkpoint", str(tmp_path), "--data", data, "--verifier", "nope"])
    assert unknown.exit_code == 2 and "unknown verifier 'nope'" in unknown.output
