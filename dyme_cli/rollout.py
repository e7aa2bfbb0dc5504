"""Tokenising prompts, sampling completions, and log-probabilities of completion tokens.

A prompt is encoded once by the model's own processor and chat template (with the generation prompt);
rollouts and memorization targets are both token ids appended after it, so they share one path.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from .data import QUESTION, Sample, chat_messages, load_images
from .modeling import Policy, tokenizer_of

@dataclass
class Completion:
    ids: list[int]  # generated ids, up to and including the first end-of-sequence token
    text: str  # decoded without special tokens
    truncated: bool  # max_new_tokens reached without an end-of-sequence token


def encode_prompt(policy: Policy, sample: Sample, template: str = QUESTION) -> dict[str, torch.Tensor]:
    """The model inputs of one prompt (batch dimension 1, no padding): `template` with the sample's question,
    through the model's chat template with the generation prompt."""
    text = prompt_text(policy.processor, policy.text_only, sample, template)
    return encode_text(policy.processor, policy.text_only, sample, text)


def prompt_text(processor, text_only: bool, sample: Sample, template: str = QUESTION) -> str:
    """What the model reads before its completion: the chat template applied to the user turn, with the
    generation prompt (image placeholders not yet expanded)."""
    messages = chat_messages(sample, text_only=text_only, template=template)
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def encode_text(processor, text_only: bool, sample: Sample, text: str) -> dict[str, torch.Tensor]:
    """A rendered prompt and the sample's images as model inputs; the processor expands each image placeholder."""
    if sample.images and not text_only:
        return dict(processor(text=[text], images=[load_images(sample)], return_tensors="pt"))
    return dict(tokenizer_of(processor)([text], return_tensors="pt", add_special_tokens=False))


def image_token_count(processor, input_ids: torch.Tensor) -> int:
    """How many of a prompt's tokens are image tokens (0 for a processor without an image token)."""
    token = getattr(processor, "image_token", None)
    if token is None:
        return 0
    return int((input_ids == tokenizer_of(processor).convert_tokens_to_ids(str(token))).sum())


def target_ids(policy: Policy, text: str) -> list[int]:
    """Token ids of a memorization target, ending with the model's end-of-sequence token."""
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"]
    return list(ids) + [policy.eos_token_ids[0]]


def _text_aligned(row: dict[str, torch.Tensor]) -> set[str]:
    """Keys whose tensors run along the token sequence (input_ids, attention_mask, and per-token extras such
    as Qwen's mm_token_type_ids): they are padded and extended with the tokens; the rest (pixels, grids) not."""
    shape = row["input_ids"].shape
    return {key for key, value in row.items() if value.shape == shape}


def collate(rows: Sequence[dict[str, torch.Tensor]], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    """One batch: token-aligned tensors padded to one length (`left` for generation, `right` for training) with
    pad_id for input_ids and 0 otherwise; every other tensor (pixel values, grids) concatenated along the
    batch dimension, zero-padded where rows differ in size beyond it (images or image tiles per prompt)."""
    length = max(row["input_ids"].shape[-1] for row in rows)
    batch: dict[str, list[torch.Tensor]] = {key: [] for key in rows[0]}
    aligned = _text_aligned(rows[0]) | {"attention_mask"}
    for row in rows:
        ids = row["input_ids"].reshape(1, -1)
        row = {**row, "attention_mask": row.get("attention_mask", torch.ones_like(ids))}
        for key in aligned:
            value = row[key].reshape(1, -1)
            fill = torch.full((1, length - value.shape[-1]), pad_id if key == "input_ids" else 0, dtype=value.dtype)
            batch.setdefault(key, []).append(torch.cat([fill, value] if side == "left" else [value, fill], dim=1))
        for key, value in row.items():
            if key not in aligned:
                batch[key].append(value)
    return {key: _stack(values) if key not in aligned else torch.cat(values, dim=0) for key, values in batch.items() if values}


def _stack(values: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding the other dims to the largest row (padding images are all zero,
    which Idefics3 drops and LLaVA-OneVision never reads, as it slices by image size)."""
    widest = [max(v.shape[d] for v in values) for d in range(1, values[0].dim())]
    padded = []
    for value in values:
        pad = []
        for d in reversed(range(1, value.dim())):
            pad += [0, widest[d - 1] - value.shape[d]]
        padded.append(torch.nn.functional.pad(value, pad) if any(pad) else value)
    return torch.cat(padded, dim=0)


def sampling_settings(*, greedy: bool = False, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                      repetition_penalty: float = 1.0) -> dict:
    """Every generation setting that shapes the next-token distribution, explicit: none is inherited from the
    model's own generation_config (some instruct models ship a repetition penalty, a top-k or a temperature).
    The neutral values switch a setting off; greedy decoding ignores the sampling ones."""
    return {
        "do_sample": not greedy, "temperature": temperature, "top_p": top_p, "top_k": top_k, "min_p": 0.0,
        "typical_p": 1.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "repetition_penalty": repetition_penalty,
        "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    }


GREEDY = sampling_settings(greedy=True)


@torch.no_grad()
def generate(
    policy: Policy,
    prompts: Sequence[dict[str, torch.Tensor]],
    *,
    num_generations: int,
    max_new_tokens: int,
    sampling: dict,
    batch_size: int = 8,
    share_prompt: bool = True,
) -> list[list[Completion]]:
    """K completions for each prompt, generated `batch_size` prompts at a time with `sampling_settings`.

    With `share_prompt`, each prompt (images included) is encoded once and its K samples continue from one
    copy of its KV cache (`prefill`); otherwise `generate` repeats every prompt K times before encoding it."""
    model = policy.model
    was_training = model.training
    model.eval()
    groups: list[list[Completion]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        inputs = {k: v.to(model.device) for k, v in collate(chunk, policy.pad_token_id, "left").items()}
        prompt_len = inputs["input_ids"].shape[1]
        shared = share_prompt and num_generations > 1
        if shared:
            inputs = prefill(policy, inputs, num_generations)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_return_sequences=1 if shared else num_generations,
            eos_token_id=policy.eos_token_ids,
            pad_token_id=policy.pad_token_id,
            suppress_tokens=policy.blocked_token_ids or None,
            **sampling,
        )
        new_tokens = output[:, prompt_len:].tolist()
        completions = [_completion(policy, ids) for ids in new_tokens]
        groups.extend(completions[i : i + num_generations] for i in range(0, len(completions), num_generations))
    model.train(was_training)
    return groups


def prefill(policy: Policy, inputs: dict[str, torch.Tensor], copies: int) -> dict[str, torch.Tensor]:
    """Encode a batch of left-padded prompts once and return generate's inputs for `copies` samples of each:
    the token-aligned tensors repeated, and the prompts' KV cache repeated, holding all but the last prompt
    token (generate computes that one per copy, so the first sampled token is drawn as without a cache).

    The prefill runs through `generate` itself (one greedy token, discarded), so that every family computes
    positions its own way (Qwen's 3-D positions keep their per-prompt offsets, repeated with the cache)."""
    model = policy.model
    first = model.generate(**inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True,
                           eos_token_id=policy.eos_token_ids, pad_token_id=policy.pad_token_id)
    cache = first.cache
    cache.crop(inputs["input_ids"].shape[1] - 1 - cache.get_seq_length())  # a negative count: tokens to drop
    cache.batch_repeat_interleave(copies)
    for module in model.modules():  # Qwen-VL keeps per-prompt position offsets beside the cache (PEFT-wrapped or not)
        if getattr(module, "rope_deltas", None) is not None:
            module.rope_deltas = module.rope_deltas.repeat_interleave(copies, dim=0)
    aligned = _text_aligned(inputs) | {"attention_mask"}
    return {"cache": cache, **{k: inputs[k].repeat_interleave(copies, dim=0) for k in aligned}}


#: [rollout].backend -> the function that samples K completions per prompt (generate's signature).
BACKENDS = {"transformers": generate}


def _completion(policy: Policy, ids: list[int]) -> Completion:
    """Cut generated ids after the first end-of-sequence token (what follows is padding)."""
    stops = set(policy.eos_token_ids)
    end = next((i + 1 for i, token in enumerate(ids) if token in stops), None)
    kept = ids if end is None else ids[:end]
    return Completion(kept, policy.tokenizer.decode(kept, skip_special_tokens=True), truncated=end is None)


def with_completion(prompt: dict[str, torch.Tensor], completion_ids: Sequence[int]) -> tuple[dict, int]:
    """Prompt inputs extended by a completion; returns them and the prompt length. Per-token extras
    (e.g. mm_token_type_ids) get zeros, as for ordinary text tokens."""
    ids = prompt["input_ids"].reshape(1, -1)
    prompt_len = ids.shape[-1]
    row = dict(prompt)
    for key in _text_aligned(prompt) - {"input_ids", "attention_mask"}:
        row[key] = torch.cat([prompt[key].reshape(1, -1), prompt[key].new_zeros((1, len(completion_ids)))], dim=1)
    row["input_ids"] = torch.cat([ids, torch.tensor([list(completion_ids)], dtype=ids.dtype)], dim=1)
    row["attention_mask"] = torch.ones_like(row["input_ids"])
    return row, prompt_len


def completion_logprobs(
    model: torch.nn.Module, rows: Sequence[tuple[dict, int]], pad_id: int, temperature: float = 1.0,
    completion_only: bool = True, image_features: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of each row's completion tokens under the policy that sampled them (logits / temperature,
    as TRL does), and the mask of those positions.

    Both have shape (rows, max completion length); only completion tokens are scored. With `completion_only`
    the model computes logits only from the first position that predicts a completion token (`logits_to_keep`),
    not over every prompt position, and encodes the images of rows that share a prompt once
    (`with_images_encoded_once`; with `image_features`, once for every call that shares that dict).
    """
    batch = collate([row for row, _ in rows], pad_id, "right")
    if completion_only:
        batch = with_images_encoded_once(model, [row for row, _ in rows], batch, image_features)
    batch = {k: v.to(model.device) if torch.is_tensor(v) else v for k, v in batch.items()}
    first = min(prompt_len for _, prompt_len in rows) - 1 if completion_only else 0  # predicts a completion token
    keep = {"logits_to_keep": batch["input_ids"].shape[1] - first} if completion_only else {}
    logits = model(**batch, **keep).logits[:, :-1].float() / temperature
    targets = batch["input_ids"][:, first + 1 :]
    token_logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    starts = torch.tensor([prompt_len - 1 for _, prompt_len in rows], device=targets.device)
    lengths = batch["attention_mask"].sum(-1) - 1 - starts
    width = int(lengths.max())
    positions = (starts - first).unsqueeze(1) + torch.arange(width, device=targets.device).unsqueeze(0)
    mask = (torch.arange(width, device=targets.device).unsqueeze(0) < lengths.unsqueeze(1)).float()
    positions = positions.clamp(max=token_logp.shape[1] - 1)
    return token_logp.gather(1, positions) * mask, mask


def with_images_encoded_once(model: torch.nn.Module, rows: Sequence[dict], batch: dict,
                             cache: dict | None = None) -> dict:
    """`batch` (the collated `rows`) with its pixel inputs replaced by image features encoded once per distinct
    prompt (the rows of one prompt share its pixel tensors) and repeated for each of its rows, as the pre-encoded
    features transformers' vision-language models accept (`mm_encoder_outputs`). Gradients reach the vision
    tower and connector through the one encoding. With a `cache` (only when no weight the features depend on is
    trained, `modeling.image_features_frozen`), features are computed without gradients and kept there by prompt,
    for every later call of the step: the other micro-batches, the other iterations, the reference model.
    Unchanged for text-only rows, a model without that input, or features that do not line up one-to-one with
    the image tokens."""
    pixel_keys = [key for key in batch if key.startswith("pixel_")]
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    token_id = getattr(model.config, "image_token_id", None)
    if not pixel_keys or token_id is None or "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
        return batch
    distinct: dict[int, dict] = {}  # prompt (by its pixel tensor) -> one of its rows
    for row in rows:
        distinct.setdefault(id(row[pixel_keys[0]]), row)
    known = cache if cache is not None else {}
    missing = [key for key in distinct if key not in known]
    if missing:
        with torch.no_grad() if cache is not None else contextlib.nullcontext():
            encoded = _encode_images(model, [distinct[key] for key in missing], token_id)
        if encoded is None:
            return batch
        known.update(zip(missing, encoded))
    per_row = [known[id(row[pixel_keys[0]])] for row in rows]
    first = per_row[0]
    layers = [_container(first.container, torch.cat([e.layers[i] for e in per_row])) for i in range(len(first.layers))]
    features = {"pooler_output": layers[0]}
    if len(layers) > 1:  # Qwen3-VL: per-layer features of the same image tokens
        features["deepstack_features"] = layers[1:]
    rest = {k: v for k, v in batch.items() if k not in pixel_keys}
    return {**rest, "mm_encoder_outputs": {"image": first.output_type(**features)}}


class _Encoded(NamedTuple):
    """One prompt's image features, as `get_image_features` gave them."""

    container: str  # how the model reads the pooled features: "tensor" (a batch of one) or "list"
    layers: tuple[torch.Tensor, ...]  # the prompt's image-token rows: pooled, then each deepstack layer's
    output_type: type


def _encode_images(model, prompts: list[dict], token_id: int) -> list[_Encoded] | None:
    """Each prompt's image features; None when they do not line up with the prompts' image tokens."""
    images = collate(prompts, 0, "right")
    wanted = inspect.signature(model.get_image_features).parameters
    features = model.get_image_features(
        **{k: v.to(model.device) for k, v in images.items() if k in wanted and k != "input_ids"}, return_dict=True)
    counts = [int((prompt["input_ids"] == token_id).sum()) for prompt in prompts]
    layers = [_feature_rows(features.pooler_output)]
    layers += [_feature_rows(layer) for layer in getattr(features, "deepstack_features", None) or ()]
    if any(layer.shape[0] != sum(counts) for layer in layers):
        return None
    container = "tensor" if torch.is_tensor(features.pooler_output) else "list"
    per_layer = [layer.split(counts) for layer in layers]
    return [_Encoded(container, tuple(layer[i] for layer in per_layer), type(features)) for i in range(len(prompts))]


def _feature_rows(features) -> torch.Tensor:
    """Image features as one (image tokens, hidden) tensor, from a tensor or a list of per-image tensors."""
    parts = [features] if torch.is_tensor(features) else list(features)
    return torch.cat([part.reshape(-1, part.shape[-1]) for part in parts])


def _container(kind: str, rows: torch.Tensor):
    """Image-token feature rows in the container the models read: a batch of one, or a one-item list."""
    return rows.unsqueeze(0) if kind == "tensor" else [rows]
