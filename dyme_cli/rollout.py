"""Prompts and rollouts: a prompt rendered and encoded, and the Backend that samples K completions per prompt.

A prompt is encoded once by the model's own processor and chat template (with the generation prompt);
rollouts and memorization targets are both token ids appended after it, so they share one path (scoring.py
scores them). Training and `dyme eval` sample through a `Backend` (BACKENDS, `[rollout].backend`): it takes
prompts (the sample, its rendered prompt text, its encoded inputs), returns K completions each, and receives the
policy's weights after the update's optimizer steps.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import NamedTuple, Protocol, Sequence

import torch

from .data import QUESTION, DataError, Sample, chat_messages, load_images
from .modeling import Policy, context_length, tokenizer_of


@dataclass
class Completion:
    ids: list[int]  # generated ids, up to and including the first end-of-sequence token
    text: str  # decoded without special tokens
    truncated: bool  # max_new_tokens reached without an end-of-sequence token


class PromptInput(NamedTuple):
    """A prompt as a backend reads it: the sample (its images), the rendered prompt text (the chat template
    applied, image placeholders not yet expanded), and that text and the images encoded by the processor."""

    sample: Sample
    text: str
    prompt: dict[str, torch.Tensor]


def prompt_input(policy: Policy, sample: Sample, template: str = QUESTION, max_new_tokens: int | None = None
                 ) -> PromptInput:
    """The rendered and encoded prompt of `sample`; with `max_new_tokens`, DataError (one line naming the sample)
    when the prompt and that many new tokens cannot fit the model's positions (a long question, many images)."""
    text = prompt_text(policy.processor, policy.text_only, sample, template)
    prompt = PromptInput(sample, text, encode_text(policy.processor, policy.text_only, sample, text))
    context = context_length(policy.model.config)
    tokens = prompt.prompt["input_ids"].shape[-1]
    if max_new_tokens is not None and context is not None and tokens + max_new_tokens > context:
        images = image_token_count(policy.processor, prompt.prompt["input_ids"])
        raise DataError(f"sample '{sample.id}': its prompt of {tokens} tokens ({images} of them image tokens) and "
                        f"{max_new_tokens} new tokens do not fit the model's context of {context} positions; shorten "
                        "the question, give fewer or smaller images, or lower the completion length")
    return prompt


def encode_prompt(policy: Policy, sample: Sample, template: str = QUESTION) -> dict[str, torch.Tensor]:
    """The model inputs of one prompt (batch dimension 1, no padding): `template` with the sample's question,
    through the model's chat template with the generation prompt."""
    return prompt_input(policy, sample, template).prompt


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


def text_aligned(row: dict[str, torch.Tensor]) -> set[str]:
    """Keys whose tensors run along the token sequence (input_ids, attention_mask, and per-token extras such
    as Qwen's mm_token_type_ids): they are padded and extended with the tokens; the rest (pixels, grids) not."""
    shape = row["input_ids"].shape
    return {key for key, value in row.items() if value.shape == shape}


def collate(rows: Sequence[dict[str, torch.Tensor]], pad_id: int, side: str) -> dict[str, torch.Tensor]:
    """One batch: token-aligned tensors padded to one length (`left` for generation, `right` for training) with
    pad_id for input_ids and 0 otherwise; every other tensor (pixel values, grids) concatenated along the
    batch dimension, zero-padded where rows differ in size beyond it (images or image tiles per prompt). Rows
    without images (a text-only sample of a vision dataset) add no pixels, and zeros for the per-token extras
    the others have (as for ordinary text tokens): the model places image features by image token, in order."""
    length = max(row["input_ids"].shape[-1] for row in rows)
    batch: dict[str, list[torch.Tensor]] = {key: [] for row in rows for key in row}
    aligned = {"attention_mask"}.union(*(text_aligned(row) for row in rows))
    for row in rows:
        ids = row["input_ids"].reshape(1, -1)
        row = {**row, "attention_mask": row.get("attention_mask", torch.ones_like(ids))}
        for key in aligned:
            value = row[key].reshape(1, -1) if key in row else torch.zeros_like(ids)
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
NEUTRAL_WARPERS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


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
    seeds: Sequence[int] | None = None,
) -> list[list[Completion]]:
    """K completions for each prompt, generated `batch_size` prompts at a time with `sampling_settings`.

    With `share_prompt`, each prompt (images included) is encoded once and its K samples continue from one
    copy of its KV cache (`prefill`); otherwise `generate` repeats every prompt K times before encoding it.
    With `seeds` (one per prompt), completion k of prompt i is drawn from its own random stream, a function of
    seeds[i] and k alone (`SeededSampling`); without, from the process's random state."""
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
        drawn = sampling if seeds is None else seeded(sampling, seeds[start : start + batch_size], num_generations,
                                                      model.device)
        output = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_return_sequences=1 if shared else num_generations,
            eos_token_id=policy.eos_token_ids,
            pad_token_id=policy.pad_token_id,
            suppress_tokens=policy.blocked_token_ids or None,
            **drawn,
        )
        new_tokens = output[:, prompt_len:].tolist()
        completions = [_completion(policy, ids) for ids in new_tokens]
        groups.extend(completions[i : i + num_generations] for i in range(0, len(completions), num_generations))
    model.train(was_training)
    return groups


def seeded(sampling: dict, seeds: Sequence[int], num_generations: int, device: torch.device) -> dict:
    """`generate`'s settings for sampling K completions of prompts with `seeds`, each from its own stream
    (`SeededSampling`); greedy settings unchanged."""
    if not sampling["do_sample"]:
        return sampling
    from transformers import LogitsProcessorList

    streams = [completion_seed(seed, k) for seed in seeds for k in range(num_generations)]  # generate's row order
    return {**sampling, **NEUTRAL_WARPERS,  # SeededSampling applies them, before it draws
            "logits_processor": LogitsProcessorList([SeededSampling(streams, sampling, device)])}


def completion_seed(prompt_seed: int, k: int) -> int:
    """The seed of completion k of a prompt."""
    return random.Random(f"{prompt_seed}:{k}").getrandbits(63)


class SeededSampling:
    """Sampling by `sampling_settings` (temperature, then top-k, then top-p, after the model's other processors, as
    transformers samples), with one random stream per row of the batch instead of the process's: a completion
    depends on its seed alone, not on which process samples it or what else is in its batch. It draws each row's
    token as the argmax of the tempered, filtered log-probabilities plus Gumbel noise from the row's own
    generator (the Gumbel-max trick: a sample of them), and leaves `generate` that token alone to sample (every
    other score -inf)."""

    def __init__(self, seeds: Sequence[int], sampling: dict, device: torch.device):
        from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

        self.warpers = []
        if sampling["temperature"] != 1.0:
            self.warpers.append(TemperatureLogitsWarper(sampling["temperature"]))
        if sampling["top_k"]:
            self.warpers.append(TopKLogitsWarper(sampling["top_k"]))
        if sampling["top_p"] < 1.0:
            self.warpers.append(TopPLogitsWarper(sampling["top_p"]))
        self.streams = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for warp in self.warpers:
            scores = warp(input_ids, scores)
        uniform = torch.stack([torch.rand(scores.shape[-1], generator=stream, device=scores.device)
                               for stream in self.streams])
        drawn = (torch.log_softmax(scores.float(), dim=-1) - torch.log(-torch.log(uniform))).argmax(-1, keepdim=True)
        return torch.full_like(scores, -math.inf).scatter(-1, drawn, 0.0)


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
    aligned = text_aligned(inputs) | {"attention_mask"}
    return {"cache": cache, **{k: inputs[k].repeat_interleave(copies, dim=0) for k in aligned}}


class Backend(Protocol):
    """What samples the rollouts. `prompts` are PromptInput-like (a step's PromptGroups are too); `batch_size` is
    how many prompts the caller would have generated at once (a backend with its own scheduling may ignore it).
    `sync_weights` is called after the update's optimizer steps, before the next rollouts."""

    def generate(self, prompts: Sequence[PromptInput], *, num_generations: int, max_new_tokens: int, sampling: dict,
                 batch_size: int, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        """K completions per prompt; with `seeds` (one per prompt), completion k of prompt i is a function of the
        weights, the prompt, seeds[i] and k alone, so that a run samples the same on any number of processes."""

    def sync_weights(self, model: torch.nn.Module) -> None: ...


class TransformersBackend:
    """The policy's own transformers `generate`, in this process (`generate` above): it samples with the very
    weights being trained, so there is nothing to sync."""

    def __init__(self, policy: Policy, *, share_prompt: bool = True):
        self.policy, self.share_prompt = policy, share_prompt

    def generate(self, prompts: Sequence[PromptInput], *, num_generations: int, max_new_tokens: int, sampling: dict,
                 batch_size: int, seeds: Sequence[int] | None = None) -> list[list[Completion]]:
        return generate(self.policy, [p.prompt for p in prompts], num_generations=num_generations,
                        max_new_tokens=max_new_tokens, sampling=sampling, batch_size=batch_size,
                        share_prompt=self.share_prompt, seeds=seeds)

    def sync_weights(self, model: torch.nn.Module) -> None:
        pass


#: [rollout].backend -> the Backend class, built with the policy and `share_prompt` ([model].reuse_prompt).
BACKENDS: dict[str, type] = {"transformers": TransformersBackend}


def _completion(policy: Policy, ids: list[int]) -> Completion:
    """Cut generated ids after the first end-of-sequence token (what follows is padding)."""
    stops = set(policy.eos_token_ids)
    end = next((i + 1 for i, token in enumerate(ids) if token in stops), None)
    kept = ids if end is None else ids[:end]
    return Completion(kept, policy.tokenizer.decode(kept, skip_special_tokens=True), truncated=end is None)
