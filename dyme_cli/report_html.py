"""The `dyme inspect-traces --html` report: one self-contained HTML file for hunting pseudo thinking.

Everything is inline: CSS in a <style> block, plots and thumbnails as base64 PNG data URIs. Plots are
drawn on a bare `matplotlib.figure.Figure` with the Agg canvas, so pyplot's global state is never touched.
"""

from __future__ import annotations

import base64
import html
from io import BytesIO
from pathlib import Path

from .data import Sample
from .dyme import Mode
from .pseudo_thinking import FLAGS, Flag
from .traces import Trace

RIGHT_FOR_WRONG = "right-for-wrong-reasons"
THUMBNAIL_PX = 96
MODE_ORDER = tuple(mode.value for mode in Mode)

CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
pre { white-space: pre-wrap; margin: 0; max-width: 60em; }
mark { background: #ffe08a; }
mark[class*="flag-right-for-wrong-reasons"] { background: #ffb3b3; }
.muted { color: #888; }
ul { margin: 0; padding-left: 1.2em; }
"""


def _esc(value) -> str:
    return html.escape("" if value is None else str(value))


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f}%"


def _png_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def plot_img(alt: str, ylabel: str, series: dict[str, tuple[list[float], list[float | None]]],
             xlabel: str = "step (window midpoint)") -> str:
    """One small line plot as an <img> (a PNG data URI); a series of few points gets markers, so that a single
    window or evaluation still shows; None values are gaps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 3), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for label, (xs, ys) in series.items():
        points = [float("nan") if y is None else y for y in ys]
        axes.plot(xs, points, marker="o" if sum(y is not None for y in ys) <= 30 else None, label=label)
    if series:
        axes.legend(fontsize="small", loc="best")
    else:
        axes.text(0.5, 0.5, "nothing to plot", ha="center", va="center", transform=axes.transAxes)
    axes.set_title(alt)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    figure.tight_layout()
    buffer = BytesIO()
    figure.savefig(buffer, format="png")
    return f'<img src="{_png_uri(buffer.getvalue())}" alt="{_esc(alt)}">'


def _plots(windows: list[dict]) -> str:
    xs = [(w["steps"][0] + w["steps"][1]) / 2 for w in windows]
    seen = {mode for w in windows for mode in w["modes"]}
    modes = [m for m in MODE_ORDER if m in seen] + sorted(seen - set(MODE_ORDER))
    fired = [name for name in FLAGS if any(w["flag_rates"].get(name) for w in windows)]
    return "\n".join([
        plot_img("mode fractions", "fraction of groups", {m: (xs, [w["modes"].get(m, 0.0) for w in windows]) for m in modes}),
        plot_img("reward and accuracy", "value", {
            "reward mean": (xs, [w["reward_mean"] for w in windows]),
            "accuracy": (xs, [w["accuracy"] for w in windows]),
        }),
        plot_img("flag rates", "fraction of rollouts", {f: (xs, [w["flag_rates"].get(f, 0.0) for w in windows]) for f in fired}),
    ])


def _thumbnail(sample: Sample | None) -> str:
    """The sample's first image, at most THUMBNAIL_PX on the long side; "no image" when there is none to read."""
    from PIL import Image

    if sample is None or not sample.images:
        return '<span class="muted">no image</span>'
    try:
        with Image.open(sample.image_paths()[0]) as image:
            thumb = image.convert("RGB")
        thumb.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        buffer = BytesIO()
        thumb.save(buffer, format="PNG")
    except (OSError, ValueError, Image.DecompressionBombError):
        return '<span class="muted">no image</span>'
    return f'<img class="thumb" src="{_png_uri(buffer.getvalue())}" alt="image of {_esc(sample.id)}">'


def _highlight(text: str, flags: list[Flag]) -> str:
    """`text` escaped, each flagged span in a <mark>; overlapping spans merge into one mark with all reasons."""
    spans = sorted(
        (max(0, start), min(len(text), end), flag.name, flag.reason)
        for flag in flags for start, end in flag.spans if max(0, start) < min(len(text), end)
    )
    merged: list[list] = []  # [start, end, names, reasons]
    for start, end, name, reason in spans:
        if merged and start < merged[-1][1]:
            last = merged[-1]
            last[1] = max(last[1], end)
            last[2] += [name] if name not in last[2] else []
            last[3] += [reason] if reason not in last[3] else []
        else:
            merged.append([start, end, [name], [reason]])
    out, position = [], 0
    for start, end, names, reasons in merged:
        classes = " ".join(f"flag-{name}" for name in names)
        out.append(_esc(text[position:start]))
        out.append(f'<mark class="{_esc(classes)}" title="{_esc("; ".join(reasons))}">{_esc(text[start:end])}</mark>')
        position = end
    out.append(_esc(text[position:]))
    return "".join(out)


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A table from already-escaped cell HTML."""
    head = "".join(f"<th>{cell}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary_tables(summary: dict) -> str:
    flags = _table(["flag", "count", "rate"], [
        [_esc(name), str(summary["flags"][name]["count"]), _pct(summary["flags"][name]["rate"])] for name in FLAGS
    ])
    fired = [name for name in FLAGS if summary["flags"][name]["count"]]
    modes = _table(["mode", "traces", *map(_esc, fired)], [
        [_esc(mode), str(row["traces"]), *(str(row["flags"].get(name, 0)) for name in fired)]
        for mode, row in summary["by_mode"].items()
    ])
    return f"<h2>Flags</h2>{flags}<h2>By mode</h2>{modes}"


def _worst_order(traces: list[Trace], flags: list[list[Flag]]) -> list[int]:
    """Flagged rollouts, worst first: right-for-wrong-reasons, then more flags, then later step, then log order."""
    flagged = [i for i, trace in enumerate(traces) if trace.get("kind") == "rollout" and flags[i]]
    return sorted(flagged, key=lambda i: (
        not any(flag.name == RIGHT_FOR_WRONG for flag in flags[i]), -len(flags[i]), -(traces[i].get("step") or 0), i,
    ))


def _worst_table(traces: list[Trace], flags: list[list[Flag]], samples: dict[str, Sample], worst: int) -> str:
    rows = []
    for i in _worst_order(traces, flags)[:worst]:
        trace = traces[i]
        sample = samples.get(trace.get("prompt_id"))
        mark = {True: " ✓", False: " ✗"}.get(trace.get("correct"), "")
        reasons = "".join(f"<li><b>{_esc(f.name)}</b>: {_esc(f.reason)}</li>" for f in flags[i])
        rows.append([
            _thumbnail(sample),
            f"{_esc(trace.get('step'))}<br>{_esc(trace.get('mode'))}",
            _esc(sample.question if sample else ""),
            f"<pre>{_highlight(trace.get('completion') or '', flags[i])}</pre>",
            f"answer: {_esc(trace.get('answer'))}{mark}<br>gold: {_esc(trace.get('gold'))}",
            f"<ul>{reasons}</ul>",
        ])
    if not rows:
        return '<h2>Worst traces</h2><p class="muted">no flagged rollouts</p>'
    header = ["image", "step / mode", "question", "completion", "answer / gold", "flags"]
    return f"<h2>Worst traces ({len(rows)})</h2>" + _table(header, rows)


def _header(title: str, summary: dict) -> str:
    total, flagged = summary["traces"], summary["flagged"]
    collapse = summary["advantage_collapse"]
    return (
        f"<h1>{_esc(title)}</h1>"
        f"<p>{total} traces, {flagged} flagged ({_pct(flagged / total if total else None)})</p>"
        f"<p>Advantage collapse: {collapse['groups']} groups, zero-std {_pct(collapse['zero_std'])} "
        f"(all correct {_pct(collapse['all_correct'])}, all wrong {_pct(collapse['all_wrong'])}, "
        f"mixed {_pct(collapse['mixed'])})</p>"
    )


def write_html(
    path: Path, traces: list[Trace], flags: list[list[Flag]], summary: dict, samples: dict[str, Sample] | None = None,
    *, title: str = "dyme inspect-traces", worst: int = 25,
) -> None:
    """Write the report; `traces` and `flags` are parallel lists, `summary` is inspect-traces' summary dict."""
    body = "\n".join([
        _header(title, summary),
        _summary_tables(summary),
        "<h2>Over training</h2>",
        _plots(summary["windows"]),
        _worst_table(traces, flags, samples or {}, worst),
    ])
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
