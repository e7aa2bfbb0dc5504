"""`dyme prepare SOURCE`: each source converted from a tiny fixture in its original layout, compared with
hand-written expectations; bad rows skipped and counted per reason; one-line errors for unusable input."""

import io
import json
import re

import datasets
import pytest
from PIL import Image
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.data import read_samples
from dyme_verifiers.vqa import VQAVerifier

runner = CliRunner()
NO_REFERENCE = "no reasoning traces in this source: reference left empty for DyME's refiner to fill"


@pytest.fixture(autouse=True)
def offline_datasets(offline_hub, tmp_path, monkeypatch):
    """No network for `datasets` either, and a private datasets cache."""
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def _image(color: str, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), color).save(buffer, fmt)
    return buffer.getvalue()


def _hf_image(data):
    return None if data is None else {"bytes": data, "path": None}


def _parquet(path, columns: dict, labels: dict | None = None):
    """An HF-layout parquet file: `image` as an HF Image column, `labels` columns as ClassLabels."""
    ds = datasets.Dataset.from_dict(columns)
    if "image" in columns:
        ds = ds.cast_column("image", datasets.Image())
    for name, names in (labels or {}).items():
        ds = ds.cast_column(name, datasets.ClassLabel(names=names))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))
    return path


def _write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")


def _prepare(source, input_, out, *extra):
    return runner.invoke(app, ["prepare", source, "--input", str(input_), "--out", str(out), *map(str, extra)])


def _text(result) -> str:
    return " ".join(result.output.split())


def _converted(result, path):
    """The samples written, as dicts without images, plus each sample's image bytes."""
    assert result.exit_code == 0, result.output
    samples = read_samples(path)  # also checks every image file exists
    for sample in samples:
        assert all(re.fullmatch(r"images/[0-9a-f]{20}\.(png|jpg)", p) for p in sample.images)
    images = [[p.read_bytes() for p in s.image_paths()] for s in samples]
    return [s.model_dump(exclude={"images"}) for s in samples], images


def _error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


# --- gsm8k --------------------------------------------------------------------------------------------

GSM8K_TRAIN = {
    "question": [
        "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "A house costs $1,000 plus $250 of fees. What is the total?",
        "What is 1 + 1?",
        "What is 2 + 2?",
    ],
    "answer": [
        "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips altogether in "
        "April and May.\n#### 72",
        "The total is  1,000 + 250 = <<1000+250=1250>>1,250 dollars.\n\n#### 1,250",
        "It is 2, no final marker",
        "2 + 2 = 4\n####  ",
    ],
}


def _gsm8k_folder(tmp_path):
    folder = tmp_path / "gsm8k" / "main"
    _parquet(folder / "train-00000-of-00001.parquet", GSM8K_TRAIN)
    _parquet(folder / "test-00000-of-00001.parquet", {"question": ["What is 3 + 4?"], "answer": ["3 + 4 = 7\n#### 7"]})
    return folder


def test_gsm8k(tmp_path):
    out = tmp_path / "out"
    result = _prepare("gsm8k", _gsm8k_folder(tmp_path), out)
    samples, images = _converted(result, out / "train.jsonl")
    assert samples == [
        {"id": "gsm8k-train-0", "task": "math", "question": GSM8K_TRAIN["question"][0], "answer": "72",
         "reference": "Natalia sold 48/2 = 24 clips in May.\n"
                      "Natalia sold 48+24 = 72 clips altogether in April and May.",
         "facts": {}, "meta": {"source": "gsm8k"}},
        {"id": "gsm8k-train-1", "task": "math", "question": GSM8K_TRAIN["question"][1], "answer": "1250",
         "reference": "The total is 1,000 + 250 = 1,250 dollars.", "facts": {}, "meta": {"source": "gsm8k"}},
    ]
    assert images == [[], []]
    assert _text(result) == (
        f"wrote 2 samples to {out / 'train.jsonl'}; skipped 2 rows (no '####' answer: 1, empty answer: 1)"
    )


def test_split_and_limit(tmp_path):
    folder, out = _gsm8k_folder(tmp_path), tmp_path / "out"
    samples, _ = _converted(_prepare("gsm8k", folder, out, "--split", "test"), out / "test.jsonl")
    assert [(s["id"], s["answer"], s["reference"]) for s in samples] == [("gsm8k-test-0", "7", "3 + 4 = 7")]
    assert not (out / "train.jsonl").exists()

    result = _prepare("gsm8k", folder, out, "--limit", "1")
    samples, _ = _converted(result, out / "train.jsonl")
    assert [s["answer"] for s in samples] == ["72"]
    assert _text(result) == f"wrote 1 samples to {out / 'train.jsonl'} (stopped at --limit); skipped 0 rows"

    unknown = _error(_prepare("gsm8k", folder, out, "--split", "validation"))
    assert unknown.startswith(f"error: cannot read {folder}: Unknown split \"validation\"")


# --- math ---------------------------------------------------------------------------------------------

MATH_ROWS = [
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?",
     "solution": "We have $\\frac{1}{2} + \\frac{1}{4} = \\frac{2}{4} + \\frac{1}{4} = \\boxed{\\frac{3}{4}}$.",
     "level": "Level 2", "type": "Prealgebra"},
    {"problem": "Expand $x^2 + 1$ at $x = 1$, then give the polynomial.",
     "solution": "At $x = 1$ it is $\\boxed{2}$; the polynomial is $\\boxed{x^{2}+1}$.",
     "level": "Level 1", "type": "Algebra"},
    {"problem": "No boxed answer here.", "solution": "The answer is 5.", "level": "Level 1", "type": "Algebra"},
]


def test_math_from_a_jsonl_file_with_task_override(tmp_path):
    source = tmp_path / "math" / "algebra.jsonl"
    source.parent.mkdir()
    source.write_text("".join(json.dumps(row) + "\n" for row in MATH_ROWS), encoding="utf-8")
    out = tmp_path / "out"
    result = _prepare("math", source, out)
    samples, _ = _converted(result, out / "train.jsonl")
    assert samples == [
        {"id": "math-train-0", "task": "math", "question": MATH_ROWS[0]["problem"], "answer": "\\frac{3}{4}",
         "reference": MATH_ROWS[0]["solution"], "facts": {},
         "meta": {"source": "math", "level": "Level 2", "kind": "Prealgebra"}},
        {"id": "math-train-1", "task": "math", "question": MATH_ROWS[1]["problem"], "answer": "x^{2}+1",
         "reference": MATH_ROWS[1]["solution"], "facts": {},
         "meta": {"source": "math", "level": "Level 1", "kind": "Algebra"}},
    ]
    assert "skipped 1 rows (no \\boxed{} answer: 1)" in _text(result)

    samples, _ = _converted(_prepare("math", source, out, "--task", "math-strict", "--overwrite"), out / "train.jsonl")
    assert [s["task"] for s in samples] == ["math-strict", "math-strict"]


# --- chartqa ------------------------------------------------------------------------------------------


def test_chartqa_hf_layout(tmp_path):
    red = _image("red")
    source = _parquet(tmp_path / "ChartQA" / "data" / "train-00000-of-00003.parquet", {
        "image": [_hf_image(red), _hf_image(red), _hf_image(None), _hf_image(b"not an image"), _hf_image(red)],
        "query": ["What is the value of the red bar?", "Which bar is largest?", "Q3", "Q4", "Q5"],
        "label": [["12"], ["Red"], ["1"], ["2"], []],
        "human_or_machine": [0, 1, 0, 0, 1],
    }, labels={"human_or_machine": ["human", "machine"]})
    out = tmp_path / "out"
    result = _prepare("chartqa", source.parent.parent, out)
    samples, images = _converted(result, out / "train.jsonl")
    assert samples == [
        {"id": "chartqa-train-0", "task": "chart", "question": "What is the value of the red bar?", "answer": "12",
         "reference": "", "facts": {}, "meta": {"source": "chartqa", "kind": "human"}},
        {"id": "chartqa-train-1", "task": "chart", "question": "Which bar is largest?", "answer": "Red",
         "reference": "", "facts": {}, "meta": {"source": "chartqa", "kind": "augmented"}},
    ]
    assert images == [[red], [red]]
    assert len(list((out / "images").iterdir())) == 1  # the shared image is stored once
    assert _text(result) == (
        f"wrote 2 samples to {out / 'train.jsonl'}; "
        f"skipped 3 rows (missing image: 1, unreadable image: 1, empty answer: 1); {NO_REFERENCE}"
    )


def test_chartqa_original_release(tmp_path):
    split = tmp_path / "ChartQA Dataset" / "train"
    (split / "png").mkdir(parents=True)
    png, jpeg, bmp = _image("red"), _image("blue", "JPEG"), _image("green", "BMP")
    (split / "png" / "a.png").write_bytes(png)
    (split / "png" / "c.jpg").write_bytes(jpeg)
    (split / "png" / "b.bmp").write_bytes(bmp)
    (split / "png" / "broken.png").write_bytes(png[:20])
    _write_json(split / "train_human.json", [
        {"imgname": "a.png", "query": "How many bars?", "label": "5"},
        {"imgname": "gone.png", "query": "Q2", "label": "1"},
        {"imgname": "broken.png", "query": "Q3", "label": "1"},
    ])
    _write_json(split / "train_augmented.json", [
        {"imgname": "b.bmp", "query": "Is green the largest?", "label": "Yes"},
        {"imgname": "c.jpg", "query": "What is the blue value?", "label": 7.5},
        {"imgname": "a.png", "query": "   ", "label": "3"},
    ])
    out = tmp_path / "out"
    result = _prepare("chartqa", split, out)
    samples, images = _converted(result, out / "train.jsonl")
    assert [(s["id"], s["question"], s["answer"], s["meta"]) for s in samples] == [
        ("chartqa-train-0", "How many bars?", "5", {"source": "chartqa", "kind": "human"}),
        ("chartqa-train-3", "Is green the largest?", "Yes", {"source": "chartqa", "kind": "augmented"}),
        ("chartqa-train-4", "What is the blue value?", "7.5", {"source": "chartqa", "kind": "augmented"}),
    ]
    assert images[0] == [png] and images[2] == [jpeg]  # PNG and JPEG bytes are copied as they are
    converted = read_samples(out / "train.jsonl")[1]
    assert converted.images[0].endswith(".png")  # BMP re-encoded as PNG, same pixels
    with Image.open(converted.image_paths()[0]) as image:
        assert image.format == "PNG" and image.convert("RGB").getpixel((0, 0)) == (0, 128, 0)
    assert "skipped 3 rows (missing image: 1, unreadable image: 1, empty question: 1)" in _text(result)


# --- medical VQA --------------------------------------------------------------------------------------

SLAKE_TRAIN = [
    {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Is this a CT scan?", "answer": "Yes", "q_lang": "en",
     "answer_type": "CLOSED", "content_type": "Modality", "qid": 11},
    {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "Which organ is abnormal?", "answer": "Liver",
     "q_lang": "en", "answer_type": "OPEN", "content_type": "Organ", "qid": 12},
    {"img_id": 1, "img_name": "xmlab1/source.jpg", "question": "这是CT吗?", "answer": "是", "q_lang": "zh",
     "answer_type": "CLOSED", "content_type": "Modality", "qid": 13},
    {"img_id": 2, "img_name": "xmlab2/source.jpg", "question": "Is the lung healthy?", "answer": "No", "q_lang": "en",
     "answer_type": "CLOSED", "content_type": "Abnormality", "qid": 14},
]


def _slake_release(tmp_path):
    folder = tmp_path / "Slake1.0"
    (folder / "imgs" / "xmlab1").mkdir(parents=True)
    (folder / "imgs" / "xmlab1" / "source.jpg").write_bytes(_image("gray", "JPEG"))
    _write_json(folder / "train.json", SLAKE_TRAIN)
    _write_json(folder / "test.json", SLAKE_TRAIN[:1])
    return folder


def test_slake_original_release(tmp_path):
    out = tmp_path / "out"
    result = _prepare("slake", _slake_release(tmp_path), out)
    samples, images = _converted(result, out / "train.jsonl")
    assert samples == [
        {"id": "slake-train-0", "task": "medvqa", "question": "Is this a CT scan?", "answer": "Yes", "reference": "",
         "facts": {}, "meta": {"source": "slake", "answer_type": "closed", "kind": "Modality", "source_id": 11,
                               "language": "en"}},
        {"id": "slake-train-1", "task": "medvqa", "question": "Which organ is abnormal?", "answer": "Liver",
         "reference": "", "facts": {}, "meta": {"source": "slake", "answer_type": "open", "kind": "Organ",
                                                "source_id": 12, "language": "en"}},
    ]
    assert images[0] == images[1] == [_image("gray", "JPEG")]
    assert _text(result) == (
        f"wrote 2 samples to {out / 'train.jsonl'}; skipped 2 rows (not English: 1, missing image: 1); {NO_REFERENCE}"
    )


def test_slake_all_languages_and_missing_split(tmp_path):
    folder, out = _slake_release(tmp_path), tmp_path / "out"
    samples, _ = _converted(_prepare("slake", folder, out, "--all-languages"), out / "train.jsonl")
    assert [(s["answer"], s["meta"]["language"]) for s in samples] == [("Yes", "en"), ("Liver", "en"), ("是", "zh")]
    assert _error(_prepare("slake", folder, out, "--split", "validation")) == (
        f"error: {folder}: no validation.json for split 'validation' (splits: test, train)"
    )


def test_vqa_rad_answer_type_from_the_source(tmp_path):
    ct = _image("white")
    source = _parquet(tmp_path / "vqa_rad" / "train.parquet", {
        "image": [_hf_image(ct)] * 4,
        "question": ["Is there a fracture?", "How many ribs are visible?", "Where is the mass?", "Is it normal?"],
        "answer": ["no", "12", "right upper lobe", ""],
        "answer_type": ["CLOSED", "CLOSED", "OPEN", "CLOSED"],
        "question_type": ["PRES", "COUNT", "POS", "ABN"],
        "qid": ["r1", "r2", "r3", "r4"],
    })
    out = tmp_path / "out"
    result = _prepare("vqa-rad", source, out)
    samples, _ = _converted(result, out / "train.jsonl")
    assert [(s["id"], s["answer"], s["meta"]) for s in samples] == [
        ("vqa-rad-train-0", "no", {"source": "vqa-rad", "answer_type": "closed", "kind": "PRES", "source_id": "r1"}),
        ("vqa-rad-train-1", "12", {"source": "vqa-rad", "answer_type": "closed", "kind": "COUNT", "source_id": "r2"}),
        ("vqa-rad-train-2", "right upper lobe",
         {"source": "vqa-rad", "answer_type": "open", "kind": "POS", "source_id": "r3"}),
    ]
    assert "skipped 1 rows (empty answer: 1)" in _text(result)


def test_pathvqa_closed_iff_yes_no(tmp_path):
    slide = _image("pink")
    source = _parquet(tmp_path / "path-vqa" / "data" / "train-00000-of-00001.parquet", {
        "image": [_hf_image(slide)] * 4,
        "question": ["Is this adenocarcinoma?", "Are nuclei enlarged?", "What is present?", "What organ is this?"],
        "answer": ["yes", "No", "adenocarcinoma", "liver"],
    })
    out = tmp_path / "out"
    result = _prepare("pathvqa", source.parent.parent, out, "--limit", "3")
    samples, _ = _converted(result, out / "train.jsonl")
    assert [(s["task"], s["answer"], s["meta"]) for s in samples] == [
        ("medvqa", "yes", {"source": "pathvqa", "answer_type": "closed"}),
        ("medvqa", "No", {"source": "pathvqa", "answer_type": "closed"}),
        ("medvqa", "adenocarcinoma", {"source": "pathvqa", "answer_type": "open"}),
    ]
    assert _text(result) == (
        f"wrote 3 samples to {out / 'train.jsonl'} (stopped at --limit); skipped 0 rows; {NO_REFERENCE}"
    )


# --- aokvqa -------------------------------------------------------------------------------------------

BUS = ["bus", "bus", "train", "bus", "tram", "train", "train", "bus", "bus", "train"]  # bus 5, train 4, tram 1
TIE = ["cat", "dog", "dog", "cat", "cat", "dog", "kitten", "cat", "dog", "kitten"]  # cat 4, dog 4: cat first


def test_aokvqa(tmp_path):
    street, sofa = _image("yellow"), _image("brown", "JPEG")
    source = _parquet(tmp_path / "A-OKVQA" / "data" / "val-00000-of-00001.parquet", {
        "image": [_hf_image(street), _hf_image(sofa), _hf_image(sofa)],
        "question_id": ["q1", "q2", "q3"],
        "question": ["What vehicle is this?", "What animal sleeps here?", "What is this?"],
        "choices": [["bus", "car", "bike", "plane"], ["cat", "dog", "bird", "fish"], ["a", "b", "c", "d"]],
        "correct_choice_idx": [0, 0, None],
        "direct_answers": [BUS, TIE, []],
        "difficult_direct_answer": [False, False, False],
        "rationales": [["It is long and yellow with many windows.", "A school bus."], ["A cat naps on the sofa."], []],
    })
    out = tmp_path / "out"
    result = _prepare("aokvqa", source.parent.parent, out, "--split", "val")
    samples, images = _converted(result, out / "val.jsonl")
    assert samples == [
        {"id": "aokvqa-val-0", "task": "vqa", "question": "What vehicle is this?", "answer": "bus",
         "reference": "It is long and yellow with many windows.", "facts": {},
         "meta": {"source": "aokvqa", "kind": "direct", "answers": BUS, "choices": ["bus", "car", "bike", "plane"],
                  "correct_choice_idx": 0, "source_id": "q1"}},
        {"id": "aokvqa-val-1", "task": "vqa", "question": "What animal sleeps here?", "answer": "cat",
         "reference": "A cat naps on the sofa.", "facts": {},
         "meta": {"source": "aokvqa", "kind": "direct", "answers": TIE, "choices": ["cat", "dog", "bird", "fish"],
                  "correct_choice_idx": 0, "source_id": "q2"}},
    ]
    assert images == [[street], [sofa]]
    assert "skipped 1 rows (empty answer: 1)" in _text(result)
    first = read_samples(out / "val.jsonl")[0]  # the annotators feed the vqa verifier
    assert VQAVerifier().verify("Yellow, long. Answer: train", first).rewards["accuracy"] == 1.0
    assert VQAVerifier().verify("Yellow, long. Answer: tram", first).rewards["accuracy"] == pytest.approx(1 / 3)


# --- jsonl --------------------------------------------------------------------------------------------


def _jsonl_source(tmp_path):
    folder = tmp_path / "mine"
    (folder / "pics").mkdir(parents=True)
    (folder / "pics" / "a.png").write_bytes(_image("red"))
    (folder / "pics" / "b.png").write_bytes(_image("blue"))
    rows = [
        {"q": "How many bars?", "a": "3", "img": "pics/a.png", "r": "I count three bars.", "i": "x1", "kind": "count"},
        {"q": "Which colours?", "a": "red and blue", "img": ["pics/a.png", "pics/b.png"], "i": "x2", "t": "chart"},
        {"q": "Empty?", "a": "", "img": "pics/a.png", "i": "x3"},
        {"q": "Where?", "a": "left", "img": "pics/missing.png", "i": "x4"},
        {"q": "Again?", "a": "yes", "img": "pics/a.png", "i": "x1"},
        {"q": "Private?", "a": "yes", "img": str(tmp_path / "private.png"), "i": "x5"},  # absolute, outside: refused
        {"q": "Outside?", "a": "yes", "img": "../private.png", "i": "x6"},  # exists, but outside the input's folder
    ]
    (tmp_path / "private.png").write_bytes(_image("blue"))
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, "{not json")
    lines.insert(3, "[" * 100_000 + "]" * 100_000)  # nested deeper than the parser's recursion: skipped the same way
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "data.jsonl"


JSONL_MAP = "question=q, answer=a, image=img, reference=r, id=i, task=t"


def test_jsonl_with_a_field_map(tmp_path):
    out = tmp_path / "out"
    result = _prepare("jsonl", _jsonl_source(tmp_path), out, "--map", JSONL_MAP, "--task", "vqa")
    samples, images = _converted(result, out / "train.jsonl")
    assert samples == [
        {"id": "x1", "task": "vqa", "question": "How many bars?", "answer": "3", "reference": "I count three bars.",
         "facts": {}, "meta": {"source": "jsonl", "kind": "count"}},
        {"id": "x2", "task": "chart", "question": "Which colours?", "answer": "red and blue", "reference": "",
         "facts": {}, "meta": {"source": "jsonl"}},
    ]
    assert images == [[_image("red")], [_image("red"), _image("blue")]]
    assert _text(result) == (
        f"wrote 2 samples to {out / 'train.jsonl'}; skipped 7 rows (invalid JSON line: 2, "
        "image path outside the input's folder: 2, empty answer: 1, missing image: 1, duplicate id: 1)"
    )


@pytest.mark.parametrize(
    "field_map, extra, message",
    [
        ("question=q", ["--task", "vqa"], "--map must map answer (e.g. question=q,answer=a)"),
        ("image=img", ["--task", "vqa"], "--map must map question and answer (e.g. question=q,answer=a)"),
        ("question=q,answer", ["--task", "vqa"], "--map entry 'answer' is not FIELD=SOURCE_FIELD"),
        ("question=q,answer=a,colour=c", ["--task", "vqa"],
         "--map: unknown schema field 'colour' (fields: question, answer, image, reference, id, task)"),
        ("question=q,answer=a", [], "jsonl rows need a task: map task=FIELD or pass --task NAME"),
    ],
)
def test_jsonl_map_errors(tmp_path, field_map, extra, message):
    result = _prepare("jsonl", _jsonl_source(tmp_path), tmp_path / "out", "--map", field_map, *extra)
    assert _error(result) == f"error: {message}"


def test_jsonl_unknown_source_field(tmp_path):
    source = _jsonl_source(tmp_path)
    field_map = "question=q,answer=ans,image=picture"
    result = _prepare("jsonl", source, tmp_path / "out", "--map", field_map, "--task", "vqa")
    assert _error(result) == (
        f"error: {source}: --map names unknown source field(s) ans, picture (fields: a, i, img, kind, q, r, t)"
    )


# --- unusable input -----------------------------------------------------------------------------------


def test_hub_unreachable_is_one_line(tmp_path):
    line = _error(_prepare("gsm8k", "openai/gsm8k:main", tmp_path / "out"))
    assert line.startswith("error: cannot load 'openai/gsm8k:main' from the hub: ")
    assert line.endswith("; download it and pass a local path")
    assert not (tmp_path / "out" / "train.jsonl").exists()


def test_unusable_local_input(tmp_path):
    out = tmp_path / "out"
    assert _error(_prepare("gsm8k", "./no/such.parquet", out)) == "error: ./no/such.parquet: no such file or directory"
    folder = _gsm8k_folder(tmp_path)
    assert _error(_prepare("chartqa", folder, out)) == (
        f"error: {folder}: no 'image' column (columns: answer, question)"
    )
    bad = _parquet(tmp_path / "bad.parquet", {"question": ["q1", "q2"], "answer": ["no marker", "#### "]})
    assert _error(_prepare("gsm8k", bad, out)) == (
        f"error: no samples written from {bad} (no '####' answer: 1, empty answer: 1)"
    )
    assert not (out / "train.jsonl").exists()
