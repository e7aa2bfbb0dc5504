"""`dyme inspect-traces`: pseudo-thinking flags of logged rollouts, a summary, JSON or an HTML report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import BadArgument
from ..ui import answer_flag_option, console, err_console, note, output_file


def inspect_traces(
    path: Path = typer.Argument(..., help="Run directory or traces JSONL file (from dyme train or dyme eval --traces)."),
    data: list[Path] = typer.Option(
        [], "--data", help="Dataset(s) the traces came from (default: the run's recorded datasets); repeatable."),
    steps: Optional[str] = typer.Option(None, "--step", help="Steps A:B (inclusive; A:, :B and a single step work)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="Only traces of this mode: memorize, explore, skip or eval."),
    flag: Optional[str] = typer.Option(None, "--flag", help="List only traces with this flag."),
    only_flagged: bool = typer.Option(False, "--only-flagged", help="List only traces with at least one flag."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="List at most N traces (table default: 30)."),
    answer_flag: Optional[str] = answer_flag_option(None, "Answer flag (default: the run's, else 'Answer:')."),
    as_json: bool = typer.Option(False, "--json", help="Print per-trace flags and the summary as JSON."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML report with plots."),
    checker_url: Optional[str] = typer.Option(
        None, "--checker-url", help="Also rate every rollout with the LLM checker at this OpenAI-compatible endpoint "
        "and report where it disagrees with the grounding detectors."),
    checker_model: Optional[str] = typer.Option(None, "--checker-model", help="The checker's model name (with --checker-url)."),
    checker_key_env: Optional[str] = typer.Option(
        None, "--checker-key-env", help="Environment variable holding the checker's API key."),
) -> None:
    """Flag pseudo thinking in logged rollouts, each flag with a one-line reason, then summarize the run."""
    from ..inspect_run import inspect, parse_steps
    from ..pseudo_thinking import FLAGS

    if flag is not None and flag not in FLAGS:
        raise BadArgument(f"unknown flag '{flag}' (flags: {', '.join(FLAGS)})")
    output_file(html_out, "--html")
    result = inspect(path, data=data, steps=parse_steps(steps), mode=mode, answer_flag=answer_flag)
    for message in result.notes:
        note(message)
    agreement = _checker_agreement(result, path, checker_url, checker_model, checker_key_env)
    listed = result.rollouts(flag, only_flagged)
    if as_json:
        listed = listed[:limit] if limit is not None else listed
        print(json.dumps({"traces": [_trace_json(t, f) for t, f in listed], "summary": result.summary,
                          **({"checker": agreement} if agreement else {})}))
    else:
        shown = 30 if limit is None else limit
        if shown:
            console.print(_traces_table(listed[:shown]))
        if len(listed) > shown:
            console.print(f"... {len(listed) - shown} more; use --limit, --flag or --only-flagged")
        _print_summary(result.summary)
        if agreement:
            _print_agreement(agreement)
    if html_out:
        from ..report_html import write_html

        write_html(html_out, result.traces, result.flags, result.summary, result.samples, title=f"dyme inspect-traces {path}")
        err_console.print(f"wrote {html_out}")


def _checker_agreement(result, path: Path, url: Optional[str], model: Optional[str], key_env: Optional[str]
                       ) -> dict | None:
    """The LLM checker against the detectors (inspect_run.checker_agreement); ratings kept in a run's supervision/."""
    if url is None:
        return None
    if model is None:
        raise BadArgument("--checker-url needs --checker-model")
    from ..inspect_run import checker_agreement
    from ..recipe import SupervisionSection, section_from_options
    from ..supervision import checker_for

    section = section_from_options(SupervisionSection, {"base_url": "--checker-url", "model": "--checker-model"},
                                   checker="llm", base_url=url, model=model, api_key_env=key_env, cache=path.is_dir())
    checker = checker_for(section, path / "supervision", 0, note)
    return checker_agreement(result, checker)


def _print_agreement(agreement: dict) -> None:
    mean = "-" if agreement["mean_rating"] is None else f"{agreement['mean_rating']:.2f}"
    console.print(f"LLM checker: {agreement['rated']} rollouts rated (mean {mean}), {agreement['unrated']} not rated; "
                  f"rated low but not flagged by the detectors: {agreement['low_but_unflagged']}; rated high but "
                  f"flagged: {agreement['high_but_flagged']}")
    for example in agreement["examples"]:
        console.print(f"  step {example['step']} {escape(str(example['prompt_id']))} #{example['rollout']}: rating "
                      f"{example['rating']}, flags {', '.join(example['flags']) or '-'}")


def _trace_json(trace: dict, flags) -> dict:
    keys = ("run", "step", "prompt_id", "rollout", "mode", "correct", "answer", "gold")
    return {**{k: trace.get(k) for k in keys},
            "flags": [{"name": f.name, "reason": f.reason, "spans": [list(s) for s in f.spans]} for f in flags]}


def _traces_table(listed) -> Table:
    table = Table(title="rollouts", show_lines=True)
    for column in ("step", "mode", "prompt", "#", "ok", "flags"):
        table.add_column(column, overflow="fold")
    for trace, flags in listed:
        reasons = "\n".join(f"[bold]{f.name}[/]: {escape(f.reason)}" for f in flags) or "[dim]-[/]"
        table.add_row(str(trace.get("step")), str(trace.get("mode")), escape(str(trace.get("prompt_id"))),
                      str(trace.get("rollout")), "✓" if trace.get("correct") else "✗", reasons)
    return table


def _print_summary(summary: dict) -> None:
    from ..pseudo_thinking import FLAGS

    n = summary["traces"]
    console.print(f"{n} rollouts, {summary['flagged']} flagged ({summary['flagged'] / max(n, 1):.1%})")
    modes = list(summary["by_mode"])
    table = Table(title="flags")
    for column in ("flag", "count", "rate", *(f"in {m}" for m in modes)):
        table.add_column(column, justify="right")
    for name in FLAGS:
        row = summary["flags"][name]
        per_mode = [f"{summary['by_mode'][m]['flags'][name] / max(summary['by_mode'][m]['traces'], 1):.1%}" for m in modes]
        table.add_row(name, str(row["count"]), f"{row['rate']:.1%}", *per_mode)
    console.print(table)
    windows = summary["windows"]
    if windows:
        fired = [name for name in FLAGS if summary["flags"][name]["count"]]
        window_modes = list(dict.fromkeys(m for w in windows for m in w["modes"]))
        table = Table(title="over steps")
        for column in ("steps", "rollouts", "accuracy", *window_modes, *fired):
            table.add_column(column, justify="right", overflow="fold")
        for w in windows:
            accuracy = "-" if w["accuracy"] is None else f"{w['accuracy']:.2f}"
            table.add_row(f"{w['steps'][0]}-{w['steps'][1]}", str(w["traces"]), accuracy,
                          *(f"{w['modes'].get(m, 0.0):.2f}" for m in window_modes),
                          *(f"{w['flag_rates'][name]:.2f}" for name in fired))
        console.print(table)
    collapse = summary["advantage_collapse"]
    console.print(f"advantage collapse: {collapse['zero_std']:.1%} of {collapse['groups']} groups have zero reward spread "
                  f"(all correct {collapse['all_correct']:.1%}, all wrong {collapse['all_wrong']:.1%}, "
                  f"mixed {collapse['mixed']:.1%})")
