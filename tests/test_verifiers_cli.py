"""`dyme verifiers check`: cases with expected verdicts (exit codes, JSON), and calibration rates
checked against hand-counted perturbations."""

import json

import pytest
from typer.testing import CliRunner

from dyme_cli.checking import perturbed_answers
from dyme_cli.cli import app
from dyme_cli.data import Sample, write_samples

runner = CliRunner()


def _text(result) -> str:
    """The output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def _write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


CASES = [
    {"completion": "red = 5. Answer: 5", "sample": {"answer": "5", "reference": "red = 5."}, "expect": True},
    {"completion": "red = 5. Answer: 2018", "sample": {"answer": "2017"}, "expect": False},
    {"completion": "no flag here", "sample": {"answer": "5"}},
]


def test_check_agreeing_cases_exits_0_and_prints_the_table(tmp_path):
    result = runner.invoke(app, ["verifiers", "check", "chart", "--cases", str(_write_jsonl(tmp_path / "c.jsonl", CASES))],
                           terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "3 cases, 2 with an expected verdict: 2 agree, 0 false positives, 0 false negatives" in _text(result)
    assert "DISAGREES" not in result.output and result.output.count(" ok ") == 2


def test_check_json_lines_and_a_disagreement_exits_1(tmp_path):
    cases = CASES + [{"completion": "x. Answer: 106", "sample": {"answer": "100"}, "expect": True}]
    result = runner.invoke(app, ["verifiers", "check", "chart", "--json", "--cases", str(_write_jsonl(tmp_path / "c.jsonl", cases))])
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert len(lines) == 5
    for line in lines[:4]:
        assert set(line) == {"correct", "answer", "rewards", "detail", "expect", "agrees"}
        assert {"format", "accuracy", "thinking"} <= set(line["rewards"])
    assert [line["correct"] for line in lines[:4]] == [True, False, False, False]
    assert lines[2]["answer"] is None and lines[3]["agrees"] is False
    assert lines[4] == {"summary": {"cases": 4, "with_expect": 3, "agree": 2, "false_positives": 0,
                                    "false_negatives": 1, "errors": 0}}


def test_check_a_false_positive_is_counted(tmp_path):
    cases = [{"completion": "x. Answer: 102", "sample": {"answer": "100"}, "expect": False}]
    result = runner.invoke(app, ["verifiers", "check", "chart", "--json", "--cases", str(_write_jsonl(tmp_path / "c.jsonl", cases))])
    assert result.exit_code == 1
    assert json.loads(result.output.splitlines()[-1])["summary"]["false_positives"] == 1


def test_check_option_changes_the_verdict(tmp_path):
    cases = [{"completion": "x. Answer: 106", "sample": {"answer": "100"}, "expect": True}]
    path = str(_write_jsonl(tmp_path / "c.jsonl", cases))
    assert runner.invoke(app, ["verifiers", "check", "chart", "--cases", path]).exit_code == 1
    assert runner.invoke(app, ["verifiers", "check", "chart", "--cases", path, "--option", "tolerance=0.1"]).exit_code == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope", "--cases", "CASES"], "unknown verifier 'nope' (installed: chart, math, medvqa"),
        (["chart"], "give either --cases FILE.jsonl or --calibrate --data FILE.jsonl"),
        (["chart", "--calibrate"], "--calibrate needs --data FILE.jsonl"),
        (["chart", "--cases", "CASES", "--option", "tolerance"], "--option 'tolerance': expected KEY=VALUE"),
        (["chart", "--cases", "CASES", "--option", "tol=1"], "[verifier.options.chart].tol: unknown option"),
        (["chart", "--cases", "BAD"], "bad.jsonl:2: field 'sample.answer': Field required"),
        (["chart", "--cases", "NOTJSON"], "notjson.jsonl:1: not valid JSON"),
    ],
)
def test_check_user_errors_exit_2_with_one_line(tmp_path, args, message):
    paths = {
        "CASES": _write_jsonl(tmp_path / "c.jsonl", CASES),
        "BAD": _write_jsonl(tmp_path / "bad.jsonl", [CASES[0], {"completion": "x", "sample": {"question": "q"}}]),
        "NOTJSON": tmp_path / "notjson.jsonl",
    }
    paths["NOTJSON"].write_text("{oops\n")
    result = runner.invoke(app, ["verifiers", "check", *[str(paths.get(a, a)) for a in args]])
    assert result.exit_code == 2
    assert message in result.output and result.output.startswith("error: ") and result.output.count("\n") == 1


@pytest.mark.parametrize(
    "gold, expected",
    [
        ("100", [("off-by-one", "101"), ("off-by-10%", "110"), ("sign-flip", "-100"), ("empty-answer", "")]),
        ("$1,000", [("off-by-one", "$1001"), ("off-by-10%", "$1100"), ("sign-flip", "$-1000"), ("empty-answer", "")]),
        ("45%", [("off-by-one", "46%"), ("off-by-10%", "49.5%"), ("sign-flip", "-45%"), ("empty-answer", "")]),
        ("0", [("off-by-one", "1"), ("empty-answer", "")]),
        ("2.5", [("off-by-one", "3.5"), ("off-by-10%", "2.75"), ("sign-flip", "-2.5"), ("empty-answer", "")]),
        ("blue", [("swapped-category", "red"), ("empty-answer", "")]),
    ],
)
def test_perturbations(gold, expected):
    import random

    assert perturbed_answers(gold, ["blue", "Blue", "red"], random.Random(0)) == expected


def _calibration_data(tmp_path, answers):
    samples = [Sample(id=f"s{i}", task="chart", question="q", answer=a, reference=f"The bar shows {a}.")
               for i, a in enumerate(answers)]
    write_samples(tmp_path / "d.jsonl", samples)
    return str(tmp_path / "d.jsonl")


def test_calibrate_rates_match_a_hand_count(tmp_path):
    data = _calibration_data(tmp_path, ["100", "4", "blue", "red"])
    # Perturbations: 100 -> 101, 110, -100, ''; 4 -> 5, 4.4, -4, ''; blue -> red, ''; red -> blue, ''  (12 in all).
    # Within 5% of the gold: only 101. So 1/12 accepted; every gold accepted.
    result = runner.invoke(app, ["verifiers", "check", "chart", "--calibrate", "--data", data, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["samples"] == 4 and report["false_negative_rate"] == 0.0
    assert report["false_positive_rate"] == pytest.approx(1 / 12)
    assert report["perturbations"]["off-by-one"] == {"tried": 2, "accepted": 1, "rate": 0.5}
    assert report["perturbations"]["swapped-category"] == {"tried": 2, "accepted": 0, "rate": 0.0}
    assert report["accepted_examples"] == [
        {"perturbation": "off-by-one", "id": "s0", "gold": "100", "answer": "101", "detail": "101 within 5% of 100"}]
    # A 30% tolerance also accepts 110, 5 (25% off 4) and 4.4: 4/12.
    loose = runner.invoke(app, ["verifiers", "check", "chart", "--calibrate", "--data", data, "--json", "--option", "tolerance=0.3"])
    assert json.loads(loose.output)["false_positive_rate"] == pytest.approx(4 / 12)
    table = runner.invoke(app, ["verifiers", "check", "chart", "--calibrate", "--data", data])
    assert "false-positive rate (perturbations accepted): 8.3%" in _text(table)


def test_calibrate_counts_gold_rejections(tmp_path, example_plugin):
    # The example plugin compares characters exactly; with strip=false a gold with a trailing space cannot match
    # the trimmed answer, so that sample's gold completion is a false negative: 1 of 2.
    data = _calibration_data(tmp_path, ["7", "8 "])
    result = runner.invoke(app, ["verifiers", "check", "exact", "--calibrate", "--data", data, "--json", "--option", "strip=false"])
    report = json.loads(result.output)
    assert report["false_negative_rate"] == 0.5 and report["gold_rejected_examples"][0]["id"] == "s1"
