"""`dyme report`: the curves of one run, or of several side by side, as one self-contained HTML page of PNG plots.

It reads what a run directory holds (metrics.jsonl, traces.jsonl, the recorded recipe), while the run trains or
after, on any number of processes (the main process writes them): the reward by component, the mode shares, the
rollout and held-out accuracy, loss, gradient norm, throughput, memory and step time from the metrics, and the
pseudo-thinking flag rates of the logged rollouts over steps from the traces (inspect_run).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from .dyme import Mode
from .errors import UserError, first_line
from .report_html import CSS, plot_img
from .rundir import METRICS_FILE, RunDir

#: (title, y label, [(metrics key, series label)]): the panels drawn from metrics.jsonl, in page order. The reward
#: components are found in the records (`reward/NAME_mean`).
PANELS = [
    ("mode shares", "share of prompts", [(f"frac_{mode.value}", mode.value) for mode in Mode]),
    ("rollout and held-out accuracy", "accuracy", [("accuracy", "rollouts"), ("eval_accuracy", "held-out")]),
    ("loss", "loss", [("loss", "loss")]),
    ("gradient norm", "norm", [("grad_norm", "before clipping")]),
    ("throughput", "tokens / s", [("tokens_per_s", "generated + forwarded")]),
    ("memory", "GiB", [("memory_peak_gib", "peak"), ("memory_state_gib", "weights, gradients, optimizer")]),
    ("step time", "seconds", [("time_generate", "generate"), ("time_verify", "verify"), ("time_update", "update")]),
]


@dataclass
class RunCurves:
    """What one run directory holds for the report."""

    name: str
    records: list[dict]
    flag_windows: list[dict] = field(default_factory=list)  # inspect_run's summary windows (flag rates)
    notes: list[str] = field(default_factory=list)

    def series(self, key: str) -> tuple[list[float], list[float | None]]:
        """(steps, values) of a metric, None where a step does not log it."""
        return [r["step"] for r in self.records], [r.get(key) for r in self.records]


def read_run(path: Path, name: str) -> RunCurves:
    """The run's logged metrics (a last line still being written is left out) and its flag rates over steps."""
    run = RunDir(path)
    if not run.metrics_file.is_file():
        raise UserError(f"{path}: no {METRICS_FILE} (not a run directory, or no step has finished yet)")
    records, notes = [], []
    lines = run.metrics_file.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise UserError(f"{run.metrics_file}:{number}: not valid JSON") from None
            notes.append(f"{name}: the last line of {METRICS_FILE} is still being written; left out")
    curves = RunCurves(name, records, notes=notes)
    if run.traces_file.is_file():
        from .inspect_run import inspect

        try:
            curves.flag_windows = inspect(path, windows=20).summary["windows"]
        except UserError as exc:  # a traces line being written, a dataset moved away: the curves still show
            notes.append(f"{name}: no flag rates ({first_line(exc)})")
    return curves


def report(paths: list[Path], out: Path) -> Path:
    """Write the HTML report of the runs at `paths` to `out`; several runs share every plot, one line each."""
    names = run_names(paths)
    runs = [read_run(path, name) for path, name in zip(paths, names)]
    several = len(runs) > 1

    def label(run: RunCurves, what: str) -> str:
        return f"{run.name}: {what}" if several else what

    figures = []
    components = sorted({key for run in runs for record in run.records for key in record
                         if key.startswith("reward/") and key.endswith("_mean")})
    figures.append(plot_img("reward by component", "mean reward", {
        label(run, key[len("reward/"):-len("_mean")]): run.series(key) for run in runs for key in components},
        xlabel="step"))
    for title, ylabel, keys in PANELS:
        figures.append(plot_img(title, ylabel, {
            label(run, what): run.series(key) for run in runs for key, what in keys
            if any(record.get(key) is not None for record in run.records)}, xlabel="step"))
    figures.append(plot_img("pseudo-thinking flags of the logged rollouts", "share of rollouts", {
        label(run, flag): ([(w["steps"][0] + w["steps"][1]) / 2 for w in run.flag_windows],
                           [w["flag_rates"].get(flag, 0.0) for w in run.flag_windows])
        for run in runs for flag in sorted({f for w in run.flag_windows for f, rate in w["flag_rates"].items() if rate})},
        xlabel="step (window midpoint)"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page(runs, paths, figures), encoding="utf-8")
    return out


def run_names(paths: list[Path]) -> list[str]:
    """Each run's folder name; the full path where two runs share a name."""
    names = [path.name or str(path) for path in paths]
    return [name if names.count(name) == 1 else str(path) for name, path in zip(names, paths)]


def page(runs: list[RunCurves], paths: list[Path], figures: list[str]) -> str:
    rows = "".join(
        f"<tr><td>{html.escape(run.name)}</td><td>{html.escape(str(path))}</td><td>{len(run.records)}</td>"
        f"<td>{run.records[-1]['step'] if run.records else '—'}</td></tr>" for run, path in zip(runs, paths))
    notes = "".join(f"<li>{html.escape(note)}</li>" for run in runs for note in run.notes)
    title = "dyme report: " + ", ".join(run.name for run in runs)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<table><tr><th>run</th><th>directory</th><th>steps logged</th><th>last step</th></tr>{rows}</table>"
            + (f"<ul>{notes}</ul>" if notes else "") + "\n".join(f"<div>{figure}</div>" for figure in figures)
            + "</body></html>\n")
