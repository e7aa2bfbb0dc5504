"""`dyme eval`: accuracy, pass@K, format and length of one or more checkpoints, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import BadArgument, interrupt_exit_code
from ..ui import (answer_flag_option, console, err_console, image_check_progress, is_main_process, output_file,
                  progress_bar, quiet_transformers)

def eval_command(
    checkpoints: list[str] = typer.Option(
        ..., "--checkpoint", help="Checkpoint directory, LoRA adapter directory or hub id; repeat to compare side by side."),
    data: Path = typer.Option(..., "--data", help="JSONL dataset to evaluate on."),
    samples_per_prompt: int = typer.Option(
        1, "--samples", min=1, max=1024, help="Completions per prompt: 1 decodes greedily; K > 1 samples K and reports pass@K."),
    temperature: float = typer.Option(1.0, "--temperature", min=0.01, help="Sampling temperature (with --samples > 1)."),
    max_new_tokens: int = typer.Option(300, "--max-new-tokens", min=1, help="Completion length limit."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Prompts per generate call."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate only the first N samples."),
    verifier: Optional[str] = typer.Option(None, "--verifier", help="Score every sample with this verifier instead of its task's."),
    answer_flag: str = answer_flag_option(),
    prompt_template: Optional[str] = typer.Option(
        None, "--prompt-template", help="The user turn with a {question} placeholder (default: the template the "
        "checkpoint's run recorded, else the paper's instruction with --answer-flag)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the numbers to this JSON file."),
    traces_out: Optional[Path] = typer.Option(
        None, "--traces", help="Write every completion to this new (or empty) JSONL file, in the training trace format."),
    allow_external_images: bool = typer.Option(
        False, "--allow-external-images",
        help="Accept image paths in --data that are absolute or lead out of the dataset's folder."),
) -> None:
    """Accuracy, pass@K, format and length of one or more checkpoints, per task and question kind."""
    from ..data import QUESTION, read_samples, task_lines
    from ..evaluate import EvalReport, prompt_template_for
    from ..plugins import load_verifiers
    from ..verify_pool import VerifierPool

    quiet_transformers()
    output_file(json_out, "--json")
    output_file(traces_out, "--traces", overwrite=False)  # it could be a run's own traces.jsonl
    if prompt_template is not None and QUESTION not in prompt_template:
        raise BadArgument(f"--prompt-template must contain {QUESTION}")
    with image_check_progress() as on_progress:
        dataset = read_samples(data, allow_external_images=allow_external_images, on_progress=on_progress)
    samples = dataset[:limit]
    verifiers = load_verifiers([verifier] if verifier else task_lines(dataset), answer_flag)
    labels = _checkpoint_labels(checkpoints)
    reports: dict[str, EvalReport] = {}
    if traces_out and is_main_process():  # under `accelerate launch` every process evaluates, the main one writes
        traces_out.parent.mkdir(parents=True, exist_ok=True)
        traces_out.write_text("", encoding="utf-8")
    try:
        with VerifierPool(verifiers) as pool, progress_bar() as progress:
            for checkpoint, label in zip(checkpoints, labels):
                reports[label] = EvalReport(k=samples_per_prompt)
                template = prompt_template or prompt_template_for(checkpoint, answer_flag)
                _evaluate_checkpoint(checkpoint, label, samples, pool, reports[label], progress, traces_out,
                                     prompt_template=template, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     samples_per_prompt=samples_per_prompt, temperature=temperature, verifier=verifier)
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM, SIGHUP: what was evaluated is printed and written
        err_console.print("[yellow]interrupted; partial results:[/]")
        _print_eval(reports, data, json_out)
        raise typer.Exit(interrupt_exit_code(exc))
    _print_eval(reports, data, json_out)


def _checkpoint_labels(checkpoints: list[str]) -> list[str]:
    """Short, distinct names: `run/step-000700` for training checkpoints, the path or hub id otherwise."""
    from ..rundir import checkpoint_label

    labels = []
    for checkpoint in checkpoints:
        label = checkpoint_label(checkpoint) or checkpoint
        labels.append(label if label not in labels else checkpoint)
    return labels if len(set(labels)) == len(labels) else [f"{i + 1}: {c}" for i, c in enumerate(checkpoints)]


def _evaluate_checkpoint(checkpoint: str, label: str, samples, pool, report, progress, traces_out: Optional[Path],
                         **settings) -> None:
    from accelerate import PartialState

    from ..evaluate import evaluate, trace_writer
    from ..modeling import check_reads_images, load_policy
    from ..rundir import checkpoint_step

    policy = load_policy(checkpoint)
    check_reads_images(policy, checkpoint, samples, "--data")
    policy.model.to(PartialState().device)  # this process's GPU (or the CPU)
    write = traces_out and is_main_process()
    on_group = trace_writer(traces_out, run=label, step=checkpoint_step(checkpoint) or 0) if write else None
    task = progress.add_task(f"evaluating {label}", total=len(samples), stats="")
    evaluate(policy, samples, pool, report=report, on_batch=lambda n: progress.advance(task, n), on_group=on_group,
             **settings)


def _print_eval(reports: dict, data: Path, json_out: Optional[Path]) -> None:
    if not reports or not is_main_process():
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
