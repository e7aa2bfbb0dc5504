"""The one dataset schema: a JSONL file of Samples, images stored next to it."""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import UserError, first_line, validation_problem

BadImages = Literal["fail", "skip"]  # what read_samples does with a sample whose image cannot be read
EXTERNAL_HINT = "allow it with [data].allow_external_images = true (dyme eval: --allow-external-images)"
VERIFIED_CACHE_LIMIT = 100_000  # verified images remembered (about 2 MB of cache); the oldest are forgotten first
VERIFIED_CACHE_VERSION = 1  # bump when the check changes, so images verified by an older one are checked again


class DataError(UserError, ValueError):
    """Unusable dataset input; the message is one line naming the file, line and field."""


MAX_TEXT_CHARS = 100_000  # a question, answer or reference longer than this is not one sample's text (tokenizers choke)
MAX_NAME_CHARS, MAX_PATH_CHARS = 255, 4096  # the longest file name and path Linux and macOS file systems take
MAX_ANSWER_CHARS = 4096  # a gold answer is what follows the answer flag: a value, a label, an expression
#: What the supported processors expand into image (or video) tokens: in a sample's text it would ask for an image
#: the sample does not give, and the processor refuses the prompt (or, worse, places an image where text was).
IMAGE_PLACEHOLDERS = ("<image>", "<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<video>",
                      "<fake_token_around_image>", "<global-img>", "<|image|>")


class Sample(BaseModel):
    """One training/evaluation example.

    `reference` is the reasoning only; the memorization target appends the answer flag and the
    gold answer to it (see `target_text`). `images` are paths relative to the JSONL file.
    """

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., min_length=1)
    task: str = Field(..., description="name of the verifier that scores this sample")
    question: str = Field(..., max_length=MAX_TEXT_CHARS)
    answer: str = Field(..., max_length=MAX_ANSWER_CHARS)
    images: list[str] = []
    reference: str = Field("", max_length=MAX_TEXT_CHARS)
    facts: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    root: Optional[Path] = Field(None, exclude=True, description="folder the image paths are relative to")

    @field_validator("answer")
    @classmethod
    def _not_blank(cls, answer: str) -> str:
        if not answer.strip():
            raise ValueError("the gold answer is empty: nothing could be verified against it")
        return answer

    @field_validator("question", "reference")
    @classmethod
    def _no_image_placeholder(cls, text: str) -> str:
        found = next((token for token in IMAGE_PLACEHOLDERS if token in text), None)
        if found:
            raise ValueError(f"contains {found!r}, a processor's image placeholder; a sample's images are named in "
                             "'images', and the prompt places them itself")
        return text

    def image_paths(self) -> list[Path]:
        base = self.root or Path(".")
        return [base / p for p in self.images]


def target_text(sample: Sample, answer_flag: str, answer: str | None = None) -> str:
    """What memorization teaches: reference reasoning + answer flag + gold answer (eos added by the caller).
    `answer` replaces the gold answer (a perturbed completion for calibration)."""
    reasoning = sample.reference.strip()
    flagged = f"{answer_flag} {sample.answer if answer is None else answer}"
    return f"{reasoning} {flagged}" if reasoning else flagged


class Samples(list):
    """The samples of a dataset file in file order, and the lines left out because an image could not be read
    (bad_images = "skip"): `skipped` holds one reason per line, so the caller can say what the data lost."""

    def __init__(self, path: Path | None = None):
        super().__init__()
        self.path = path
        self.skipped: list[str] = []
        self.task_lines: dict[str, str] = {}  # task -> the file:line of its first sample, for errors about the task

    def skip_note(self) -> str | None:
        """One line: how many samples were left out, and the first reason; None when none was."""
        if not self.skipped:
            return None
        total = len(self) + len(self.skipped)
        return (f"skipped {len(self.skipped)} of {total} samples in {self.path}: unreadable images "
                f"(first: {self.skipped[0]})")


def task_lines(*datasets: Samples) -> dict[str, str]:
    """Every task the datasets use -> the file:line of its first sample (the first dataset's, when several)."""
    lines: dict[str, str] = {}
    for dataset in datasets:
        for task, where in dataset.task_lines.items():
            lines.setdefault(task, where)
    return lines


def read_samples(path: Path, *, bad_images: BadImages = "fail", allow_external_images: bool = False,
                 on_progress: Callable[[int, int], None] | None = None) -> Samples:
    """Read a JSONL dataset and check every image it names now, not at the training step that first loads it
    (a crash there would come back on every --resume).

    A malformed line, a repeated id, or an image path that is absolute or leads out of the file's folder (unless
    `allow_external_images`) raises DataError naming file, line and field. So does an image that cannot be read,
    unless `bad_images` is "skip": its sample is then left out and the reason kept in `Samples.skipped`.
    `on_progress(done, total)` follows the image files being decoded (those the cache of verified images does not
    vouch for), from (0, total) on.
    """
    path = Path(path)
    lines = [(where, sample, _located_images(where, sample, allow_external_images))
             for where, sample in _parsed_lines(path)]
    checks = _ImageChecks({image for _, _, images in lines for image in images}, on_progress)
    samples = Samples(path=path)
    try:
        for where, sample, images in lines:
            problem = _image_problem_of(where, sample, images, checks)
            if problem is None:
                samples.append(sample)
                samples.task_lines.setdefault(sample.task, where)
            elif bad_images == "skip":
                samples.skipped.append(problem)
            else:
                raise DataError(problem)
    finally:
        checks.remember()
    if not samples:
        raise DataError(f"{path}: no usable samples: every one has an unreadable image (first: {samples.skipped[0]})")
    return samples


def _parsed_lines(path: Path) -> list[tuple[str, Sample]]:
    """(file:line, sample) for every line, checked for JSON, fields and repeated ids before any image is looked at."""
    lines, first_line_of = [], {}
    for lineno, record in jsonl_records(path, "dataset"):
        where = f"{path}:{lineno}"
        sample = validate_sample(record, where)
        if not sample.question.strip():
            raise DataError(f"{where}: field 'question': the question is empty: the prompt would ask nothing")
        if sample.id in first_line_of:  # prompts are cached and traced by id: a second one would train the wrong pair
            raise DataError(f"{where}: field 'id': '{sample.id}' is already the id of line {first_line_of[sample.id]}")
        first_line_of[sample.id] = lineno
        sample.root = path.parent
        lines.append((where, sample))
    if not lines:
        raise DataError(f"{path}: no samples")
    return lines


def _located_images(where: str, sample: Sample, allow_external: bool) -> list[Path]:
    """The sample's image files, symlinks resolved. Unless allowed, a path that is absolute or resolves outside the
    dataset's folder is a DataError: a downloaded dataset could otherwise pull any file of the user's into a run,
    a model or a report."""
    folder = sample.root.resolve()
    located = []
    for name, image in zip(sample.images, sample.image_paths()):
        if len(name) > MAX_PATH_CHARS or any(len(part) > MAX_NAME_CHARS for part in Path(name).parts):
            raise DataError(f"{where}: field 'images': the path {name[:40]!r}... ({len(name)} characters) is too long "
                            f"for a file system (a name of at most {MAX_NAME_CHARS}, a path of {MAX_PATH_CHARS})")
        try:
            resolved = image.resolve()
        except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL byte in the name
            raise DataError(f"{where}: field 'images': {name!r} is not a usable path ({first_line(exc)})") from None
        if not allow_external and Path(name).is_absolute():
            raise DataError(f"{where}: field 'images': {name} is an absolute path; image paths are relative to the "
                            f"dataset's folder ({EXTERNAL_HINT})")
        if not allow_external and not resolved.is_relative_to(folder):
            raise DataError(f"{where}: field 'images': {name} leads outside the dataset's folder {folder} "
                            f"({EXTERNAL_HINT})")
        located.append(resolved)
    return located


def _image_problem_of(where: str, sample: Sample, images: list[Path], checks: _ImageChecks) -> str | None:
    """The one-line reason the sample cannot be used, naming its first unreadable image; None when all are fine."""
    for shown, image in zip(sample.image_paths(), images):
        problem = checks.problem(image)
        if problem is not None:
            return f"{where}: field 'images': {shown} {problem}"
    return None


class _ImageChecks:
    """What is wrong with each distinct image file (None: nothing), decoding only the files that the cache of
    verified images does not vouch for. The cache knows a file by path, size and mtime, so a changed file is
    decoded again; only good results are cached, so a bad file is always reported with its reason."""

    def __init__(self, images: set[Path], on_progress: Callable[[int, int], None] | None):
        self.verified = _load_verified()
        self.keys = {image: _cache_key(image) for image in images}
        self.total = sum(key not in self.verified for key in self.keys.values())
        self.done = 0
        self.on_progress = on_progress
        self.found: dict[Path, str | None] = {}
        self.new: list[str] = []
        if on_progress and self.total:
            on_progress(0, self.total)

    def problem(self, image: Path) -> str | None:
        if image not in self.found:
            self.found[image] = None if self.keys[image] in self.verified else self._check(image)
        return self.found[image]

    def _check(self, image: Path) -> str | None:
        problem = _image_problem(image)
        if problem is None and self.keys[image] is not None:
            self.new.append(self.keys[image])
        self.done += 1
        if self.on_progress:
            self.on_progress(self.done, self.total)
        return problem

    def remember(self) -> None:
        """Add the images verified now to the cache."""
        if self.new:
            _save_verified(self.new)


def _image_problem(path: Path) -> str | None:
    """What keeps `path` from being a training image (None: nothing): it must be a non-empty regular file whose
    structure PIL checks (header, chunk checksums) and whose every pixel then decodes, as load_images will. More
    pixels than PIL's Image.MAX_IMAGE_PIXELS is an error here, not PIL's warning: a decompression bomb would
    exhaust memory mid-run."""
    from PIL import Image

    if path.is_dir():
        return "is a directory, not an image"
    if not path.exists():
        return "does not exist"
    if not path.is_file():
        return "is not a regular file"
    if path.stat().st_size == 0:
        return "is empty (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.verify()
            _rgb_image(path)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        return f"is refused as a possible decompression bomb ({first_line(exc)})"
    except Image.UnidentifiedImageError:
        return "is not a readable image (not a format PIL knows)"
    except Exception as exc:  # a damaged file makes PIL's decoders raise anything from OSError to SyntaxError
        return f"is not a readable image ({first_line(exc)})"
    return None


def _rgb_image(path: Path):
    """The image at `path` decoded to RGB (every pixel read)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def _cache_key(image: Path) -> str | None:
    """The cache's name for this version of a regular file (None for anything else): path, size, mtime and PIL's
    pixel limit, hashed to keep the cache small."""
    from PIL import Image

    try:
        info = image.stat()
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return None
    text = f"{image}\0{info.st_size}\0{info.st_mtime_ns}\0{Image.MAX_IMAGE_PIXELS}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def _verified_cache_file() -> Path:
    """Where verified images are remembered: $XDG_CACHE_HOME/dyme/ or ~/.cache/dyme/."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dyme" / "verified-images.json"


def _load_verified() -> dict[str, None]:
    """The keys of images verified before, oldest first; a missing or damaged cache is an empty one."""
    try:
        record = json.loads(_verified_cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    current = isinstance(record, dict) and record.get("version") == VERIFIED_CACHE_VERSION
    keys = record.get("verified") if current else None
    return dict.fromkeys(key for key in keys if isinstance(key, str)) if isinstance(keys, list) else {}


def _save_verified(new: list[str]) -> None:
    """Add `new` to the cache, read again first so that another process's additions stay, and keep the newest
    VERIFIED_CACHE_LIMIT. Written to a temporary file and renamed, so a reader never sees half a cache; a cache
    that cannot be written is left as it is (it only saves time)."""
    keys = _load_verified()
    keys.update(dict.fromkeys(new))
    target = _verified_cache_file()
    partial = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=".verified-images.", suffix=".partial")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump({"version": VERIFIED_CACHE_VERSION, "verified": list(keys)[-VERIFIED_CACHE_LIMIT:]}, out)
        os.replace(partial, target)
    except OSError:
        if partial:
            Path(partial).unlink(missing_ok=True)


def jsonl_records(path: Path, what: str) -> Iterator[tuple[int, dict]]:
    """(line number, JSON object) for every non-blank line of a JSONL file; DataError naming the file (missing)
    or the line (not a JSON object). `what` names the file's role in the not-found message."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a {what} file")
    if not path.is_file():
        raise DataError(f"{path}: {what} file not found")
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            line = _utf8(raw, f"{path}:{lineno}")
            if line.strip():
                yield lineno, _json_object(line, f"{path}:{lineno}")


def _utf8(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{where}: not UTF-8 text (byte {exc.start + 1} of the line)") from None


def _json_object(line: str, where: str) -> dict:
    try:
        record = json.loads(line, object_pairs_hook=_without_repeats)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    except RecursionError:
        raise DataError(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # a repeated key; an integer of more digits than Python converts
        problem = ("a number of more digits than can be read (at most 4300)" if "integer string conversion" in str(exc)
                   else first_line(exc))
        raise DataError(f"{where}: {problem}") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object")
    return record


def _without_repeats(pairs: list[tuple[str, Any]]) -> dict:
    """A JSON object, refused when a key appears twice (JSON parsers disagree on which value wins)."""
    record = dict(pairs)
    if len(record) < len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise ValueError(f"key {repeated!r} appears twice in one object")
    return record


def validate_sample(record: dict, where: str, prefix: str = "") -> Sample:
    """A Sample from a JSON object; DataError names `where` and the first bad field (after `prefix`)."""
    try:
        return Sample.model_validate(record)
    except ValidationError as exc:
        loc, msg = validation_problem(exc)
        field = ".".join(str(p) for p in loc)
        raise DataError(f"{where}: field '{prefix}{field}': {msg}") from None


def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    """Append one strict JSON line per record: a NaN or infinite number is written as null (JSON has neither)."""
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.writelines(json.dumps(_finite(record), allow_nan=False) + "\n" for record in records)


def _finite(value: Any) -> Any:
    """`value` with every non-finite float inside it replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


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
    return [_rgb_image(image_path) for image_path in sample.image_paths()]


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
