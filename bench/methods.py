"""DyME against SFT, GRPO, SFT→GRPO and the paper's other switching strategies, in the paper's regime at CPU scale.

The paper's claim is about a *pretrained* small model that already answers part of the questions, post-trained
with imperfect reasoning traces. This builds that regime offline, then runs `dyme compare` on it:

  1. data (synthetic charts, 3 bars, values 1-5): a post-training set whose reference traces have the quality
     --quality (medium: wrong values for bars the answer does not use), a validation set for the learning-rate
     choice and a test set, each from its own generator seed (--draw picks another draw of all three);
  2. a weak base: the tiny SmolVLM-architecture model (0.4M parameters), trained for --pretrain-steps at
     --pretrain-lr on answers alone ("Answer: 3", no reasoning) for the question kinds --pretrain-kinds only. By
     default it answers the three kinds it learned without reasoning (61.5% of the test questions, 64.5% of the
     validation ones: the paper's range for SmolVLM) and none of the other two; `--pretrain-kinds value` trains a
     base that answers one kind only. The rule was fixed on the validation set, under three float roundings,
     before any post-training run;
  3. `dyme compare`: every method from that base, same data, steps, prompts per step, K and optimizer; each
     method's learning rate chosen among --lrs on the validation set (seed 1000); then --seeds on the test set.
     It prints held-out accuracy, format rate and pseudo-thinking flag rates (mean ± sd over the seeds), mode
     shares and training time, and writes compare.json and accuracy.png under OUT/compare.

    python bench/methods.py [--out runs/bench-methods] [--seeds 0,1,2] [--steps 300] [--lrs 1e-3,3e-3]
                            [--quality medium] [--methods dyme,sft,grpo,sft-grpo,threshold,anneal]
                            [--pretrain-kinds value,largest,smallest] [--draw 0] [--no-portable-cpu]
                            [--no-reuse-prompt]

Every `dyme` it runs computes under bench/rounding.py's PORTABLE_CPU kernel settings, so that every x86-64 CPU with
AVX2 runs the same kernels (what that covers, and what not: bench/rounding.py). Finished runs are read back, so an
interrupted benchmark continues where it stopped when rerun with the same arguments. The generator seeds below are
this benchmark's own; nothing was tuned on them.
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dyme_cli.compare import METHODS  # noqa: E402
from dyme_cli.data import QUESTION, read_samples, target_text, user_text, write_samples  # noqa: E402
from dyme_cli.prepare.synthetic_chart import generate  # noqa: E402
from dyme_cli.recipe import TinyModel, recipe_from_dict, recipe_to_toml, tomllib  # noqa: E402
from dyme_cli.tiny_models import build_tiny  # noqa: E402
from rounding import portable_env  # noqa: E402  (bench/, this script's folder)

POST_SEED, VAL_SEED, PRETRAIN_SEED = 101, 202, 303  # generator seeds: post-training + test, validation, pretraining
CHARTS = {"min_bars": 3, "max_bars": 3, "max_value": 5}
#: The spread of the README's figures for the default setting (data draw 0, PORTABLE_CPU), as measured there
#: (torch 2.14.1, 2-core CPU): printed beside them, since one run's figure is one draw of it.
KNOWN_SPREAD = ("known spread (README, Quick start): over model seeds 0-2, DyME 38.2 +/- 1.4, SFT 60.2 +/- 5.5; "
                "the same seed-0 run six times on one machine: DyME 48.5 (four quiet runs), 46.5, 36.5 (a float "
                "drift being tracked), SFT 54.5 each time; data draw 1: base 52.5, DyME 26.8 +/- 2.1, "
                "SFT 54.5 +/- 2.2; "
                "another torch version (2.11.0, on an Intel Xeon): 5 steps already end 4.8e-4 apart, expect "
                "anywhere in the two spreads above; two CPU models at one torch version: not measured")
K = 4  # rollouts per prompt: with K = 2 the paper's threshold (t = 0.5) would be DyME's own rule
DEMO = tomllib.loads((REPO / "recipes" / "demo.toml").read_text(encoding="utf-8"))


def recipe_toml(*, model: str, train: Path, test: Path, out: Path, algorithm: str, steps: int, lr: float,
                reuse_prompt: bool, eval_every: int | None = None) -> str:
    """recipes/demo.toml (its tiny model, rollout and optimizer settings) with the given model, data and budget,
    K rollouts per prompt, and [model].reuse_prompt."""
    raw = copy.deepcopy(DEMO)
    raw["model"]["reuse_prompt"] = reuse_prompt
    raw["run"].update(output_dir=str(out), save_every=steps, eval_before=False)
    if eval_every:
        raw["run"]["eval_every"] = eval_every
    raw["model"]["name_or_path"] = model
    raw["data"].update(train=str(train), test=str(test))
    raw["rollout"]["num_generations"] = K
    raw["train"].update(algorithm=algorithm, max_steps=steps)
    raw["optim"]["lr"] = lr
    return recipe_to_toml(recipe_from_dict(raw))


def dyme(*args: str, portable: bool) -> None:
    """Runs `dyme ARGS`, under PORTABLE_CPU's kernel settings where `portable` (the same kernels on every x86-64
    CPU with AVX2, bench/rounding.py)."""
    print("$ dyme " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "dyme_cli.cli", *args], check=True, env=portable_env() if portable else None)


def readme_setting(args, parser: argparse.ArgumentParser) -> bool:
    """Whether the benchmark runs the setting whose figures the README states (any seeds, methods, rates)."""
    keys = ("quality", "steps", "pretrain_steps", "pretrain_kinds", "pretrain_lr", "draw", "portable_cpu",
            "reuse_prompt", "n_train", "n_val", "n_test")
    return all(getattr(args, key) == parser.get_default(key) for key in keys)


def provenance(args) -> str:
    """The first line of the benchmark's recipes: what made them besides their keys."""
    kernels = "PORTABLE_CPU (bench/rounding.py)" if args.portable_cpu else "the machine defaults"
    return f"# data draw {args.draw}; kernels: {kernels}\n"


def generator_seeds(draw: int) -> tuple[int, int, int]:
    """The generator seeds of the post-training + test, validation and pretraining sets for draw `draw`."""
    return POST_SEED + 1000 * draw, VAL_SEED + 1000 * draw, PRETRAIN_SEED + 1000 * draw


def write_once(path: Path, text: str) -> None:
    """Writes a recipe of this benchmark; one already there from other arguments stops it (its runs would be
    read back as if made by these)."""
    if path.is_file() and path.read_text(encoding="utf-8") != text:
        sys.exit(f"{path} was written with other arguments (weak base, budget, kernels or data draw); "
                 "give another --out")
    path.write_text(text, encoding="utf-8")


def make_data(out: Path, args) -> tuple[Path, Path, Path, Path]:
    """(post-training set, validation set, test set, answer-only pretraining set)."""
    post, val, pre = out / "data" / "post", out / "data" / "val", out / "data" / "pretrain"
    if not (pre / "answer_only.jsonl").is_file():
        post_seed, val_seed, pretrain_seed = generator_seeds(args.draw)
        generate(post, n_train=args.n_train, n_test=args.n_test, seed=post_seed, quality=args.quality, **CHARTS)
        generate(val, n_train=0, n_test=args.n_val, seed=val_seed, **CHARTS)  # a test split: high-quality references
        kinds = tuple(args.pretrain_kinds.split(","))
        generate(pre, n_train=args.n_train, n_test=0, seed=pretrain_seed, kinds=kinds, **CHARTS)
        answers_only = read_samples(pre / "train.jsonl")
        for sample in answers_only:
            sample.reference = ""
        write_samples(pre / "answer_only.jsonl", answers_only)
    return post / "train.jsonl", val / "test.jsonl", post / "test.jsonl", pre / "answer_only.jsonl"


def weak_base(out: Path, train: Path, test: Path, pretrain: Path, args) -> Path:
    """The weak base's checkpoint. The tiny model is built with a tokenizer trained on the post-training texts
    (it must spell the reference traces), then learns answers alone on some question kinds (`dyme train`)."""
    final = out / "base" / "checkpoints" / f"step-{args.pretrain_steps:06d}"
    built = out / "base-init"
    recipe = recipe_toml(model=str(built), train=pretrain, test=test, out=out / "base", algorithm="sft",
                         steps=args.pretrain_steps, lr=args.pretrain_lr, reuse_prompt=args.reuse_prompt)
    write_once(out / "base.toml", provenance(args) + recipe)
    if final.is_dir():
        return final
    if not (built / "config.json").is_file():
        texts = [user_text(s, QUESTION) + " " + target_text(s, "Answer:") for s in read_samples(train)]
        build_tiny("smolvlm", built, ["User: Assistant:", *texts], TinyModel(**DEMO["model"]["tiny"]))
    print(f"weak base: {args.pretrain_steps} steps of answer-only SFT on {args.pretrain_kinds} questions", flush=True)
    dyme("train", str(out / "base.toml"), portable=args.portable_cpu)  # its progress shows (a line per 10 steps in a log)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-methods"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per method (32 prompts each)")
    parser.add_argument("--lrs", default="1e-3,3e-3", help="learning rates each method chooses from on validation, "
                        "and/or METHOD=LR pairs (dyme compare --lrs)")
    parser.add_argument("--quality", default="medium", choices=("high", "medium", "low"),
                        help="quality of the post-training reference traces")
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--pretrain-kinds", default="value,largest,smallest")
    parser.add_argument("--pretrain-lr", type=float, default=1e-3)
    parser.add_argument("--reuse-prompt", action=argparse.BooleanOptionalAction, default=True,
                        help="[model].reuse_prompt; --no-reuse-prompt computes the same thing with other float "
                        "rounding, which shows how far rounding alone moves the figures")
    parser.add_argument("--portable-cpu", action=argparse.BooleanOptionalAction, default=True,
                        help="run under bench/rounding.py's PORTABLE_CPU kernel settings (the same kernels on every "
                        "x86-64 CPU with AVX2); --no-portable-cpu uses this machine's fastest kernels and threads")
    parser.add_argument("--draw", type=int, default=0, help="which draw of the generated data (generator seeds "
                        "offset by 1000 per draw): the spread of a result over its data")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-val", type=int, default=200)
    parser.add_argument("--n-test", type=int, default=200)
    args = parser.parse_args()

    start = time.perf_counter()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    train, val, test, pretrain = make_data(out, args)
    base = weak_base(out, train, test, pretrain, args)
    recipe = recipe_toml(model=str(base), train=train, test=test, out=out / "unused", algorithm="dyme",
                         steps=args.steps, lr=1e-3,  # --lrs decides
                         reuse_prompt=args.reuse_prompt, eval_every=max(1, args.steps // 6))
    write_once(out / "compare.toml", provenance(args) + recipe)
    dyme("compare", str(out / "compare.toml"), "--methods", args.methods, "--seeds", args.seeds, "--lrs", args.lrs,
         "--val", str(val), "--out", str(out / "compare"), portable=args.portable_cpu)
    if readme_setting(args, parser):
        print(KNOWN_SPREAD)
    print(f"setting: {args.quality}-quality traces; weak base = {args.pretrain_steps} answer-only SFT steps on "
          f"{args.pretrain_kinds}; {args.steps} steps x 32 prompts, K = {K}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
