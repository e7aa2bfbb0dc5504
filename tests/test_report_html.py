"""The inspect-traces HTML report: self-contained, well-formed, escaped, with plots, thumbnails and highlights."""

import base64
import io
import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from PIL import Image

from dyme_cli.data import Sample
from dyme_cli.pseudo_thinking import FLAGS, Flag
from dyme_cli.report_html import write_html

PLOT_ALTS = {"mode fractions", "reward and accuracy", "flag rates"}
TRACKED = {"html", "body", "table", "tr", "th", "td", "mark", "pre", "ul", "li", "h1", "h2", "p"}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class Collector(HTMLParser):
    """Collects tags, checks that tracked tags nest and close, and records each <mark>'s title and text."""

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images, self.marks, self.starts = [], [], [], [], []
        self._mark = None

    def handle_starttag(self, tag, attrs):
        self.starts.append(tag)
        attrs = dict(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "mark":
            if self._mark is not None:
                self.errors.append("nested mark")
            self._mark = [attrs.get("title", ""), ""]
        if tag in TRACKED:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "mark" and self._mark is not None:
            self.marks.append(tuple(self._mark))
            self._mark = None
        if tag in TRACKED:
            if not self.stack or self.stack[-1] != tag:
                self.errors.append(f"unexpected </{tag}> with open {self.stack}")
            else:
                self.stack.pop()

    def handle_data(self, data):
        if self._mark is not None:
            self._mark[1] += data


def parse(text: str) -> Collector:
    collector = Collector()
    collector.feed(text)
    collector.close()
    return collector


def decode_png(src: str) -> Image.Image:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    data = base64.b64decode(src[len(prefix):], validate=True)
    assert data.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def make_summary(windows):
    zero = {name: 0 for name in FLAGS}
    return {
        "traces": 6, "flagged": 4,
        "flags": {name: {"count": 2 if name in ("ungrounded-value", "repetition") else 0,
                         "rate": 2 / 6 if name in ("ungrounded-value", "repetition") else 0.0} for name in FLAGS},
        "by_mode": {"explore": {"traces": 4, "flags": {**zero, "ungrounded-value": 2}},
                    "memorize": {"traces": 2, "flags": {**zero, "repetition": 2}}},
        "windows": windows,
        "advantage_collapse": {"groups": 4, "zero_std": 0.5, "all_correct": 0.25, "all_wrong": 0.25, "mixed": 0.0},
    }


WINDOWS = [
    {"steps": [0, 1], "traces": 3, "accuracy": 0.5, "reward_mean": 0.4,
     "flag_rates": {name: (0.3 if name == "ungrounded-value" else 0.0) for name in FLAGS},
     "modes": {"memorize": 0.5, "explore": 0.5}},
    {"steps": [2, 3], "traces": 3, "accuracy": None, "reward_mean": 0.7,
     "flag_rates": {name: (0.2 if name == "repetition" else 0.0) for name in FLAGS},
     "modes": {"explore": 0.5, "skip": 0.5}},
]


def trace(step, prompt_id, completion, *, mode="explore", kind="rollout", correct=False):
    return {"run": "r", "step": step, "prompt_id": prompt_id, "task": "chart", "kind": kind, "rollout": 0,
            "mode": mode, "completion": completion, "answer": "7", "gold": "7", "correct": correct, "rewards": {},
            "reward": 1.0, "advantage": 0.0, "tokens": 10, "truncated": False, "detail": ""}


def span(record, text):
    start = record["completion"].index(text)
    return start, start + len(text)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("report")
    Image.new("RGB", (200, 120), (200, 30, 30)).save(tmp_path / "bar.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    samples = {
        "p-img": Sample(id="p-img", task="chart", question="How tall is the red bar?", answer="7",
                        images=["bar.png"], root=tmp_path),
        "p-missing": Sample(id="p-missing", task="chart", question="Q missing", answer="1",
                            images=["gone.png"], root=tmp_path),
        "p-broken": Sample(id="p-broken", task="chart", question="Q broken", answer="1",
                           images=["broken.png"], root=tmp_path),
    }
    traces = [
        trace(3, "p-missing", "LATE2 two flags", mode="memorize"),
        trace(1, "p-img", "RFWR red is 12 so the answer is 7", correct=True),
        trace(3, "p-broken", "LATE1 one flag"),
        trace(0, "p-img", "EARLY one flag <script>alert(1)</script>"),
        trace(2, "p-img", "UNFLAGGED fine"),
        trace(3, "p-img", "TARGET flagged", kind="target", mode="memorize"),
    ]
    flags = [
        [Flag("repetition", "repeats 'two'", (span(traces[0], "two"),)),
         Flag("ungrounded-value", "'two flags' is not in the chart", (span(traces[0], "two flags"),))],  # overlap
        [Flag("right-for-wrong-reasons", "says red is 12 & still answers 7", (span(traces[1], "red is 12"),))],
        [Flag("ungrounded-value", "value not in image", (span(traces[2], "one"),))],
        [Flag("repetition", "repeats <script>", (span(traces[3], "<script>"),))],
        [],
        [Flag("repetition", "target", (span(traces[5], "TARGET"),))],
    ]
    out = tmp_path / "out" / "report.html"
    write_html(out, traces, flags, make_summary(WINDOWS), samples, title="run <A>")
    return out.read_text(encoding="utf-8")


def test_html_is_well_formed(report):
    parsed = parse(report)
    assert parsed.errors == []
    assert parsed.stack == []
    assert {"table", "tr", "td", "mark"} <= set(parsed.starts)


def test_three_plots_with_valid_png(report):
    plots = [img for img in parse(report).images if img.get("alt") in PLOT_ALTS]
    assert sorted(img["alt"] for img in plots) == sorted(PLOT_ALTS)
    for img in plots:
        width, height = decode_png(img["src"]).size
        assert 300 <= width <= 800 and 150 <= height <= 400


def test_plots_drawn_for_a_single_window(tmp_path):
    out = tmp_path / "one.html"
    write_html(out, [], [], make_summary(WINDOWS[:1]))
    plots = [img for img in parse(out.read_text()).images if img.get("alt") in PLOT_ALTS]
    assert len(plots) == 3
    for img in plots:
        decode_png(img["src"])


def test_thumbnail_is_small(report):
    thumbs = [img for img in parse(report).images if img.get("class") == "thumb"]
    assert thumbs
    for img in thumbs:
        image = decode_png(img["src"])
        assert max(image.size) <= 96
        assert image.size[0] == 96 and 57 <= image.size[1] <= 58  # 200x120 shrunk, aspect kept


def test_span_highlighted_with_reason(report):
    marks = parse(report).marks
    assert ("says red is 12 & still answers 7", "red is 12") in marks
    merged = [m for m in marks if m[1] == "two flags"]  # overlapping spans became one mark with both reasons
    assert len(merged) == 1 and "repeats 'two'" in merged[0][0] and "not in the chart" in merged[0][0]


def test_user_text_is_escaped(report):
    assert "<script>" not in report
    assert "alert(1)&lt;/script&gt;" in report
    assert ("repeats <script>", "<script>") in parse(report).marks  # the flagged tag, escaped inside its <mark>
    assert "run &lt;A&gt;" in report
    assert "script" not in parse(report).starts


def test_worst_ordering(report):
    order = ["RFWR", "LATE2", "LATE1", "EARLY"]
    positions = [report.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert "UNFLAGGED" not in report and "TARGET" not in report  # unflagged rollouts and targets are left out


def test_worst_limit(tmp_path, report):
    traces = [trace(s, "x", f"TRACE{s}") for s in range(4)]
    flags = [[Flag("repetition", "r", ())] for _ in traces]
    out = tmp_path / "limited.html"
    write_html(out, traces, flags, make_summary(WINDOWS), worst=2)
    text = out.read_text()
    assert "TRACE3" in text and "TRACE2" in text and "TRACE1" not in text


def test_missing_or_broken_image_shows_no_image(report):
    rows = report.split("<tr>")
    for marker in ("LATE2", "LATE1"):  # p-missing and p-broken
        row = next(r for r in rows if marker in r)
        assert "no image" in row and "<img" not in row


def test_import_leaves_pyplot_alone(tmp_path):
    code = (
        "import json, sys; from pathlib import Path; from dyme_cli.report_html import write_html; "
        f"write_html(Path({str(tmp_path / 'x.html')!r}), [], [], json.loads({json.dumps(make_summary(WINDOWS))!r})); "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    assert (tmp_path / "x.html").is_file()
