"""Model + processor: from a hub id, a local save_pretrained directory, or the embedded tiny default.

`tiny:smolvlm` builds a randomly initialised Idefics3 (SmolVLM architecture) with a few hundred
thousand parameters and a BPE tokenizer trained on the dataset's own text, then saves it as an
ordinary save_pretrained directory; from then on it loads exactly like a hub model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch

from .recipe import ModelSection, TinyModel

TINY_PREFIX = "tiny:"
TINY_FAMILIES = ("smolvlm",)

# Special tokens of the SmolVLM chat format, which the Idefics3 processor looks up by name.
_SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"]
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


class ModelLoadError(RuntimeError):
    """The model or processor could not be loaded; one line saying which and why."""


@dataclass
class Policy:
    """What the engine needs of a model: the network, its processor and the ids that end a completion."""

    model: torch.nn.Module
    processor: object
    eos_token_ids: list[int]
    pad_token_id: int
    blocked_token_ids: list[int]  # special tokens a completion must never contain (image placeholders, ...)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)


def is_tiny(name: str) -> bool:
    return name.startswith(TINY_PREFIX)


def build_tiny_smolvlm(out_dir: Path, texts: Iterable[str], spec: TinyModel, seed: int = 0) -> Path:
    """Create and save a random-init Idefics3 model and its processor under `out_dir`."""
    from transformers import AutoModelForImageTextToText, Idefics3Config, Idefics3ImageProcessor, Idefics3Processor

    tokenizer = train_bpe_tokenizer(texts, spec.vocab_size)
    image_processor = Idefics3ImageProcessor(
        do_image_splitting=False,
        size={"longest_edge": spec.image_size},
        max_image_size={"longest_edge": spec.image_size},
    )
    image_seq_len = (spec.image_size // spec.patch_size) ** 2 // spec.scale_factor**2
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=image_seq_len, chat_template=_CHAT_TEMPLATE
    )
    vocab = len(tokenizer)
    config = Idefics3Config(
        vision_config=dict(
            hidden_size=spec.vision_hidden_size,
            intermediate_size=spec.vision_hidden_size * 2,
            num_hidden_layers=spec.vision_layers,
            num_attention_heads=spec.vision_heads,
            image_size=spec.image_size,
            patch_size=spec.patch_size,
        ),
        text_config=dict(
            model_type="llama",
            vocab_size=vocab,
            hidden_size=spec.hidden_size,
            intermediate_size=spec.intermediate_size,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            num_key_value_heads=spec.num_heads,
            max_position_embeddings=1024,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.convert_tokens_to_ids("<|im_start|>"),
            eos_token_id=tokenizer.eos_token_id,
            tie_word_embeddings=True,
        ),
        scale_factor=spec.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForImageTextToText.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = None
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int):
    """A byte-level BPE tokenizer trained on `texts`, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="<end_of_utterance>",
        bos_token="<|im_start|>",
        padding_side="left",
    )


def resolve_model_path(section: ModelSection, run_dir: Path, texts: Iterable[str], seed: int) -> str:
    """Where to load the model from: the given hub id/dir, or a freshly built tiny model in the run dir."""
    if not is_tiny(section.name):
        return section.name
    family = section.name[len(TINY_PREFIX):]
    if family not in TINY_FAMILIES:
        raise ModelLoadError(f"[model].name: unknown tiny model '{section.name}'; known: tiny:{', tiny:'.join(TINY_FAMILIES)}")
    out = Path(run_dir) / "base-model"
    texts = ["User: Assistant:", *texts]
    if not (out / "config.json").is_file():
        build_tiny_smolvlm(out, texts, section.tiny, seed=seed)
    return str(out)


def load_policy(name_or_path: str, dtype: str = "float32") -> Policy:
    """Load any image-text-to-text model and its processor through the Auto classes.

    A PEFT adapter directory (one with adapter_config.json) loads its base model, then the adapter, merged
    into the weights; the processor comes from the adapter directory when it holds one, else from the base.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if _looks_local(name_or_path) and not Path(name_or_path).exists():
        raise ModelLoadError(f"cannot load model '{name_or_path}': no such directory")
    base = adapter_base_model(name_or_path)
    model_source = name_or_path if base is None else base
    processor_source = name_or_path if base is None or _has_tokenizer(name_or_path) else base
    try:
        processor = AutoProcessor.from_pretrained(processor_source)
        model = AutoModelForImageTextToText.from_pretrained(model_source, dtype=getattr(torch, dtype))
        if base is not None:
            model = _merge_adapter(model, name_or_path)
    except (OSError, ValueError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load model '{name_or_path}': {first_line}") from None
    tokenizer = getattr(processor, "tokenizer", processor)
    eos = _eos_ids(model, tokenizer)
    blocked = sorted(set(tokenizer.all_special_ids) - set(eos))
    return Policy(model, processor, eos, _pad_id(tokenizer), blocked)


def _looks_local(name_or_path: str) -> bool:
    """A path rather than a hub id (`org/name`)."""
    return Path(name_or_path).is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") > 1


def adapter_base_model(name_or_path: str) -> str | None:
    """The base model of a local PEFT adapter directory; None for anything else."""
    config = Path(name_or_path) / "adapter_config.json"
    if not config.is_file():
        return None
    base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base:
        raise ModelLoadError(f"{config}: no base_model_name_or_path; cannot tell which model the adapter belongs to")
    return base


def _has_tokenizer(directory: str) -> bool:
    return (Path(directory) / "tokenizer_config.json").is_file()


def _merge_adapter(model, adapter_dir: str):
    from peft import PeftModel

    return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()


def _eos_ids(model, tokenizer) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return [int(i) for i in ids if i is not None]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def save_policy(policy: Policy, out_dir: Path, model: torch.nn.Module | None = None) -> None:
    """Save the (unwrapped) model as safetensors and the processor next to it."""
    (policy.model if model is None else model).save_pretrained(out_dir, safe_serialization=True)
    policy.processor.save_pretrained(out_dir)
