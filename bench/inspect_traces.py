"""How long `dyme inspect-traces` spends reading, flagging and summarizing a training run's traces.

Synthesises (deterministic seed, in memory) synthetic-chart samples and rollout traces of about 60 words
in the mix a DyME run logs: honest traces, hallucinated readings, wrong conclusions, templates parroted
from another sample's reference, degenerate loops, missing answers, truncations. Then times, side by side
in one run: json.loads of every line (reading), flagging every trace (contexts + reference index + all
detectors), and the summary. Prints each time, the flagging / reading ratio and whether flagging meets
the 10 s target. Never asserts a timing.

    python bench/inspect_traces.py [--traces 10000] [--samples 500] [--k 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import random
import time

from dyme_cli import pseudo_thinking as pt
from dyme_cli.dyme import gate
from dyme_cli.prepare.synthetic_chart import KINDS, make_sample

TARGET_S = 10.0
PREAMBLE = (
    "Let me look at the chart carefully before answering. There are several coloured bars drawn on a white "
    "background and each bar height encodes a value that I can read against the axis."
)


def synth_samples(n: int, rng: random.Random) -> list:
    qualities = ("high", "high", "medium", "low")
    return [make_sample(i, "train", rng, min_bars=3, max_bars=5, max_value=9, quality=rng.choice(qualities),
                        kinds=KINDS)[0] for i in range(n)]


def synth_completion(sample, samples: list, rng: random.Random) -> tuple[str, bool, bool]:
    """(completion, correct, truncated) in one of the shapes a run produces."""
    answer = sample.answer
    values = sample.facts["values"]
    shape = rng.choices(
        ["honest", "hallucinated", "wrong-conclusion", "parroted", "loop", "no-answer", "terse"],
        weights=[50, 12, 8, 8, 4, 10, 8],
    )[0]
    if shape == "honest":
        return f"{PREAMBLE} {sample.reference} So the answer follows. Answer: {answer}", True, False
    if shape == "hallucinated":
        name = rng.choice(list(values))
        fake = max(values.values()) + rng.randint(7, 20)
        text = sample.reference.replace(f"{name} = {values[name]}", f"{name} = {fake}")
        return f"{PREAMBLE} {text} I am confident in these readings. Answer: {answer}", True, False
    if shape == "wrong-conclusion":
        return f"{PREAMBLE} {sample.reference} 7 - 2 = 5. Answer: {answer}", rng.random() < 0.5, False
    if shape == "parroted":
        other = rng.choice(samples)
        return f"{other.reference} Answer: {other.answer}", other.answer == answer, False
    if shape == "loop":
        name = rng.choice(list(values))
        return " ".join([f"the {name} bar is {values[name]}"] * 12), False, True
    if shape == "no-answer":
        return f"{PREAMBLE} {sample.reference} and then I would continue reading the", False, True
    return f"This one is easy to see at a glance. Answer: {answer}", True, False


def synth_traces(n: int, samples: list, k: int, rng: random.Random) -> list[dict]:
    traces, step = [], 0
    while len(traces) < n:
        step += 1
        for sample in rng.sample(samples, 16):
            group = [synth_completion(sample, samples, rng) for _ in range(k)]
            mode = gate([c for _, c, _ in group], "dyme", "skip").value
            for index, (completion, correct, truncated) in enumerate(group):
                reward = float(correct) + 0.5 * ("Answer:" in completion)
                traces.append({
                    "run": "bench", "step": step, "prompt_id": sample.id, "task": "chart", "kind": "rollout",
                    "rollout": index, "mode": mode, "completion": completion, "answer": None, "gold": sample.answer,
                    "correct": correct, "rewards": {"accuracy": float(correct)}, "reward": reward, "advantage": 0.0,
                    "tokens": len(completion.split()), "truncated": truncated, "detail": "",
                })
                if len(traces) == n:
                    return traces
    return traces


def timed(fn, repeats: int):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--k", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    rng = random.Random(0)
    samples = synth_samples(args.samples, rng)
    lines = [json.dumps(t) for t in synth_traces(args.traces, samples, args.k, rng)]
    words = sum(len(json.loads(line)["completion"].split()) for line in lines) / len(lines)

    def flag(traces):
        return pt.flag_traces(traces, pt.sample_contexts(samples))

    read_s, traces = timed(lambda: [json.loads(line) for line in lines], args.repeats)
    flag_s, flags = timed(lambda: flag(traces), args.repeats)
    summary_s, summary = timed(lambda: pt.summarize(traces, flags), args.repeats)

    print(f"{len(traces)} traces, {len(samples)} samples, {words:.0f} words per completion (best of {args.repeats})")
    print(f"reading (json.loads)  {read_s:8.3f}s")
    print(f"flagging              {flag_s:8.3f}s  ({1e6 * flag_s / len(traces):.0f} us per trace)")
    print(f"summarizing           {summary_s:8.3f}s")
    print(f"flagging / reading    {flag_s / max(read_s, 1e-9):8.1f}x")
    print(f"10 s target for flagging: {'met' if flag_s < TARGET_S else 'NOT met'} ({flag_s:.2f}s)")
    rates = ", ".join(f"{name} {v['rate']:.1%}" for name, v in summary["flags"].items())
    print(f"flag rates: {rates}")


if __name__ == "__main__":
    main()
