"""DyME against the paper's baselines, trained from the same start on the same data with the same budget.

Methods (METHODS): `dyme`; `sft` (memorize every prompt); `grpo` (never memorize); `sft-grpo` (SFT for a share
of the steps, then GRPO from its checkpoint for the rest); and the paper's other switching strategies,
`threshold` (memorize while fewer than `[train].memorize_below` of the rollouts are correct) and `anneal` (SFT
annealing: memorize with a probability falling from 1 to 0 over the run). Every method gets the recipe's steps,
prompts per step, K, completion length, optimizer and schedule; only the algorithm and the learning rate change.

The protocol, so that no method loses to a setting tuned for another and nothing is tuned on the test set:
  1. learning rate: each method is trained once per candidate lr (seed `selection_seed`) and scored greedily on a
     validation split; it keeps the lr with the best validation accuracy (the smaller one on a tie);
  2. each method, at its lr, is trained once per seed and scored on `[data].test`: accuracy over the steps
     (every `eval_every`), and after the last step accuracy, format rate, pseudo-thinking flag rates of the
     held-out completions (pseudo_thinking/), mode fractions and training time (rollouts, verification, updates).
Every run is an ordinary run directory under `out`; a finished run is read back instead of trained again, and an
unfinished one resumes from its checkpoint, so an interrupted comparison continues where it stopped.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

from pydantic import ValidationError

from .dyme import METHODS, Mode, mean, phases, std
from .errors import BadArgument, validation_problem
from .pseudo_thinking import flag_traces, load_traces
from .recipe import Recipe, recipe_to_toml
from .rundir import RunDir, checkpoint_step
from .traces import StepMetrics
from .trainer import train

FLAGS = ("ungrounded-value", "misread-value", "right-for-wrong-reasons", "conclusion-mismatch")
RESULT_FILE = "compare.json"
PLOT_FILE = "accuracy.png"
CURVE_POINTS = 10  # held-out evaluations over a run when the recipe sets no eval_every


@dataclass
class RunOutcome:
    """One training run of one method, scored on the validation split (selection) or the test split."""

    method: str
    lr: float
    seed: int
    accuracy: float
    format_rate: float
    train_s: float  # the steps' own time: rollouts, verification and updates (evaluations excluded)
    curve: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out accuracy); step 0 = the start
    flags: dict[str, float] = field(default_factory=dict)  # flag -> share of held-out completions
    modes: dict[str, float] = field(default_factory=dict)  # memorize/explore/skip -> share of groups over the run


@dataclass
class MethodSummary:
    method: str
    lr: float
    accuracy: tuple[float, float]  # mean, sample sd over seeds
    format_rate: tuple[float, float]
    flags: dict[str, tuple[float, float]]
    train_s: float  # mean per run
    modes: dict[str, float]


@dataclass
class Comparison:
    base: list[float]  # held-out accuracy of the starting model, per seed
    selection: dict[str, dict[float, float | None]]  # method -> lr -> validation accuracy (None: not selected)
    runs: list[RunOutcome]

    def lr(self, method: str) -> float:
        return chosen_lr(self.selection[method])

    def summaries(self) -> list[MethodSummary]:
        return [summarize(method, self.lr(method), [r for r in self.runs if r.method == method])
                for method in self.selection]

    def to_dict(self) -> dict:
        return {"base": self.base, "selection": {m: {str(lr): acc for lr, acc in s.items()} for m, s in self.selection.items()},
                "chosen_lr": {m: self.lr(m) for m in self.selection},
                "summary": [asdict(s) for s in self.summaries()], "runs": [asdict(r) for r in self.runs]}


def spread(values: Sequence[float]) -> tuple[float, float]:
    return mean(values), std(values)


def summarize(method: str, lr: float, runs: Sequence[RunOutcome]) -> MethodSummary:
    return MethodSummary(
        method, lr, spread([r.accuracy for r in runs]), spread([r.format_rate for r in runs]),
        {name: spread([r.flags.get(name, 0.0) for r in runs]) for name in FLAGS},
        mean([r.train_s for r in runs]),
        {mode.value: mean([r.modes.get(mode.value, 0.0) for r in runs]) for mode in Mode},
    )


def chosen_lr(validation: dict[float, float | None]) -> float:
    """The lr with the best validation accuracy; the smaller lr wins a tie (the only one, when there was no choice)."""
    return min(validation, key=lambda lr: (-(validation[lr] or 0.0), lr))


def check_methods(methods: Sequence[str]) -> list[str]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise BadArgument(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    if not methods:
        raise BadArgument(f"--methods: no method given; choose from {', '.join(METHODS)}")
    return list(dict.fromkeys(methods))


CHECKED_AS = {"--lrs": ("optim", "lr"), "--seeds": ("run", "seed"), "--selection-seed": ("run", "seed")}


def check_values(recipe: Recipe, values: Mapping[str, Sequence[float]]) -> None:
    """The comparison's learning rates and seeds (by option), validated as the recipe's [optim].lr and [run].seed
    are: a value the runs' recipes would refuse is refused before the first run."""
    for option, given in values.items():
        name, key = CHECKED_AS[option]
        section = getattr(recipe, name)
        for value in given:
            try:
                type(section).model_validate({**section.model_dump(), key: value})
            except ValidationError as exc:
                raise BadArgument(f"{option} {value}: {validation_problem(exc)[1]}") from None


def compare(
    recipe: Recipe,
    *,
    methods: Sequence[str],
    seeds: Sequence[int],
    lrs: Sequence[float] = (),
    method_lrs: Mapping[str, float] | None = None,
    val: Path | None = None,
    out: Path,
    selection_seed: int = 1000,
    sft_fraction: float = 0.5,
    on_run: Callable[[str], None] = lambda label: None,
    on_message: Callable[[str], None] = lambda message: None,
    on_step: Callable[[int, int, StepMetrics], None] | None = None,
) -> Comparison:
    """Select each method's lr among `lrs` on `val` (when several are given; a method in `method_lrs` keeps the
    lr given there, e.g. one chosen by an earlier comparison), then train every method for every seed and score it
    on the recipe's test split. Writes compare.json and accuracy.png under `out`."""
    methods = check_methods(methods)
    method_lrs = dict(method_lrs or {})
    if method_lrs:
        check_methods(list(method_lrs))
    check_values(recipe, {"--lrs": [*lrs, *method_lrs.values()], "--seeds": seeds,
                          "--selection-seed": [selection_seed]})
    if len(set(seeds)) < len(seeds):
        raise BadArgument(f"--seeds {','.join(map(str, seeds))} repeats a seed: a repeated run adds nothing to the "
                          "spread")
    if recipe.data.test is None:
        raise BadArgument("the recipe has no [data].test: the comparison scores every method on it")
    if not seeds:
        raise BadArgument("no seed to run")
    if recipe.train.max_steps < 2 and any(len(phases(m)) > 1 for m in methods):
        raise BadArgument("sft-grpo needs at least 2 steps: one of SFT, one of GRPO")
    candidates = sorted(set(lrs)) or [recipe.optim.lr]
    if len(candidates) > 1 and val is None:
        raise BadArgument("choosing among several learning rates needs a validation split (--val FILE); "
                          "the test split is never used for choices")
    if selection_seed in seeds and len(candidates) > 1:
        raise BadArgument(f"the selection seed {selection_seed} is also a test seed; choose another")
    out = Path(out)
    plan = Plan(recipe, out, sft_fraction, on_run, on_message, on_step)

    selection: dict[str, dict[float, float | None]] = {}
    for method in methods:
        if method in method_lrs or len(candidates) == 1:
            selection[method] = {method_lrs.get(method, candidates[0]): None}  # nothing to choose: no selection run
            continue
        selection[method] = {lr: plan.run(method, lr, selection_seed, test=Path(val), group="select").accuracy
                             for lr in candidates}

    runs, base = [], {}
    for seed in seeds:
        for method in methods:
            outcome = plan.run(method, chosen_lr(selection[method]), seed, test=recipe.data.test, group="test")
            runs.append(outcome)
            base.setdefault(seed, outcome.curve[0][1])
    comparison = Comparison([base[s] for s in seeds], selection, runs)
    (out / RESULT_FILE).write_text(json.dumps(comparison.to_dict(), indent=2) + "\n", encoding="utf-8")
    plot_curves(comparison, out / PLOT_FILE)
    return comparison


@dataclass
class Plan:
    """How one method's run is laid out: its phases, run directories and recipes."""

    recipe: Recipe
    out: Path
    sft_fraction: float
    on_run: Callable[[str], None]
    on_message: Callable[[str], None]
    on_step: Callable[[int, int, StepMetrics], None] | None = None  # each training step of each run

    def phase_steps(self, method: str) -> list[int]:
        total = self.recipe.train.max_steps
        if len(phases(method)) == 1:
            return [total]
        first = min(total - 1, max(1, round(total * self.sft_fraction)))
        return [first, total - first]

    def run(self, method: str, lr: float, seed: int, *, test: Path, group: str) -> RunOutcome:
        """Train (or read back) every phase of `method`; the final scores are the last phase's, the curve and
        the costs cover all phases (a later phase's steps continue the earlier one's)."""
        directory = self.out / group / f"{method}-lr{lr:g}-seed{seed}"
        layout = list(zip(phases(method), self.phase_steps(method)))
        model, offset, curve, records = self.recipe.model.name_or_path, 0, [], []
        for index, (algorithm, steps) in enumerate(layout, start=1):
            run = RunDir(directory / f"{index}-{algorithm}" if len(layout) > 1 else directory)
            self.on_run(f"{group}: {method}, lr {lr:g}, seed {seed}" + (f", phase {algorithm}" if len(layout) > 1 else ""))
            checkpoint = self.train_or_read(self.phase_recipe(algorithm, steps, lr, seed, model, test, run.path), run)
            phase_records = [StepMetrics.from_record(line) for line in run.metrics()]
            if index == 1:
                curve.append((0, first_eval(run)))
            curve += [(offset + r.step, r.eval_accuracy) for r in phase_records if r.eval_accuracy is not None]
            records += phase_records
            model, offset = str(checkpoint.resolve()), offset + steps
        final = records[-1]
        return RunOutcome(method, lr, seed, final.eval_accuracy, final.eval_format_rate,
                          train_s=sum(r.train_s for r in records), curve=curve, flags=flag_rates(run, final.step),
                          modes=mode_shares(records))

    def phase_recipe(self, algorithm: str, steps: int, lr: float, seed: int, model: str, test: Path, run_dir: Path
                     ) -> Recipe:
        raw = self.recipe.model_dump(mode="json", exclude_none=True)
        raw["model"]["name_or_path"] = model
        raw["data"]["test"] = str(test)
        raw["train"].update(algorithm=algorithm, max_steps=steps)
        raw["optim"]["lr"] = lr
        run = raw["run"]
        run.update(seed=seed, output_dir=str(run_dir), eval_before=True, eval_after=True,
                   eval_every=run.get("eval_every") or max(1, self.recipe.train.max_steps // CURVE_POINTS),
                   save_every=min(run["save_every"], steps))
        return Recipe.model_validate(raw)

    def train_or_read(self, recipe: Recipe, run: RunDir) -> Path:
        """The run's last checkpoint: read back when the run finished earlier, else trained (resumed if begun)."""
        if run.recipe_file.is_file() and run.recipe_file.read_text(encoding="utf-8") != recipe_to_toml(recipe):
            raise BadArgument(f"{run.path} holds a run of another recipe; choose another output folder")
        checkpoints, records = run.checkpoints(), run.metrics()
        finished = checkpoints and checkpoint_step(checkpoints[-1]) == recipe.train.max_steps
        if finished and records and StepMetrics.from_record(records[-1]).eval_accuracy is not None:
            self.on_message(f"{run.path}: finished earlier, read back")
            return checkpoints[-1]
        return train(recipe, resume=bool(run.contents()), on_message=self.on_message, on_step=self.on_step).checkpoint


def first_eval(run: RunDir) -> float:
    """Held-out accuracy of the starting model: the step-0 completions in the run's eval traces."""
    traces = [t for t in load_traces(run.eval_traces_file) if t["step"] == 0 and t.get("kind") == "rollout"]
    return mean([float(bool(t["correct"])) for t in traces])


def flag_rates(run: RunDir, step: int) -> dict[str, float]:
    """The share of the held-out completions after `step` that each pseudo-thinking flag fires on."""
    traces = [t for t in load_traces(run.eval_traces_file) if t["step"] == step and t.get("kind") == "rollout"]
    flags = flag_traces(traces)
    return {name: sum(any(f.name == name for f in found) for found in flags) / max(1, len(traces)) for name in FLAGS}


def mode_shares(records: Sequence[StepMetrics]) -> dict[str, float]:
    """memorize / explore / skip as shares of all prompt groups of the run."""
    counts = {mode.value: sum(r.modes[mode] for r in records) for mode in Mode}
    total = sum(counts.values()) or 1
    return {mode: n / total for mode, n in counts.items()}


def plot_curves(comparison: Comparison, path: Path) -> None:
    """Held-out accuracy over the steps, one line per method (mean over seeds, a band of one sd)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for summary in comparison.summaries():
        curves = [r.curve for r in comparison.runs if r.method == summary.method]
        steps = [step for step, _ in curves[0]]
        values = [[curve[i][1] for curve in curves] for i in range(len(steps))]
        means = [mean(v) for v in values]
        sds = [std(v) for v in values]
        axes.plot(steps, means, marker="o", markersize=3, label=f"{summary.method} (lr {summary.lr:g})")
        axes.fill_between(steps, [m - s for m, s in zip(means, sds)], [m + s for m, s in zip(means, sds)], alpha=0.15)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("held-out accuracy (greedy)")
    axes.set_title(f"held-out accuracy over training, mean ± sd over {len(comparison.base)} seed(s)")
    axes.legend(fontsize="small", loc="best")
    figure.tight_layout()
    figure.savefig(path, format="png")
