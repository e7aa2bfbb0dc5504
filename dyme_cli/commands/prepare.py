"""`dyme prepare`: build datasets in dyme's JSONL schema, one subcommand per source.

Converters of public datasets run the same pipeline (`prepare.convert.convert_source`) with their entry in
`convert.SOURCES` (slake and jsonl add their own options; the mappings are documented in `convert`); the
synthetic generators (no downloads) are for demos, tests and smoke runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import BadArgument, interrupt_exit_code
from ..prepare.convert import SOURCES, Options, Report, convert_source, format_reasons, parse_field_map
from ..ui import answer_flag_option, console, err_console

app = typer.Typer(help="Build datasets in dyme's JSONL schema.", no_args_is_help=True)

N_TRAIN = typer.Option(2000, "--n-train", help="Training samples (1 to 10,000,000).")
N_TEST = typer.Option(200, "--n-test", help="Held-out samples (1 to 10,000,000).")
MAX_SAMPLES = 10_000_000
SEED = typer.Option(0, "--seed", help="Random seed; the same seed writes the same data.")
WITH_IMAGES = "Output folder for train.jsonl, test.jsonl and images/."


def _out(help_text: str = WITH_IMAGES):
    return typer.Option(..., "--out", help=help_text)


def _quality(facts: str, medium: str):
    return typer.Option("high", "--reference-quality", help=f"high: every {facts} in a trace is true; medium: "
                        f"{medium} (pseudo thinking); low: verbose, unstructured traces.")


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


OVERWRITE = typer.Option(False, "--overwrite", help="Replace the dataset files already in --out.")


def _fresh(out: Path, names: list[str], overwrite: bool) -> None:
    """Refuses to write over a dataset file already in `out` unless `overwrite`."""
    there = [name for name in names if (out / name).exists()]
    if there and not overwrite:
        raise BadArgument(f"--out {out} already holds {', '.join(there)}: pass --overwrite to replace "
                          f"{'them' if len(there) > 1 else 'it'}, or choose another folder")


def _write(generate, out: Path, overwrite: bool, **settings) -> None:
    for option, count in (("--n-train", settings["n_train"]), ("--n-test", settings["n_test"])):
        if not 1 <= count <= MAX_SAMPLES:  # an empty split would be written without a word
            raise BadArgument(f"{option} {count}: must be between 1 and {MAX_SAMPLES:,}")
    _fresh(out, ["train.jsonl", "test.jsonl"], overwrite)
    counts = generate(out, **settings)
    console.print(f"wrote {counts['train']} train and {counts['test']} test samples to {out}")


@app.command("synthetic-chart")
def prepare_synthetic_chart(
    out: Path = _out(),
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = SEED,
    reference_quality: str = _quality("value", "wrong values for bars the question does not use"),
    min_bars: int = typer.Option(3, "--min-bars", help="Fewest bars in a chart (3-5)."),
    max_bars: int = typer.Option(5, "--max-bars", help="Most bars in a chart (3-5)."),
    max_value: int = typer.Option(9, "--max-value", help="Largest bar value; the value axis is scaled to it."),
    image_size: int = typer.Option(64, "--image-size", min=16, help="Side of the square images in pixels."),
    kinds: str = typer.Option(
        "value,largest,smallest,difference,sum", "--kinds", help="Comma-separated question kinds to draw from."
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """Render synthetic bar charts with questions, gold answers and reference traces."""
    from ..prepare.synthetic_chart import generate

    if reference_quality not in ("high", "medium", "low"):
        raise BadArgument(f"--reference-quality must be high, medium or low, not '{reference_quality}'")
    _write(generate, out, overwrite, n_train=n_train, n_test=n_test, seed=seed, quality=reference_quality,
           min_bars=min_bars, max_bars=max_bars, max_value=max_value, image_size=image_size, kinds=_kinds(kinds))


@app.command("synthetic-math")
def prepare_synthetic_math(
    out: Path = _out("Output folder for train.jsonl and test.jsonl (text only)."),
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = SEED,
    reference_quality: str = _quality("value", "wrong intermediate results, right answer"),
    min_steps: int = typer.Option(2, "--min-steps", help="Fewest arithmetic operations in a problem (2-6)."),
    max_steps: int = typer.Option(4, "--max-steps", help="Most arithmetic operations in a problem (2-6)."),
    max_number: int = typer.Option(50, "--max-number", help="Largest number in a problem, its steps and answer."),
    overwrite: bool = OVERWRITE,
) -> None:
    """Write GSM8K-style multi-step arithmetic word problems with step-by-step reference traces."""
    from ..prepare.synthetic_math import generate

    _write(generate, out, overwrite, n_train=n_train, n_test=n_test, seed=seed, quality=reference_quality,
           min_steps=min_steps, max_steps=max_steps, max_number=max_number)


@app.command("synthetic-medvqa")
def prepare_synthetic_medvqa(
    out: Path = _out(),
    n_train: int = N_TRAIN,
    n_test: int = N_TEST,
    seed: int = SEED,
    reference_quality: str = _quality("finding", "wrong findings the answer does not depend on"),
    image_size: int = typer.Option(64, "--image-size", help="Side of the square scans in pixels (64-512)."),
    kinds: str = typer.Option(
        "abnormality,count,side,location", "--kinds", help="Comma-separated question kinds to draw from."
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    """Render phantom scans (an organ with 0-3 bright lesions) with medical VQA questions and reference traces."""
    from ..prepare.synthetic_medvqa import generate

    _write(generate, out, overwrite, n_train=n_train, n_test=n_test, seed=seed, quality=reference_quality,
           image_size=image_size, kinds=_kinds(kinds))


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


def _run(source: str, input_: str, out: Path, opts: Options, overwrite: bool) -> None:
    _fresh(out, [f"{opts.split}.jsonl"], overwrite)
    report = convert_source(SOURCES[source], input_, out, opts)
    console.print(_summary(report), markup=False, highlight=False, soft_wrap=True)


def _register(name: str) -> None:
    """A subcommand with the shared options for the source `name`."""
    source = SOURCES[name]

    def command(
        input_: InputOption, out: OutOption, split: SplitOption = "train", limit: LimitOption = None,
        task: TaskOption = None, overwrite: bool = OVERWRITE,
    ) -> None:
        _run(name, input_, out, Options(split=split, limit=limit, task=task), overwrite)

    app.command(name, help=f"{source.help} Task: {source.task}.")(command)


for _name in ("gsm8k", "math", "chartqa", "vqa-rad", "pathvqa", "aokvqa"):
    _register(_name)


@app.command("slake", help=f"{SOURCES['slake'].help} Task: medvqa.")
def prepare_slake(
    input_: InputOption, out: OutOption, split: SplitOption = "train", limit: LimitOption = None,
    task: TaskOption = None,
    all_languages: bool = typer.Option(False, "--all-languages", help="Keep non-English (q_lang != en) questions."),
    overwrite: bool = OVERWRITE,
) -> None:
    _run("slake", input_, out, Options(split=split, limit=limit, task=task, all_languages=all_languages), overwrite)


@app.command("jsonl", help=SOURCES["jsonl"].help)
def prepare_jsonl(
    input_: Annotated[str, typer.Option("--input", help="The source JSONL file.")], out: OutOption,
    split: SplitOption = "train", limit: LimitOption = None,
    task: TaskOption = None,
    field_map: str = typer.Option(
        ..., "--map", help="Schema field = source field, comma-separated: question=q,answer=a[,image=img,"
        "reference=r,id=i,task=t]. Image paths are relative to the JSONL's folder; unmapped fields go to meta.",
    ),
    overwrite: bool = OVERWRITE,
) -> None:
    _run("jsonl", input_, out, Options(split=split, limit=limit, task=task, field_map=parse_field_map(field_map)),
         overwrite)


@app.command("refine")
def prepare_refine(
    input_: Annotated[Path, typer.Option("--input", help="A dataset in dyme's schema (JSONL, images beside it).")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the refined dataset (same file name) and its images.")],
    base_url: Annotated[str, typer.Option("--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1.")],
    model: Annotated[str, typer.Option("--model", help="The served model's name.")],
    template: Annotated[Optional[str], typer.Option(
        "--template", help="The reference template: a file or the text (default: read, then compute, then conclude).")] = None,
    answer_flag: str = answer_flag_option(),
    api_key_env: Annotated[Optional[str], typer.Option(
        "--api-key-env", help="Environment variable holding the API key (the key itself is never an option).")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=256, help="Requests in flight.")] = 8,
    timeout_s: Annotated[float, typer.Option("--timeout", min=0.1, help="Seconds per request.")] = 60.0,
    overwrite: bool = OVERWRITE,
) -> None:
    """Write a reference trace for every sample with an LLM (the refiner), keeping the original where the refined one
    concludes another answer or states values the facts do not give. Interrupted, it goes on where it stopped."""
    import shutil

    from ..data import read_samples, write_samples
    from ..recipe import SupervisionSection, section_from_options
    from ..supervision import refiner_for
    from ..ui import image_check_progress, progress_bar

    if out.resolve() == input_.resolve().parent:
        raise BadArgument(f"--out {out} is the folder of --input: the refined dataset would replace the one it is "
                          "refined from; choose another folder")
    _fresh(out, [input_.name], overwrite)
    with image_check_progress() as on_progress:
        samples = read_samples(input_, on_progress=on_progress)
    section = section_from_options(
        SupervisionSection, {"base_url": "--base-url", "model": "--model", "timeout_s": "--timeout"}, refiner="llm",
        base_url=base_url, model=model, api_key_env=api_key_env, concurrency=concurrency, timeout_s=timeout_s,
        template=template)
    refiner = refiner_for(section, out / ".refine-cache.jsonl", answer_flag)
    try:
        with progress_bar() as progress:
            task = progress.add_task("refining", total=None, stats="")
            report = refiner.refine(list(samples), on_progress=lambda done, total: progress.update(
                task, completed=done, total=total))
    except KeyboardInterrupt as exc:  # Ctrl-C, SIGTERM: every reply received so far is in the cache
        err_console.print(f"[yellow]interrupted: the references refined so far are kept in {refiner.cache_file}; "
                          "run the same command again to continue[/]")
        raise typer.Exit(interrupt_exit_code(exc)) from None
    for image in sorted({name for s in samples for name in s.images}):
        (out / image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(input_.parent / image, out / image)
    count = write_samples(out / input_.name, report.samples)
    console.print(f"wrote {count} samples to {out / input_.name}; {report.summary()}")
    for reason in report.reasons:
        console.print(f"  {reason}")
