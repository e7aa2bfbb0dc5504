"""How much the update saves by never forwarding zero-advantage rows.

Runs one DyME step's rollouts on the embedded tiny model, then times the update two ways, side by side
and interleaved: (a) the engine's rows (memorized targets + rollouts with A != 0) and (b) every row a
naive implementation would forward (all K rollouts of every prompt, zero advantages included, plus the
targets). Prints the row counts and the time ratio b / a.

    python bench/zero_advantage_rows.py [--prompts 16] [--k 8] [--repeats 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from accelerate import Accelerator

from dyme_cli.batch import PromptGroup, Row, StepBatch
from dyme_cli.data import read_samples, target_text
from dyme_cli.modeling import load_policy
from dyme_cli.tiny_models import build_tiny_smolvlm
from dyme_cli.plugins import load_verifiers
from dyme_cli.prepare.synthetic_chart import generate as make_charts
from dyme_cli.recipe import TinyModel, recipe_from_dict
from dyme_cli.rollout import encode_prompt
from dyme_cli.optim import build_optimizer
from dyme_cli.step import (Engine, assemble_rows, dealt_micro_batches, gate, sample_rollouts, step_totals, update,
                            verify)
from dyme_cli.verify_pool import VerifierPool


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp())
    make_charts(work / "data", n_train=args.prompts, n_test=0, min_bars=3, max_bars=3, max_value=5)
    samples = read_samples(work / "data" / "train.jsonl")
    build_tiny_smolvlm(work / "model", [s.question + " " + target_text(s, "Answer:") for s in samples], TinyModel())
    recipe = recipe_from_dict({
        "model": {"name_or_path": str(work / "model"), "freeze_vision": False}, "data": {"train": str(work / "data" / "train.jsonl")},
        "rollout": {"num_generations": args.k, "max_new_tokens": 40, "prompts_per_generate": args.prompts},
        "train": {"prompts_per_step": args.prompts, "reward_weights": {"accuracy": 1.0}},
        "optim": {"micro_batch_size": 16, "lr": 1e-4},
    })
    policy = load_policy(str(work / "model"))
    optimizer, scheduler = build_optimizer(policy.model, recipe, 100)
    with VerifierPool(load_verifiers(["chart"], "Answer:")) as pool:
        engine = Engine(recipe, policy, samples, pool, optimizer, scheduler, Accelerator(cpu=True), recipe.train.max_steps)
        # One step's rollouts, verdicts and gate. Rewards are accuracy only: with an untrained model almost every
        # group is all-wrong, the case DyME memorizes.
        batch = StepBatch(1, [PromptGroup(s, encode_prompt(policy, s)) for s in samples])
        sample_rollouts(engine, batch)
        verify(engine, batch)
        gate(engine, batch)
    engine_rows = assemble_rows(batch.groups)
    naive_rows = [Row(g.prompt, c.ids, a) for g in batch.groups for c, a in zip(g.completions, g.decision.advantages)]
    naive_rows += [r for r in engine_rows if r.memorized]

    timings = {"engine": 0.0, "naive": 0.0}
    for _ in range(args.repeats):
        for name, rows in (("engine", engine_rows), ("naive", naive_rows)):
            start = time.perf_counter()
            update(engine, dealt_micro_batches(engine, rows), step_totals(recipe, batch.groups, rows))
            timings[name] += time.perf_counter() - start
    print(f"rows forwarded: engine {len(engine_rows)}, naive {len(naive_rows)}")
    print(f"update time per step: engine {timings['engine'] / args.repeats:.3f}s, naive {timings['naive'] / args.repeats:.3f}s")
    print(f"naive / engine time ratio: {timings['naive'] / max(timings['engine'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
