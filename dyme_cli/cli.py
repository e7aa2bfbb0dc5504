"""The `dyme` command line: each subcommand parses, calls the engine, and renders with rich."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .prepare.app import prepare_app
from .ui import console, err_console
from .ui import fail as _fail

app = typer.Typer(
    help="Post-train small vision-language models to think reliably with DyME "
    "(Dynamic Memorization and Exploration).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(prepare_app, name="prepare")
verifiers_app = typer.Typer(help="Verifier plugins: list the installed ones, check and calibrate one.", no_args_is_help=True)
app.add_typer(verifiers_app, name="verifiers")


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@app.command()
def train(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.toml", help="Training recipe."),
    output: Optional[Path] = typer.Option(None, "--output", help="Run directory (default: [run].output_dir)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override [train].max_steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the run directory."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Check data, verifiers, model and batch sizes and print the plan; train nothing."),
) -> None:
    """Train a model with DyME (or the SFT / GRPO baselines) from a TOML recipe."""
    from .data import DataError
    from .modeling import ModelLoadError
    from .plugins import VerifierError
    from .recipe import RecipeError, load_recipe
    from .trainer import RunDirError, TrainingInterrupted, train as run_training

    try:
        recipe = load_recipe(recipe_path)
    except RecipeError as exc:
        _fail(str(exc))
    _quiet_transformers()
    if dry_run:
        _print_plan(recipe_path, recipe, max_steps)
        return
    history: list[dict] = []
    total = max_steps or recipe.train.max_steps
    with _progress() as progress:
        task = progress.add_task("starting", total=total, stats="")

        def on_step(step: int, total_steps: int, metrics: dict) -> None:
            history.append(metrics)
            progress.update(task, completed=step, description=f"step {step}", stats=_live_stats(metrics))

        try:
            result = run_training(
                recipe, output_dir=output, max_steps=max_steps, resume=resume, on_step=on_step,
                on_message=lambda m: progress.console.print(m),
            )
        except (RecipeError, DataError, ModelLoadError, VerifierError, RunDirError) as exc:
            progress.stop()
            _fail(str(exc))
        except TrainingInterrupted as exc:
            progress.stop()
            err_console.print(f"[yellow]{escape(str(exc))}[/]; continue with --resume")
            raise typer.Exit(130)
    _print_summary(result, history)


def _print_plan(recipe_path: Path, recipe, max_steps: Optional[int]) -> None:
    from .plan import dry_run

    if max_steps:
        recipe.train.max_steps = max_steps
    plan = dry_run(recipe)
    table = Table(title=f"dry run of {recipe_path}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("plan")
    for what, value in plan.facts:
        table.add_row(what, escape(value))
    console.print(table)
    for note in plan.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    for problem in plan.problems:
        err_console.print(f"[bold red]error:[/] {escape(problem)}", soft_wrap=True)
    if plan.problems:
        raise typer.Exit(2)
    console.print("ok: the recipe is ready to train")


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"), console=console,
        transient=False,
    )


def _live_stats(m: dict) -> str:
    acc = "-" if m["accuracy"] is None else f"{m['accuracy']:.2f}"
    reward = "-" if m["reward_mean"] is None else f"{m['reward_mean']:.2f}"
    return f"acc {acc} · reward {reward} · mem {m['frac_memorize']:.2f} exp {m['frac_explore']:.2f} skip {m['frac_skip']:.2f}"


def _print_summary(result, history: list[dict]) -> None:
    if history:
        console.print(_mode_table(history))
    if result.checkpoint:
        console.print(f"checkpoint: {result.checkpoint}")
    for label, report in (("before", result.before), ("after", result.after)):
        if report is not None:
            s = report.overall.summary()
            console.print(f"held-out accuracy {label} training: [bold]{s['accuracy']:.1%}[/] (n={s['n']}, format {s['format_rate']:.1%})")


def _mode_table(history: list[dict], windows: int = 4) -> Table:
    """Mode fractions and rollout accuracy over the run, in a few step windows."""
    table = Table(title="DyME modes over the run")
    for column in ("steps", "memorize", "explore", "skip", "rollout acc"):
        table.add_column(column, justify="right")
    size = max(1, -(-len(history) // windows))
    for start in range(0, len(history), size):
        window = history[start : start + size]
        groups = sum(m["n_memorize"] + m["n_explore"] + m["n_skip"] for m in window) or 1
        accs = [m["accuracy"] for m in window if m["accuracy"] is not None]
        table.add_row(
            f"{window[0]['step']}-{window[-1]['step']}",
            *(f"{sum(m[f'n_{mode}'] for m in window) / groups:.2f}" for mode in ("memorize", "explore", "skip")),
            f"{sum(accs) / len(accs):.2f}" if accs else "-",
        )
    return table


@app.command("eval")
def eval_command(
    checkpoints: list[str] = typer.Option(
        ..., "--checkpoint", help="Checkpoint directory, LoRA adapter directory or hub id; repeat to compare side by side."),
    data: Path = typer.Option(..., "--data", help="JSONL dataset to evaluate on."),
    samples_per_prompt: int = typer.Option(
        1, "--samples", min=1, help="Completions per prompt: 1 decodes greedily; K > 1 samples K and reports pass@K."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.01, help="Sampling temperature (with --samples > 1)."),
    max_new_tokens: int = typer.Option(300, "--max-new-tokens", min=1, help="Completion length limit."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Prompts per generate call."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N samples."),
    verifier: Optional[str] = typer.Option(None, "--verifier", help="Score every sample with this verifier instead of its task's."),
    answer_flag: str = typer.Option("Answer:", "--answer-flag", help="Text that introduces the final answer."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers to this JSON file."),
    traces_out: Optional[Path] = typer.Option(
        None, "--traces", help="Write every completion to this JSONL file, in the training trace format."),
) -> None:
    """Accuracy, pass@K, format and length of one or more checkpoints, per task and question kind."""
    from .data import DataError, read_samples
    from .evaluate import EvalReport
    from .plugins import VerifierError, load_verifiers
    from .verify_pool import VerifierPool

    _quiet_transformers()
    try:
        samples = read_samples(data)[:limit]
        verifiers = load_verifiers([verifier] if verifier else [s.task for s in samples], answer_flag)
    except (DataError, VerifierError) as exc:
        _fail(str(exc))
    labels = _checkpoint_labels(checkpoints)
    reports: dict[str, EvalReport] = {}
    if traces_out:
        traces_out.parent.mkdir(parents=True, exist_ok=True)
        traces_out.write_text("", encoding="utf-8")
    try:
        with VerifierPool(verifiers) as pool, _progress() as progress:
            for checkpoint, label in zip(checkpoints, labels):
                reports[label] = EvalReport(k=samples_per_prompt)
                _evaluate_checkpoint(checkpoint, label, samples, pool, reports[label], progress, traces_out,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     samples_per_prompt=samples_per_prompt, temperature=temperature, verifier=verifier)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted; partial results:[/]")
        _print_eval(reports, data, json_out)
        raise typer.Exit(130)
    except VerifierError as exc:
        _fail(str(exc))
    _print_eval(reports, data, json_out)


def _checkpoint_labels(checkpoints: list[str]) -> list[str]:
    """Short, distinct names: `run/step-000700` for training checkpoints, the path or hub id otherwise."""
    labels = []
    for checkpoint in checkpoints:
        path = Path(checkpoint)
        label = f"{path.parent.parent.name}/{path.name}" if path.parent.name == "checkpoints" else checkpoint
        labels.append(label if label not in labels else checkpoint)
    return labels if len(set(labels)) == len(labels) else [f"{i + 1}: {c}" for i, c in enumerate(checkpoints)]


def _evaluate_checkpoint(checkpoint: str, label: str, samples, pool, report, progress, traces_out: Optional[Path],
                         **settings) -> None:
    import re

    from .evaluate import evaluate
    from .modeling import ModelLoadError, load_policy
    from .recipe import TrainSection
    from .traces import eval_traces

    try:
        policy = load_policy(checkpoint)
    except ModelLoadError as exc:
        progress.stop()
        _fail(str(exc))
    step_match = re.search(r"step-(\d+)$", checkpoint.rstrip("/"))
    step = int(step_match.group(1)) if step_match else 0
    weights = TrainSection().reward_weights

    def write_traces(sample, task, group) -> None:
        if traces_out:
            records = eval_traces(run=label, step=step, sample=sample, task=task, group=group, reward_weights=weights)
            with traces_out.open("a", encoding="utf-8") as handle:
                handle.writelines(json.dumps(r) + "\n" for r in records)

    task = progress.add_task(f"evaluating {label}", total=len(samples), stats="")
    evaluate(policy, samples, pool, report=report, on_batch=lambda n: progress.advance(task, n), on_group=write_traces,
             **settings)


def _print_eval(reports: dict, data: Path, json_out: Optional[Path]) -> None:
    if not reports:
        return
    k = next(iter(reports.values())).k
    table = Table(title=f"evaluation on {data}" + (f" ({k} samples per prompt)" if k > 1 else " (greedy)"))
    table.add_column("task")
    table.add_column("kind")
    table.add_column("n", justify="right")
    metrics = [("accuracy", "accuracy")] + ([("pass_at_k", f"pass@{k}")] if k > 1 else []) + [("format_rate", "format")]
    if len(reports) == 1:
        metrics += [("mean_completion_tokens", "mean tokens"), ("truncated_rate", "truncated")]
    side_by_side = len(reports) > 1
    for number, label in enumerate(reports, start=1):
        for _, header in metrics:
            table.add_column(f"{header} #{number}" if side_by_side else header, justify="right")
    if side_by_side:
        table.add_column(f"Δ acc #{len(reports)}−#1", justify="right")
        table.caption = "   ".join(f"#{number} {escape(label)}" for number, label in enumerate(reports, start=1))
    numbers = [{(t, kind): n for t, kind, n in report.rows()} for report in reports.values()]
    keys = list(dict.fromkeys(key for by_key in numbers for key in by_key))  # a cut-short run may lack rows
    for key in keys:
        cells, n = [], max(by_key[key]["n"] for by_key in numbers if key in by_key)
        for by_key in numbers:
            cells += [_eval_cell(metric, by_key[key][metric]) if key in by_key else "-" for metric, _ in metrics]
        if side_by_side:
            first, last = numbers[0].get(key), numbers[-1].get(key)
            cells.append(f"{last['accuracy'] - first['accuracy']:+.1%}" if first and last else "-")
        table.add_row(escape(key[0]), escape(key[1]), str(n), *cells)
    console.print(table)
    if json_out:
        result = {"data": str(data), "checkpoints": {label: r.to_dict() for label, r in reports.items()}}
        json_out.write_text(json.dumps(result, indent=2), encoding="utf-8")


def _eval_cell(key: str, value: float) -> str:
    return f"{value:.1f}" if key == "mean_completion_tokens" else f"{value:.1%}"


@app.command("export")
def export_command(
    checkpoint: str = typer.Argument(..., help="A LoRA adapter checkpoint (or any checkpoint directory)."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged save_pretrained model and its processor."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
) -> None:
    """Merge a LoRA adapter into its base model and save an ordinary model directory (loadable without PEFT)."""
    from .modeling import ModelLoadError, load_policy, save_policy

    if dtype not in ("float32", "bfloat16", "float16"):
        _fail(f"--dtype must be float32, bfloat16 or float16, not '{dtype}'")
    if out.exists() and any(out.iterdir()):
        _fail(f"{out} is not empty; choose a new directory")
    _quiet_transformers()
    try:
        policy = load_policy(checkpoint, dtype)
    except ModelLoadError as exc:
        _fail(str(exc))
    save_policy(policy, out)
    console.print(f"saved the merged model to {out}")


@app.command("inspect-traces")
def inspect_traces(
    path: Path = typer.Argument(..., help="Run directory or traces JSONL file (from dyme train or dyme eval --traces)."),
    data: list[Path] = typer.Option(
        [], "--data", help="Dataset(s) the traces came from (default: the run's recorded datasets); repeatable."),
    steps: Optional[str] = typer.Option(None, "--step", help="Steps A:B (inclusive; A:, :B and a single step work)."),
    mode: Optional[str] = typer.Option(None, "--mode", help="Only traces of this mode: memorize, explore, skip or eval."),
    flag: Optional[str] = typer.Option(None, "--flag", help="List only traces with this flag."),
    only_flagged: bool = typer.Option(False, "--only-flagged", help="List only traces with at least one flag."),
    limit: Optional[int] = typer.Option(None, "--limit", min=0, help="List at most N traces (table default: 30)."),
    answer_flag: Optional[str] = typer.Option(None, "--answer-flag", help="Answer flag (default: the run's, else 'Answer:')."),
    as_json: bool = typer.Option(False, "--json", help="Print per-trace flags and the summary as JSON."),
    html_out: Optional[Path] = typer.Option(None, "--html", help="Also write a self-contained HTML report with plots."),
) -> None:
    """Flag pseudo thinking in logged rollouts, each flag with a one-line reason, then summarize the run."""
    from .data import DataError
    from .inspect_run import inspect, parse_steps
    from .pseudo_thinking import FLAGS

    if flag is not None and flag not in FLAGS:
        _fail(f"unknown flag '{flag}' (flags: {', '.join(FLAGS)})")
    try:
        result = inspect(path, data=data, steps=parse_steps(steps), mode=mode, answer_flag=answer_flag)
    except (DataError, ValueError) as exc:
        _fail(str(exc))
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    listed = [(t, f) for t, f in zip(result.traces, result.flags) if t.get("kind") == "rollout"
              and (flag is None or any(x.name == flag for x in f)) and (not only_flagged or f)]
    if as_json:
        listed = listed[:limit] if limit is not None else listed
        print(json.dumps({"traces": [_trace_json(t, f) for t, f in listed], "summary": result.summary}))
    else:
        shown = 30 if limit is None else limit
        if shown:
            console.print(_traces_table(listed[:shown]))
        if len(listed) > shown:
            console.print(f"... {len(listed) - shown} more; use --limit, --flag or --only-flagged")
        _print_inspection_summary(result.summary)
    if html_out:
        from .report_html import write_html

        write_html(html_out, result.traces, result.flags, result.summary, result.samples, title=f"dyme inspect-traces {path}")
        err_console.print(f"wrote {html_out}")


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


def _print_inspection_summary(summary: dict) -> None:
    from .pseudo_thinking import FLAGS

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


@verifiers_app.command("list")
def verifiers_list(
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array instead of a table."),
) -> None:
    """Installed verifier plugins (entry-point group dyme.verifiers): name, package, version, description."""
    from dataclasses import asdict

    from .plugins import installed_verifiers, plugin_info

    infos = [plugin_info(ep) for _, ep in sorted(installed_verifiers().items())]
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


@verifiers_app.command("check")
def verifiers_check(
    name: str = typer.Argument(..., help="Verifier name, as in `dyme verifiers list`."),
    cases: Optional[Path] = typer.Option(
        None, "--cases", help='JSONL of {"completion": ..., "sample": {...}, "expect": true|false}.'),
    calibrate: bool = typer.Option(False, "--calibrate", help="Score gold and perturbed completions built from --data."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset (JSONL schema) for --calibrate."),
    options: list[str] = typer.Option([], "--option", help="Verifier option as KEY=VALUE (VALUE read as JSON if it parses); repeatable."),
    answer_flag: str = typer.Option("Answer:", "--answer-flag", help="Text that introduces the final answer."),
    timeout_s: float = typer.Option(5.0, "--timeout", min=0.01, help="Seconds allowed per verify call."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of tables."),
) -> None:
    """Run a verifier on hand-written cases (exit 1 on any disagreement with `expect`), or calibrate it."""
    from .checking import calibrate as run_calibration, check_cases, read_cases
    from .data import DataError, read_samples
    from .plugins import VerifierError, load_verifier
    from .verify_pool import VerifierPool

    if (cases is None) == (not calibrate):
        _fail("give either --cases FILE.jsonl or --calibrate --data FILE.jsonl")
    if calibrate and data is None:
        _fail("--calibrate needs --data FILE.jsonl")
    try:
        verifier = load_verifier(name, answer_flag, _parse_options(options))
        loaded = read_cases(cases, name) if cases else read_samples(data)
    except (VerifierError, DataError, ValueError) as exc:
        _fail(str(exc))
    try:
        with VerifierPool({name: verifier}, timeout_s=timeout_s, workers=2) as pool:
            if calibrate:
                _print_calibration(name, run_calibration(pool, name, loaded, answer_flag).to_dict(), as_json)
                return
            results = check_cases(pool, name, loaded)
    except VerifierError as exc:
        _fail(str(exc))
    _print_case_results(name, results, as_json)


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--option '{pair}': expected KEY=VALUE")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _print_case_results(name: str, results, as_json: bool) -> None:
    from .checking import case_summary

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
