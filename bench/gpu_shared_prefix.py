"""The shared-prefix update on a device: for three tiny families (SmolVLM, Qwen2.5-VL, Llama), the completion
log-probs of one packed forward (`scoring.shared_prefix_logprobs`, each prompt read once) against every row forwarded
alone and the padded batch of rows (`scoring.completion_logprobs`), in fp32 (the gradients too), under bf16
autocast over fp32 weights ([model].mixed_precision = "bf16") and with bf16 weights ([model].dtype = "bfloat16").
The same rows as tests/test_families.py (which asserts 1e-5 in fp32 on a CPU); this runs them where the kernels
are a GPU's. Prints the largest differences and writes them to JSON_OUT; exit 1 if a mode failed to run.

    python bench/gpu_shared_prefix.py cuda WORKDIR JSON_OUT
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

import torch

from dyme_cli.data import read_samples, target_text
from dyme_cli.modeling import load_policy, resolve_model_path
from dyme_cli.prepare.synthetic_chart import generate as generate_chart
from dyme_cli.prepare.synthetic_math import generate as generate_math
from dyme_cli.recipe import ModelSection
from dyme_cli.rollout import encode_prompt, target_ids
from dyme_cli.scoring import completion_logprobs, shared_prefix_logprobs, with_completion

FAMILIES = {"smolvlm": False, "qwen2.5-vl": False, "llama": True}  # family -> text-only
TINY = {"image_size": 32, "hidden_size": 32, "vision_hidden_size": 32, "intermediate_size": 64}


def mixed_rows(policy, samples, text_only):
    """As tests/test_families.py: a prompt with three completions and a memorized target, one with a single row,
    a third prompt (without images in a vision family); interleaved."""
    third = samples[2] if text_only else samples[2].model_copy(update={"images": []})
    prompts = [encode_prompt(policy, s) for s in (samples[0], samples[1], third)]
    said = [policy.tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in ("so it is 5", "7", "the answer is 12 because the bars", "Answer: 3")]
    target = target_ids(policy, target_text(samples[0], "Answer:"))
    return [(prompts[0], said[0]), (prompts[1], said[3]), (prompts[0], said[1]), (prompts[2], said[2]),
            (prompts[0], said[2]), (prompts[0], target)]


def scored(model, score, grads):
    model.zero_grad()
    logp, mask = score()
    if grads:
        (logp * mask).sum().backward()
        return logp.detach().float(), mask, {n: p.grad.detach().float().clone()
                                             for n, p in model.named_parameters() if p.grad is not None}
    return logp.detach().float(), mask, {}


def compare(policy, model, rows, device, autocast_bf16, grads):
    ctx = torch.autocast(device_type=device, dtype=torch.bfloat16) if autocast_bf16 else contextlib.nullcontext()
    with ctx:
        shared, shared_mask, g_shared = scored(model, lambda: shared_prefix_logprobs(model, rows), grads)
        padded, _, g_padded = scored(
            model, lambda: completion_logprobs(model, [with_completion(p, c) for p, c in rows], policy.pad_token_id),
            grads)
        alone = [scored(model, lambda: completion_logprobs(model, [with_completion(p, c)], policy.pad_token_id),
                        grads) for p, c in rows]
    worst_alone = worst_padded = 0.0
    for i, (logp, _, _) in enumerate(alone):
        n = len(rows[i][1])
        assert shared_mask[i, :n].sum().item() == n
        worst_alone = max(worst_alone, float((shared[i, :n] - logp[0, :n]).abs().max()))
        worst_padded = max(worst_padded, float((shared[i, :n] - padded[i, :n]).abs().max()))
    result = {"logp_max_abs_diff_vs_alone": worst_alone, "logp_max_abs_diff_vs_padded": worst_padded,
              "logp_min": float(shared[shared_mask.bool()].min()), "device_of_logp": str(shared.device),
              "param_dtype": str(next(model.parameters()).dtype)}
    if grads:
        summed = {n: sum(g[n] for _, _, g in alone if n in g) for n in g_shared}
        result["grad_max_abs_diff_vs_alone"] = max(float((g_shared[n] - summed[n]).abs().max()) for n in g_shared)
        result["grad_max_abs_diff_vs_padded"] = max(float((g_shared[n] - g_padded[n]).abs().max()) for n in g_shared)
        result["grad_max_abs"] = max(float(g.abs().max()) for g in g_shared.values())
        result["params_with_grad"] = len(g_shared)
    return result


def main() -> int:
    device, work, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    torch.manual_seed(0)
    chart, math = work / "sp-chart", work / "sp-math"
    if not (chart / "train.jsonl").is_file():
        generate_chart(chart, n_train=48, n_test=8, seed=3, min_bars=3, max_bars=3, image_size=32)
    if not (math / "train.jsonl").is_file():
        generate_math(math, n_train=8, n_test=4, seed=0, max_number=20)
    report = {"device": device, "torch": torch.__version__,
              "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None, "families": {}}
    failed = False
    for family, text_only in FAMILIES.items():
        started = time.perf_counter()
        samples = read_samples((math if text_only else chart) / "train.jsonl")
        section = ModelSection(name_or_path=f"tiny:{family}", tiny=TINY)
        path = resolve_model_path(section, work / f"sp-model-{family}", [s.question + " " + s.answer for s in samples], 0)
        entry = {}
        for mode in ("fp32", "bf16-autocast", "bf16-weights"):
            try:
                policy = load_policy(path, dtype="bfloat16" if mode == "bf16-weights" else "float32")
                model = policy.model.to(device)
                model.train()
                rows = mixed_rows(policy, samples, text_only)
                entry[mode] = compare(policy, model, rows, device, mode == "bf16-autocast", grads=(mode == "fp32"))
            except Exception as exc:  # report and go on with the next mode
                failed = True
                entry[mode] = {"error": f"{type(exc).__name__}: {exc}"[:400]}
            print(f"shared-prefix {family:12s} {mode:14s} {json.dumps(entry[mode])}", flush=True)
        entry["seconds"] = round(time.perf_counter() - started, 1)
        report["families"][family] = entry
    fp32_ok = all(e.get("fp32", {}).get("logp_max_abs_diff_vs_alone", 1.0) <= 1e-5 for e in report["families"].values())
    report["fp32_within_1e-5"] = fp32_ok
    out.write_text(json.dumps(report, indent=1))
    print(f"shared-prefix fp32 log-probs within 1e-5 of every row alone in every family: {fp32_ok}")
    print("largest |shared - alone| per mode:",
          {mode: max(e[mode].get("logp_max_abs_diff_vs_alone", float("nan")) for e in report["families"].values())
           for mode in ("fp32", "bf16-autocast", "bf16-weights")})
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
