"""Per-step records: one metrics line per step, one trace line per rollout and per memorized target.

`Trace` is the typed shape of a traces.jsonl line, written by training and `dyme eval` and read by
`dyme inspect-traces` (inspect_run, pseudo_thinking, report_html). It is a plain dict on disk and in memory;
readers use `.get`, since traces from hand-made files or older runs may lack keys.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from typing_extensions import TypedDict  # pydantic validates it (inspect-traces) on every supported Python

from . import dyme
from .batch import PromptGroup, StepBatch
from .data import Sample
from .dyme import Mode
from .verdict import Verdict

if TYPE_CHECKING:  # traces are read without torch (dyme inspect-traces)
    from .rollout import Completion


class Trace(TypedDict, total=False):
    run: str  # the run directory's name (training) or the checkpoint's label (eval)
    step: int | None
    prompt_id: str
    task: str  # the verifier that scored it
    kind: str  # "rollout" (sampled) or "target" (a memorized reference)
    rollout: int | None  # index within the prompt's group; None for a target
    mode: str  # memorize / explore / skip, or "eval"
    completion: str
    answer: str | None  # extracted by the verifier
    gold: str
    correct: bool
    rewards: dict[str, float]  # the verdict's reward components
    reward: float | None  # their weighted total
    advantage: float | None
    tokens: int
    truncated: bool
    detail: str
    target: str  # targets only: the text learned
    # eval traces also carry their sample, so they can be inspected without the dataset:
    question: str
    reference: str
    facts: dict[str, Any]
    images: list[str]


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return dyme.mean(values), dyme.std(values)


ZERO_STD_CAUSES = ("all_correct", "all_wrong", "mixed")  # dyme.zero_std_cause
UPDATE_KEYS = ("memorize_nll", "clip_fraction", "kl", "memory_state_gib", "memory_peak_gib")  # logged when rows were


@dataclass
class UpdateStats:
    """What a step's update did, summed over the processes: the rows and completion tokens it forwarded, and the
    last optimizer step's loss, gradient norm and diagnostics (None where it forwarded nothing; `kl` only with
    beta > 0)."""

    rows: int = 0
    tokens: int = 0
    loss: float | None = None
    grad_norm: float | None = None
    nonfinite_updates: int = 0  # optimizer steps skipped for a non-finite loss or gradient
    clip_fraction: float | None = None
    memorize_nll: float | None = None  # per-token NLL of the memorized targets
    kl: float | None = None
    memory_state_gib: float | None = None  # weights, gradients and optimizer state
    memory_peak_gib: float | None = None


@dataclass
class StepMetrics:
    """One step, as metrics.jsonl, `dyme compare`, the progress line and the trackers read it (`record` is the
    line written, `from_record` reads one back)."""

    step: int
    lr: float
    update: UpdateStats
    modes: dict[Mode, int]  # prompt groups per mode
    accuracy: float | None = None  # share of correct rollouts
    reward_mean: float | None = None
    reward_std: float | None = None
    completion_tokens_mean: float | None = None
    truncated_frac: float | None = None
    verifier_errors: int = 0
    time_generate: float = 0.0
    time_verify: float = 0.0
    time_update: float = 0.0
    tokens_per_s: float | None = None  # generated + forwarded completion tokens per second of the step
    zero_std: dict[str, float] = field(default_factory=dict)  # ZERO_STD_CAUSES -> share of groups
    rewards: dict[str, tuple[float, float]] = field(default_factory=dict)  # component -> (mean, sd) over rollouts
    checker: dict[str, int] = field(default_factory=dict)  # the LLM checker's counts (checker_calls, ...)
    eval_accuracy: float | None = None  # held-out, on the steps that evaluate
    eval_format_rate: float | None = None

    @property
    def groups(self) -> int:
        return sum(self.modes.values())

    def mode_fraction(self, mode: Mode) -> float:
        return self.modes.get(mode, 0) / self.groups if self.groups else 0.0

    @property
    def train_s(self) -> float:
        """The step's own time: rollouts, verification and the update (evaluation excluded)."""
        return self.time_generate + self.time_verify + self.time_update

    def record(self) -> dict:
        update = self.update
        line = {"step": self.step, "loss": update.loss, "lr": self.lr, "grad_norm": update.grad_norm,
                "rows": update.rows, "reward_mean": self.reward_mean, "reward_std": self.reward_std,
                "accuracy": self.accuracy, "completion_tokens_mean": self.completion_tokens_mean,
                "truncated_frac": self.truncated_frac, "verifier_errors": self.verifier_errors,
                "time_generate": self.time_generate, "time_verify": self.time_verify,
                "time_update": self.time_update, "tokens_per_s": self.tokens_per_s}
        for mode in Mode:
            line[f"n_{mode.value}"] = self.modes.get(mode, 0)
            line[f"frac_{mode.value}"] = self.mode_fraction(mode)
        line.update({f"zero_std_{cause}": self.zero_std.get(cause, 0.0) for cause in ZERO_STD_CAUSES})
        for name, (mean, spread) in self.rewards.items():
            line[f"reward/{name}_mean"], line[f"reward/{name}_std"] = mean, spread
        line["nonfinite_updates"] = update.nonfinite_updates
        if update.rows:
            line.update({key: getattr(update, key) for key in UPDATE_KEYS
                         if key != "kl" or update.kl is not None})
        line.update(self.checker)
        if self.eval_accuracy is not None:
            line.update(eval_accuracy=self.eval_accuracy, eval_format_rate=self.eval_format_rate)
        return line

    @classmethod
    def from_record(cls, line: dict) -> StepMetrics:
        """A metrics.jsonl line read back (the forwarded tokens are logged only through tokens_per_s)."""
        update = UpdateStats(rows=line["rows"], loss=line["loss"], grad_norm=line["grad_norm"],
                             nonfinite_updates=line.get("nonfinite_updates", 0),
                             **{key: line[key] for key in UPDATE_KEYS if key in line})
        rewards = {key[len("reward/"):-len("_mean")]: (value, line[key[:-len("_mean")] + "_std"])
                   for key, value in line.items() if key.startswith("reward/") and key.endswith("_mean")}
        return cls(
            step=line["step"], lr=line["lr"], update=update, modes={mode: line[f"n_{mode.value}"] for mode in Mode},
            rewards=rewards, zero_std={cause: line[f"zero_std_{cause}"] for cause in ZERO_STD_CAUSES},
            checker={key: value for key, value in line.items() if key.startswith("checker_")},
            **{key: line.get(key) for key in ("accuracy", "reward_mean", "reward_std", "completion_tokens_mean",
                                              "truncated_frac", "tokens_per_s", "eval_accuracy", "eval_format_rate")},
            **{key: line[key] for key in ("verifier_errors", "time_generate", "time_verify", "time_update")},
        )


def step_metrics(batch: StepBatch, *, update: UpdateStats, timing: dict, lr: float) -> StepMetrics:
    groups = batch.groups
    n_groups = len(groups)
    completions = [c for g in groups for c in g.completions]
    flat_verdicts = [v for g in groups for v in g.verdicts]
    flat_rewards = [r for g in groups for r in g.rewards]
    causes = Counter(dyme.zero_std_cause(g.correct, g.rewards) for g in groups if g.rewards)
    generated = sum(len(c.ids) for c in completions)
    seconds = sum(timing.values())
    components = sorted({name for v in flat_verdicts for name in v.rewards})
    return StepMetrics(
        step=batch.step, lr=lr, update=update,
        modes={mode: sum(g.decision.mode is mode for g in groups) for mode in Mode},
        reward_mean=_mean_std(flat_rewards)[0], reward_std=_mean_std(flat_rewards)[1],
        accuracy=(sum(v.correct for v in flat_verdicts) / len(flat_verdicts)) if flat_verdicts else None,
        completion_tokens_mean=generated / len(completions) if completions else None,
        truncated_frac=(sum(c.truncated for c in completions) / len(completions)) if completions else None,
        verifier_errors=len(batch.verifier_failures),
        time_generate=timing["generate"], time_verify=timing["verify"], time_update=timing["update"],
        tokens_per_s=(generated + update.tokens) / seconds if seconds > 0 else None,
        zero_std={cause: causes.get(cause, 0) / n_groups if n_groups else 0.0 for cause in ZERO_STD_CAUSES},
        rewards={name: _mean_std([v.rewards.get(name, 0.0) for v in flat_verdicts]) for name in components},
    )


def rollout_trace(*, run: str, step: int, sample: Sample, task: str, index: int, mode: str, completion: Completion,
                  verdict: Verdict, reward: float, advantage: float | None) -> Trace:
    """One rollout's trace line (training and `dyme eval` write the same format)."""
    return Trace(
        run=run, step=step, prompt_id=sample.id, task=task, kind="rollout",
        rollout=index, mode=mode, completion=completion.text,
        answer=verdict.answer, gold=sample.answer, correct=verdict.correct,
        rewards=verdict.rewards, reward=reward, advantage=advantage,
        tokens=len(completion.ids), truncated=completion.truncated, detail=verdict.detail,
    )


def target_trace(*, run: str, step: int, group: PromptGroup) -> Trace:
    """The trace line of a memorized reference target."""
    sample, target = group.sample, group.target
    return Trace(
        run=run, step=step, prompt_id=sample.id, task=sample.task, kind="target",
        rollout=None, mode=Mode.MEMORIZE.value, completion=target.text, target=target.text,
        answer=sample.answer, gold=sample.answer, correct=True, rewards={}, reward=None,
        advantage=dyme.MEMORIZE_ADVANTAGE, tokens=len(target.ids), truncated=False, detail="reference target",
    )


def step_traces(run: str, batch: StepBatch) -> list[Trace]:
    records = []
    for group in batch.groups:
        rollouts = zip(group.completions, group.verdicts, group.rewards, group.decision.advantages)
        for index, (completion, verdict, reward, advantage) in enumerate(rollouts):
            records.append(rollout_trace(
                run=run, step=batch.step, sample=group.sample, task=group.sample.task, index=index,
                mode=group.decision.mode.value, completion=completion, verdict=verdict, reward=reward,
                advantage=advantage,
            ))
        if group.target is not None:
            records.append(target_trace(run=run, step=batch.step, group=group))
    return records


def eval_traces(*, run: str, step: int, sample: Sample, task: str, group: Sequence[tuple[Completion, Verdict]],
                reward_weights: dict[str, float]) -> list[Trace]:
    """Trace lines for one evaluated prompt, mode "eval". They carry the sample's question, reference, facts
    and image paths, so `dyme inspect-traces` needs no dataset to check them."""
    context = {"question": sample.question, "reference": sample.reference, "facts": sample.facts,
               "images": [str(p.resolve()) for p in sample.image_paths()]}
    return [
        Trace(**rollout_trace(run=run, step=step, sample=sample, task=task, index=index, mode="eval",
                              completion=completion, verdict=verdict,
                              reward=dyme.total_reward(verdict.rewards, reward_weights), advantage=None),
              **context)
        for index, (completion, verdict) in enumerate(group)
    ]
