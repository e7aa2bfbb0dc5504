"""What makes a CPU run's numbers depend on the machine, and the kernel settings that remove the dependence.

torch on x86 picks its kernels by what the CPU offers: ATen's vectorized kernels (AVX-512, AVX2 or none), oneDNN's
primitives (up to AVX-512 and AMX) and MKL's BLAS branch, each with its own order of float operations, and it splits
work by the thread count. So the same seed on another CPU, or with another number of threads, rounds differently,
and a long run amplifies that into other figures (a weak base trained for 1,500 steps has ended anywhere from 20%
to 45% held-out accuracy from rounding alone). This trains one short DyME run (the demo recipe, from a random tiny
model) under each setting, one after the other in this invocation, and prints whether its weights equal those of
the run under this machine's defaults, how far they are from them, and the time.

PORTABLE_CPU pins all four: ATen's AVX2 kernels, oneDNN capped at AVX2, MKL's compatible branch (the same code path
on every x86 CPU, Intel or AMD: MKL's conditional numerical reproducibility) and two threads. Under it, every x86-64
CPU with AVX2 (Intel since 2013, every AMD Zen) selects the same kernels: on one AMD EPYC with AVX-512, the pinned
run kept its weights with MKL capped at AVX2 too, as on an AVX2-only CPU. It does not make runs equal across torch
versions: the same 5 steps under PORTABLE_CPU on an Intel Xeon with torch 2.11.0 and on an AMD EPYC with torch 2.14.1
started from the same data and base model (equal digests) and ended with other weights (largest |dw| 4.8e-4; the
step-1 gradient norm differed in its 6th digit, 2.420133 against 2.420120), while on each machine PORTABLE_CPU and
the default kernels ended within 1.3e-6 of each other. The kernels being pinned alike on both, the torch version is
the likely cause, but the two were not separated: two CPU models at one torch version have not been compared. Nor does it cover CPUs without AVX2, ARM (Apple silicon, Graviton) or GPUs, nor a drift seen in two
of six runs of one DyME recipe (one while another process shared the CPU, one after six other runs in the same
process), which is being tracked. bench/methods.py runs under it. To compare two machines, run this on both and
compare the PORTABLE_CPU row's weights digest (and the base model's, printed last).

    python bench/rounding.py [--out runs/bench-rounding] [--steps 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from dyme_cli.prepare.synthetic_chart import generate  # noqa: E402
from dyme_cli.recipe import recipe_from_dict, recipe_to_toml, tomllib  # noqa: E402

#: The environment under which every x86-64 CPU with AVX2 runs a CPU run with the same kernels and threads.
PORTABLE_CPU = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "COMPATIBLE",
                "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}

#: (setting, environment, [model] keys): each varies one thing from the machine's defaults, then the pinned ones.
SETTINGS = [
    ("this machine's defaults", {}, {}),
    ("the same, again", {}, {}),
    ("1 thread", {"OMP_NUM_THREADS": "1"}, {}),
    ("ATen's AVX2 kernels", {"ATEN_CPU_CAPABILITY": "avx2"}, {}),
    ("ATen without vector kernels", {"ATEN_CPU_CAPABILITY": "default"}, {}),
    ("oneDNN capped at AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"}, {}),
    ("MKL's compatible branch", {"MKL_CBWR": "COMPATIBLE"}, {}),
    ("per-row update (shared_prefix = false)", {}, {"shared_prefix": False}),
    ("PORTABLE_CPU", PORTABLE_CPU, {}),
    ("PORTABLE_CPU, MKL capped at AVX2", {**PORTABLE_CPU, "MKL_ENABLE_INSTRUCTIONS": "AVX2"}, {}),
    ("PORTABLE_CPU, per-row update", PORTABLE_CPU, {"shared_prefix": False}),
]


def portable_env() -> dict[str, str]:
    """This process's environment with PORTABLE_CPU in force."""
    return {**os.environ, **PORTABLE_CPU}


def recipe_for(out: Path, data: Path, steps: int, model_keys: dict) -> str:
    raw = tomllib.loads((REPO / "recipes" / "demo.toml").read_text(encoding="utf-8"))
    raw["run"].update(output_dir=str(out), save_every=steps, eval_before=False, eval_after=False)
    raw["data"].update(train=str(data / "train.jsonl"), test=str(data / "test.jsonl"))
    raw["train"]["max_steps"] = steps
    raw["model"].update(model_keys)
    return recipe_to_toml(recipe_from_dict(raw))


def digest(tensors: dict) -> str:
    """A short hash of every tensor's bytes, in name order: equal on two machines only if every weight is."""
    return hashlib.sha256(b"".join(tensors[k].numpy().tobytes() for k in sorted(tensors))).hexdigest()[:16]


def largest_difference(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-rounding"))
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    data = args.out / "data"
    generate(data, n_train=256, n_test=8, seed=7, min_bars=3, max_bars=3, max_value=5)
    print(f"{'setting':40} {'= defaults':>10} {'max |dw|':>9} {'= PORTABLE':>10} {'s':>6}  weights digest")
    kept: dict[str, dict] = {}
    for i, (name, env, model_keys) in enumerate(SETTINGS):
        out = args.out / f"run-{i}"
        recipe = args.out / f"run-{i}.toml"
        recipe.write_text(recipe_for(out, data, args.steps, model_keys))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "dyme_cli.cli", "train", str(recipe)], check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ, **env})
        seconds = time.perf_counter() - start
        kept[name] = load_file(out / "checkpoints" / f"step-{args.steps:06d}" / "model.safetensors")
        defaults, portable = kept[SETTINGS[0][0]], kept.get("PORTABLE_CPU")
        moved = largest_difference(kept[name], defaults)
        pinned = ("-" if portable is None or name == "PORTABLE_CPU"
                  else "yes" if largest_difference(kept[name], portable) == 0 else "no")
        print(f"{name:40} {'yes' if moved == 0 else 'no':>10} {moved:9.1e} {pinned:>10} {seconds:6.1f}  "
              f"{digest(kept[name])}", flush=True)
    print(f"torch {torch.__version__}; {args.steps} DyME steps of recipes/demo.toml; "
          f"'= defaults', 'max |dw|': against the first row; "
          "'= PORTABLE': against the PORTABLE_CPU row; the digest of the trained weights (compare it between "
          f"machines); the base model's: {digest(load_file(args.out / 'run-0' / 'base-model' / 'model.safetensors'))}")


if __name__ == "__main__":
    main()
