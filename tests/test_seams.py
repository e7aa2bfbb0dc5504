"""The engine's seams: the one table of methods, the typed step metrics, the rollout Backend and the Parallel
strategy, each seen from what goes through it."""

from typing import get_args

import pytest
import torch
from accelerate import Accelerator

from dyme_cli import dyme
from dyme_cli.batch import PromptGroup, StepBatch, Target
from dyme_cli.checkpoint import restore_state, save_checkpoint
from dyme_cli.commands.compare import ALL_METHODS
from dyme_cli.compare import check_methods
from dyme_cli.data import read_samples
from dyme_cli.dyme import METHODS, GroupDecision, Mode, Switch, gate, phases
from dyme_cli.evaluate import evaluate
from dyme_cli.modeling import load_policy
from dyme_cli.optim import build_optimizer
from dyme_cli.plugins import load_verifiers
from dyme_cli.processes import DataParallel
from dyme_cli.recipe import RolloutSection, TrainSection
from dyme_cli.rollout import BACKENDS, Completion, TransformersBackend
from dyme_cli.rundir import RunDir, state_file
from dyme_cli.step import Engine, dyme_step
from dyme_cli.traces import StepMetrics, UpdateStats, step_metrics
from dyme_cli.verdict import Verdict
from dyme_cli.verify_pool import VerifierPool

from conftest import small_recipe


def test_the_recipe_the_gate_and_compare_read_the_one_table_of_methods():
    assert get_args(TrainSection.model_fields["algorithm"].annotation) == ("dyme", "sft", "grpo", "threshold", "anneal")
    assert ALL_METHODS == "dyme,sft,grpo,sft-grpo,threshold,anneal"
    assert phases("sft-grpo") == ("sft", "grpo") and phases("threshold") == ("threshold",)
    assert get_args(RolloutSection.model_fields["backend"].annotation) == tuple(BACKENDS)


def test_a_new_row_in_the_table_is_a_method_the_gate_and_compare_know(monkeypatch):
    monkeypatch.setitem(METHODS, "half", dyme.Method(lambda correct, switch, draw: correct < 0.5))
    assert gate([True, False, False], "half", "skip") is Mode.MEMORIZE  # 1/3 correct
    assert gate([True, True, False], "half", "skip") is Mode.EXPLORE
    assert gate([True, True], "half", "skip", Switch()) is Mode.SKIP
    assert check_methods(["half", "dyme"]) == ["half", "dyme"] and phases("half") == ("half",)


def _completion(n, truncated=False):
    return Completion(list(range(n)), "x", truncated)


def _verdict(correct, **rewards):
    return Verdict(correct=correct, answer="a", rewards=rewards)


def test_step_metrics_are_computed_from_the_step_and_read_back_from_their_line(chart_data):
    samples = read_samples(chart_data / "train.jsonl")[:3]
    groups = [
        PromptGroup(samples[0], {}, completions=[_completion(2), _completion(4)],
                    verdicts=[_verdict(False, accuracy=0.0), _verdict(False, accuracy=0.0)], rewards=[0.0, 0.0],
                    decision=GroupDecision(Mode.MEMORIZE, [0.0, 0.0]), target=Target("t", [1, 2, 3])),
        PromptGroup(samples[1], {}, completions=[_completion(3), _completion(5, truncated=True)],
                    verdicts=[_verdict(True, accuracy=1.0), _verdict(False, accuracy=0.0)], rewards=[1.0, 0.0],
                    decision=GroupDecision(Mode.EXPLORE, [0.7, -0.7])),
        PromptGroup(samples[2], {}, completions=[_completion(1), _completion(1)],
                    verdicts=[_verdict(True, accuracy=1.0), _verdict(True, accuracy=1.0)], rewards=[1.0, 1.0],
                    decision=GroupDecision(Mode.SKIP, [0.0, 0.0])),
    ]
    update = UpdateStats(rows=3, tokens=3 + 3 + 5, loss=0.5, grad_norm=2.0, clip_fraction=0.0, memorize_nll=1.5,
                         memory_state_gib=0.1, memory_peak_gib=0.2)
    metrics = step_metrics(StepBatch(7, groups, ["boom"]), update=update,
                           timing={"generate": 1.0, "verify": 0.5, "update": 0.5}, lr=1e-3)
    line = metrics.record()
    assert line["step"] == 7 and line["rows"] == 3 and line["verifier_errors"] == 1
    assert line["accuracy"] == pytest.approx(3 / 6) and line["reward_mean"] == pytest.approx(3 / 6)
    assert line["completion_tokens_mean"] == pytest.approx(16 / 6) and line["truncated_frac"] == pytest.approx(1 / 6)
    assert line["tokens_per_s"] == pytest.approx((16 + 11) / 2.0)
    assert [line[f"n_{m}"] for m in ("memorize", "explore", "skip")] == [1, 1, 1]
    assert line["frac_explore"] == pytest.approx(1 / 3)
    assert (line["zero_std_all_wrong"], line["zero_std_all_correct"], line["zero_std_mixed"]) == \
        pytest.approx((1 / 3, 1 / 3, 0.0))
    assert line["reward/accuracy_mean"] == pytest.approx(0.5) and "kl" not in line and "eval_accuracy" not in line
    assert metrics.train_s == 2.0 and metrics.mode_fraction(Mode.SKIP) == pytest.approx(1 / 3)
    metrics.eval_accuracy, metrics.eval_format_rate = 0.25, 1.0
    assert StepMetrics.from_record(metrics.record()).record() == metrics.record()
    # a step that forwarded nothing logs no update diagnostics, as before the records were typed
    quiet = StepMetrics(step=1, lr=0.0, update=UpdateStats(), modes={mode: 0 for mode in Mode}).record()
    assert quiet["nonfinite_updates"] == 0 and not {"clip_fraction", "memorize_nll", "kl"} & set(quiet)


class RecordingBackend(TransformersBackend):
    """The in-process backend, recording what passes through the seam."""

    def __init__(self, policy):
        super().__init__(policy)
        self.prompts, self.synced = [], []

    def generate(self, prompts, **settings):
        self.prompts.append([(p.sample.id, p.text) for p in prompts])
        return super().generate(prompts, **settings)

    def sync_weights(self, model):
        self.synced.append(model)


class RecordingParallel(DataParallel):
    def __init__(self):
        super().__init__()
        self.calls = []

    def gathered(self, model):
        self.calls.append("gathered")
        return super().gathered(model)

    def deal_rows(self, sizes):
        self.calls.append("deal")
        return super().deal_rows(sizes)

    def model_state(self, model):
        self.calls.append("model_state")
        return super().model_state(model)

    def optimizer_state(self, model, optimizer):
        self.calls.append("optimizer_state")
        return super().optimizer_state(model, optimizer)

    def load_optimizer_state(self, model, optimizer, state):
        self.calls.append("load")
        super().load_optimizer_state(model, optimizer, state)


def test_a_step_and_an_evaluation_sample_through_the_engines_backend_and_parallel(chart_data, tiny_model_dir, tmp_path):
    policy = load_policy(str(tiny_model_dir))
    recipe = small_recipe(chart_data, tmp_path / "run")
    recipe.train.num_iterations = 2
    samples = read_samples(chart_data / "train.jsonl")
    optimizer, scheduler = build_optimizer(policy.model, recipe, 4)
    backend, parallel = RecordingBackend(policy), RecordingParallel()
    with VerifierPool(load_verifiers(["chart"], "Answer:")) as pool:
        engine = Engine(recipe, policy, samples, pool, optimizer, scheduler, Accelerator(cpu=True), 4,
                        backend=backend, parallel=parallel)
        torch.manual_seed(0)
        outcome = dyme_step(engine, 1)
        (seen,) = backend.prompts
        assert len(seen) == recipe.train.prompts_per_step and all(text.endswith("Assistant:") for _, text in seen)
        assert outcome.metrics.update.rows > 0  # an untrained model answers wrongly: its prompts memorize
        assert parallel.calls == ["gathered", "deal"] and backend.synced == [policy.model]  # mu = 2, then one sync
        report = evaluate(policy, samples[:3], pool, max_new_tokens=4, prompt_template="{question}", backend=backend)
        assert report.overall.prompts == 3 and [len(p) for p in backend.prompts] == [recipe.train.prompts_per_step, 3]

    run = RunDir(tmp_path / "run")
    checkpoint = save_checkpoint(engine, run, 1)
    assert parallel.calls[-2:] == ["model_state", "optimizer_state"] and (checkpoint / "model.safetensors").is_file()
    state = torch.load(state_file(checkpoint), weights_only=True)
    assert restore_state(engine, checkpoint, state) == 1 and parallel.calls[-1] == "load"
