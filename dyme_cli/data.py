"""The one dataset schema: a JSONL file of Samples, images stored next to it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserError, validation_problem


class DataError(UserError, ValueError):
    """Unusable dataset input; the message is one line naming the file, line and field."""


class Sample(BaseModel):
    """One training/evaluation example.

    `reference` is the reasoning only; the memorization target appends the answer flag and the
    gold answer to it (see `target_text`). `images` are paths relative to the JSONL file.
    """

    model_config = ConfigDict(extra="forbid")

    id: str
    task: str = Field(..., description="name of the verifier that scores this sample")
    question: str
    answer: str
    images: list[str] = []
    reference: str = ""
    facts: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    root: Optional[Path] = Field(None, exclude=True, description="folder the image paths are relative to")

    def image_paths(self) -> list[Path]:
        base = self.root or Path(".")
        return [base / p for p in self.images]


def target_text(sample: Sample, answer_flag: str, answer: str | None = None) -> str:
    """What memorization teaches: reference reasoning + answer flag + gold answer (eos added by the caller).
    `answer` replaces the gold answer (a perturbed completion for calibration)."""
    reasoning = sample.reference.strip()
    flagged = f"{answer_flag} {sample.answer if answer is None else answer}"
    return f"{reasoning} {flagged}" if reasoning else flagged


def read_samples(path: Path) -> list[Sample]:
    """Read a JSONL dataset. A malformed line raises DataError naming file, line and field."""
    path = Path(path)
    samples, first_line_of = [], {}
    for lineno, record in jsonl_records(path, "dataset"):
        sample = _parse_sample(path, f"{path}:{lineno}", record)
        if sample.id in first_line_of:  # prompts are cached and traced by id: a second one would train the wrong pair
            raise DataError(f"{path}:{lineno}: field 'id': '{sample.id}' is already the id of line {first_line_of[sample.id]}")
        first_line_of[sample.id] = lineno
        samples.append(sample)
    if not samples:
        raise DataError(f"{path}: no samples")
    return samples


def jsonl_records(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for every non-blank line of a JSONL file; DataError naming the file (missing)
    or the line (not a JSON object). `what` names the file's role in the not-found message."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if line.strip():
                yield lineno, _json_object(line, f"{path}:{lineno}")


def _json_object(line: str, where: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    return record


def _parse_sample(path: Path, where: str, record: dict) -> Sample:
    sample = validate_sample(record, where)
    sample.root = path.parent
    for image in sample.image_paths():
        if not image.is_file():
            raise DataError(f"{where}: field 'images': file not found: {image}")
    return sample


def validate_sample(record: dict, where: str, prefix: str = "") -> Sample:
    """A Sample from a JSON object; DataError names `where` and the first bad field (after `prefix`)."""
    try:
        return Sample.model_validate(record)
    except ValidationError as exc:
        loc, msg = validation_problem(exc)
        field = ".".join(str(p) for p in loc)
        raise DataError(f"{where}: field '{prefix}{field}': {msg}") from None


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Append one JSON line per record."""
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in records)


def write_samples(path: Path, samples: Iterable[Sample]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for sample in samples:
            handle.write(sample.model_dump_json() + "\n")
            count += 1
    return count


def load_images(sample: Sample):
    """The sample's images as RGB PIL images."""
    from PIL import Image

    images = []
    for image_path in sample.image_paths():
        with Image.open(image_path) as image:
            images.append(image.convert("RGB"))
    return images


QUESTION = "{question}"  # the placeholder a prompt template puts the question in


def instruction_template(answer_flag: str) -> str:
    """The authors' instruction: step-by-step thinking, then the answer after the flag (the default template)."""
    return ("Your task is to answer the question below. Give step by step thinking before you answer, and when "
            f'you\'re ready to answer, please use the format "{answer_flag} .."\n\nQuestion:\n\n{QUESTION}')


def user_text(sample: Sample, template: str) -> str:
    """`template` with the sample's question in place of `{question}`."""
    return template.replace(QUESTION, sample.question)


def chat_messages(sample: Sample, text_only: bool = False, template: str = QUESTION) -> list[dict]:
    """The user turn in the chat-template message format shared by the VLM processors (a list of image and
    text parts), or as a plain string for text-only models, whose templates expect one; the text is `user_text`."""
    text = user_text(sample, template)
    if text_only:
        return [{"role": "user", "content": text}]
    content: list[dict] = [{"type": "image"} for _ in sample.images]
    content.append({"type": "text", "text": text})
    return [{"role": "user", "content": content}]
