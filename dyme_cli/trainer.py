"""The training loop: one DyME step after another (step.py), with held-out evaluations, logs, checkpoints at their
steps, and stop signals; runstart.start_run builds what the loop runs on."""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import processes
from .checkpoint import save_checkpoint
from .errors import Interrupted, UserError, first_line
from .evaluate import EvalReport, evaluate, trace_writer
from .optim import local
from .recipe import Recipe
from .rundir import METRICS_FILE, RunDir
from .runstart import evolved_samples, quiet, start_run, tracked
from .step import Engine, dyme_step
from .traces import StepMetrics
from .verify_pool import STOP_SIGNALS

FAILURE_REPORTS = 3  # steps with verifier failures reported as messages; later ones are only counted
NONFINITE_LIMIT = 3  # steps in a row whose update was skipped for a non-finite loss or gradient before the run stops


class TrainingInterrupted(Exception):
    def __init__(self, step: int, checkpoint: Path, signum: int = signal.SIGINT):
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped after step {step}; checkpoint saved to {checkpoint}")
        self.step, self.checkpoint, self.signum = step, checkpoint, signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP


class StepAbandoned(TrainingInterrupted):
    """A second stop signal during a step that would not end: the step is given up, nothing of it saved."""

    def __init__(self, step: int, checkpoint: Path | None, signum: int):
        Exception.__init__(self, f"{signal.Signals(signum).name}: stopped during step {step}, which was not saved; "
                           + (f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"))
        self.step, self.checkpoint, self.signum = step, checkpoint, signum


class TrainingDiverged(UserError):
    """The loss or gradient stayed non-finite: the updates were skipped, and going on would learn nothing."""

    def __init__(self, step: int, checkpoint: Path | None):
        since = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        super().__init__(f"step {step}: the loss or gradient was not finite in {NONFINITE_LIMIT} steps in a row "
                         f"(those updates were skipped); lower [optim].lr or check the rewards; {since}")


class WeightsNotFinite(UserError):
    """An update whose loss and gradient were finite made a weight non-finite (an optimizer setting that overflows):
    the run stops before any checkpoint can hold it."""

    def __init__(self, step: int, checkpoint: Path | None):
        since = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        super().__init__(f"step {step}: the update made some weights non-finite though the loss and gradient were "
                         f"finite; lower [optim].lr, weight_decay or betas; {since}, nothing later was saved")


class OutOfMemory(UserError):
    """A step needed more memory than the device (or host) has."""

    def __init__(self, step: int, checkpoint: Path | None, detail: str):
        since = f"the last checkpoint is {checkpoint}" if checkpoint else "no checkpoint was saved"
        super().__init__(f"step {step}: out of memory ({detail[:160]}); `dyme train RECIPE --dry-run` plans what each "
                         "process holds: lower [optim].micro_batch_size, [rollout].prompts_per_generate or "
                         f"max_new_tokens, or shard the model (dyme launch with recipes/accelerate/fsdp2.yaml); {since}")


def out_of_memory(exc: BaseException) -> bool:
    """A failed allocation: CUDA's OutOfMemoryError, Python's MemoryError, or the CPU allocator's RuntimeError."""
    text = str(exc)
    return (isinstance(exc, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text
            or "DefaultCPUAllocator: not enough memory" in text)


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    checkpoint: Path | None
    before: EvalReport | None = None
    after: EvalReport | None = None


class StopRequest:
    """The first stop signal asks the loop to stop after the current step (and checkpoint), and says so at once,
    since a step can be long; a second Ctrl-C gives the step up at once (Interrupted), and so does a second SIGTERM
    or SIGHUP that comes REPEAT_GRACE_S or more after the first. One sooner changes nothing: schedulers signal every
    process of a job and launchers forward the signal again, and the run must still checkpoint."""

    REPEAT_GRACE_S = 5.0

    def __init__(self, on_message: Callable[[str], None] = lambda message: None):
        self.signum: int | None = None
        self._since = 0.0  # when the first signal came
        self.on_message = on_message
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        try:
            self._previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS
                              if signal.getsignal(s) is not signal.SIG_IGN}  # SIGHUP under `nohup` stays ignored
        except ValueError:  # not the main thread: no signal handling
            self._previous = {}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            if signum == signal.SIGINT or time.monotonic() - self._since >= self.REPEAT_GRACE_S:
                raise Interrupted(signum)
            return
        self.signum, self._since = signum, time.monotonic()
        self.on_message(f"{signal.Signals(signum).name}: stopping after the current step with a checkpoint; "
                        "press Ctrl-C again (or send the signal again 5 s or more later) to stop at once without one")

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        return False


def train(
    recipe: Recipe,
    *,
    output_dir: Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    allow_recipe_change: bool = False,
    on_step: Callable[[int, int, StepMetrics], None] | None = None,
    on_message: Callable[[str], None] = lambda message: None,
    on_image_check: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train `recipe` into its run directory (`output_dir` overrides `[run].output_dir`), or continue the run there
    (`resume`), holding the directory's lock throughout. Every refusal comes before anything is written: another
    process training there, a new run where one is recorded, a resumed one whose recipe changes what it trains
    (unless `allow_recipe_change`). `on_image_check(done, total)` follows the datasets' image checks.

    Under `accelerate launch` every process runs this; the main one alone holds the lock, checks and writes the run
    directory and reports (processes.py)."""
    run = RunDir(Path(output_dir or recipe.run.output_dir))
    total = max_steps or recipe.train.max_steps
    with ExitStack() as held:
        engine = start_run(held, recipe, run, total=total, resume=resume, allow_recipe_change=allow_recipe_change,
                           on_message=on_message, on_image_check=on_image_check)
        if not processes.is_main():
            on_step, on_message = None, quiet
        return run_steps(engine, on_step, on_message)


def run_steps(engine: Engine, on_step: Callable[[int, int, StepMetrics], None] | None,
              on_message: Callable[[str], None]) -> TrainResult:
    recipe, run, total, start = engine.recipe, engine.run, engine.total_steps, engine.resumed_at
    result = TrainResult(run.path, start, engine.resumed_from)
    if start >= total:
        on_message(f"the run is already at step {start} of {total}: nothing to train; raise [train].max_steps "
                   "(or pass --max-steps) to train further")
    if recipe.run.eval_before and engine.test_samples and start == 0:
        result.before = run_eval(engine, 0)
    if start and processes.is_main():
        report_process_change(run, start, on_message)

    failure_reports, nonfinite_streak = 0, 0
    with StopRequest(on_message) as stop:
        for step in range(start + 1, total + 1):
            try:
                outcome = dyme_step(engine, step)
            except KeyboardInterrupt as exc:  # a second stop signal: the step is given up
                raise StepAbandoned(step, result.checkpoint, getattr(exc, "signum", signal.SIGINT)) from None
            except (MemoryError, RuntimeError) as exc:
                if not out_of_memory(exc):
                    raise
                raise OutOfMemory(step, result.checkpoint, first_line(exc)) from None
            metrics = outcome.metrics
            if processes.any_process(not weights_finite(engine.policy.model)):
                raise WeightsNotFinite(step, result.checkpoint)
            if evaluates_at(recipe, step, total) and engine.test_samples:
                report = run_eval(engine, step)
                metrics.eval_accuracy, metrics.eval_format_rate = eval_scores(report)
                if step == total:
                    result.after = report
            record = {**metrics.record(), "processes": processes.count()}
            if processes.is_main():
                run.append_metrics(record)
                run.append_traces(outcome.traces)
            engine.accelerator.log(tracked(record), step=step)  # the main process's trackers, if any
            failure_reports = report_verifier_failures(step, outcome.verifier_failures, failure_reports, on_message)
            if step == start + 1:
                report_unweighed_rewards(step, recipe.train.reward_weights, outcome.traces, on_message)
            if evolves_at(recipe, step):
                engine.samples = processes.on_main(lambda: evolved_samples(
                    recipe, run, engine.unrefined, outcome.traces, step, on_message)) or engine.samples
            nonfinite_streak = nonfinite_streak + 1 if metrics.update.nonfinite_updates else 0
            if nonfinite_streak == NONFINITE_LIMIT:
                raise TrainingDiverged(step, result.checkpoint)
            result.steps = step
            if step % recipe.run.save_every == 0 or step == total:
                result.checkpoint = save_checkpoint(engine, run, step)
            if on_step:
                on_step(step, total, metrics)
            if processes.any_process(stop.requested):  # a signal that reached one process stops them all
                if result.checkpoint != run.checkpoint(step):
                    result.checkpoint = save_checkpoint(engine, run, step)
                raise TrainingInterrupted(step, result.checkpoint, stop.signum or signal.SIGTERM)
    return result


def weights_finite(model) -> bool:
    """Whether every trained weight this process holds (its shards, under FSDP2) is finite."""
    finite = [torch.isfinite(local(p.detach())).all() for p in model.parameters() if p.requires_grad]
    return bool(torch.stack(finite).all()) if finite else True  # one device sync, not one per tensor


def evaluates_at(recipe: Recipe, step: int, total: int) -> bool:
    """Held-out evaluation after this step: every `[run].eval_every` steps, and after the last with `eval_after`."""
    every = recipe.run.eval_every
    return (step == total and recipe.run.eval_after) or (every is not None and step % every == 0)


def evolves_at(recipe: Recipe, step: int) -> bool:
    every = recipe.supervision.evolve_every
    return every is not None and step % every == 0


def eval_scores(report: EvalReport) -> tuple[float, float]:
    """Held-out accuracy and format rate."""
    summary = report.overall.summary()
    return summary["accuracy"], summary["format_rate"]


def report_verifier_failures(step: int, failures: list[str], reported: int, on_message: Callable[[str], None]) -> int:
    """Say so when verifier calls fail (raise or time out), for the first few steps where it happens."""
    if failures and reported < FAILURE_REPORTS:
        on_message(f"step {step}: {len(failures)} verifier call(s) failed and count as wrong answers; first: {failures[0]}")
        reported += 1
        if reported == FAILURE_REPORTS:
            on_message(f"further verifier failures are only counted (verifier_errors in {METRICS_FILE})")
    return reported


def report_process_change(run: RunDir, start: int, on_message: Callable[[str], None]) -> None:
    """Say so when a resumed run goes on with another number of processes than its last step ran on: the same run
    up to float reduction order, which a long run can amplify into other figures."""
    ran_on = next((m.get("processes") for m in reversed(run.metrics()) if m.get("step") == start), None)
    now = processes.count()
    if ran_on is not None and ran_on != now:
        on_message(f"step {start} ran on {ran_on} process{'es' if ran_on > 1 else ''}, the run goes on with {now}: the "
                   "same run up to float reduction order, so its figures can differ from one that never changed")


def report_unweighed_rewards(step: int, weights: dict[str, float], traces, on_message: Callable[[str], None]) -> None:
    """Say so when `[train].reward_weights` names a reward no verdict of the step returned (a misspelt name weighs
    nothing, and the reward it meant gets no weight)."""
    returned = {name for trace in traces if trace.get("kind") == "rollout" for name in trace.get("rewards") or {}}
    unknown = sorted(set(weights) - returned)
    if returned and unknown:
        on_message(f"[train].reward_weights: no verdict of step {step} returned {', '.join(map(repr, unknown))} "
                   f"(they returned {', '.join(map(repr, sorted(returned)))}); a reward without a weight counts zero")


def run_eval(engine: Engine, step: int) -> EvalReport:
    """Greedy held-out accuracy through the run's rollout backend; every completion goes to the run's eval traces,
    tagged with the step."""
    cfg, run, samples = engine.recipe.run, engine.run, engine.test_samples
    chosen = samples[: cfg.eval_limit] if cfg.eval_limit else samples
    with engine.parallel.gathered(engine.policy.model):
        return evaluate(engine.policy, chosen, engine.verifiers, max_new_tokens=engine.recipe.rollout.max_new_tokens,
                        prompt_template=engine.recipe.prompt_template, batch_size=cfg.eval_batch_size,
                        backend=engine.backend,
                        on_group=trace_writer(run.eval_traces_file, run.name, step, engine.recipe.train.reward_weights)
                        if processes.is_main() else None)
