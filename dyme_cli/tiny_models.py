"""Tiny random-init models, built from configs, for every supported family (the hub is not needed).

`tiny:<family>` in a recipe builds one into the run directory: a byte-level BPE tokenizer trained on the
dataset's own text, the family's chat template and image placeholders, its processor, and a model with a few
hundred thousand parameters, saved as an ordinary save_pretrained directory. From then on it loads exactly
like a hub model of that family, through the Auto classes, which is how the loading, rollout and training
code is tested on each architecture without downloads.

Families (`TINY_FAMILIES`), with what their chat template writes for a user turn with one image; the processor
then expands the image placeholder to as many tokens as the vision tower yields:

- `smolvlm` (Idefics3): `<|im_start|>User:<image>question<end_of_utterance>\\nAssistant:`; eos `<end_of_utterance>`.
- `qwen2-vl`, `qwen2.5-vl` (Qwen2-VL, Qwen2.5-VL): ChatML with the default system turn,
  `<|im_start|>user\\n<|vision_start|><|image_pad|><|vision_end|>question<|im_end|>\\n<|im_start|>assistant\\n`;
  `<|image_pad|>` is repeated once per merged patch; eos `<|im_end|>`, pad `<|endoftext|>`.
- `qwen3-vl` (Qwen3-VL): the same ChatML without a default system turn.
- `llava-onevision` (SigLIP + Qwen2, anyres tiling): `<|im_start|>user <image>\\nquestion<|im_end|><|im_start|>assistant\\n`
  (images before the text, as in llava-onevision-qwen2); `<image>` is repeated once per feature of the base
  tile, the unpadded high-resolution tiles and their row newlines; eos `<|im_end|>`, pad `<|endoftext|>`.
- `llama` (text-only, Llama 3): `<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nquestion<|eot_id|>`
  then `<|start_header_id|>assistant<|end_header_id|>\\n\\n`; eos `<|eot_id|>`, pad `<|finetune_right_pad_id|>`.
- `qwen2` (text-only): ChatML with the default system turn, as for qwen2-vl but with no vision tokens.

Every model ties its input and output embeddings (as the small checkpoints of each family do) and keeps all
special token ids inside its own vocabulary; its generation config ends on the end-of-turn token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from .recipe import TinyModel


@dataclass(frozen=True)
class _Tokens:
    """A family's special tokens: all of them, trained into the vocabulary first in this order, and their roles.
    `extra` are registered as named extra special tokens, so that a policy never samples them (image placeholders)."""

    special: tuple[str, ...]
    eos: str
    pad: str
    bos: str | None = None
    unk: str | None = None
    extra: tuple[str, ...] = ()


def _content(image: str) -> str:
    """Jinja for a message's content: a plain string, or image and text parts with `image` written per image."""
    return (
        "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}" + image
        + "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    )


def _chatml(image: str = "", system: str | None = None) -> str:
    """Qwen's ChatML template; `system` is the default system turn the Qwen2(-VL) templates add."""
    default_system = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + system + "<|im_end|>\n{% endif %}"
        if system else ""
    )
    return (
        default_system + "{% for message in messages %}<|im_start|>{{ message['role'] }}\n" + _content(image)
        + "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


# SmolVLM: `User:`/`Assistant:` role prefixes, one `<image>` per image (the processor wraps and expands it).
_SMOLVLM_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] | capitalize }}:" + _content("<image>")
    + "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)
_QWEN_SYSTEM = "You are a helpful assistant."
_QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
_QWEN2_VL_TEMPLATE = _chatml(_QWEN_IMAGE, _QWEN_SYSTEM)
_QWEN3_VL_TEMPLATE = _chatml(_QWEN_IMAGE)
_QWEN2_TEMPLATE = _chatml(system=_QWEN_SYSTEM)
# llava-onevision-qwen2: a space after the role, all images first, then each text part after a newline, and no
# newline between turns. The newlines are Jinja strings: transformers renders templates with trim_blocks, which
# drops a literal newline that directly follows a block tag.
_LLAVA_ONEVISION_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }} {% if message['content'] is string %}"
    "{{ '\\n' + message['content'] }}{% else %}{% for part in message['content'] if part['type'] == 'image' %}<image>"
    "{% endfor %}{% for part in message['content'] if part['type'] == 'text' %}{{ '\\n' + part['text'] }}{% endfor %}"
    "{% endif %}<|im_end|>{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_LLAMA_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    + _content("") + "<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)

_SMOLVLM_TOKENS = _Tokens(
    special=("<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"),
    eos="<end_of_utterance>", pad="<pad>", bos="<|im_start|>", unk="<unk>",
)  # the Idefics3 processor registers its image tokens itself
_CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
_QWEN2_TOKENS = _Tokens(special=_CHATML, eos="<|im_end|>", pad="<|endoftext|>", extra=("<|im_start|>",))
_QWEN_VISION = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
_QWEN_VL_TOKENS = _Tokens(
    special=_CHATML + _QWEN_VISION, eos="<|im_end|>", pad="<|endoftext|>", extra=("<|im_start|>", *_QWEN_VISION)
)
_LLAVA_TOKENS = _Tokens(
    special=(*_CHATML, "<image>", "<video>"), eos="<|im_end|>", pad="<|endoftext|>",
    extra=("<|im_start|>", "<image>", "<video>"),
)
_LLAMA_TOKENS = _Tokens(
    special=("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
             "<|finetune_right_pad_id|>"),
    eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", bos="<|begin_of_text|>",
    extra=("<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"),
)


# --- shared helpers -----------------------------------------------------------------------------------------


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int, tokens: _Tokens = _SMOLVLM_TOKENS):
    """A byte-level BPE tokenizer trained on `texts`, with a family's special tokens, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=tokens.unk))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(tokens.special),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    named = {"unk_token": tokens.unk, "bos_token": tokens.bos}
    extra = {"extra_special_tokens": list(tokens.extra)} if tokens.extra else {}
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=tokens.pad,
        eos_token=tokens.eos,
        padding_side="left",
        **{key: value for key, value in named.items() if value is not None},
        **extra,
    )


def _ids(tokenizer, tokens: _Tokens) -> dict[str, int | None]:
    """bos/eos/pad ids for a (sub-)config, all inside the tokenizer's vocabulary, overriding the hub defaults."""
    return {
        "bos_token_id": tokenizer.convert_tokens_to_ids(tokens.bos) if tokens.bos else None,
        "eos_token_id": tokenizer.convert_tokens_to_ids(tokens.eos),
        "pad_token_id": tokenizer.convert_tokens_to_ids(tokens.pad),
    }


CONTEXT_LENGTH = 1024  # positions of every tiny model: prompt + completion


def _text_config(spec: TinyModel, vocab: int, ids: dict, **extra) -> dict:
    """The decoder's sizes, shared by every family (multi-head attention, tied embeddings)."""
    return dict(
        vocab_size=vocab,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=CONTEXT_LENGTH,
        tie_word_embeddings=True,
        **ids,
        **extra,
    )


def _mrope(spec: TinyModel, theta: float, **extra) -> dict:
    """Qwen's multimodal rotary embedding: (temporal, height, width) sections splitting head_dim / 2 as the
    real models do (16/24/24 of 64: a quarter for time, the rest halved)."""
    half = spec.hidden_size // spec.num_heads // 2
    temporal = max(1, half // 4)
    height = (half - temporal) // 2
    return {"rope_type": "default", "rope_theta": theta, "mrope_section": [temporal, height, half - temporal - height], **extra}


def _init(model_class, config, seed: int):
    """A random-init model whose weights depend only on `seed`, leaving the global RNG untouched."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class.from_config(config)


def _save(out_dir: Path, model, processor, tokenizer) -> Path:
    """Make generation end on the end-of-turn token and pad with the tokenizer's pad, then save both."""
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


# --- one builder per family ---------------------------------------------------------------------------------


def build_tiny_smolvlm(out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int = 0) -> Path:
    """SmolVLM: a random-init Idefics3 (SigLIP, pixel shuffle by scale_factor, Llama) and its processor."""
    from transformers import AutoModelForImageTextToText, Idefics3Config

    tokenizer = train_bpe_tokenizer(texts, spec.vocab_size, _SMOLVLM_TOKENS)
    processor = _smolvlm_processor(tokenizer, spec)
    ids = _ids(tokenizer, _SMOLVLM_TOKENS)
    config = Idefics3Config(
        vision_config=_siglip(spec),
        text_config=_text_config(spec, len(tokenizer), ids, model_type="llama"),
        scale_factor=spec.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    return _save(out_dir, _init(AutoModelForImageTextToText, config, seed), processor, tokenizer)


def _smolvlm_processor(tokenizer, spec: TinyModel):
    """The Idefics3 processor of a SmolVLM-architecture model: one untiled view per image, SmolVLM's chat template."""
    from transformers import Idefics3ImageProcessor, Idefics3Processor

    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": spec.image_size},
        max_image_size={"longest_edge": spec.image_size},
    )
    image_seq_len = (spec.image_size // spec.patch_size) ** 2 // spec.scale_factor**2
    return Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len, chat_template=_SMOLVLM_TEMPLATE
    )


def _siglip(spec: TinyModel, **extra) -> dict:
    """A SigLIP vision tower (SmolVLM's and LLaVA-OneVision's)."""
    return dict(
        hidden_size=spec.vision_hidden_size,
        intermediate_size=spec.vision_hidden_size * 2,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        **extra,
    )


def _build_qwen_vl(
    out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int, *, config: str, processor: str, video_processor: str,
    vision: dict, text: dict, template: str, image_std: list[float] | None = None,
) -> Path:
    """The Qwen-VL families: a native-resolution ViT whose patch_size x patch_size patches are merged scale_factor x
    scale_factor into one `<|image_pad|>` token each; images are resized to at most image_size**2 pixels (and at
    least one merged patch), so an image gives a handful of tokens. `vision` and `text` are the version's own
    sub-config fields; `image_std` its normalisation (mean = std), when not CLIP's."""
    import transformers as tf

    tokenizer = train_bpe_tokenizer(texts, spec.vocab_size, _QWEN_VL_TOKENS)
    pixels = dict(
        size={"shortest_edge": (spec.patch_size * spec.scale_factor) ** 2, "longest_edge": spec.image_size**2},
        patch_size=spec.patch_size, merge_size=spec.scale_factor, temporal_patch_size=2,
        **({"image_mean": image_std, "image_std": image_std} if image_std else {}),
    )
    processor = getattr(tf, processor)(
        image_processor=tf.Qwen2VLImageProcessor(**pixels), video_processor=getattr(tf, video_processor)(**pixels),
        tokenizer=tokenizer, chat_template=template,
    )
    token_id = tokenizer.convert_tokens_to_ids
    model_config = getattr(tf, config)(
        vision_config=dict(
            depth=spec.vision_layers, num_heads=spec.vision_heads, patch_size=spec.patch_size,
            spatial_merge_size=spec.scale_factor, temporal_patch_size=2, **vision,
        ),
        text_config=_text_config(spec, len(tokenizer), _ids(tokenizer, _QWEN_VL_TOKENS), **text),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        tie_word_embeddings=True,
    )
    return _save(out_dir, _init(tf.AutoModelForImageTextToText, model_config, seed), processor, tokenizer)


def build_tiny_qwen2_vl(out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int = 0) -> Path:
    """Qwen2-VL: the vision tower's width is embed_dim, its output (hidden_size) the decoder's width."""
    return _build_qwen_vl(
        out_dir, texts, spec, seed, config="Qwen2VLConfig", processor="Qwen2VLProcessor",
        video_processor="Qwen2VLVideoProcessor", template=_QWEN2_VL_TEMPLATE,
        vision=dict(embed_dim=spec.vision_hidden_size, hidden_size=spec.hidden_size, mlp_ratio=2),
        text=dict(rope_parameters=_mrope(spec, 1e6)),
    )


def build_tiny_qwen2_5_vl(out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int = 0) -> Path:
    """Qwen2.5-VL: window attention in the vision tower, full attention in its last block."""
    return _build_qwen_vl(
        out_dir, texts, spec, seed, config="Qwen2_5_VLConfig", processor="Qwen2_5_VLProcessor",
        video_processor="Qwen2VLVideoProcessor", template=_QWEN2_VL_TEMPLATE,
        vision=dict(
            hidden_size=spec.vision_hidden_size, intermediate_size=spec.vision_hidden_size * 2,
            out_hidden_size=spec.hidden_size, window_size=spec.patch_size * spec.scale_factor * 2,
            fullatt_block_indexes=[spec.vision_layers - 1],
        ),
        text=dict(rope_parameters=_mrope(spec, 1e6)),
    )


def build_tiny_qwen3_vl(out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int = 0) -> Path:
    """Qwen3-VL: learned (interpolated) vision position embeddings for an image_size grid, one DeepStack layer,
    interleaved mrope, no default system turn."""
    return _build_qwen_vl(
        out_dir, texts, spec, seed, config="Qwen3VLConfig", processor="Qwen3VLProcessor",
        video_processor="Qwen3VLVideoProcessor", template=_QWEN3_VL_TEMPLATE, image_std=[0.5, 0.5, 0.5],
        vision=dict(
            hidden_size=spec.vision_hidden_size, intermediate_size=spec.vision_hidden_size * 2,
            out_hidden_size=spec.hidden_size, num_position_embeddings=(spec.image_size // spec.patch_size) ** 2,
            deepstack_visual_indexes=[spec.vision_layers // 2],
        ),
        text=dict(head_dim=spec.hidden_size // spec.num_heads, rope_parameters=_mrope(spec, 5e6, mrope_interleaved=True)),
    )


def build_tiny_llava_onevision(out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int = 0) -> Path:
    """LLaVA-OneVision: SigLIP + Qwen2, anyres tiling on a grid of at most 2 x 2 tiles of image_size, all patch
    features kept (strategy "full", SigLIP has no CLS token); scale_factor is unused (it pools video only)."""
    from transformers import (
        AutoModelForImageTextToText, LlavaOnevisionConfig, LlavaOnevisionImageProcessor, LlavaOnevisionProcessor,
        LlavaOnevisionVideoProcessor,
    )

    tokenizer = train_bpe_tokenizer(texts, spec.vocab_size, _LLAVA_TOKENS)
    side = spec.image_size
    pinpoints = [[side * rows, side * cols] for rows in (1, 2) for cols in (1, 2)]
    size = {"height": side, "width": side}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=size, image_grid_pinpoints=pinpoints),
        video_processor=LlavaOnevisionVideoProcessor(size=size),
        tokenizer=tokenizer,
        num_image_tokens=(side // spec.patch_size) ** 2,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
        chat_template=_LLAVA_ONEVISION_TEMPLATE,
    )
    config = LlavaOnevisionConfig(
        vision_config=_siglip(spec, model_type="siglip_vision_model", vision_use_head=False),
        text_config=_text_config(spec, len(tokenizer), _ids(tokenizer, _LLAVA_TOKENS), model_type="qwen2"),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
        vision_aspect_ratio="anyres_max_9",
        tie_word_embeddings=True,
    )
    return _save(out_dir, _init(AutoModelForImageTextToText, config, seed), processor, tokenizer)


def _build_text_only(config_name: str, tokens: _Tokens, template: str, out_dir, texts, spec, seed) -> Path:
    """A causal LM whose processor is its tokenizer (carrying the chat template)."""
    import transformers as tf

    tokenizer = train_bpe_tokenizer(texts, spec.vocab_size, tokens)
    tokenizer.chat_template = template
    config = getattr(tf, config_name)(**_text_config(spec, len(tokenizer), _ids(tokenizer, tokens)))
    return _save(out_dir, _init(tf.AutoModelForCausalLM, config, seed), tokenizer, tokenizer)


def build_tiny_llama(out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int = 0) -> Path:
    return _build_text_only("LlamaConfig", _LLAMA_TOKENS, _LLAMA_TEMPLATE, out_dir, texts, spec, seed)


def build_tiny_qwen2(out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int = 0) -> Path:
    return _build_text_only("Qwen2Config", _QWEN2_TOKENS, _QWEN2_TEMPLATE, out_dir, texts, spec, seed)


@dataclass(frozen=True)
class TinyFamily:
    """One row of TINY_FAMILIES: how to build the family, and what it looks like once built."""

    build: Callable[..., Path]  # (out_dir, texts, spec, seed=...) -> out_dir
    architecture: str  # the class the Auto classes load
    eos: str  # the end-of-turn token generation stops on


#: family name (as in `tiny:<family>`) -> how to build it and its end-of-turn token.
TINY_FAMILIES: dict[str, TinyFamily] = {
    "smolvlm": TinyFamily(build_tiny_smolvlm, "Idefics3ForConditionalGeneration", "<end_of_utterance>"),
    "qwen2-vl": TinyFamily(build_tiny_qwen2_vl, "Qwen2VLForConditionalGeneration", "<|im_end|>"),
    "qwen2.5-vl": TinyFamily(build_tiny_qwen2_5_vl, "Qwen2_5_VLForConditionalGeneration", "<|im_end|>"),
    "qwen3-vl": TinyFamily(build_tiny_qwen3_vl, "Qwen3VLForConditionalGeneration", "<|im_end|>"),
    "llava-onevision": TinyFamily(build_tiny_llava_onevision, "LlavaOnevisionForConditionalGeneration", "<|im_end|>"),
    "llama": TinyFamily(build_tiny_llama, "LlamaForCausalLM", "<|eot_id|>"),
    "qwen2": TinyFamily(build_tiny_qwen2, "Qwen2ForCausalLM", "<|im_end|>"),
}


def build_tiny(family: str, out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int = 0) -> Path:
    """Build and save the tiny model of `family` (a key of TINY_FAMILIES) under `out_dir`."""
    return TINY_FAMILIES[family].build(out_dir, texts, spec, seed=seed)


def build_smolvlm_on(language_model: Path, out_dir: Path, spec: TinyModel, seed: int = 0) -> Path:
    """SmolVLM's architecture around a real language model: an Idefics3 whose text model and tokenizer are those of
    the causal LM saved at `language_model` (SmolVLM-256M's is SmolLM2-135M), with a small random vision tower and
    connector sized by `spec`. The tokenizer gains SmolVLM's image and end-of-utterance tokens (their embeddings
    start random); the chat template is SmolVLM's. For testing real weights on the vision path without a hub."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer, Idefics3Config

    text = AutoModelForCausalLM.from_pretrained(language_model)
    tokenizer = AutoTokenizer.from_pretrained(language_model)
    tokenizer.add_tokens(["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"],
                         special_tokens=True)
    tokenizer.eos_token = "<end_of_utterance>"
    processor = _smolvlm_processor(tokenizer, spec)
    text_config = {**text.config.to_dict(), "vocab_size": len(tokenizer), "eos_token_id": tokenizer.eos_token_id}
    config = Idefics3Config(
        vision_config=_siglip(spec), text_config=text_config, scale_factor=spec.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = _init(AutoModelForImageTextToText, config, seed)
    weights = text.model.state_dict()
    embeddings = weights.pop("embed_tokens.weight")
    missing, unexpected = model.model.text_model.load_state_dict(weights, strict=False)
    if missing != ["embed_tokens.weight"] or unexpected:
        raise ValueError(f"{language_model} is not a Llama-architecture language model (missing {missing}, "
                         f"unexpected {unexpected})")
    with torch.no_grad():
        model.model.text_model.embed_tokens.weight[: len(embeddings)] = embeddings
    return _save(out_dir, model, processor, tokenizer)
