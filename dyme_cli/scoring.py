"""The update's scoring: log-probabilities of completion tokens under the policy, the old policy or the frozen
reference, for rows that each extend an encoded prompt by a completion (a rollout or a memorization target).

Only completion positions are scored, and the images of rows that share a prompt are encoded once.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch

from .batch import Row
from .rollout import collate, text_aligned


@dataclass(frozen=True)
class Scoring:
    """How the update scores its rows: the pad id, the sampling temperature the log-probs are taken at, whether
    only completion positions are computed (`[model].reuse_prompt`), and the step's store of image features
    encoded once per prompt (`with_images_encoded_once`; None when the features are trained). `images_once`
    False encodes each row's images in the model's forward instead (processes.Parallel.uneven_images)."""

    pad_id: int
    temperature: float = 1.0
    completion_only: bool = True
    image_features: dict | None = None
    images_once: bool = True

    def logprobs(self, model: torch.nn.Module, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs of each row's completion and their mask (`completion_logprobs`)."""
        return completion_logprobs(model, [with_completion(row.prompt, row.completion_ids) for row in rows],
                                   self.pad_id, self.temperature, self.completion_only, self.image_features,
                                   self.images_once)

    @torch.no_grad()
    def frozen(self, model: torch.nn.Module, micro_batches: Sequence[Sequence[Row]]) -> list[torch.Tensor]:
        """Log-probs without gradients, per micro-batch: the old policy before the update (mu > 1) or the frozen
        reference model."""
        return [self.logprobs(model, batch)[0] for batch in micro_batches]


def with_completion(prompt: dict[str, torch.Tensor], completion_ids: Sequence[int]) -> tuple[dict, int]:
    """Prompt inputs extended by a completion; returns them and the prompt length. Per-token extras
    (e.g. mm_token_type_ids) get zeros, as for ordinary text tokens."""
    ids = prompt["input_ids"].reshape(1, -1)
    prompt_len = ids.shape[-1]
    row = dict(prompt)
    for key in text_aligned(prompt) - {"input_ids", "attention_mask"}:
        row[key] = torch.cat([prompt[key].reshape(1, -1), prompt[key].new_zeros((1, len(completion_ids)))], dim=1)
    row["input_ids"] = torch.cat([ids, torch.tensor([list(completion_ids)], dtype=ids.dtype)], dim=1)
    row["attention_mask"] = torch.ones_like(row["input_ids"])
    return row, prompt_len


def completion_logprobs(
    model: torch.nn.Module, rows: Sequence[tuple[dict, int]], pad_id: int, temperature: float = 1.0,
    completion_only: bool = True, image_features: dict | None = None, images_once: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of each row's completion tokens under the policy that sampled them (logits / temperature,
    as TRL does), and the mask of those positions.

    Both have shape (rows, max completion length); only completion tokens are scored. With `completion_only`
    the model computes logits only from the first position that predicts a completion token (`logits_to_keep`),
    not over every prompt position, and encodes the images of rows that share a prompt once
    (`with_images_encoded_once`, unless `images_once` is False; with `image_features`, once for every call that
    shares that dict).
    """
    batch = collate([row for row, _ in rows], pad_id, "right")
    if completion_only and images_once:
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
    Rows without images (text-only samples) get none. Unchanged for a batch without images, a model without that
    input, or features that do not line up one-to-one with the image tokens."""
    pixel_keys = [key for key in batch if key.startswith("pixel_")]
    model = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    token_id = getattr(model.config, "image_token_id", None)
    if not pixel_keys or token_id is None or "mm_encoder_outputs" not in inspect.signature(model.forward).parameters:
        return batch
    rows = [row for row in rows if pixel_keys[0] in row]  # the features are laid out by image token, in order
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
    # The class's method: FSDP2 wraps the instance's (processes.distribute), and a bound wrapper's signature loses
    # its first parameter
    wanted = inspect.signature(type(model).get_image_features).parameters
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
