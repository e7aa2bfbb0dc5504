"""Every supported model family end to end on a tiny random model built from its config: one DyME step
(with LoRA for some), a checkpoint that transformers (or PEFT) reloads with the same weights, and evaluation."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dyme_cli.modeling import load_policy
from dyme_cli.prepare.synthetic_math import generate as generate_math
from dyme_cli.recipe import recipe_from_dict
from dyme_cli.trainer import train

FAMILIES = {  # family -> (model class, text-only, LoRA)
    "smolvlm": ("Idefics3ForConditionalGeneration", False, False),
    "qwen2-vl": ("Qwen2VLForConditionalGeneration", False, True),
    "qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", False, False),
    "qwen3-vl": ("Qwen3VLForConditionalGeneration", False, False),
    "llava-onevision": ("LlavaOnevisionForConditionalGeneration", False, True),
    "llama": ("LlamaForCausalLM", True, True),
    "qwen2": ("Qwen2ForCausalLM", True, False),
}


@pytest.fixture(scope="module")
def math_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("math")
    generate_math(out, n_train=8, n_test=4, seed=0, max_number=20)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_one_dyme_step_save_reload_evaluate(family, tmp_path, chart_data, math_data):
    class_name, text_only, lora = FAMILIES[family]
    data = math_data if text_only else chart_data
    model = {"name_or_path": f"tiny:{family}", "tiny": {"image_size": 32, "hidden_size": 32, "vision_hidden_size": 32,
                                                         "intermediate_size": 64}}
    if lora:
        model["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
    recipe = recipe_from_dict({
        "run": {"output_dir": str(tmp_path / "run"), "seed": 0, "save_every": 1, "eval_after": True, "eval_limit": 3},
        "model": model,
        "data": {"train": str(data / "train.jsonl"), "test": str(data / "test.jsonl")},
        "rollout": {"num_generations": 2, "max_new_tokens": 8},
        "train": {"max_steps": 1, "prompts_per_step": 3},
        "optim": {"lr": 1e-2, "micro_batch_size": 4},
    })
    result = train(recipe)
    assert result.steps == 1 and result.after is not None and result.after.overall.prompts == 3
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert metrics["n_memorize"] + metrics["n_explore"] + metrics["n_skip"] == 3 and metrics["rows"] > 0

    checkpoint = result.checkpoint
    policy = load_policy(str(checkpoint))  # through the Auto classes (adapters merged on their base)
    assert type(policy.model).__name__ == class_name and policy.text_only is text_only
    base = load_policy(str(tmp_path / "run" / "base-model")).model
    if lora:
        adapter = load_file(checkpoint / "adapter_model.safetensors")
        assert adapter and all("lora_" in k for k in adapter) and not any("vision" in k or "visual" in k for k in adapter)
    else:
        saved = load_file(checkpoint / "model.safetensors")
        reloaded = dict(policy.model.named_parameters())
        changed = [n for n, p in base.named_parameters() if not torch.equal(p, reloaded[n])]
        assert changed, "one step with a non-zero learning rate changes some weights"
        assert saved  # plain safetensors checkpoint
        vision = [n for n in changed if any(t in n for t in ("vision_model", "vision_tower", "visual"))]
        assert not vision  # freeze_vision is the default


def tiny_policy(family, tmp_path, chart_data, math_data):
    """The family's tiny model, built on its data (charts, or math for the text-only families), and that data."""
    from dyme_cli.data import read_samples
    from dyme_cli.modeling import resolve_model_path
    from dyme_cli.recipe import ModelSection

    samples = read_samples((math_data if FAMILIES[family][1] else chart_data) / "train.jsonl")
    section = ModelSection(name_or_path=f"tiny:{family}", tiny={"image_size": 32, "hidden_size": 32,
                                                                 "vision_hidden_size": 32, "intermediate_size": 64})
    path = resolve_model_path(section, tmp_path / "model", [s.question + " " + s.answer for s in samples], 0)
    return load_policy(path), samples


@pytest.mark.parametrize("family", list(FAMILIES))
def test_rollouts_from_one_shared_prefill_are_those_of_repeated_prompts(family, tmp_path, chart_data, math_data):
    """Encoding each prompt once and sharing its KV cache with its K samples draws the same tokens as generate()
    repeating the prompt K times: the same greedy completion K times, and with one seed the same samples."""
    from dyme_cli.rollout import GREEDY, collate, encode_prompt, generate, sampling_settings

    policy, samples = tiny_policy(family, tmp_path, chart_data, math_data)
    prompts = [encode_prompt(policy, s) for s in samples[:3]]  # different lengths: left padding is shared too

    embedded = []  # token positions the language model reads, per forward
    policy.model.get_input_embeddings().register_forward_hook(lambda module, args, out: embedded.append(args[0].numel()))

    def rollouts(k, sampling, share):
        torch.manual_seed(0)
        embedded.clear()
        groups = generate(policy, prompts, num_generations=k, max_new_tokens=12, sampling=sampling, batch_size=3,
                          share_prompt=share)
        return [[c.ids for c in group] for group in groups]

    assert rollouts(3, GREEDY, share=True) == [group * 3 for group in rollouts(1, GREEDY, share=False)]
    sampled = rollouts(3, sampling_settings(temperature=1.0), share=True)
    shared_tokens = sum(embedded)
    assert sampled == rollouts(3, sampling_settings(temperature=1.0), share=False)
    assert any(len(set(map(tuple, group))) > 1 for group in sampled)  # the K samples of a prompt differ
    # The same decoding steps; the prompts (padded length L) are read 3 times, not 3 x K = 9 times, plus their
    # last token once per sample: 9L against 3L + 9.
    length = collate(prompts, policy.pad_token_id, "left")["input_ids"].shape[1]
    assert sum(embedded) - shared_tokens == 9 * length - (3 * length + 9)


@pytest.mark.parametrize("completion_only", [True, False], ids=["completion-logits", "all-logits"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_completion_logprobs_of_padded_rows_match_unpadded_forwards(family, completion_only, tmp_path, chart_data,
                                                                    math_data):
    """The update's log-probs of right-padded rows with prompts of different lengths are those of an unpadded
    forward of each whole sequence, in every family, with logits computed at completion positions only or at all."""
    from dyme_cli.rollout import encode_prompt
    from dyme_cli.scoring import completion_logprobs, with_completion

    policy, samples = tiny_policy(family, tmp_path, chart_data, math_data)
    short, long = min(samples, key=lambda s: len(s.question)), max(samples, key=lambda s: len(s.question))
    policy.model.eval()
    completions = [policy.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("so it is 5", "7")]
    prompts = {"short": encode_prompt(policy, short), "long": encode_prompt(policy, long)}
    # two rollouts of the short prompt (one prompt, its images shared), one of the long one
    pairs = [with_completion(prompts[p], ids) for p, ids in
             (("short", completions[0]), ("long", completions[1]), ("short", completions[1]))]
    assert pairs[0][1] != pairs[1][1]  # prompts of different lengths
    with torch.no_grad():
        logp, mask = completion_logprobs(policy.model, pairs, policy.pad_token_id, completion_only=completion_only)
    for i, (row, prompt_len) in enumerate(pairs):
        with torch.no_grad():
            logits = policy.model(**dict(row)).logits[0]
        ids = row["input_ids"][0]
        expected = [torch.log_softmax(logits[t - 1], -1)[ids[t]].item() for t in range(prompt_len, len(ids))]
        assert logp[i, : len(expected)].tolist() == pytest.approx(expected, abs=1e-5)
        assert mask[i].tolist() == [1.0] * len(expected) + [0.0] * (mask.shape[1] - len(expected))


@pytest.mark.parametrize("completion_only", [True, False], ids=["images-once", "images-per-row"])
@pytest.mark.parametrize("family", [f for f in FAMILIES if not FAMILIES[f][1]])
def test_rows_with_and_without_images_in_one_batch_score_and_sample_as_alone(family, completion_only, tmp_path,
                                                                              chart_data, math_data):
    """A vision dataset's sample without images (`images: []`) shares a batch with those that have them, first
    in the batch or not: each row's log-probs are those of its own unbatched forward, and the rollouts of the
    mixed prompts are those of each prompt alone."""
    from dyme_cli.rollout import GREEDY, encode_prompt, generate
    from dyme_cli.scoring import completion_logprobs, with_completion

    policy, samples = tiny_policy(family, tmp_path, chart_data, math_data)
    policy.model.eval()
    text = samples[1].model_copy(update={"images": []})
    prompts = [encode_prompt(policy, s) for s in (text, samples[0], samples[2])]
    assert not any(k.startswith("pixel_") for k in prompts[0]) and any(k.startswith("pixel_") for k in prompts[1])
    ids = policy.tokenizer("so it is 5", add_special_tokens=False)["input_ids"]
    pairs = [with_completion(prompt, ids) for prompt in prompts]
    with torch.no_grad():
        logp, mask = completion_logprobs(policy.model, pairs, policy.pad_token_id, completion_only=completion_only)
        for i, pair in enumerate(pairs):
            alone, _ = completion_logprobs(policy.model, [pair], policy.pad_token_id, completion_only=completion_only)
            assert logp[i, : len(ids)].tolist() == pytest.approx(alone[0].tolist(), abs=1e-5)
        together = generate(policy, prompts, num_generations=1, max_new_tokens=8, sampling=GREEDY, batch_size=3)
        apart = [generate(policy, [prompt], num_generations=1, max_new_tokens=8, sampling=GREEDY, batch_size=1)[0]
                 for prompt in prompts]
    assert [[c.ids for c in group] for group in together] == [[c.ids for c in group] for group in apart]


@pytest.mark.parametrize("family", [f for f in FAMILIES if not FAMILIES[f][1]])
def test_images_encoded_once_per_prompt_give_the_same_gradients(family, tmp_path, chart_data, math_data):
    """In the update, the rows of one prompt share one encoding of its images: the vision tower runs once per
    distinct prompt, and the loss's gradients (vision tower and connector included) are those of encoding every
    row's images."""
    from dyme_cli.rollout import encode_prompt
    from dyme_cli.scoring import completion_logprobs, with_completion

    policy, samples = tiny_policy(family, tmp_path, chart_data, math_data)
    model = policy.model
    prompts = [encode_prompt(policy, s) for s in samples[:2]]
    ids = policy.tokenizer("so it is 5", add_special_tokens=False)["input_ids"]
    pairs = [with_completion(prompts[i], ids[: 2 + j]) for i in (0, 1) for j in range(3)]  # 3 rows per prompt
    encoded = []
    vision = next(getattr(model.model, n) for n in ("vision_model", "visual", "vision_tower") if hasattr(model.model, n))
    vision.register_forward_pre_hook(lambda module, args, kwargs: encoded.append(
        next(v for v in [*args, *kwargs.values()] if torch.is_tensor(v)).numel()), with_kwargs=True)

    def gradients(once):
        model.zero_grad()
        encoded.clear()
        logp, mask = completion_logprobs(model, pairs, policy.pad_token_id, completion_only=once)
        (logp * mask).sum().backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(encoded)

    (once, pixels_once), (every, pixels_every) = gradients(True), gradients(False)
    assert pixels_once > 0 and pixels_every == 3 * pixels_once  # 2 prompts' images, not 6 rows'
    assert set(once) == set(every) and any("vision" in n or "visual" in n for n in once)
    for name in once:
        assert torch.allclose(once[name], every[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("family", [f for f in FAMILIES if not FAMILIES[f][1]])
def test_frozen_image_features_are_encoded_once_for_the_whole_step(family, tmp_path, chart_data, math_data):
    """With every weight the image features depend on frozen, one step's forwards (micro-batches, iterations,
    the reference model) share one encoding per prompt, with the log-probs of encoding every time; with
    `freeze_vision` alone that holds where the connector is part of the vision tower (Qwen's merger)."""
    from dyme_cli.modeling import CONNECTORS, VISION_TOWERS, image_features_frozen, prepare_for_training
    from dyme_cli.recipe import ModelSection
    from dyme_cli.rollout import encode_prompt
    from dyme_cli.scoring import completion_logprobs, with_completion

    policy, samples = tiny_policy(family, tmp_path, chart_data, math_data)
    model = policy.model
    prepare_for_training(policy, ModelSection(name_or_path="unused", freeze_vision=True))
    assert image_features_frozen(model) is family.startswith("qwen")
    for name, parameter in model.named_parameters():
        if set(name.split(".")) & set(VISION_TOWERS + CONNECTORS):
            parameter.requires_grad_(False)
    assert image_features_frozen(model)
    prompts = [encode_prompt(policy, s) for s in samples[:2]]
    ids = policy.tokenizer("so it is 5", add_special_tokens=False)["input_ids"]
    micro = [[with_completion(prompts[0], ids[:2]), with_completion(prompts[1], ids[:3])],
             [with_completion(prompts[1], ids[:2]), with_completion(prompts[0], ids[:4])]]
    encoded = []
    vision = next(getattr(model.model, n) for n in VISION_TOWERS if hasattr(model.model, n))
    vision.register_forward_hook(lambda module, args, out: encoded.append(1))
    step = {}
    with torch.no_grad():
        shared = [completion_logprobs(model, rows, policy.pad_token_id, image_features=step)[0] for rows in micro * 2]
        assert len(encoded) == 1 and len(step) == 2  # both prompts, in one call, for all four forwards
        encoded.clear()
        alone = [completion_logprobs(model, rows, policy.pad_token_id)[0] for rows in micro * 2]
    assert len(encoded) == 4
    for a, b in zip(shared, alone):
        assert torch.allclose(a, b, atol=1e-5)


def _gradients(model, score):
    """Log-probs, mask and every parameter's gradient of the summed completion log-probs `score()` gives."""
    model.zero_grad()
    logp, mask = score()
    (logp * mask).sum().backward()
    return logp.detach(), mask, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _mixed_rows(policy, samples, text_only):
    """Rows as an update meets them: a prompt with three completions of different lengths and a memorized target
    (ending with eos), one with a single row, and a third prompt (without images in a vision family); interleaved."""
    from dyme_cli.data import target_text
    from dyme_cli.rollout import encode_prompt, target_ids

    third = samples[2] if text_only else samples[2].model_copy(update={"images": []})
    prompts = [encode_prompt(policy, s) for s in (samples[0], samples[1], third)]
    said = [policy.tokenizer(t, add_special_tokens=False)["input_ids"]
            for t in ("so it is 5", "7", "the answer is 12 because the bars", "Answer: 3")]
    target = target_ids(policy, target_text(samples[0], "Answer:"))
    return [(prompts[0], said[0]), (prompts[1], said[3]), (prompts[0], said[1]), (prompts[2], said[2]),
            (prompts[0], said[2]), (prompts[0], target)]


@pytest.mark.parametrize("variant", ["sdpa", "eager", "lora-checkpointing"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_shared_prefix_scores_and_trains_as_every_row_forwarded_alone(family, variant, tmp_path, chart_data,
                                                                         math_data):
    """Each prompt read once for its rows (one packed forward) gives the log-probs (within 1e-5) and the gradients
    (language model, vision tower and connector; within 1e-5 + 1e-4 relative) of forwarding every row alone, and
    of the padded batch of rows, in every family (Qwen's 3-D rope positions included): rows of different
    lengths, a group with one row, a memorized target beside explored rows, a prompt without images; with sdpa's
    boolean mask, eager attention's additive one, and under LoRA with gradient checkpointing."""
    from dyme_cli.modeling import CONNECTORS, VISION_TOWERS, add_lora, enable_checkpointing
    from dyme_cli.recipe import LoraSection, ModelSection
    from dyme_cli.scoring import completion_logprobs, shared_prefix_logprobs, shares_prefix, with_completion

    policy, samples = tiny_policy(family, tmp_path, chart_data, math_data)
    model = policy.model
    if variant == "eager":
        model.set_attn_implementation("eager")
    if variant == "lora-checkpointing":
        model = add_lora(model, LoraSection(r=4, alpha=8, dropout=0.0))
        enable_checkpointing(model)
        model.enable_input_require_grads()
    section = ModelSection(name_or_path="unused")
    assert shares_prefix(model, section) and not shares_prefix(model, section.model_copy(update={"reuse_prompt": False}))
    assert not shares_prefix(model, section.model_copy(update={"shared_prefix": False}))
    model.train()
    rows = _mixed_rows(policy, samples, FAMILIES[family][1])
    shared, shared_mask, shared_grads = _gradients(model, lambda: shared_prefix_logprobs(model, rows))
    padded, _, padded_grads = _gradients(
        model, lambda: completion_logprobs(model, [with_completion(p, c) for p, c in rows], policy.pad_token_id))
    alone = [_gradients(model, lambda: completion_logprobs(model, [with_completion(p, c)], policy.pad_token_id))
             for p, c in rows]
    assert shared.shape == padded.shape
    for i, (logp, _, _) in enumerate(alone):
        n = len(rows[i][1])
        assert shared_mask[i].tolist() == [1.0] * n + [0.0] * (shared_mask.shape[1] - n)
        assert shared[i, :n].tolist() == pytest.approx(logp[0, :n].tolist(), abs=1e-5)
    summed = {name: sum(grads[name] for _, _, grads in alone if name in grads) for name in shared_grads}
    assert set(shared_grads) == set().union(*(grads for _, _, grads in alone)) == set(padded_grads)
    if not FAMILIES[family][1] and variant != "lora-checkpointing":
        for parts in (VISION_TOWERS, CONNECTORS):  # Qwen's merger, its connector, is part of its vision tower
            assert any(set(name.split(".")) & set(parts) for name in shared_grads) or family.startswith("qwen")
    for name, grad in shared_grads.items():
        assert torch.allclose(grad, summed[name], atol=1e-5, rtol=1e-4), name
        assert torch.allclose(grad, padded_grads[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("family", ["smolvlm", "qwen2.5-vl", "llama"])
def test_a_shared_prefix_reads_each_prompt_once(family, tmp_path, chart_data, math_data):
    """The language model reads each distinct prompt of a micro-batch once, and each completion once (one
    sequence per prompt, padded to the longest), where forwarding every row reads each prompt K times; the vision tower encodes each prompt's images once."""
    from dyme_cli.modeling import VISION_TOWERS
    from dyme_cli.rollout import encode_prompt
    from dyme_cli.scoring import completion_logprobs, shared_prefix_logprobs, with_completion

    policy, samples = tiny_policy(family, tmp_path, chart_data, math_data)
    read, encoded = [], []
    policy.model.get_input_embeddings().register_forward_hook(lambda module, args, out: read.append(args[0].numel()))
    if not FAMILIES[family][1]:
        vision = next(getattr(policy.model.model, n) for n in VISION_TOWERS if hasattr(policy.model.model, n))
        vision.register_forward_hook(lambda module, args, out: encoded.append(1))
    prompts = [encode_prompt(policy, s) for s in samples[:2]]
    completion = policy.tokenizer("so it is 5", add_special_tokens=False)["input_ids"]
    rows = [(prompts[i], completion[: 2 + j]) for i in (0, 1) for j in range(4)]  # K = 4
    with torch.no_grad():
        shared_prefix_logprobs(policy.model, rows)
        shared, read[:] = sum(read), []
        completion_logprobs(policy.model, [with_completion(p, c) for p, c in rows], policy.pad_token_id,
                            completion_only=False)
    prompt_tokens = [p["input_ids"].numel() for p in prompts]
    # one sequence per prompt: the prompt, then its 4 completions; the shorter sequence padded to the longer
    assert shared == 2 * max(n + sum(len(c) for p, c in rows if p is prompt) for n, prompt in zip(prompt_tokens, prompts))
    assert sum(read) >= 4 * sum(prompt_tokens) + sum(len(c) for _, c in rows)  # and its padding
    assert encoded == ([] if FAMILIES[family][1] else [1, 1])  # once in the packed forward, once for the rows


@pytest.mark.parametrize("family", ["smolvlm", "qwen3-vl"])
def test_a_shared_prefix_reads_a_steps_frozen_image_features(family, tmp_path, chart_data, math_data):
    """With the image features frozen, the packed forwards of a step's micro-batches take them from the step's
    store (encoded once for the step), with the log-probs of encoding them in each forward."""
    from dyme_cli.modeling import CONNECTORS, VISION_TOWERS
    from dyme_cli.scoring import shared_prefix_logprobs

    policy, samples = tiny_policy(family, tmp_path, chart_data, math_data)
    for name, parameter in policy.model.named_parameters():
        if set(name.split(".")) & set(VISION_TOWERS + CONNECTORS):
            parameter.requires_grad_(False)
    rows = _mixed_rows(policy, samples, text_only=False)
    micro = [rows[:3], rows[3:]]
    step = {}
    with torch.no_grad():
        stored = [shared_prefix_logprobs(policy.model, batch, image_features=step)[0] for batch in micro * 2]
        assert len(step) == 2  # the two prompts with images, encoded once for the four forwards
        encoded = [shared_prefix_logprobs(policy.model, batch)[0] for batch in micro * 2]
    for a, b in zip(stored, encoded):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("family", ["smolvlm", "qwen2-vl", "qwen2"])
def test_training_with_a_shared_prefix_is_training_on_every_row(family, tmp_path, chart_data, math_data):
    """Three DyME steps (K = 4, two iterations per step with old log-probs, the KL reference model, gradient
    checkpointing, micro-batches of 3 that split groups) with each prompt read once per micro-batch end with
    the weights (within 1e-5, at lr 1e-3: AdamW moves every weight by about lr whatever its gradient's size) and
    the losses of forwarding every row, in vision families with 1-D and 3-D rope positions and a text model."""
    data = math_data if FAMILIES[family][1] else chart_data

    def run(name, shared_prefix):
        recipe = recipe_from_dict({
            "run": {"output_dir": str(tmp_path / name), "seed": 0, "save_every": 3},
            "model": {"name_or_path": f"tiny:{family}", "gradient_checkpointing": True,
                      "shared_prefix": shared_prefix,
                      "tiny": {"image_size": 32, "hidden_size": 32, "vision_hidden_size": 32,
                               "intermediate_size": 64}},
            "data": {"train": str(data / "train.jsonl")},
            "rollout": {"num_generations": 4, "max_new_tokens": 8},
            "train": {"max_steps": 3, "prompts_per_step": 3, "num_iterations": 2, "beta": 0.05},
            "optim": {"lr": 1e-3, "micro_batch_size": 3},
        })
        result = train(recipe)
        lines = [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        return load_file(result.checkpoint / "model.safetensors"), lines

    shared, shared_metrics = run("shared", True)
    every, every_metrics = run("every", False)
    assert sum(m["rows"] for m in shared_metrics) > 3
    assert [m["rows"] for m in shared_metrics] == [m["rows"] for m in every_metrics]
    assert [m["loss"] for m in shared_metrics] == pytest.approx([m["loss"] for m in every_metrics], abs=1e-5)
    assert max(float((shared[k] - every[k]).abs().max()) for k in shared) < 1e-5
