"""The update's scoring: log-probabilities of completion tokens under the policy, the old policy or the frozen
reference, for rows that each extend an encoded prompt by a completion (a rollout or a memorization target).

Only completion positions are scored. With a shared prefix (`shared_prefix_logprobs`), each prompt of a
micro-batch, its images included, is read once, and its rows' completions attend to it; otherwise every row is
forwarded whole (`completion_logprobs`), the images of rows that share a prompt encoded once.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

from .batch import Row
from .recipe import ModelSection
from .rollout import collate, text_aligned


@dataclass(frozen=True)
class Scoring:
    """How the update scores its rows: the pad id, the sampling temperature the log-probs are taken at, whether
    only completion positions are computed (`[model].reuse_prompt`), whether a prompt is read once for its rows
    (`shared_prefix`, see `shares_prefix`), and the step's store of image features encoded once per prompt
    (`with_images_encoded_once`; None when the features are trained). `images_once` False encodes each row's
    images in the model's forward instead (processes.Parallel.uneven_images; a shared prefix always does so,
    once per prompt)."""

    pad_id: int
    temperature: float = 1.0
    completion_only: bool = True
    image_features: dict | None = None
    images_once: bool = True
    shared_prefix: bool = False

    def logprobs(self, model: torch.nn.Module, rows: Sequence[Row]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probs of each row's completion and their mask (shape: rows, longest completion)."""
        if self.shared_prefix:
            return shared_prefix_logprobs(model, [(row.prompt, row.completion_ids) for row in rows],
                                          self.temperature, self.image_features)
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


#: Attention implementations that read a mask of any shape (a shared prefix needs one); flash attention reads
#: only padding and sequence starts, so its models forward every row whole.
MASKED_ATTENTION = ("sdpa", "eager")


def shares_prefix(model: torch.nn.Module, section: ModelSection) -> bool:
    """Whether the update reads each prompt once for its rows (`shared_prefix_logprobs`): with
    `[model].reuse_prompt` and `shared_prefix`, and an attention implementation that takes a custom mask."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return (section.reuse_prompt and section.shared_prefix
            and getattr(text, "_attn_implementation", None) in MASKED_ATTENTION)


def shared_prefix_logprobs(model: torch.nn.Module, rows: Sequence[tuple[dict, Sequence[int]]],
                           temperature: float = 1.0, image_features: dict | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of each row's completion tokens, and their mask (as `completion_logprobs`), from one
    forward in which each distinct prompt of `rows` (prompt inputs, completion ids) is read once.

    Each prompt and its rows' completions make one sequence, [prompt, completion 1, completion 2, ...], under an
    attention mask by which a prompt token sees the prompt's earlier tokens and a completion token sees the
    prompt and its own earlier tokens; each completion's positions continue from the prompt's (Qwen's 3-D
    positions from the prompt's own rope index). So every row computes what its forward alone would, and the
    gradient is that of forwarding every row whole, while the language model reads each prompt, and the vision
    tower encodes its images, once. The sequences of the distinct prompts make the batch, padded on the right
    (padding sees only padding). Logits are computed only from the first position that predicts a completion
    token. With `image_features` (a step's store of frozen features, `with_images_encoded_once`) the images are
    encoded once for the whole step instead."""
    groups: dict[int, list[int]] = {}  # prompt (its input_ids tensor, shared by its rows) -> its rows
    for i, (prompt, _) in enumerate(rows):
        groups.setdefault(id(prompt["input_ids"]), []).append(i)
    prompts = [rows[members[0]][0] for members in groups.values()]
    extras = set().union(*(text_aligned(p) for p in prompts)) - {"input_ids", "attention_mask"}
    rope = _rope_index_owner(model)
    sequences = [_Sequence(prompt, _prompt_positions(rope, prompt), extras) for prompt in prompts]
    predicting: list[tuple[int, list[int]]] = [(0, [])] * len(rows)  # per row: its sequence, the positions
    for g, (sequence, members) in enumerate(zip(sequences, groups.values())):  # whose logits predict its tokens
        for i in members:
            start = sequence.add(rows[i][1])
            predicting[i] = (g, [sequence.prompt_length - 1, *range(start, start + len(rows[i][1]) - 1)])
    device = model.device
    batch = _inputs(sequences, model, device)
    pixels = collate(prompts, 0, "right")
    batch |= {key: value.to(device) for key, value in pixels.items() if key not in text_aligned(pixels)
              and key != "attention_mask"}
    if image_features is not None:
        batch = with_images_encoded_once(model, prompts, batch, image_features)
    first = min(sequence.prompt_length for sequence in sequences) - 1  # the first position that predicts a token
    logits = model(**batch, logits_to_keep=batch["input_ids"].shape[1] - first).logits.float() / temperature
    which = torch.tensor([g for g, positions in predicting for _ in positions], device=device)
    where = torch.tensor([p - first for _, positions in predicting for p in positions], device=device)
    targets = torch.tensor([token for _, completion in rows for token in completion], device=device)
    token_logp = torch.log_softmax(logits[which, where], dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    lengths = [len(completion) for _, completion in rows]
    logp = pad_sequence(token_logp.split(lengths), batch_first=True)
    return logp, pad_sequence([torch.ones(n, device=device) for n in lengths], batch_first=True)


class _Sequence:
    """One prompt and its rows' completions, being laid out as one sequence: its tokens, their rope positions
    (dimensions, length), which part each token is (0 the prompt, k its k-th completion), and the per-token
    extras `extras` (the prompt's, or zeros; zeros for completion tokens)."""

    def __init__(self, prompt: dict, positions: torch.Tensor, extras: set[str]):
        ids = prompt["input_ids"].reshape(-1)
        self.prompt_length = len(ids)
        self.ids, self.positions, self.part = [ids], [positions], [torch.zeros(len(ids), dtype=torch.long)]
        self.extras = {key: [prompt[key].reshape(-1) if key in prompt else torch.zeros(len(ids), dtype=torch.long)]
                       for key in extras}
        self.next_position = int(positions.max()) + 1
        self.length = len(ids)

    def add(self, completion: Sequence[int]) -> int:
        """Append one row's completion; returns where it starts."""
        n, start = len(completion), self.length
        self.ids.append(torch.tensor(list(completion), dtype=self.ids[0].dtype))
        self.positions.append((self.next_position + torch.arange(n)).expand(self.positions[0].shape[0], -1))
        self.part.append(torch.full((n,), len(self.part)))
        for values in self.extras.values():
            values.append(torch.zeros(n, dtype=values[0].dtype))
        self.length += n
        return start


def _inputs(sequences: list[_Sequence], model: torch.nn.Module, device: torch.device) -> dict:
    """The model inputs of the sequences, padded on the right: token ids, positions, a 4-D attention mask, extras."""
    width = max(sequence.length for sequence in sequences)

    def padded(parts: list[torch.Tensor], value: int) -> torch.Tensor:
        whole = torch.cat(parts, dim=-1)
        return torch.nn.functional.pad(whole, (0, width - whole.shape[-1]), value=value)

    part = torch.stack([padded(s.part, -1) for s in sequences]).to(device)
    order = torch.arange(width, device=device)
    allowed = ((order[None, :] <= order[:, None])[None]
               & ((part[:, None, :] == 0) | (part[:, None, :] == part[:, :, None])))[:, None]
    positions = torch.stack([padded(s.positions, 0) for s in sequences], dim=1).to(device)  # (dimensions, batch, width)
    return {"input_ids": torch.stack([padded(s.ids, 0) for s in sequences]).to(device),
            "position_ids": positions if positions.shape[0] > 1 else positions[0],
            "attention_mask": _attention_mask(model, allowed),
            **{key: torch.stack([padded(s.extras[key], 0) for s in sequences]).to(device) for key in sequences[0].extras}}


def _attention_mask(model: torch.nn.Module, allowed: torch.Tensor) -> torch.Tensor:
    """`allowed` (True: attend) as the attention implementation reads a custom mask: sdpa a boolean one, eager
    an additive one."""
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    if getattr(text, "_attn_implementation", None) == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, device=allowed.device).masked_fill(~allowed, torch.finfo(torch.float32).min)


def _rope_index_owner(model: torch.nn.Module):
    """The module that computes Qwen-VL's 3-D rope positions (`get_rope_index`); None for 1-D positions."""
    return next((m for m in model.modules() if hasattr(type(m), "get_rope_index") and not hasattr(m, "lm_head")),
                None)


def _prompt_positions(rope, prompt: dict) -> torch.Tensor:
    """A prompt's rope positions, (dimensions, length): 0..n-1, or Qwen-VL's 3-D positions of its image tokens
    and text (the three equal for a prompt without images)."""
    ids = prompt["input_ids"].reshape(1, -1)
    if rope is None:
        return torch.arange(ids.shape[1]).unsqueeze(0)
    if "image_grid_thw" not in prompt:
        return torch.arange(ids.shape[1]).expand(3, -1)
    positions, _ = rope.get_rope_index(ids, prompt["mm_token_type_ids"].reshape(1, -1),
                                       image_grid_thw=prompt["image_grid_thw"], attention_mask=torch.ones_like(ids))
    return positions[:, 0, :].cpu()


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
