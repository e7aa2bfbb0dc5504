"""Rollouts of a model sharded over 2 processes (FSDP2 full shard): generating with the whole weights gathered once
(what dyme does, `processes.DataParallel.gathered`) against generating on the sharded model, which gathers every
decoder layer's weights again for each new token.

Generating on the sharded model is only possible when every process makes the same number of forward calls, so
both variants here generate exactly --tokens tokens for each of their prompts (no early stop; dyme's rollouts stop
at the end-of-sequence token, at different lengths on different processes, which the sharded variant could not
follow without lock-stepping every process to the longest). The model is the tiny SmolVLM-architecture one of
bench/scale.py (--hidden 512, --layers 6: about 25M parameters), greedy decoding, one thread per process; the
two variants alternate --repeats times in one run, and the table gives medians.

    python bench/sharded_rollouts.py [--out runs/bench-sharded-rollouts] [--prompts 8] [--tokens 32]

Columns: s (median seconds for one process's prompts), × gathered (that over the gathered variant's), gathers
(all-gathers of weights a process makes per rollout batch, counted from the model's wrapping), held MiB (the
weights a process holds while it generates: the whole weights when gathered; when sharded, the root unit's
(vision tower, embeddings, head: transformers' generate encodes images outside the forward, so they are gathered
first), its shard of the decoder layers and one layer gathered).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from scale import free_port  # noqa: E402  (this script's folder is on the path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench-sharded-rollouts"))
    parser.add_argument("--prompts", type=int, default=8, help="prompts per process")
    parser.add_argument("--tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    from dyme_cli.data import read_samples
    from dyme_cli.prepare.synthetic_chart import generate
    from dyme_cli.recipe import TinyModel
    from dyme_cli.tiny_models import build_tiny

    if args.out.exists():
        shutil.rmtree(args.out)
    generate(args.out / "data", n_train=2 * args.prompts, n_test=1, seed=5, min_bars=3, max_bars=3, image_size=32)
    texts = [s.question for s in read_samples(args.out / "data" / "train.jsonl")]
    build_tiny("smolvlm", args.out / "model", texts, _spec(TinyModel, args))
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file",
              str(REPO / "recipes" / "accelerate" / "fsdp2.yaml"), "--num_processes", "2",
              "--main_process_port", str(free_port()), __file__, "--worker", *sys.argv[1:]]
    subprocess.run(launch, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _spec(tiny_model, args):
    return tiny_model(image_size=32, hidden_size=args.hidden, num_layers=args.layers,
                      intermediate_size=4 * args.hidden, num_heads=8, vocab_size=2048)


def worker(args) -> None:
    import torch
    from accelerate import Accelerator

    from dyme_cli import processes
    from dyme_cli.data import read_samples
    from dyme_cli.modeling import decoder_layers, load_policy
    from dyme_cli.processes import DataParallel
    from dyme_cli.rollout import collate, encode_prompt

    layout = processes.launched_layout()  # before the Accelerator, as dyme train
    accelerator = Accelerator(cpu=True)
    policy = load_policy(str(args.out / "model"))
    parallel = DataParallel(layout)
    samples = read_samples(args.out / "data" / "train.jsonl")
    mine = [samples[i] for i in processes.share(len(samples))][: args.prompts]
    batch = collate([encode_prompt(policy, s) for s in mine], policy.pad_token_id, "left")
    parameters = sum(p.numel() * p.element_size() for p in policy.model.parameters())
    layers = decoder_layers(policy.model)
    layer = max(sum(p.numel() * p.element_size() for p in unit.parameters()) for unit in layers)
    units = len(layers) + 1  # the decoder layers and the root
    model = parallel.prepare(accelerator, policy.model)

    def rollouts():
        model.generate(**batch, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)

    def gathered():
        with parallel.gathered(model):
            rollouts()

    def sharded():
        # transformers' generate encodes the images outside the model's forward, where the root unit's hooks do not
        # gather its weights (vision tower, embeddings, head): they are gathered first, the decoder layers are not
        root = processes.wrapped_units(model)[0]
        root.unshard()
        try:
            rollouts()
        finally:
            root.reshard()

    variants = {"gathered once (dyme)": gathered, "on the sharded model": sharded}
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.no_grad():
        for repeat in range(args.repeats + 1):  # the first round warms up
            for name, run in variants.items():
                processes.wait_for_everyone()
                start = time.perf_counter()
                run()
                processes.wait_for_everyone()
                if repeat:
                    times[name].append(time.perf_counter() - start)
    if not processes.is_main():
        return
    forwards = args.tokens  # one prefill, then one forward per further token
    gathers = {"gathered once (dyme)": units, "on the sharded model": 1 + (units - 1) * forwards}
    root = parameters - layer * (units - 1)
    held = {"gathered once (dyme)": parameters,
            "on the sharded model": root + (parameters - root) / processes.count() + layer}
    base = statistics.median(times["gathered once (dyme)"])
    print(f"\n2 processes, FSDP2 full shard, {parameters / 4 / 1e6:.1f}M parameters (fp32), {args.prompts} prompts per "
          f"process, {args.tokens} tokens each, greedy; torch {torch.__version__}, medians of {args.repeats}")
    print(f"{'':24} {'s':>7} {'× gathered':>11} {'gathers':>8} {'held MiB':>9}")
    for name in variants:
        median = statistics.median(times[name])
        print(f"{name:24} {median:7.2f} {median / base:11.2f} {gathers[name]:8d} {held[name] / 2**20:9.1f}")


if __name__ == "__main__":
    main()
