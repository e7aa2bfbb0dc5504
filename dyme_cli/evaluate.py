"""Held-out evaluation: rollouts scored by the same verifiers as training.

Greedy decoding gives one completion per prompt; with `samples_per_prompt = K > 1` K completions are
sampled and the report adds pass@K (the share of prompts with at least one correct completion) next to the
mean accuracy over all completions. Numbers are kept per task, per question kind (`meta["kind"]`) and overall.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from . import processes
from .data import QUESTION, Sample, append_jsonl, instruction_template
from .modeling import Policy
from .recipe import DEFAULT_REWARD_WEIGHTS, load_recipe
from .rollout import GREEDY, Backend, Completion, TransformersBackend, prompt_input, sampling_settings
from .rundir import run_recipe_file
from .traces import eval_traces
from .verdict import Verdict
from .verify_pool import VerifierPool

OVERALL = "all"


@dataclass
class Score:
    prompts: int = 0
    completions: int = 0
    correct: int = 0
    solved: int = 0  # prompts with at least one correct completion
    formatted: int = 0
    tokens: int = 0
    truncated: int = 0

    def add(self, group: Sequence[tuple[Completion, Verdict]]) -> None:
        self.prompts += 1
        self.completions += len(group)
        self.correct += sum(v.correct for _, v in group)
        self.solved += any(v.correct for _, v in group)
        self.formatted += sum(v.rewards.get("format", 0.0) >= 1.0 for _, v in group)
        self.tokens += sum(len(c.ids) for c, _ in group)
        self.truncated += sum(c.truncated for c, _ in group)

    def summary(self) -> dict[str, float]:
        n = max(self.completions, 1)
        return {
            "n": self.prompts,
            "completions": self.completions,
            "accuracy": self.correct / n,
            "pass_at_k": self.solved / max(self.prompts, 1),
            "format_rate": self.formatted / n,
            "mean_completion_tokens": self.tokens / n,
            "truncated_rate": self.truncated / n,
        }


@dataclass
class EvalReport:
    k: int = 1  # completions per prompt
    overall: Score = field(default_factory=Score)
    by_task: dict[str, Score] = field(default_factory=lambda: defaultdict(Score))
    by_kind: dict[tuple[str, str], Score] = field(default_factory=lambda: defaultdict(Score))

    def add(self, sample: Sample, task: str, group: Sequence[tuple[Completion, Verdict]]) -> None:
        self.overall.add(group)
        self.by_task[task].add(group)
        if "kind" in sample.meta:
            self.by_kind[(task, str(sample.meta["kind"]))].add(group)

    def rows(self) -> list[tuple[str, str, dict]]:
        """(task, kind, numbers) for each kind of each task, then the task, then everything."""
        rows = []
        for task in sorted(self.by_task):
            rows += [(task, kind, s.summary()) for (t, kind), s in sorted(self.by_kind.items()) if t == task]
            rows.append((task, OVERALL, self.by_task[task].summary()))
        rows.append((OVERALL, OVERALL, self.overall.summary()))
        return rows

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "overall": self.overall.summary(),
            "by_task": {task: s.summary() for task, s in sorted(self.by_task.items())},
            "by_kind": {f"{task}/{kind}": s.summary() for (task, kind), s in sorted(self.by_kind.items())},
        }


def prompt_template_for(checkpoint: str, answer_flag: str) -> str:
    """The prompt template a checkpoint was trained with: the one its run directory's recipe recorded (a run
    recorded without one predates templates and sent the bare question), else the authors' instruction built
    from `answer_flag`."""
    recorded = run_recipe_file(checkpoint)
    if recorded is not None and recorded.is_file():
        return load_recipe(recorded).data.prompt_template or QUESTION
    return instruction_template(answer_flag)


GroupCallback = Callable[[Sample, str, Sequence[tuple[Completion, Verdict]]], None]


def trace_writer(path: Path, run: str, step: int, reward_weights: dict[str, float] = DEFAULT_REWARD_WEIGHTS
                 ) -> GroupCallback:
    """An `on_group` callback appending each evaluated prompt's traces (mode "eval") to `path`."""

    def write(sample: Sample, task: str, group: Sequence[tuple[Completion, Verdict]]) -> None:
        append_jsonl(path, eval_traces(run=run, step=step, sample=sample, task=task, group=group,
                                       reward_weights=reward_weights))

    return write


def evaluate(
    policy: Policy,
    samples: Sequence[Sample],
    verifiers: VerifierPool,
    *,
    max_new_tokens: int,
    prompt_template: str,
    batch_size: int = 32,
    samples_per_prompt: int = 1,
    temperature: float = 1.0,
    verifier: str | None = None,
    backend: Backend | None = None,
    report: EvalReport | None = None,
    on_batch: Callable[[int], None] | None = None,
    on_group: GroupCallback | None = None,
) -> EvalReport:
    """Score every sample; `report` is filled in place, so a caller that stops early keeps what was done.

    `prompt_template` holds `{question}` (see `prompt_template_for`); `verifier` overrides each sample's task;
    `backend` samples the completions (a training run's own; by default the policy's transformers generate);
    `on_group` sees each prompt's completions and verdicts; `on_batch(n)` follows the prompts done.

    With N processes each scores its share of the samples (processes.share), batch by batch, and every process's
    report holds every sample: after each batch the processes' scored groups are gathered (in the same number of
    batches everywhere, the last ones possibly empty).
    """
    report = report if report is not None else EvalReport(k=samples_per_prompt)
    sampling = GREEDY if samples_per_prompt == 1 else sampling_settings(temperature=temperature)
    backend = backend or TransformersBackend(policy)
    mine = [samples[i] for i in processes.share(len(samples))]
    largest_share = len(processes.share(len(samples), process=0))
    for start in range(0, largest_share, batch_size):
        scored = _score(policy, backend, mine[start : start + batch_size], verifiers, prompt_template=prompt_template,
                        max_new_tokens=max_new_tokens, samples_per_prompt=samples_per_prompt, sampling=sampling,
                        verifier=verifier)
        everyone = processes.everyone(scored)
        for sample, task, group in everyone:
            report.add(sample, task, group)
            if on_group:
                on_group(sample, task, group)
        if on_batch:
            on_batch(len(everyone))
    return report


def _score(policy: Policy, backend: Backend, chunk: Sequence[Sample], verifiers: VerifierPool, *, prompt_template: str,
           max_new_tokens: int, samples_per_prompt: int, sampling: dict, verifier: str | None
           ) -> list[tuple[Sample, str, list[tuple[Completion, Verdict]]]]:
    """(sample, task, its completions with their verdicts) for each sample of `chunk`."""
    if not chunk:
        return []
    prompts = [prompt_input(policy, s, prompt_template, max_new_tokens) for s in chunk]
    groups = backend.generate(prompts, num_generations=samples_per_prompt, max_new_tokens=max_new_tokens,
                              sampling=sampling, batch_size=len(chunk))
    tasks = [verifier or s.task for s in chunk]
    verdicts, _ = verifiers.verify_groups(
        [(task, s, [c.text for c in group]) for s, task, group in zip(chunk, tasks, groups)])
    return [(sample, task, list(zip(group, group_verdicts)))
            for sample, task, group, group_verdicts in zip(chunk, tasks, groups, verdicts)]
