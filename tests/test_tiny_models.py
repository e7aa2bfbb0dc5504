"""Every tiny model family builds, loads through the Auto classes, and runs the rollout/training path."""

import hashlib
from pathlib import Path

import pytest
import torch
from PIL import Image

from dyme_cli.data import Sample
from dyme_cli.modeling import load_policy
from dyme_cli.recipe import TinyModel
from dyme_cli.rollout import encode_prompt, generate, sampling_settings, target_ids
from dyme_cli.scoring import completion_logprobs, with_completion
from dyme_cli.tiny_models import TINY_FAMILIES, build_tiny

SPEC = TinyModel(image_size=32, hidden_size=32, vision_hidden_size=32)
QUESTIONS = ["How many bars are there?", "Which bar is the tallest one in this chart, and what is its colour?"]
TARGET = "The red bar is the tallest. Answer: red"
TEXTS = ["User: Assistant:", *QUESTIONS, TARGET]

QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"
QWEN_SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
CHATML_ASSISTANT = "<|im_end|>\n<|im_start|>assistant\n"
LLAMA_HEADER = "<|start_header_id|>{}<|end_header_id|>\n\n"
# family -> (loaded class, how a prompt starts, what the template writes per image (None: text-only), how it ends)
EXPECTED = {
    "smolvlm": ("Idefics3ForConditionalGeneration", "<|im_start|>User:", "<image>", "<end_of_utterance>\nAssistant:"),
    "qwen2-vl": ("Qwen2VLForConditionalGeneration", QWEN_SYSTEM + "<|im_start|>user\n", QWEN_IMAGE, CHATML_ASSISTANT),
    "qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", QWEN_SYSTEM + "<|im_start|>user\n", QWEN_IMAGE, CHATML_ASSISTANT),
    "qwen3-vl": ("Qwen3VLForConditionalGeneration", "<|im_start|>user\n", QWEN_IMAGE, CHATML_ASSISTANT),
    "llava-onevision": ("LlavaOnevisionForConditionalGeneration", "<|im_start|>user ", "<image>\n", "<|im_end|><|im_start|>assistant\n"),
    "llama": ("LlamaForCausalLM", "<|begin_of_text|>" + LLAMA_HEADER.format("user"), None, "<|eot_id|>" + LLAMA_HEADER.format("assistant")),
    "qwen2": ("Qwen2ForCausalLM", QWEN_SYSTEM + "<|im_start|>user\n", None, CHATML_ASSISTANT),
}
VISION_PARTS = ("visual", "vision_tower", "vision_model", "multi_modal_projector", "connector")


def test_every_family_is_tested():
    assert set(EXPECTED) == set(TINY_FAMILIES)


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images")
    Image.new("RGB", (40, 28), (200, 40, 40)).save(root / "wide.png")  # non-square: anyres / dynamic resolution
    Image.new("RGB", (32, 32), (40, 40, 200)).save(root / "square.png")
    return root


@pytest.fixture(scope="module", params=list(TINY_FAMILIES))
def built(request, tmp_path_factory) -> tuple[str, Path]:
    family = request.param
    return family, build_tiny(family, tmp_path_factory.mktemp(family) / "model", TEXTS, SPEC, seed=0)


@pytest.fixture(scope="module")
def policy(built):
    return load_policy(str(built[1]))


def samples(policy, image_dir: Path) -> list[Sample]:
    images = [[], []] if policy.text_only else [["wide.png"], ["square.png"]]
    return [
        Sample(id=str(i), task="vqa", question=q, answer="red", images=imgs, root=image_dir)
        for i, (q, imgs) in enumerate(zip(QUESTIONS, images))
    ]


def test_loads_as_its_family(built, policy):
    family, _ = built
    architecture, _, image, _ = EXPECTED[family]
    model, tokenizer = policy.model, policy.tokenizer
    assert type(model).__name__ == architecture == TINY_FAMILIES[family].architecture
    assert policy.text_only == (image is None)
    assert 25_000 < sum(p.numel() for p in model.parameters()) < 1_000_000  # 100k-360k at the default TinyModel
    vocab = model.get_input_embeddings().weight.shape[0]
    assert len(tokenizer) == vocab
    assert policy.eos_token_ids == [tokenizer.convert_tokens_to_ids(TINY_FAMILIES[family].eos)]
    assert model.generation_config.pad_token_id == policy.pad_token_id == tokenizer.pad_token_id < vocab
    for config in (model.config, model.config.get_text_config()):
        for name, value in config.to_dict().items():
            if name.endswith(("_token_id", "_token_index")) and isinstance(value, int):
                assert 0 <= value < vocab, (name, value)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_generates_and_trains(built, policy, image_dir):
    family, _ = built
    _, start, image, generation_prompt = EXPECTED[family]
    parts = [{"type": "image"}, {"type": "text", "text": QUESTIONS[0]}]
    messages = [{"role": "user", "content": QUESTIONS[0] if policy.text_only else parts}]
    rendered = policy.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered == start + (image or "") + QUESTIONS[0] + generation_prompt
    prompts = [encode_prompt(policy, s) for s in samples(policy, image_dir)]
    assert policy.tokenizer.decode(prompts[0]["input_ids"][0]).endswith(generation_prompt)
    assert prompts[0]["input_ids"].shape[1] != prompts[1]["input_ids"].shape[1]
    if image is None:
        assert set(prompts[0]) == {"input_ids", "attention_mask"}
    else:  # the processor expands the placeholder to the image's tokens, which generation must never emit
        image_id = policy.model.config.image_token_id
        assert (prompts[0]["input_ids"] == image_id).sum() >= 4 and image_id in policy.blocked_token_ids

    torch.manual_seed(0)
    groups = generate(policy, prompts, num_generations=2, max_new_tokens=5, sampling=sampling_settings())
    assert [len(group) for group in groups] == [2, 2]
    for completion in (c for group in groups for c in group):
        assert 1 <= len(completion.ids) <= 5 and not set(completion.ids) & set(policy.blocked_token_ids)

    target = target_ids(policy, TARGET)
    assert target[-1] == policy.eos_token_ids[0]
    rows = [with_completion(prompts[0], groups[0][0].ids), with_completion(prompts[1], target)]
    policy.model.train()
    policy.model.zero_grad()
    logps, mask = completion_logprobs(policy.model, rows, policy.pad_token_id)
    assert mask.sum(1).tolist() == [len(groups[0][0].ids), len(target)]
    assert torch.isfinite(logps).all() and (logps[mask.bool()] < 0).all()
    (-(logps * mask).sum() / mask.sum()).backward()
    grads = {name: p.grad for name, p in policy.model.named_parameters() if p.grad is not None}
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert policy.model.get_input_embeddings().weight.grad.abs().sum() > 0
    layers = [g for name, g in grads.items() if "layers." in name and not any(part in name for part in VISION_PARTS)]
    assert layers and all(g.abs().sum() > 0 for g in layers)
    if image is not None:  # the image features reach the loss
        assert any(g.abs().sum() > 0 for name, g in grads.items() if any(part in name for part in VISION_PARTS))


def test_same_seed_same_weights(built, tmp_path):
    family, first = built
    second = build_tiny(family, tmp_path / "again", TEXTS, SPEC, seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _sha(first / name) == _sha(second / name), name
    other = build_tiny(family, tmp_path / "other", TEXTS, SPEC, seed=1)
    assert _sha(first / "model.safetensors") != _sha(other / "model.safetensors")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
