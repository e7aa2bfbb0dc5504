"""`dyme inspect-traces` end to end: flags with reasons on hand-written traces, filters, JSON schema, the HTML
report, run directories with their recorded dataset, eval traces that carry their sample, and user errors."""

import json

import pytest
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.data import Sample, write_samples
from dyme_cli.pseudo_thinking import FLAGS
from dyme_cli.trainer import train

from conftest import small_recipe

runner = CliRunner()

SAMPLE = Sample(id="p1", task="chart", question="What is the difference between the red and blue bars?", answer="4",
                reference="Compare the red and blue bars. red = 7, blue = 3. 7 - 3 = 4.",
                facts={"values": {"red": 7, "blue": 3, "green": 5}})


def _trace(step, mode, rollout, completion, correct, reward, **extra):
    return {"run": "r", "step": step, "prompt_id": "p1", "task": "chart", "kind": "rollout", "rollout": rollout,
            "mode": mode, "completion": completion, "answer": None, "gold": "4", "correct": correct, "rewards": {},
            "reward": reward, "advantage": 0.0, "tokens": 10, "truncated": False, "detail": "", **extra}


TRACES = [
    _trace(1, "explore", 0, "red = 7, blue = 3. 7 - 3 = 4. Answer: 4", True, 1.5),  # grounded, consistent
    _trace(1, "explore", 1, "red = 97, blue = 93. 97 - 93 = 4. Answer: 4", True, 1.5),  # right answer, invented values
    _trace(2, "memorize", 0, "red = 7, blue = 3. 7 - 3 = 4. Answer: 5", False, 0.5),  # says 4, answers 5
    _trace(2, "memorize", 1, "red = 7, blue = 3.", False, 0.0),  # no answer
    {"run": "r", "step": 2, "prompt_id": "p1", "task": "chart", "kind": "target", "rollout": None, "mode": "memorize",
     "completion": SAMPLE.reference + " Answer: 4", "target": SAMPLE.reference + " Answer: 4", "answer": "4", "gold": "4",
     "correct": True, "rewards": {}, "reward": None, "advantage": 1.0, "tokens": 20, "truncated": False, "detail": ""},
]
EXPECTED_FLAGS = [set(), {"ungrounded-value", "misread-value", "right-for-wrong-reasons"}, {"conclusion-mismatch"},
                  {"no-answer"}]


@pytest.fixture
def traces_and_data(tmp_path):
    traces = tmp_path / "traces.jsonl"
    traces.write_text("".join(json.dumps(t) + "\n" for t in TRACES))
    data = tmp_path / "data.jsonl"
    write_samples(data, [SAMPLE])
    return traces, data


def _inspect(*args):
    result = runner.invoke(app, ["inspect-traces", *map(str, args)])
    return result


def test_flags_reasons_and_summary_as_json(traces_and_data):
    traces, data = traces_and_data
    result = _inspect(traces, "--data", data, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert set(report) == {"traces", "summary"}
    listed = report["traces"]
    assert len(listed) == 4  # the memorized target is not a rollout
    assert [{f["name"] for f in t["flags"]} for t in listed] == EXPECTED_FLAGS
    for t in listed:
        assert set(t) == {"run", "step", "prompt_id", "rollout", "mode", "correct", "answer", "gold", "flags"}
        for f in t["flags"]:
            assert set(f) == {"name", "reason", "spans"} and f["reason"] and "\n" not in f["reason"]
    ungrounded = next(f for f in listed[1]["flags"] if f["name"] == "ungrounded-value")
    assert "97" in ungrounded["reason"] and "93" in ungrounded["reason"]
    a, b = ungrounded["spans"][0]
    assert TRACES[1]["completion"][a:b] in ("97", "93")

    summary = report["summary"]
    assert summary["traces"] == 4 and summary["flagged"] == 3
    assert set(summary["flags"]) == set(FLAGS)
    assert summary["flags"]["no-answer"] == {"count": 1, "rate": 0.25}
    assert summary["by_mode"]["explore"]["traces"] == 2 and summary["by_mode"]["memorize"]["flags"]["conclusion-mismatch"] == 1
    # Groups: step 1 rewards (1.5, 1.5) -> zero spread, all correct; step 2 rewards (0.5, 0.0) -> spread.
    assert summary["advantage_collapse"] == {"groups": 2, "zero_std": 0.5, "all_correct": 0.5, "all_wrong": 0.0, "mixed": 0.0}
    assert [w["steps"] for w in summary["windows"]] == [[1, 1], [2, 2]]
    assert summary["windows"][0]["modes"] == {"explore": 1.0} and summary["windows"][1]["accuracy"] == 0.0


@pytest.mark.parametrize(
    "args, rollouts",
    [
        (["--flag", "no-answer"], [(2, 1)]),
        (["--only-flagged"], [(1, 1), (2, 0), (2, 1)]),
        (["--step", "2"], [(2, 0), (2, 1)]),
        (["--step", ":1"], [(1, 0), (1, 1)]),
        (["--mode", "explore"], [(1, 0), (1, 1)]),
        (["--only-flagged", "--limit", "1"], [(1, 1)]),
    ],
)
def test_filters(traces_and_data, args, rollouts):
    traces, data = traces_and_data
    result = _inspect(traces, "--data", data, "--json", *args)
    assert [(t["step"], t["rollout"]) for t in json.loads(result.output)["traces"]] == rollouts


def test_table_output_names_flags_and_collapse(traces_and_data):
    traces, data = traces_and_data
    text = " ".join(_inspect(traces, "--data", data).output.split())
    assert "right-for-wrong-reasons" in text and "4 rollouts, 3 flagged (75.0%)" in text
    assert "advantage collapse: 50.0% of 2 groups have zero reward spread (all correct 50.0%, all wrong 0.0%" in text


def test_html_report(traces_and_data, tmp_path):
    traces, data = traces_and_data
    out = tmp_path / "report.html"
    assert _inspect(traces, "--data", data, "--html", out).exit_code == 0
    page = out.read_text()
    for alt in ("mode fractions", "reward and accuracy", "flag rates"):
        assert f'alt="{alt}"' in page
    assert page.count("data:image/png;base64,") >= 3 and "<mark" in page


def test_eval_traces_carry_their_sample(tmp_path):
    carried = {"question": SAMPLE.question, "reference": SAMPLE.reference, "facts": SAMPLE.facts, "images": []}
    path = tmp_path / "eval.jsonl"
    path.write_text(json.dumps(_trace(0, "eval", 0, TRACES[1]["completion"], True, 1.5, **carried)) + "\n")
    result = _inspect(path, "--json")
    names = {f["name"] for f in json.loads(result.output)["traces"][0]["flags"]}
    assert names == {"ungrounded-value", "misread-value", "right-for-wrong-reasons"}


def test_a_run_directory_uses_its_recorded_dataset(tmp_path, chart_data):
    recipe = small_recipe(chart_data, tmp_path / "run", max_steps=1)
    train(recipe)
    result = _inspect(tmp_path / "run", "--json")
    assert result.exit_code == 0 and "note:" not in result.output
    report = json.loads(result.output)
    rollouts = recipe.train.prompts_per_step * recipe.rollout.num_generations
    assert report["summary"]["traces"] == rollouts and len(report["traces"]) == rollouts
    # The tiny random model never writes the answer flag.
    assert report["summary"]["flags"]["no-answer"]["count"] == rollouts


@pytest.mark.parametrize(
    "args, message",
    [
        (["--flag", "nonsense"], "unknown flag 'nonsense' (flags: no-answer,"),
        (["--step", "a:b"], "--step 'a:b': expected A:B"),
    ],
)
def test_user_errors_exit_2(traces_and_data, args, message):
    traces, data = traces_and_data
    result = _inspect(traces, "--data", data, *args)
    assert result.exit_code == 2 and message in result.output


def test_missing_and_corrupt_traces_exit_2(tmp_path):
    missing = _inspect(tmp_path / "nowhere")
    assert missing.exit_code == 2 and "no traces file" in missing.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(TRACES[0]) + "\n{broken\n")
    corrupt = _inspect(bad)
    assert corrupt.exit_code == 2 and f"{bad}:2: not valid JSON" in " ".join(corrupt.output.split())
