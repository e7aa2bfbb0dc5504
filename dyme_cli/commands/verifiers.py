"""`dyme verifiers list | check`: the installed verifier plugins, and checking or calibrating one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import BadArgument
from ..ui import answer_flag_option, console, image_check_progress

app = typer.Typer(help="Verifier plugins: list the installed ones, check and calibrate one.", no_args_is_help=True)


@app.command("list")
def verifiers_list(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array instead of a table."),
) -> None:
    """Installed verifier plugins (entry-point group dyme.verifiers): name, package, version, description."""
    from dataclasses import asdict

    from ..plugins import plugin_infos

    infos = plugin_infos()
    if as_json:
        print(json.dumps([asdict(info) for info in infos], indent=2, default=repr))
        return
    table = Table(title="verifier plugins (entry-point group dyme.verifiers)")
    for column in ("name", "package", "version", "description", "options"):
        table.add_column(column, overflow="fold")  # names are never cut short on a narrow terminal
    for info in infos:
        description = f"[red]cannot load: {escape(info.error)}[/]" if info.error else escape(info.description)
        options = ", ".join(f"{k}={v!r}" for k, v in info.options.items())
        table.add_row(info.name, info.package, info.version, description, escape(options))
    console.print(table)


@app.command("check")
def verifiers_check(
    name: str = typer.Argument(..., help="Verifier name, as in `dyme verifiers list`."),
    cases: Optional[Path] = typer.Option(
        None, "--cases", help='JSONL of {"completion": ..., "sample": {...}, "expect": true|false}.'),
    calibrate: bool = typer.Option(False, "--calibrate", help="Score gold and perturbed completions built from --data."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset (JSONL schema) for --calibrate."),
    options: list[str] = typer.Option([], "--option", help="Verifier option as KEY=VALUE (VALUE read as JSON if it parses); repeatable."),
    answer_flag: str = answer_flag_option(),
    timeout_s: float = typer.Option(5.0, "--timeout", min=0.01, help="Seconds allowed per verify call."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of tables."),
) -> None:
    """Run a verifier on hand-written cases (exit 1 on any disagreement with `expect`), or calibrate it."""
    from ..checking import calibrate as run_calibration, check_cases, read_cases
    from ..data import read_samples
    from ..plugins import load_verifiers
    from ..verify_pool import VerifierPool

    if (cases is None) == (not calibrate):
        raise BadArgument("give either --cases FILE.jsonl or --calibrate --data FILE.jsonl")
    if calibrate and data is None:
        raise BadArgument("--calibrate needs --data FILE.jsonl")
    verifier = load_verifiers([name], answer_flag, {name: _parse_options(options)})[name]
    with image_check_progress() as on_progress:  # no bar in --json output
        loaded = read_cases(cases, name) if cases else read_samples(data, on_progress=None if as_json else on_progress)
    with VerifierPool({name: verifier}, timeout_s=timeout_s, workers=2) as pool:
        if calibrate:
            _print_calibration(name, run_calibration(pool, name, loaded, answer_flag).to_dict(), as_json)
            return
        results = check_cases(pool, name, loaded)
    _print_case_results(name, results, as_json)


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise BadArgument(f"--option '{pair}': expected KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _print_case_results(name: str, results, as_json: bool) -> None:
    from ..checking import case_summary

    summary = case_summary(results)
    if as_json:
        for r in results:
            print(json.dumps({"correct": r.verdict.correct, "answer": r.verdict.answer, "rewards": r.verdict.rewards,
                              "detail": r.verdict.detail, "expect": r.case.expect, "agrees": r.agrees}))
        print(json.dumps({"summary": summary}))
    else:
        table = Table(title=f"verifier '{name}'")
        for column in ("#", "expect", "correct", "answer", "format", "accuracy", "thinking", "detail"):
            table.add_column(column)
        for i, r in enumerate(results, start=1):
            mark = "" if r.agrees is None else (" [green]ok[/]" if r.agrees else " [red]DISAGREES[/]")
            expect = "-" if r.case.expect is None else str(r.case.expect).lower()
            table.add_row(str(i), expect + mark, str(r.verdict.correct).lower(), escape(repr(r.verdict.answer)),
                          *(f"{r.verdict.rewards.get(k, 0.0):.2f}" for k in ("format", "accuracy", "thinking")),
                          escape(r.verdict.detail))
        console.print(table)
        console.print(f"{summary['cases']} cases, {summary['with_expect']} with an expected verdict: "
                      f"{summary['agree']} agree, {summary['false_positives']} false positives, "
                      f"{summary['false_negatives']} false negatives, {summary['errors']} verifier errors")
    if summary["agree"] < summary["with_expect"]:
        raise typer.Exit(1)


def _print_calibration(name: str, report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return
    table = Table(title=f"calibration of verifier '{name}' on {report['samples']} samples")
    for column in ("completion", "tried", "accepted", "rate"):
        table.add_column(column, justify="right")
    accepted_gold = report["samples"] - report["gold_rejected"]
    table.add_row("gold (must be accepted)", str(report["samples"]), str(accepted_gold),
                  f"{accepted_gold / max(report['samples'], 1):.1%}")
    for kind, row in report["perturbations"].items():
        if row["tried"]:
            table.add_row(f"{kind} (must be rejected)", str(row["tried"]), str(row["accepted"]), f"{row['rate']:.1%}")
    console.print(table)
    console.print(f"false-negative rate (gold rejected): [bold]{report['false_negative_rate']:.1%}[/]   "
                  f"false-positive rate (perturbations accepted): [bold]{report['false_positive_rate']:.1%}[/]"
                  + (f"   verifier errors: {report['errors']}" if report["errors"] else ""))
    for example in report["gold_rejected_examples"]:
        console.print(f"  gold rejected: {escape(example['id'])}: {escape(example['detail'])}")
    for example in report["accepted_examples"]:
        console.print(f"  {example['perturbation']} accepted: {escape(example['id'])}: "
                      f"{escape(repr(example['answer']))} for gold {escape(repr(example['gold']))} ({escape(example['detail'])})")
