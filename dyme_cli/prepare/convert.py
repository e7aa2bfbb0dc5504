"""Convert public datasets into dyme's JSONL schema (`dyme prepare SOURCE --input ... --out DIR`).

One pipeline serves every source: the source's loader reads `--input` into rows (plain dicts), its
`convert` function turns one row into a `Draft` or raises `Skip(reason)`, and `convert_source` checks the
texts, copies the images into `DIR/images/` (named by content hash, so an image shared by many questions
is stored once), writes `DIR/<split>.jsonl` and counts the skipped rows per reason. A row is never fatal:
a missing or unreadable image, an empty question or answer, ... skips that row only.

Input: an existing file (.parquet, .arrow, .json, .jsonl, .csv) or directory is read with
`datasets.load_dataset(<builder>, ...)`; the split is the file itself, or inferred from the file names in a
directory (`train-0000.parquet`, `data/test.jsonl`, ...). Any other string is a hub name (`NAME` or
`NAME:CONFIG`). Image columns are read undecoded; PNG and JPEG bytes are written as they are, other
formats are re-encoded as PNG. Every sample gets `id = "<source>-<split>-<row number>"` (row numbers count
the input rows, skipped ones included), `task` from the table below (or `--task`), and
`meta["source"]`; an original id is kept as `meta["source_id"]`.

Sources (task; mapping):
- gsm8k (math): question -> question; the text after `####` in answer -> answer (thousands commas
  removed); the reasoning before `####`, calculator annotations `<<48/2=24>>` removed, each line's
  whitespace collapsed and blank lines dropped -> reference. Text only.
- math (math; Hendrycks MATH): problem -> question; content of the last `\\boxed{}` in solution ->
  answer (read as the math verifier reads it); the solution verbatim, its `\\boxed{}` kept -> reference;
  type -> meta kind, level -> meta level.
- chartqa (chart): the HF layout (image, query/question, label/answer; a list label gives its first
  item; human_or_machine/type -> meta kind "human"/"augmented"), or the original release's split folder
  (`*_human.json`, `*_augmented.json`: [{"imgname", "query", "label"}], images in `png/`), where the file
  gives meta kind.
- slake, vqa-rad, pathvqa (medvqa): image, question, answer; meta answer_type "closed"/"open" from the
  source's answer_type (CLOSED/OPEN) or, where there is none (PathVQA), closed iff the answer is yes/no;
  qid -> source_id; SLAKE content_type / VQA-RAD question_type -> meta kind. SLAKE also reads the
  original release (`<split>.json` next to `imgs/`, `img_name` relative to it) and keeps only English
  questions (q_lang "en") unless told otherwise. These sources have no reasoning traces: reference stays
  empty for DyME's refiner to fill.
- aokvqa (vqa): image, question; the most common of direct_answers (ties: the first given) -> answer;
  direct_answers -> meta answers (the vqa verifier's annotators); the first rationale -> reference;
  question_id -> source_id, choices and correct_choice_idx kept in meta, meta kind "direct".
- jsonl: any JSONL with a field map (`question=q,answer=a,image=img,reference=r,id=i,task=t`; question and
  answer required); image values are a path or a list of paths relative to the JSONL's folder; a mapped
  id is the sample id; unmapped fields go to meta; rows without a task get `--task`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from ..data import Sample, write_samples
from ..errors import UserError, first_line
from ..hub import is_hub_id
from ..verdict import last_boxed

NO_REFERENCE = "no reasoning traces in this source: reference left empty for DyME's refiner to fill"
BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".json": "json", ".jsonl": "json", ".csv": "csv"}
MAP_FIELDS = ("question", "answer", "image", "reference", "id", "task")
_KEPT_FORMATS = {"PNG": ".png", "JPEG": ".jpg"}


class ConvertError(UserError, ValueError):
    """Unusable input or options as a whole (not one bad row); the message is one line."""


class Skip(Exception):
    """This row cannot become a sample; `reason` is what the summary counts it under."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass
class Options:
    split: str = "train"
    limit: Optional[int] = None  # most samples written
    task: Optional[str] = None  # overrides the source's task (jsonl: the task for rows without one)
    all_languages: bool = False  # SLAKE: keep non-English questions too
    field_map: dict[str, str] = field(default_factory=dict)  # jsonl: schema field -> source field


@dataclass
class Rows:
    """What a loader read: the column names, the rows, and the folder relative image paths start from."""

    columns: set[str]
    rows: Iterable[Optional[dict]]  # None: a line the loader could not parse (jsonl)
    base: Optional[Path] = None


@dataclass
class Draft:
    """A converted row before its texts are checked and its images stored."""

    question: str
    answer: str
    images: list[Any] = field(default_factory=list)  # paths, or HF image dicts {"bytes", "path"}
    reference: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    id: Optional[str] = None  # overrides the generated id (jsonl's mapped id)
    task: Optional[str] = None  # the row's own task (jsonl's mapped task)


@dataclass(frozen=True)
class Source:
    name: str
    task: str
    help: str
    convert: Callable[[dict, Options], Draft]
    load: Callable[[str, Options], Rows]
    columns: tuple[tuple[str, ...], ...] = ()  # each entry: one of these column names must exist
    note: str = ""  # printed with the summary


@dataclass
class Report:
    path: Path
    written: int
    skipped: Counter
    limit_reached: bool
    note: str


# --- reading the input -------------------------------------------------------------------------------


def _local_builder(path: Path) -> str:
    """The datasets builder for a file, or for the most common data-file type in a directory."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and p.suffix in BUILDERS]
    kinds = Counter(BUILDERS[p.suffix] for p in files if p.suffix in BUILDERS)
    if not kinds:
        raise ConvertError(f"{path}: no data files ({', '.join(sorted(BUILDERS))})")
    return kinds.most_common(1)[0][0]


def _quiet_datasets():
    """The datasets module with its progress bars and the hub's retry warnings off (errors come as one line)."""
    import datasets
    import huggingface_hub

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()
    return datasets


def _load_local(path: Path, split: str):
    """A local file (it is the split) or directory (splits inferred from its file names)."""
    datasets = _quiet_datasets()
    builder = _local_builder(path)
    try:
        if path.is_file():
            return datasets.load_dataset(builder, data_files={split: str(path)}, split=split)
        return datasets.load_dataset(builder, data_dir=str(path), split=split)
    except Exception as exc:  # datasets raises many types; the user needs one line
        raise ConvertError(f"cannot read {path}: {first_line(exc)}") from None


def _load_hub(name: str, split: str):
    """A hub dataset, `NAME` or `NAME:CONFIG`."""
    datasets = _quiet_datasets()
    repo, _, config = name.partition(":")
    try:
        return datasets.load_dataset(repo, config or None, split=split)
    except Exception as exc:
        raise ConvertError(
            f"cannot load '{name}' from the hub: {first_line(exc)}; download it and pass a local path"
        ) from None


def load_table(input_: str, opts: Options) -> Rows:
    """Rows of a datasets table; image columns stay undecoded and class labels become their names."""
    import datasets

    path = Path(input_).expanduser()
    if path.exists():
        ds, base = _load_local(path, opts.split), path if path.is_dir() else path.parent
    elif not is_hub_id(input_.partition(":")[0]):
        raise ConvertError(f"{input_}: no such file or directory")
    else:
        ds, base = _load_hub(input_, opts.split), None
    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
    labels = {name: f for name, f in ds.features.items() if isinstance(f, datasets.ClassLabel)}

    def rows() -> Iterable[dict]:
        for row in ds:
            for name, feature in labels.items():
                if row[name] is not None and row[name] >= 0:
                    row[name] = feature.int2str(row[name])
            yield row

    return Rows(set(ds.column_names), rows(), base)


def _read_json_list(path: Path) -> list[dict]:
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # unreadable, not UTF-8 or JSON, nested too deeply
        raise ConvertError(f"cannot read {path}: {first_line(exc)}") from None
    if not isinstance(records, list):
        raise ConvertError(f"{path}: expected a JSON list of records")
    return [r for r in records if isinstance(r, dict)]


def _load_chartqa(input_: str, opts: Options) -> Rows:
    """The original release's split folder (`*_human.json`, `*_augmented.json`, `png/`), else load_table."""
    folder = Path(input_).expanduser()
    files = sorted(folder.glob("*_human.json")) + sorted(folder.glob("*_augmented.json"))
    if not folder.is_dir() or not files:
        return load_table(input_, opts)
    rows = [
        {"image": f"png/{r.get('imgname', '')}", "query": r.get("query"), "label": r.get("label"),
         "human_or_machine": path.stem.rsplit("_", 1)[1]}
        for path in files for r in _read_json_list(path)
    ]
    return Rows({"image", "query", "label", "human_or_machine"}, rows, folder)


def _load_slake(input_: str, opts: Options) -> Rows:
    """The original release (`<split>.json` next to `imgs/`), else load_table."""
    folder = Path(input_).expanduser()
    if not (folder / "imgs").is_dir():
        return load_table(input_, opts)
    path = folder / f"{opts.split}.json"
    if not path.is_file():
        found = ", ".join(sorted(p.stem for p in folder.glob("*.json"))) or "none"
        raise ConvertError(f"{folder}: no {opts.split}.json for split '{opts.split}' (splits: {found})")
    rows = [{**r, "image": f"imgs/{r.get('img_name', '')}"} for r in _read_json_list(path)]
    return Rows({"image", "question", "answer"}, rows, folder)


def parse_field_map(text: str) -> dict[str, str]:
    """`question=q,answer=a,...` as {schema field: source field}; ConvertError on a bad entry."""
    field_map = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        target, sep, source = (s.strip() for s in item.partition("="))
        if not sep or not target or not source:
            raise ConvertError(f"--map entry '{item}' is not FIELD=SOURCE_FIELD")
        if target not in MAP_FIELDS:
            raise ConvertError(f"--map: unknown schema field '{target}' (fields: {', '.join(MAP_FIELDS)})")
        field_map[target] = source
    missing = [f for f in ("question", "answer") if f not in field_map]
    if missing:
        raise ConvertError(f"--map must map {' and '.join(missing)} (e.g. question=q,answer=a)")
    return field_map


def _load_jsonl(input_: str, opts: Options) -> Rows:
    """A JSONL file; every mapped source field must occur in some row. A line that is no JSON object is
    kept as None, for `_jsonl` to skip."""
    path = Path(input_).expanduser()
    if not path.is_file():
        raise ConvertError(f"{input_}: no such file")
    if "task" not in opts.field_map and not opts.task:
        raise ConvertError("jsonl rows need a task: map task=FIELD or pass --task NAME")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConvertError(f"cannot read {path}: {first_line(exc)}") from None
    rows, columns = [], set()
    for line in filter(str.strip, lines):
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, nested too deeply, a number of thousands of digits
            row = None
        rows.append(row if isinstance(row, dict) else None)
        columns.update(rows[-1] or ())
    unknown = sorted(set(opts.field_map.values()) - columns)
    if unknown:
        raise ConvertError(f"{path}: --map names unknown source field(s) {', '.join(unknown)} "
                           f"(fields: {', '.join(sorted(columns)) or 'none'})")
    return Rows(columns, rows, path.parent)


# --- converting one row ------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _first(row: dict, *names: str) -> Any:
    """The value of the first of `names` the row has (and is not None)."""
    return next((row[n] for n in names if row.get(n) is not None), None)


def _meta(row: dict, **columns: str | tuple[str, ...]) -> dict[str, Any]:
    """{meta key: the row's value} for each key whose column (or first present alternative) has a value."""
    values = {key: _first(row, *((names,) if isinstance(names, str) else names)) for key, names in columns.items()}
    return {key: value for key, value in values.items() if value is not None}


_CALCULATOR = re.compile(r"<<[^<>]*>>")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")


def _tidy(text: str) -> str:
    """Whitespace runs collapsed within each line, blank lines dropped."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _gsm8k(row: dict, opts: Options) -> Draft:
    reasoning, sep, final = _text(row.get("answer")).rpartition("####")
    if not sep:
        raise Skip("no '####' answer")
    return Draft(
        question=_text(row.get("question")),
        answer=_THOUSANDS.sub("", final.strip()),
        reference=_tidy(_CALCULATOR.sub("", reasoning)),
    )


def _math(row: dict, opts: Options) -> Draft:
    solution = _text(row.get("solution"))
    answer = last_boxed(solution)
    if answer is None:
        raise Skip("no \\boxed{} answer")
    return Draft(question=_text(row.get("problem")), answer=answer, reference=solution,
                 meta=_meta(row, level="level", kind="type"))


def _chartqa_kind(value: Any) -> Optional[str]:
    """"human" or "augmented" from human_or_machine ("human"/"machine") or type ("human_test", ...)."""
    text = _text(value).lower()
    if "human" in text:
        return "human"
    if "augmented" in text or "machine" in text:
        return "augmented"
    return None


def _chartqa(row: dict, opts: Options) -> Draft:
    label = _first(row, "label", "answer")
    if isinstance(label, list):
        label = label[0] if label else None
    kind = _chartqa_kind(_first(row, "human_or_machine", "type"))
    return Draft(
        question=_text(_first(row, "query", "question")),
        answer=_text(label),
        images=[row.get("image")],
        meta={"kind": kind} if kind else {},
    )


def _answer_type(row: dict, answer: str) -> str:
    """closed/open from the source's answer_type; without one, closed iff the answer is yes or no."""
    given = _text(row.get("answer_type")).lower()
    if given in ("closed", "open"):
        return given
    return "closed" if answer.lower().rstrip(".") in ("yes", "no") else "open"


def _medvqa(row: dict, opts: Options) -> Draft:
    language = _text(row.get("q_lang")).lower()
    if language and language != "en" and not opts.all_languages:
        raise Skip("not English")
    answer = _text(row.get("answer"))
    meta = {"answer_type": _answer_type(row, answer),
            **_meta(row, kind=("content_type", "question_type"), source_id="qid")}
    if language:
        meta["language"] = language
    return Draft(question=_text(row.get("question")), answer=answer, images=[row.get("image")], meta=meta)


def _most_common(answers: list[str]) -> str:
    """The most frequent answer; among equally frequent ones, the first given."""
    return Counter(answers).most_common(1)[0][0] if answers else ""


def _aokvqa(row: dict, opts: Options) -> Draft:
    answers = [_text(a) for a in row.get("direct_answers") or []]
    rationales = [_text(r) for r in row.get("rationales") or []]
    meta = {"kind": "direct", "answers": answers,
            **_meta(row, choices="choices", correct_choice_idx="correct_choice_idx", source_id="question_id")}
    return Draft(
        question=_text(row.get("question")),
        answer=_most_common([a for a in answers if a]),
        images=[row.get("image")],
        reference=rationales[0] if rationales else "",
        meta=meta,
    )


def _jsonl(row: Optional[dict], opts: Options) -> Draft:
    if row is None:
        raise Skip("invalid JSON line")
    mapped = opts.field_map

    def get(name: str) -> Any:
        return row.get(mapped[name]) if name in mapped else None

    images = get("image")
    return Draft(
        question=_text(get("question")),
        answer=_text(get("answer")),
        images=([] if "image" not in mapped else images if isinstance(images, list) else [images]),
        reference=_text(get("reference")),
        meta={k: v for k, v in row.items() if k not in mapped.values()},
        id=_text(get("id")) or None,
        task=_text(get("task")) or None,
    )


# --- storing images ----------------------------------------------------------------------------------


def _image_bytes(value: Any, base: Optional[Path]) -> bytes:
    """The raw bytes behind an image value: an HF image dict {"bytes", "path"} or a path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if not value or not isinstance(value, str):
        raise Skip("missing image")
    path = Path(value) if base is None else base / value
    if base is not None and not path.resolve().is_relative_to(base.resolve()):
        raise Skip("image path outside the input's folder")  # a downloaded file must not pull in the user's files
    if not path.is_file():
        raise Skip("missing image")
    return path.read_bytes()


def _encoded(data: bytes) -> tuple[bytes, str]:
    """(bytes, extension): PNG and JPEG as given, any other readable format re-encoded as PNG."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.format in _KEPT_FORMATS:
                return data, _KEPT_FORMATS[image.format]
            if image.mode not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
                image = image.convert("RGB")
            out = io.BytesIO()
            image.save(out, "PNG")
            return out.getvalue(), ".png"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise Skip("unreadable image") from None


class ImageStore:
    """Writes images into `out/images/`, named by a hash of their bytes (each distinct image once)."""

    def __init__(self, out: Path):
        self.out = out
        (out / "images").mkdir(parents=True, exist_ok=True)

    def add(self, value: Any, base: Optional[Path]) -> str:
        """The stored image's path relative to `out`; Skip when it is missing or unreadable."""
        data, ext = _encoded(_image_bytes(value, base))
        relative = f"images/{hashlib.sha256(data).hexdigest()[:20]}{ext}"
        target = self.out / relative
        if not target.exists():
            target.write_bytes(data)
        return relative


# --- the pipeline ------------------------------------------------------------------------------------


def _check_columns(rows: Rows, required: tuple[tuple[str, ...], ...], input_: str) -> None:
    for names in required:
        if not rows.columns & set(names):
            wanted = " or ".join(f"'{n}'" for n in names)
            raise ConvertError(f"{input_}: no {wanted} column (columns: {', '.join(sorted(rows.columns)) or 'none'})")


def format_reasons(skipped: Counter) -> str:
    """`reason: count, ...`, the most frequent first."""
    return ", ".join(f"{reason}: {n}" for reason, n in skipped.most_common())


@dataclass
class _Builder:
    """Turns drafts into Samples for one conversion, remembering the ids given so far."""

    source: Source
    opts: Options
    store: ImageStore
    base: Optional[Path]
    seen: set[str] = field(default_factory=set)

    def sample(self, row: Any, index: int) -> Sample:
        """The Sample for one row; Skip when its texts are empty, its id repeats or an image is unusable."""
        draft = self.source.convert(row, self.opts)
        question, answer = draft.question.strip(), draft.answer.strip()
        if not question:
            raise Skip("empty question")
        if not answer:
            raise Skip("empty answer")
        task = draft.task or self.opts.task or self.source.task
        if not task:
            raise Skip("no task")
        sample_id = draft.id or f"{self.source.name}-{self.opts.split}-{index}"
        if sample_id in self.seen:
            raise Skip("duplicate id")
        images = [self.store.add(value, self.base) for value in draft.images]
        self.seen.add(sample_id)
        return Sample(
            id=sample_id, task=task, question=question, answer=answer, images=images,
            reference=draft.reference.strip(), meta={"source": self.source.name, **draft.meta},
        )


def convert_source(source: Source, input_: str, out: Path, opts: Options) -> Report:
    """Convert `input_` into `out/<split>.jsonl` + `out/images/`; ConvertError when nothing is usable."""
    rows = source.load(input_, opts)
    _check_columns(rows, source.columns, input_)
    out = Path(out)
    builder = _Builder(source, opts, ImageStore(out), rows.base)
    skipped: Counter = Counter()

    def samples() -> Iterable[Sample]:
        for index, row in enumerate(rows.rows):
            try:
                yield builder.sample(row, index)
            except Skip as skip:
                skipped[skip.reason] += 1

    target = out / f"{opts.split}.jsonl"
    partial = target.with_name(target.name + ".partial")
    written = write_samples(partial, islice(samples(), opts.limit))
    if not written:
        partial.unlink()
        raise ConvertError(f"no samples written from {input_} ({format_reasons(skipped) or 'the input is empty'})")
    os.replace(partial, target)
    return Report(target, written, skipped, opts.limit is not None and written == opts.limit, source.note)


_IMAGE = ("image",)
SOURCES: dict[str, Source] = {s.name: s for s in (
    Source("gsm8k", "math", "GSM8K grade-school math: reasoning before '####' becomes the reference.",
           _gsm8k, load_table, (("question",), ("answer",))),
    Source("math", "math", "Hendrycks MATH: the last \\boxed{} is the answer, the solution the reference.",
           _math, load_table, (("problem",), ("solution",))),
    Source("chartqa", "chart", "ChartQA: the HF layout or the original split folder (*_human.json, png/).",
           _chartqa, _load_chartqa, (_IMAGE, ("query", "question"), ("label", "answer")), NO_REFERENCE),
    Source("slake", "medvqa", "SLAKE medical VQA: the HF layout or the original release (<split>.json, imgs/).",
           _medvqa, _load_slake, (_IMAGE, ("question",), ("answer",)), NO_REFERENCE),
    Source("vqa-rad", "medvqa", "VQA-RAD radiology VQA (HF layout: image, question, answer).",
           _medvqa, load_table, (_IMAGE, ("question",), ("answer",)), NO_REFERENCE),
    Source("pathvqa", "medvqa", "PathVQA pathology VQA (HF layout: image, question, answer).",
           _medvqa, load_table, (_IMAGE, ("question",), ("answer",)), NO_REFERENCE),
    Source("aokvqa", "vqa", "A-OKVQA: most common direct answer, the first rationale as reference.",
           _aokvqa, load_table, (_IMAGE, ("question",), ("direct_answers",))),
    Source("jsonl", "", "Any JSONL file, with a --map from schema fields to its fields.", _jsonl, _load_jsonl),
)}
