"""dyme's training step against TRL's GRPOTrainer, side by side on the same model and batch.

Both train the same tiny SmolVLM-architecture model (vision tower frozen, float32, no gradient checkpointing, one
thread) on the same synthetic chart prompts, with K rollouts of up to --tokens new tokens (temperature 1) for
--prompts prompts per step, one AdamW step per batch at the same learning rate, and the same rewards (dyme's chart
verifier: accuracy + format + thinking). dyme runs as GRPO (every group explores; rows with zero advantage are not
forwarded, by design), and twice more: `dyme-per-row` with `[model].shared_prefix = false` (the update forwards
every row whole, its prompt included: the path before the shared-prefix update), and `dyme-no-reuse` with
`[model].reuse_prompt = false` (also every prompt prefilled once per rollout, logits over every position: the
path before prompt reuse).

The variants run in separate processes, alternated (dyme, TRL, dyme per row, dyme without reuse, dyme, ...) for
--rounds rounds of --steps steps; the first step of each run is left out (warm-up), and dyme's last (it also writes
a checkpoint). Per variant it prints the median step time (everything the training loop does between two steps,
logging included), the median generation time (prompt encoding + sampling), the median update time (TRL: the step
less its generation and scoring), the update's peak memory (the most bytes autograd held saved for the backward
pass at once, over the run: the activations a micro-batch keeps, which bound K and the micro-batch size on a GPU;
generation keeps none), the peak resident memory of the process, and the ratios.

    pip install '.[bench]'        # TRL, for this benchmark only
    python bench/step_vs_trl.py [--image-size 128 --patch-size 8] [--k 8] [--prompts 4] [--tokens 48] [--steps 8]
                                [--rounds 2] [--out runs/bench-step-vs-trl]

The default image (128 px, 8-px patches, no pixel shuffle) puts 256 image tokens in every prompt;
--image-size 32 --patch-size 16 gives 4; --image-size 256 --patch-size 8 gives 1,024 (SmolVLM-256M's count).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

VARIANTS = ("dyme", "trl", "dyme-per-row", "dyme-no-reuse")
#: [model] settings of the dyme variants
DYME = {"dyme": {}, "dyme-per-row": {"shared_prefix": False}, "dyme-no-reuse": {"reuse_prompt": False}}
LR = 1e-4
REWARD_WEIGHTS = {"accuracy": 1.0, "format": 1.0, "thinking": 1.0}


def build(out: Path, args) -> tuple[Path, Path]:
    """The shared model and chart data (built once; reused when present)."""
    from dyme_cli.data import QUESTION, read_samples, target_text, user_text
    from dyme_cli.prepare.synthetic_chart import generate
    from dyme_cli.recipe import TinyModel
    from dyme_cli.tiny_models import build_tiny

    data = out / "data"
    model = out / f"model-{args.image_size}px-{args.patch_size}-h{args.hidden_size}-l{args.layers}"
    if not (data / "train.jsonl").is_file():
        generate(data, n_train=max(64, args.prompts * args.steps), n_test=0, seed=7, min_bars=3, max_bars=3,
                 max_value=5)
    if not (model / "config.json").is_file():
        texts = [user_text(s, QUESTION) + " " + target_text(s, "Answer:") for s in read_samples(data / "train.jsonl")]
        spec = TinyModel(image_size=args.image_size, patch_size=args.patch_size, scale_factor=1,
                         hidden_size=args.hidden_size, num_layers=args.layers, intermediate_size=2 * args.hidden_size,
                         vision_hidden_size=args.hidden_size, vision_layers=args.layers)
        build_tiny("smolvlm", model, ["User: Assistant:", *texts], spec)
    return model, data / "train.jsonl"


def run_dyme(model: Path, train: Path, out: Path, args, settings: dict) -> dict:
    from dyme_cli.recipe import recipe_from_dict
    from dyme_cli.trainer import train as dyme_train

    recipe = recipe_from_dict({
        "run": {"output_dir": str(out), "seed": 0, "save_every": args.steps, "eval_before": False, "eval_after": False},
        "model": {"name_or_path": str(model), **settings},
        "data": {"train": str(train), "prompt_template": "{question}"},
        "rollout": {"num_generations": args.k, "max_new_tokens": args.tokens, "temperature": 1.0,
                    "prompts_per_generate": args.prompts},
        "train": {"algorithm": "grpo", "max_steps": args.steps, "prompts_per_step": args.prompts,
                  "reward_weights": REWARD_WEIGHTS},
        "optim": {"lr": LR, "micro_batch_size": args.k * args.prompts, "warmup_steps": 0, "schedule": "constant",
                  "weight_decay": 0.0},
    })
    steps, generation, update, marks = [], [], [], [time.perf_counter()]

    def on_step(step: int, total: int, metrics) -> None:
        marks.append(time.perf_counter())
        if 1 < step < total:  # the first warms up, the last also writes the checkpoint
            steps.append(marks[-1] - marks[-2])
            generation.append(metrics.time_generate)
            update.append(metrics.time_update)

    dyme_train(recipe, on_step=on_step)
    return {"step": steps, "generation": generation, "update": update}


def run_trl(model_path: Path, train: Path, out: Path, args) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from dyme_cli.data import load_images, read_samples
    from dyme_cli.dyme import total_reward
    from dyme_cli.plugins import load_verifiers

    samples = read_samples(train)
    verifier = load_verifiers(["chart"], "Answer:", {})["chart"]
    dataset = Dataset.from_list([
        {"prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": s.question}]}],
         "image": load_images(s)[0], "index": i}
        for i, s in enumerate(samples)])

    def reward(completions, index, **_) -> list[float]:
        return [total_reward(verifier.verify(c[0]["content"], samples[i]).rewards, REWARD_WEIGHTS)
                for c, i in zip(completions, index)]

    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype="float32")
    for parameter in model.model.vision_model.parameters():  # frozen, as dyme's default freeze_vision
        parameter.requires_grad_(False)
    config = GRPOConfig(
        output_dir=str(out), max_steps=args.steps, per_device_train_batch_size=args.k * args.prompts,
        num_generations=args.k, max_completion_length=args.tokens, temperature=1.0, learning_rate=LR,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, beta=0.0, use_cpu=True, seed=0,
        report_to="none", save_strategy="no", logging_steps=1, gradient_accumulation_steps=1,
        gradient_checkpointing=False, dataloader_num_workers=0, bf16=False, remove_unused_columns=False,
    )
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                          processing_class=AutoProcessor.from_pretrained(model_path))
    spent = {"generation": 0.0, "scored": 0.0}

    def timed(name: str, method):
        def wrapper(*a, **kw):
            began = time.perf_counter()
            try:
                return method(*a, **kw)
            finally:
                spent[name] += time.perf_counter() - began
        return wrapper

    trainer._generate = timed("generation", trainer._generate)
    trainer._generate_and_score_completions = timed("scored", trainer._generate_and_score_completions)
    result = {"step": [], "generation": [], "update": []}

    class Steps(TrainerCallback):
        def on_step_begin(self, *_, **__):
            spent.update(generation=0.0, scored=0.0, began=time.perf_counter())

        def on_step_end(self, args_, state, *_, **__):
            if state.global_step > 1:
                step = time.perf_counter() - spent["began"]
                result["step"].append(step)
                result["generation"].append(spent["generation"])
                result["update"].append(step - spent["scored"])

    trainer.add_callback(Steps())
    trainer.train()
    return result


class SavedForBackward:
    """The bytes autograd holds saved for backward passes, now and at most, counted once per storage (a view of a
    saved tensor adds nothing)."""

    def __init__(self):
        self.held: dict[int, list[int]] = {}  # storage address -> [bytes, saved tensors on it]
        self.now = self.peak = 0

    def pack(self, tensor):
        storage = tensor.untyped_storage()
        entry = self.held.setdefault(storage.data_ptr(), [storage.nbytes(), 0])
        if entry[1] == 0:
            self.now += entry[0]
            self.peak = max(self.peak, self.now)
        entry[1] += 1
        return _Saved(self, storage.data_ptr(), tensor)

    @staticmethod
    def unpack(saved: "_Saved"):
        return saved.tensor

    def release(self, address: int) -> None:
        entry = self.held[address]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.held[address]


class _Saved:
    def __init__(self, counter: SavedForBackward, address: int, tensor):
        self.counter, self.address, self.tensor = counter, address, tensor

    def __del__(self):
        self.counter.release(self.address)


def child(args) -> None:
    import torch

    torch.set_num_threads(1)
    model, train = Path(args.model), Path(args.data)
    out = Path(args.run_dir)
    saved = SavedForBackward()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, saved.unpack):
        if args.child == "trl":
            result = run_trl(model, train, out, args)
        else:
            result = run_dyme(model, train, out, args, DYME[args.child])
    result["saved_peak_mib"] = saved.peak / 2**20
    result["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    Path(args.result).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-step-vs-trl"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--hidden-size", type=int, default=64, help="of the language model and the vision tower")
    parser.add_argument("--layers", type=int, default=2, help="of the language model and the vision tower")
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    for hidden in ("--child", "--model", "--data", "--run-dir", "--result"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    model, train = build(out, args)
    variants = args.variants.split(",")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    for round_ in range(args.rounds):
        for variant in variants:
            run_dir, result = out / f"{variant}-{round_}", out / f"{variant}-{round_}.json"
            shutil.rmtree(run_dir, ignore_errors=True)
            print(f"round {round_ + 1}/{args.rounds}: {variant}", flush=True)
            subprocess.run([sys.executable, __file__, "--child", variant, "--model", str(model), "--data", str(train),
                            "--run-dir", str(run_dir), "--result", str(result),
                            *(f"--{k}={getattr(args, k.replace('-', '_'))}" for k in ("k", "prompts", "tokens", "steps"))],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            runs[variant].append(json.loads(result.read_text()))
    report(runs, args)


def report(runs: dict[str, list[dict]], args) -> None:
    def median(variant: str, key: str) -> float:
        return statistics.median(x for run in runs[variant] for x in run[key])

    rows = {v: {"step": median(v, "step"), "generation": median(v, "generation"), "update": median(v, "update"),
                "saved": max(run["saved_peak_mib"] for run in runs[v]),
                "rss": max(run["peak_rss_gib"] for run in runs[v])} for v in runs}
    image_tokens = (args.image_size // args.patch_size) ** 2
    counted = {v: sum(len(run["step"]) for run in runs[v]) for v in runs}
    print(f"\n{image_tokens} image tokens per prompt, K = {args.k}, {args.prompts} prompts per step, up to "
          f"{args.tokens} new tokens, hidden size {args.hidden_size}, {args.layers} layers, 1 thread; medians over "
          + ", ".join(f"{v} {n}" for v, n in counted.items()) + " steps")
    print(f"{'':16} {'step s':>8} {'generation s':>13} {'update s':>9} {'update MiB':>11} {'peak RSS GiB':>13}")
    for v, r in rows.items():
        print(f"{v:16} {r['step']:8.3f} {r['generation']:13.3f} {r['update']:9.3f} {r['saved']:11.1f} {r['rss']:13.2f}")
    for a, b in (("dyme", "trl"), ("dyme", "dyme-per-row"), ("dyme-per-row", "trl"), ("dyme-per-row", "dyme-no-reuse")):
        if a in rows and b in rows:
            print(f"{a} / {b}: step {rows[a]['step'] / rows[b]['step']:.2f}, generation "
                  f"{rows[a]['generation'] / rows[b]['generation']:.2f}, update "
                  f"{rows[a]['update'] / rows[b]['update']:.2f}, update memory {rows[a]['saved'] / rows[b]['saved']:.2f}, "
                  f"peak RSS {rows[a]['rss'] / rows[b]['rss']:.2f}")
    (args.out / "step_vs_trl.json").write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                                           "medians": rows, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
