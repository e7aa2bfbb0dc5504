"""Row assembly and the update: zero-advantage rows are never forwarded."""

import math
import random

import pytest
import torch
from accelerate import Accelerator

from dyme_cli.batch import PromptGroup, Row, Target
from dyme_cli.data import read_samples
from dyme_cli.dyme import GroupDecision, Mode
from dyme_cli.modeling import load_policy
from dyme_cli.rollout import Completion, encode_prompt, target_ids
from dyme_cli.optim import build_optimizer
from dyme_cli.step import Engine, assemble_rows, dealt_micro_batches, packed_by_prompt, step_totals, update

from conftest import small_recipe


def _completion(ids):
    return Completion(list(ids), "", False)


def test_only_nonzero_advantage_rows_are_forwarded(chart_data, tiny_model_dir, tmp_path):
    policy = load_policy(str(tiny_model_dir))
    samples = read_samples(chart_data / "train.jsonl")[:3]
    prompts = [encode_prompt(policy, s) for s in samples]
    a, b, c, d = (policy.tokenizer(w, add_special_tokens=False)["input_ids"] for w in ("red = 5", "blue", "7 - 3", "sum"))
    groups = [
        [_completion(a), _completion(b), _completion(c), _completion(d)],
        [_completion(a), _completion(b)] * 2,
        [_completion(c)] * 4,
    ]
    decisions = [
        GroupDecision(Mode.EXPLORE, [0.8, 0.0, -0.8, 0.0]),  # two rollouts carry no signal
        GroupDecision(Mode.SKIP, [0.0] * 4),  # all correct: nothing
        GroupDecision(Mode.MEMORIZE, [0.0] * 4),  # all wrong: the reference target only
    ]
    target = Target("red = 1", target_ids(policy, "red = 1"))
    groups = [PromptGroup(s, p, completions=g, decision=d, target=t) for s, p, g, d, t
              in zip(samples, prompts, groups, decisions, [None, None, target])]
    rows = assemble_rows(groups)
    assert [(r.completion_ids, r.advantage) for r in rows] == [(a, 0.8), (c, -0.8), (target[1], 1.0)]

    recipe = small_recipe(chart_data, tmp_path)
    optimizer, scheduler = build_optimizer(policy.model, recipe, 4)
    engine = Engine(recipe, policy, samples, {}, optimizer, scheduler, Accelerator(cpu=True), recipe.train.max_steps)
    seen = []
    hook = policy.model.register_forward_pre_hook(lambda m, a, kw: seen.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    before = [p.detach().clone() for p in policy.model.parameters()]
    stats = update(engine, dealt_micro_batches(engine, rows), step_totals(recipe, groups, rows))
    hook.remove()
    # one micro-batch (at most 3 rows): one sequence per prompt, the explored prompt's two rows after its prompt
    width = max(len(prompts[0]["input_ids"][0]) + len(a) + len(c), len(prompts[2]["input_ids"][0]) + len(target[1]))
    assert seen == [(2, width)]
    assert stats.rows == 3 and stats.tokens == len(a) + len(c) + len(target[1])
    assert any(not torch.equal(a, b) for a, b in zip(before, policy.model.parameters()))


def test_step_totals_count_the_active_rows_or_every_row_of_the_step(chart_data, tmp_path):
    samples = read_samples(chart_data / "train.jsonl")[:4]

    def group(sample, lengths, mode, advantages, target=None):
        return PromptGroup(sample, {}, completions=[_completion(range(n)) for n in lengths],
                           decision=GroupDecision(mode, advantages), target=target)
    groups = [
        group(samples[0], [3, 5, 2, 4], Mode.MEMORIZE, [0.0] * 4, Target("t", list(range(6)))),
        group(samples[1], [1, 2, 3, 4], Mode.EXPLORE, [0.5, -0.5, 0.0, 0.0]),
        group(samples[2], [2, 2, 2, 2], Mode.SKIP, [0.0] * 4),
    ]
    rows = assemble_rows(groups)  # the target (6 tokens) and two explored rollouts (1 and 2 tokens)
    active = step_totals(small_recipe(chart_data, tmp_path, loss_scale="active_rows"), groups, rows)
    assert (active.rows, active.tokens, active.micro_batches, active.scale) == (3, 9, 1, "active_rows")
    # every row: the memorized group's first rollout is replaced by its target (6 + 5 + 2 + 4), then 10 and 8
    every = step_totals(small_recipe(chart_data, tmp_path), groups, rows)
    assert (every.rows, every.tokens, every.micro_batches, every.scale) == (12, 17 + 10 + 8, 1, "rollouts")
    sft = [PromptGroup(samples[3], {}, decision=GroupDecision(Mode.MEMORIZE, []), target=Target("t", [1, 2, 3]))]
    sft_totals = step_totals(small_recipe(chart_data, tmp_path), sft, assemble_rows(sft))
    assert (sft_totals.rows, sft_totals.tokens) == (1, 3)  # an SFT prompt is its target alone


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("size", [1, 3, 4, 8])
def test_packing_by_prompt_keeps_a_prompts_rows_together_where_they_fit_in_as_many_micro_batches(seed, size):
    draw = random.Random(seed)
    prompts = [{"input_ids": torch.zeros(1, 3)} for _ in range(draw.randint(1, 7))]
    rows = [Row(prompt, [i], 1.0) for i, prompt in enumerate(draw.choice(prompts) for _ in range(draw.randint(1, 20)))]
    micro = packed_by_prompt(rows, size)
    assert len(micro) == math.ceil(len(rows) / size) and all(0 < len(m) <= size for m in micro)
    assert sorted(row.completion_ids for m in micro for row in m) == [[i] for i in range(len(rows))]
    for prompt in prompts:
        count = sum(row.prompt is prompt for row in rows)
        holding = [m for m in micro if any(row.prompt is prompt for row in m)]
        if 0 < count <= size:
            assert len(holding) == 1
        assert len(holding) <= math.ceil(count / size) + 1  # a prompt that does not fit spans few micro-batches


def test_packing_by_prompt_splits_only_the_prompt_that_cannot_fit():
    a, b, c = ({"input_ids": torch.zeros(1, 3)} for _ in range(3))
    rows = [Row(p, [i], 1.0) for i, p in enumerate([a, b, a, c, a, b, a])]
    micro = packed_by_prompt(rows, 3)  # a has 4 rows: 3 + 1; b's 2 meet a's last one, c's 1 fills its own
    assert [[row.completion_ids[0] for row in m] for m in micro] == [[0, 2, 4], [6, 1, 5], [3]]
