"""Model + processor: from a hub id, a local save_pretrained directory, a GGUF file, or the embedded tiny default.

`tiny:smolvlm` builds a randomly initialised Idefics3 (SmolVLM architecture) with a few hundred
thousand parameters and a BPE tokenizer trained on the dataset's own text, then saves it as an
ordinary save_pretrained directory; from then on it loads exactly like a hub model. A GGUF file (a causal LM,
with its tokenizer and chat template inside) is dequantized by transformers; training converts it once into an
ordinary save_pretrained directory in the run directory.
"""

from __future__ import annotations

import json
import pickle
import struct
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from safetensors import SafetensorError

from .data import Sample, chat_messages
from .errors import UserError, first_line
from .hub import is_hub_id
from .recipe import LoraSection, ModelSection, RecipeError

TINY_PREFIX = "tiny:"


class ModelLoadError(UserError, RuntimeError):
    """The model or processor could not be loaded; one line saying which and why."""


@dataclass
class Policy:
    """What the engine needs of a model: the network, its processor and the ids that end a completion."""

    model: torch.nn.Module
    processor: object
    eos_token_ids: list[int]
    pad_token_id: int
    blocked_token_ids: list[int]  # special tokens a completion must never contain (image placeholders, ...)
    text_only: bool = False  # a causal LM whose processor is its tokenizer: prompts carry no images

    @property
    def tokenizer(self):
        return tokenizer_of(self.processor)


def tokenizer_of(processor):
    """A VLM processor's tokenizer; a text-only model's processor is its tokenizer."""
    return getattr(processor, "tokenizer", processor)


def is_tiny(name: str) -> bool:
    return name.startswith(TINY_PREFIX)


def resolve_model_path(section: ModelSection, base_dir: Path, texts: Iterable[str], seed: int) -> str:
    """Where to load the model from: the given hub id or directory as it is; a tiny model built, or a GGUF file
    converted, once into `base_dir` (returned as an absolute path, so adapters and checkpoints that record it
    work from any directory)."""
    from .tiny_models import build_tiny

    out = Path(base_dir).resolve()
    if is_tiny(section.name_or_path):
        if not (out / "config.json").is_file():
            build_tiny(tiny_family(section.name_or_path), out, ["User: Assistant:", *texts], section.tiny, seed=seed)
        return str(out)
    if gguf_file(section.name_or_path) is not None:
        if not (out / "config.json").is_file():
            convert_gguf(section.name_or_path, out, section.trust_remote_code)
        return str(out)
    return section.name_or_path


def gguf_file(name_or_path: str) -> Path | None:
    """The GGUF file that `name_or_path` names (a `.gguf` file, or the only one in a directory without a
    config.json); None for anything else."""
    path = Path(name_or_path).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"cannot load model '{name_or_path}': no such file")
        return path
    if not path.is_dir() or (path / "config.json").is_file():
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise ModelLoadError(f"cannot load model '{name_or_path}': it holds several GGUF files "
                             f"({', '.join(p.name for p in found)}); name one")
    return found[0] if found else None


def _source(name_or_path: str) -> tuple[str, dict]:
    """(what to pass to from_pretrained, extra keyword arguments): a GGUF file is its folder + `gguf_file`."""
    gguf = gguf_file(name_or_path)
    return (str(gguf.parent), {"gguf_file": gguf.name}) if gguf is not None else (name_or_path, {})


def convert_gguf(name_or_path: str, out: Path, trust_remote_code: bool = False) -> None:
    """Dequantize a GGUF model once into an ordinary save_pretrained directory (written aside, then renamed)."""
    import shutil

    policy = load_policy(name_or_path, trust_remote_code=trust_remote_code)
    config = policy.model.config
    del config.quantization_config  # the weights are plain float tensors now; save them as such
    model = type(policy.model)(config)
    model.load_state_dict(policy.model.state_dict())
    model.generation_config = policy.model.generation_config
    out = Path(out)
    tmp = out.parent / f".tmp-{out.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_policy(policy, tmp, model)
    tmp.rename(out)


def tiny_family(name: str) -> str:
    """The family of a `tiny:<family>` model name; ModelLoadError naming the known ones otherwise."""
    from .tiny_models import TINY_FAMILIES

    family = name[len(TINY_PREFIX):]
    if family not in TINY_FAMILIES:
        raise ModelLoadError(f"[model].name_or_path: unknown tiny model '{name}'; known: tiny:{', tiny:'.join(TINY_FAMILIES)}")
    return family


def load_policy(
    name_or_path: str, dtype: str = "float32", *, attn_implementation: str | None = None,
    trust_remote_code: bool = False, merge_adapter: bool = True, processor_options: dict | None = None,
) -> Policy:
    """Load a model and its processor through the Auto classes: AutoModelForImageTextToText + AutoProcessor for
    vision-language models, AutoModelForCausalLM + AutoTokenizer for text-only ones.

    A PEFT adapter directory (one with adapter_config.json) loads its base model, then the adapter: merged into
    the weights (evaluation), or as a trainable PeftModel (`merge_adapter=False`, resuming a LoRA run). The
    processor comes from the adapter directory when it holds one, else from the base; `processor_options`
    (image resolution, tiling, ...) go to its from_pretrained.
    """
    if gguf_file(name_or_path) is None and not is_hub_id(name_or_path) and not Path(name_or_path).exists():
        raise ModelLoadError(f"cannot load model '{name_or_path}': no such directory")
    base = adapter_base_model(name_or_path)
    model_source = name_or_path if base is None else base
    processor_source = name_or_path if base is None or _has_tokenizer(name_or_path) else base
    try:
        config = load_config(model_source, trust_remote_code)
        model_class, text_only = model_class_for(config)
        processor = load_processor(processor_source, text_only, trust_remote_code, processor_options)
        source, extra = _source(model_source)
        if attn_implementation:
            extra["attn_implementation"] = attn_implementation
        model = model_class.from_pretrained(source, dtype=getattr(torch, dtype), trust_remote_code=trust_remote_code,
                                            **extra)
        if base is not None:
            model = _load_adapter(model, name_or_path, merge=merge_adapter)
    except (OSError, ValueError, ImportError, EOFError, struct.error, SafetensorError) as exc:
        # a missing or damaged file: a truncated safetensors (SafetensorError) or GGUF (struct.error, EOFError)
        raise ModelLoadError(f"cannot load model '{name_or_path}': {hub_only(name_or_path)}"
                             f"{type(exc).__name__ + ': ' if isinstance(exc, (struct.error, EOFError)) else ''}"
                             f"{first_line(exc)}") from None
    except pickle.UnpicklingError:  # transformers loads .bin weights with torch.load(weights_only=True)
        raise ModelLoadError(f"cannot load model '{name_or_path}': refused: a weights file holds objects other than "
                             "tensors, which could run code when loaded") from None
    check_chat_template(processor, text_only, name_or_path)
    tokenizer = tokenizer_of(processor)
    eos = _eos_ids(model, tokenizer)
    blocked = sorted(set(tokenizer.all_special_ids) - set(eos))
    return Policy(model, processor, eos, _pad_id(tokenizer), blocked, text_only)


def check_chat_template(processor, text_only: bool, name_or_path: str) -> None:
    """Render a one-question prompt now: a chat template that fails (a syntax error, or one the sandbox refuses
    because it reaches for Python internals) is a load error, not a crash at the first step."""
    from jinja2 import TemplateError

    probe = Sample(id="probe", task="probe", question="?", answer="?")
    try:
        processor.apply_chat_template(chat_messages(probe, text_only), add_generation_prompt=True, tokenize=False)
    except TemplateError as exc:
        raise ModelLoadError(f"cannot load model '{name_or_path}': its chat template fails "
                             f"({type(exc).__name__}: {first_line(exc)})") from None


def hub_only(name_or_path: str) -> str:
    """What a load failure message should say first when `name_or_path` could be a local path the user meant but
    no such path exists, so that it was looked up as a hub id (`models/mine` typed from the wrong folder)."""
    if is_hub_id(name_or_path) and not Path(name_or_path).exists():
        return f"no local directory {Path(name_or_path).resolve()}, and as a hub id: "
    return ""


def load_config(name_or_path: str, trust_remote_code: bool = False):
    """The model's config (AutoConfig), from a hub id, a directory or a GGUF file."""
    from transformers import AutoConfig

    source, extra = _source(name_or_path)
    return AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code, **extra)


def load_processor(name_or_path: str, text_only: bool, trust_remote_code: bool = False, options: dict | None = None):
    """AutoTokenizer for a text-only model, AutoProcessor for a vision-language model, with `options`."""
    from transformers import AutoProcessor, AutoTokenizer

    auto = AutoTokenizer if text_only else AutoProcessor
    source, extra = _source(name_or_path)
    return auto.from_pretrained(source, trust_remote_code=trust_remote_code, **extra, **(options or {}))


def context_length(config) -> int | None:
    """The most positions the language model takes, prompt and completion together; None when its config
    does not say."""
    return getattr(config.get_text_config(), "max_position_embeddings", None)


def check_reads_images(policy: Policy, name: str, samples: Iterable[Sample], where: str) -> None:
    """ModelLoadError when a text-only model is given samples with images: it would drop them without a word and
    learn or be scored on the questions alone."""
    with_images = sum(1 for sample in samples if sample.images)
    if policy.text_only and with_images:
        raise ModelLoadError(f"{where}: {with_images} samples have images, and the model '{name}' reads text only "
                             "(it would never see them); use a vision-language model, or a dataset without images")


def check_completion_length(max_new_tokens: int, context: int | None, prompt_tokens: int = 1) -> None:
    """RecipeError when a prompt of `prompt_tokens` plus `max_new_tokens` cannot fit the model's positions."""
    if context is not None and prompt_tokens + max_new_tokens > context:
        prompt = f" after a prompt of {prompt_tokens} tokens" if prompt_tokens > 1 else ""
        raise RecipeError(f"[rollout].max_new_tokens = {max_new_tokens} does not fit the model's context of "
                          f"{context} positions{prompt}")


def load_for_recipe(section: ModelSection, source: str, merge_adapter: bool = True) -> Policy:
    """load_policy with the recipe's `[model]` loading options."""
    return load_policy(source, section.dtype, attn_implementation=section.attn_implementation,
                       trust_remote_code=section.trust_remote_code, merge_adapter=merge_adapter,
                       processor_options=section.processor)


def model_class_for(config) -> tuple[type, bool]:
    """(Auto model class, text_only) for a model config."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    if config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES or hasattr(config, "vision_config"):
        return AutoModelForImageTextToText, False
    return AutoModelForCausalLM, True


# Where each family keeps its vision encoder (Idefics3/SmolVLM, LLaVA-OneVision, Qwen-VL): the one per-family
# table the engine needs, for `freeze_vision`.
VISION_TOWERS = ("vision_model", "vision_tower", "visual")
# What maps the vision encoder's output into the language model (Idefics3, LLaVA-OneVision; Qwen's merger is part
# of `visual`): with the towers, everything an image's features depend on.
CONNECTORS = ("connector", "multi_modal_projector", "image_newline")
# LoRA's default targets: attention and MLP projections outside the vision encoder, which covers the language
# model of every family (Idefics3 `text_model`, Qwen and LLaVA `language_model`, plain causal LMs `model.layers`).
DEFAULT_LORA_TARGETS = r"^(?!.*(vision|visual)).*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def prepare_for_training(policy: Policy, section: ModelSection) -> None:
    """Apply the recipe's `[model]` training switches: LoRA adapters (unless the policy already carries them,
    as when resuming a LoRA run), a frozen vision encoder, and gradient checkpointing."""
    if section.lora is not None and not hasattr(policy.model, "peft_config"):
        policy.model = add_lora(policy.model, section.lora)
    if section.freeze_vision:
        for module in vision_towers(policy.model):
            module.requires_grad_(False)
    if section.gradient_checkpointing:
        enable_checkpointing(policy.model)
        if section.lora is not None:
            policy.model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph


def enable_checkpointing(model) -> None:
    """Recompute activations in the backward pass (non-reentrant), by transformers' current name for it
    (`activation_checkpointing_enable`; `gradient_checkpointing_enable` before it, deprecated)."""
    enable = getattr(model, "activation_checkpointing_enable", None)
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model, lora: LoraSection):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, use_rslora=lora.use_rslora,
        target_modules=lora.target_modules or DEFAULT_LORA_TARGETS,
    )
    try:
        with _quiet_peft():
            return get_peft_model(model, config)
    except ValueError as exc:  # no module matched the regex
        raise ModelLoadError(f"[model.lora].target_modules: {str(exc).splitlines()[0]}") from None


def image_features_frozen(model: torch.nn.Module) -> bool:
    """Whether no weight an image's features depend on (vision towers, connectors) is trained, so that features
    computed once stay valid for a whole step, across optimizer steps and for the reference model."""
    parts = set(VISION_TOWERS) | set(CONNECTORS)
    return not any(p.requires_grad for name, p in model.named_parameters() if parts & set(name.split(".")))


def vision_towers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The vision encoder module(s) of a vision-language model; none for a text-only one."""
    found = []
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in VISION_TOWERS and not any(name.startswith(f + ".") for f, _ in found):
            found.append((name, module))
    return [module for _, module in found]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The language model's decoder layers: the modules transformers keeps whole (`_no_split_modules`) outside the
    vision towers, which stay with the rest of the model in one unit (a batch without images then runs the same
    collective calls as one with images)."""
    kept = set(getattr(model, "_no_split_modules", None) or ())
    towers = {id(m) for tower in vision_towers(model) for m in tower.modules()}
    return [m for m in model.modules() if type(m).__name__ in kept and id(m) not in towers]


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


def _load_adapter(model, adapter_dir: str, merge: bool):
    from peft import PeftModel

    with _quiet_peft():
        if merge:
            return PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
        return PeftModel.from_pretrained(model, adapter_dir, is_trainable=True)


@contextmanager
def _quiet_peft():
    """peft asks transformers a deprecated question (`is_gradient_checkpointing`); users need not see it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _eos_ids(model, tokenizer) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = tokenizer.eos_token_id
    ids = configured if isinstance(configured, list) else [configured]
    return [int(i) for i in ids if i is not None]


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else tokenizer.eos_token_id)


def save_policy(policy: Policy, out_dir: Path, model: torch.nn.Module | None = None, state_dict: dict | None = None
                ) -> None:
    """Save the (unwrapped) model as safetensors, with `state_dict` as its weights when given (gathered from the
    processes), and the processor next to it."""
    (policy.model if model is None else model).save_pretrained(out_dir, safe_serialization=True, state_dict=state_dict)
    policy.processor.save_pretrained(out_dir)
