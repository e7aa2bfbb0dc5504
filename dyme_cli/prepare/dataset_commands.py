"""`dyme prepare SOURCE`: convert public datasets into dyme's schema, one subcommand per source.

Every subcommand runs the same pipeline (`convert.convert_source`) with its entry in `convert.SOURCES`;
slake and jsonl add their own options. The mappings are documented in `convert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..ui import console, fail
from .app import prepare_app
from .convert import SOURCES, ConvertError, Options, Report, convert_source, format_reasons, parse_field_map

InputOption = Annotated[str, typer.Option(
    "--input", help="A local file or folder (parquet, arrow, json, jsonl, csv, or the source's original layout), "
    "or a hub dataset name (NAME or NAME:CONFIG).",
)]
OutOption = Annotated[Path, typer.Option("--out", help="Output folder for <split>.jsonl and images/.")]
SplitOption = Annotated[str, typer.Option("--split", help="Split to read; also the output file's name.")]
LimitOption = Annotated[Optional[int], typer.Option("--limit", min=1, help="Write at most N samples.")]
TaskOption = Annotated[Optional[str], typer.Option(
    "--task", help="Verifier name for every sample (default: the source's; jsonl: for rows without a task).",
)]


def _summary(report: Report) -> str:
    line = f"wrote {report.written} samples to {report.path}"
    if report.limit_reached:
        line += " (stopped at --limit)"
    total = sum(report.skipped.values())
    reasons = format_reasons(report.skipped)
    line += f"; skipped {total} rows" + (f" ({reasons})" if reasons else "")
    return line + (f"; {report.note}" if report.note else "")


def _run(source: str, input_: str, out: Path, opts: Options) -> None:
    try:
        report = convert_source(SOURCES[source], input_, out, opts)
    except ConvertError as exc:
        fail(str(exc))
    console.print(_summary(report), markup=False, highlight=False, soft_wrap=True)


def _register(name: str) -> None:
    """A subcommand with the shared options for the source `name`."""
    source = SOURCES[name]

    def command(
        input_: InputOption, out: OutOption, split: SplitOption = "train", limit: LimitOption = None,
        task: TaskOption = None,
    ) -> None:
        _run(name, input_, out, Options(split=split, limit=limit, task=task))

    prepare_app.command(name, help=f"{source.help} Task: {source.task}.")(command)


for _name in ("gsm8k", "math", "chartqa", "vqa-rad", "pathvqa", "aokvqa"):
    _register(_name)


@prepare_app.command("slake", help=f"{SOURCES['slake'].help} Task: medvqa.")
def prepare_slake(
    input_: InputOption, out: OutOption, split: SplitOption = "train", limit: LimitOption = None,
    task: TaskOption = None,
    all_languages: bool = typer.Option(False, "--all-languages", help="Keep non-English (q_lang != en) questions."),
) -> None:
    _run("slake", input_, out, Options(split=split, limit=limit, task=task, all_languages=all_languages))


@prepare_app.command("jsonl", help=SOURCES["jsonl"].help)
def prepare_jsonl(
    input_: Annotated[str, typer.Option("--input", help="The source JSONL file.")], out: OutOption,
    split: SplitOption = "train", limit: LimitOption = None,
    task: TaskOption = None,
    field_map: str = typer.Option(
        ..., "--map", help="Schema field = source field, comma-separated: question=q,answer=a[,image=img,"
        "reference=r,id=i,task=t]. Image paths are relative to the JSONL's folder; unmapped fields go to meta.",
    ),
) -> None:
    try:
        mapping = parse_field_map(field_map)
    except ConvertError as exc:
        fail(str(exc))
    _run("jsonl", input_, out, Options(split=split, limit=limit, task=task, field_map=mapping))
