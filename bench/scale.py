"""One run on 1 and on 2 processes in each layout: per-process state and peak memory, step time, and weights.

The 2-process runs hold the weights replicated (DDP) or sharded (FSDP2 full shard, ZeRO-2 layout, CPU offload);
the last column is how far their weights end from the 1-process run's.

The run is SFT (no sampling, so 1 and 2 processes learn from the same rows and must end with the same weights up to
float reduction order) on a tiny SmolVLM-architecture model sized so that its state, not the Python process, is
what the memory columns measure (--hidden 512, --layers 6: about 25M parameters, with AdamW's two fp32 moments and
the gradients 16 bytes a parameter). All runs are made one after the other in this one invocation, with one thread
per process (OMP_NUM_THREADS=1), so that 2 processes on 2 cores do not slow each other by contending for threads.

    python bench/scale.py [--out runs/bench-scale] [--steps 6] [--hidden 512] [--layers 6]

Columns: state MiB (`memory_state_gib` of the last step: the weights, gradients and optimizer state the process
holds, its local shards when sharded), peak MiB (the process's peak resident memory: Python, torch and
activations included), step s (median over the steps after the first), max |Δw| (largest difference of any
weight from the 1-process run's, after the last step).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from safetensors.torch import load_file  # noqa: E402

from dyme_cli.prepare.synthetic_chart import generate  # noqa: E402
from dyme_cli.recipe import recipe_from_dict, recipe_to_toml  # noqa: E402

CONFIGS = {"ddp": "replicate (DDP)", "fsdp2": "FSDP2 full shard", "fsdp2-zero2": "FSDP2 ZeRO-2 layout",
           "fsdp2-offload": "FSDP2, CPU offload"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-scale"))
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    generate(args.out / "data", n_train=64, n_test=8, seed=5, min_bars=3, max_bars=3, image_size=32)
    recipe = recipe_from_dict({
        "run": {"output_dir": str(args.out / "run"), "seed": 0, "save_every": args.steps},
        "model": {"name_or_path": "tiny:smolvlm", "freeze_vision": False,
                  "tiny": {"image_size": 32, "hidden_size": args.hidden, "num_layers": args.layers,
                           "intermediate_size": 4 * args.hidden, "num_heads": 8, "vocab_size": 2048}},
        "data": {"train": str(args.out / "data" / "train.jsonl")},
        "train": {"algorithm": "sft", "max_steps": args.steps, "prompts_per_step": 16},
        "optim": {"lr": 1e-4, "micro_batch_size": 4},
    })
    recipe_file = args.out / "recipe.toml"
    recipe_file.write_text(recipe_to_toml(recipe))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {"1 process": _run([sys.executable, "-m", "dyme_cli", "train", str(recipe_file), "--output",
                               str(args.out / "one")], args.out / "one", env)}
    for config, name in CONFIGS.items():
        launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
                  str(REPO / "recipes" / "accelerate" / f"{config}.yaml"), "--num_processes", "2",
                  "--main_process_port", str(free_port()), "-m", "dyme_cli", "train", str(recipe_file),
                  "--output", str(args.out / config)]
        runs[f"2 processes, {name}"] = _run(launch, args.out / config, env)

    one = runs["1 process"]
    print(f"\nSFT, tiny SmolVLM-architecture model ({one['parameters'] / 1e6:.1f}M parameters), {args.steps} steps "
          "of 16 prompts, micro-batches of 4, fp32, one thread per process")
    print(f"{'':38} {'state MiB':>10} {'× 1 proc':>9} {'peak MiB':>9} {'step s':>7} {'max |Δw|':>9}")
    for label, run in runs.items():
        delta = max(float((one["weights"][k] - run["weights"][k]).abs().max()) for k in one["weights"])
        print(f"{label:38} {run['state'] / 2**20:10.1f} {run['state'] / one['state']:9.2f} "
              f"{run['peak'] / 2**20:9.0f} {run['step_s']:7.2f} {delta:9.1e}")


def _run(command: list[str], run: Path, env: dict) -> dict:
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (checkpoint,) = (run / "checkpoints").iterdir()
    weights = {k: v.float() for f in checkpoint.glob("*.safetensors") for k, v in load_file(str(f)).items()}
    step_s = statistics.median(m["time_generate"] + m["time_verify"] + m["time_update"] for m in metrics[1:])
    return {"state": metrics[-1]["memory_state_gib"] * 2**30, "peak": metrics[-1]["memory_peak_gib"] * 2**30,
            "step_s": step_s, "weights": weights, "parameters": sum(v.numel() for v in weights.values())}


def free_port() -> int:
    """A TCP port free on this machine, for a launched run's process group."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


if __name__ == "__main__":
    main()
