"""The `dyme` command line: each subcommand parses, calls the engine, and renders with rich."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

app = typer.Typer(
    help="Post-train small vision-language models to think reliably with DyME "
    "(Dynamic Memorization and Exploration).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
prepare_app = typer.Typer(help="Build datasets in dyme's JSONL schema.", no_args_is_help=True)
app.add_typer(prepare_app, name="prepare")
verifiers_app = typer.Typer(help="Verifier plugins: list the installed ones, check and calibrate one.", no_args_is_help=True)
app.add_typer(verifiers_app, name="verifiers")

console = Console()
err_console = Console(stderr=True)
USER_ERROR = 2


def _fail(message: str, code: int = USER_ERROR) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _quiet_transformers() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


@prepare_app.command("synthetic-chart")
def prepare_synthetic_chart(
    out: Path = typer.Option(..., "--out", help="Output folder for train.jsonl, test.jsonl and images/."),
    n_train: int = typer.Option(2000, "--n-train", min=1, help="Training samples."),
    n_test: int = typer.Option(200, "--n-test", min=0, help="Held-out samples."),
    seed: int = typer.Option(0, "--seed", help="Random seed; the same seed writes the same data."),
    reference_quality: str = typer.Option(
        "high", "--reference-quality",
        help="high: every value in a trace is true; medium: wrong values for bars the question does not use "
        "(pseudo thinking); low: verbose, unstructured traces.",
    ),
    min_bars: int = typer.Option(3, "--min-bars", help="Fewest bars in a chart (3-5)."),
    max_bars: int = typer.Option(5, "--max-bars", help="Most bars in a chart (3-5)."),
    max_value: int = typer.Option(9, "--max-value", help="Largest bar value; the value axis is scaled to it."),
    image_size: int = typer.Option(64, "--image-size", min=16, help="Side of the square images in pixels."),
    kinds: str = typer.Option(
        "value,largest,smallest,difference,sum", "--kinds", help="Comma-separated question kinds to draw from."
    ),
) -> None:
    """Render synthetic bar charts with questions, gold answers and reference traces."""
    from .prepare.synthetic_chart import generate

    if reference_quality not in ("high", "medium", "low"):
        _fail(f"--reference-quality must be high, medium or low, not '{reference_quality}'")
    try:
        counts = generate(
            out, n_train=n_train, n_test=n_test, seed=seed, quality=reference_quality, min_bars=min_bars,
            max_bars=max_bars, max_value=max_value, image_size=image_size,
            kinds=tuple(k.strip() for k in kinds.split(",") if k.strip()),
        )
    except ValueError as exc:
        _fail(str(exc))
    console.print(f"wrote {counts['train']} train and {counts['test']} test samples to {out}")


@app.command()
def train(
    recipe_path: Path = typer.Argument(..., metavar="RECIPE.toml", help="Training recipe."),
    output: Optional[Path] = typer.Option(None, "--output", help="Run directory (default: [run].output_dir)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Override [train].max_steps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the run directory."),
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
    checkpoint: Path = typer.Option(..., "--checkpoint", help="Checkpoint directory or hub id."),
    data: Path = typer.Option(..., "--data", help="JSONL dataset to evaluate on."),
    max_new_tokens: int = typer.Option(300, "--max-new-tokens", min=1, help="Completion length limit."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Prompts per generate call."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N samples."),
    answer_flag: str = typer.Option("Answer:", "--answer-flag", help="Text that introduces the final answer."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers to this JSON file."),
) -> None:
    """Greedy held-out accuracy of a checkpoint, scored by each sample's verifier."""
    from .data import DataError, read_samples
    from .evaluate import evaluate
    from .modeling import ModelLoadError, load_policy
    from .plugins import VerifierError, load_verifiers
    from .verify_pool import VerifierPool

    _quiet_transformers()
    try:
        samples = read_samples(data)[:limit]
        verifiers = load_verifiers([s.task for s in samples], answer_flag)
        policy = load_policy(str(checkpoint))
    except (DataError, ModelLoadError, VerifierError) as exc:
        _fail(str(exc))
    with _progress() as progress, VerifierPool(verifiers) as pool:
        task = progress.add_task("evaluating", total=len(samples), stats="")
        report = evaluate(policy, samples, pool, max_new_tokens=max_new_tokens, batch_size=batch_size,
                          on_batch=lambda n: progress.advance(task, n))
    table = Table(title=f"{checkpoint} on {data}")
    for column in ("kind", "n", "accuracy", "format", "mean tokens", "truncated"):
        table.add_column(column, justify="right")
    numbers = report.to_dict()
    for kind, s in [*numbers["by_kind"].items(), ("all", numbers["overall"])]:
        table.add_row(kind, str(s["n"]), f"{s['accuracy']:.1%}", f"{s['format_rate']:.1%}",
                      f"{s['mean_completion_tokens']:.1f}", f"{s['truncated_rate']:.1%}")
    console.print(table)
    if json_out:
        json_out.write_text(json.dumps(numbers, indent=2), encoding="utf-8")


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
