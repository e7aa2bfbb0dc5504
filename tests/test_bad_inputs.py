"""A sweep of bad inputs, as a new user makes them: each is exit code 2 with one `error:` line naming the file,
line, key or option at fault, and never a traceback.

Every case builds its inputs in a fresh folder and runs one `dyme` command line. Recipes are checked with
`train --dry-run` (everything a run checks before its first step, without training); checkpoints come from one
tiny training run shared by the module.
"""

from __future__ import annotations

import json
import pickle
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

from dyme_cli.cli import app
from dyme_cli.recipe import toml_text

from conftest import small_recipe

runner = CliRunner()


@dataclass
class Inputs:
    """The folder a case writes into, the shared chart data and (built on first use) a trained run."""

    tmp: Path
    chart: Path
    trained: Callable[[], Path]

    def recipe(self, patch: dict | None = None, name: str = "recipe.toml", raw: bytes = b"") -> Path:
        """A small valid recipe with `patch` merged into its sections (and `raw` bytes appended)."""
        sections = {
            "run": {"output_dir": str(self.tmp / "run")},
            "model": {"name_or_path": "tiny:smolvlm", "tiny": {"image_size": 32, "hidden_size": 32, "vision_hidden_size": 32}},
            "data": {"train": str(self.chart / "train.jsonl"), "test": str(self.chart / "test.jsonl")},
            "rollout": {"num_generations": 2, "max_new_tokens": 12},
            "train": {"max_steps": 2, "prompts_per_step": 4},
        }
        for section, values in (patch or {}).items():
            sections.setdefault(section, {}).update(values)
        path = self.tmp / name
        path.write_bytes(toml_text(sections).encode("utf-8") + raw)
        return path

    def dataset(self, lines: list[bytes | str | dict], name: str = "data.jsonl") -> Path:
        """A JSONL file next to the chart images; dicts are JSON-encoded, strings and bytes written as they are."""
        folder = self.tmp / "data"
        if not (folder / "images").exists():
            shutil.copytree(self.chart / "images", folder / "images")
        path = folder / name
        path.write_bytes(b"".join(_line_bytes(x) for x in lines))
        return path

    def sample(self, **fields) -> dict:
        """The first chart training sample, with `fields` replaced."""
        first = json.loads((self.chart / "train.jsonl").read_text().splitlines()[0])
        return {**first, **fields}

    def train_on(self, *lines: bytes | str | dict) -> list[str]:
        """`train --dry-run` on a recipe whose training data is `lines`."""
        return ["train", str(self.recipe({"data": {"train": str(self.dataset(list(lines))), "test": None}})), "--dry-run"]


def _line_bytes(line: bytes | str | dict) -> bytes:
    if isinstance(line, dict):
        line = json.dumps(line)
    return (line.encode("utf-8") if isinstance(line, str) else line) + b"\n"


def _exploit(marker: Path) -> bytes:
    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    return pickle.dumps({"step": 1, "payload": Exploit()}, protocol=2)


def _checkpoint_copy(x: Inputs) -> Path:
    """A copy of the shared trained run, so a case may damage it."""
    run = x.tmp / "run"
    shutil.copytree(x.trained(), run)
    return run


def _written(folder: Path, name: str) -> Path:
    """`folder` holding a file `name` from an earlier run."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("{}\n")
    return folder


def _png(x: Inputs) -> bytes:
    return (x.chart / x.sample()["images"][0]).read_bytes()


def _image(x: Inputs, name: str, content: bytes) -> str:
    """An image file of the case's dataset folder, as its samples name it."""
    x.dataset([])  # the folder and its images
    (x.tmp / "data" / "images" / name).write_bytes(content)
    return f"images/{name}"


def _resume(run: Path) -> list[str]:
    """`train --resume` of the copied run, one step longer, with the recipe it recorded."""
    recipe = run.parent / "resume.toml"
    recipe.write_text((run / "recipe.toml").read_text().replace("max_steps = 2", "max_steps = 3"))
    return ["train", str(recipe), "--output", str(run), "--resume"]


def _trained_recipe_args(x: Inputs) -> list[str]:
    recipe = x.tmp / "again.toml"
    recipe.write_text((x.trained() / "recipe.toml").read_text())
    return ["train", str(recipe)]


def _changed_recipe(x: Inputs) -> list[str]:
    """`--resume` with another learning rate, which changes what the run trains."""
    args = _resume(_checkpoint_copy(x))
    recipe = Path(args[1])
    recipe.write_text(recipe.read_text().replace("lr = 0.001", "lr = 0.002"))
    return args


def _locked_run(x: Inputs) -> list[str]:
    """Another process's lock on the run directory (an open file description holding flock, as `dyme train` does)."""
    import fcntl

    (x.tmp / "run").mkdir()
    x.held = open(x.tmp / "run" / ".lock", "a+")
    fcntl.flock(x.held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return ["train", str(x.recipe())]


def _damaged_state(x: Inputs) -> list[str]:
    run = _checkpoint_copy(x)
    for state in run.glob("checkpoints/*/trainer_state.pt"):
        state.write_bytes(state.read_bytes()[:64])
    return _resume(run)


def _planted_state(x: Inputs) -> list[str]:
    run = _checkpoint_copy(x)
    for state in run.glob("checkpoints/*/trainer_state.pt"):
        state.write_bytes(_exploit(x.tmp / "pwned"))
    return _resume(run)


def _planted_weights(x: Inputs) -> list[str]:
    model = x.tmp / "model"
    shutil.copytree(sorted(x.trained().glob("checkpoints/step-*"))[-1], model)
    (model / "model.safetensors").unlink()
    (model / "pytorch_model.bin").write_bytes(_exploit(x.tmp / "pwned"))
    return ["eval", "--checkpoint", str(model), "--data", str(x.chart / "test.jsonl")]


def _hostile_chat_template(x: Inputs) -> list[str]:
    model = x.tmp / "model"
    shutil.copytree(sorted(x.trained().glob("checkpoints/step-*"))[-1], model)
    (model / "chat_template.jinja").write_text("{{ ''.__class__.__mro__[1].__subclasses__() }}")
    return ["eval", "--checkpoint", str(model), "--data", str(x.chart / "test.jsonl")]


def _traces(x: Inputs, *lines: str | dict) -> Path:
    path = x.tmp / "traces.jsonl"
    path.write_bytes(b"".join(_line_bytes(t) for t in lines))
    return path


def _verifier_cases(x: Inputs, *lines: str | dict) -> Path:
    path = x.tmp / "cases.jsonl"
    path.write_bytes(b"".join(_line_bytes(t) for t in lines))
    return path


def _resume_without_recipe(x: Inputs) -> list[str]:
    """`--resume` of a run whose recorded recipe.toml was deleted."""
    args = _resume(_checkpoint_copy(x))
    (Path(args[3]) / "recipe.toml").unlink()
    return args


def _resume_with_another_model_shape(x: Inputs) -> list[str]:
    """`--resume --allow-recipe-change` with a wider tiny model than the checkpoints hold."""
    args = _resume(_checkpoint_copy(x))
    recipe = Path(args[1])
    recipe.write_text(recipe.read_text().replace("hidden_size = 32", "hidden_size = 48", 1))
    return [*args, "--allow-recipe-change"]


def _resume_adding_lora(x: Inputs) -> list[str]:
    """`--resume --allow-recipe-change` with LoRA adapters the checkpoints do not have."""
    args = _resume(_checkpoint_copy(x))
    recipe = Path(args[1])
    recipe.write_text(recipe.read_text() + "\n[model.lora]\nr = 4\n")
    return [*args, "--allow-recipe-change"]


def _damaged_checkpoint(x: Inputs, command: str) -> list[str]:
    """A checkpoint whose weights file was cut short (a copy interrupted, a full disk)."""
    step = sorted(_checkpoint_copy(x).glob("checkpoints/step-*"))[-1]
    weights = step / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    if command == "eval":
        return ["eval", "--checkpoint", str(step), "--data", str(x.chart / "test.jsonl")]
    return ["export", str(step), "--out", str(x.tmp / "out")]


def _truncated_gguf(x: Inputs) -> list[str]:
    path = x.tmp / "model.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00\x10")  # the magic and version, then the file ends
    return ["eval", "--checkpoint", str(path), "--data", str(x.chart / "test.jsonl")]


GOOD_TRACE = {"kind": "rollout", "step": 1, "prompt_id": "a", "mode": "explore", "completion": "2 + 2 = 4. Answer: 4",
              "answer": "4", "gold": "4", "correct": True, "rewards": {"accuracy": 1.0}}
CASE = {"completion": "Answer: 3", "expect": True,
        "sample": {"id": "a", "task": "chart", "question": "How many?", "answer": "3"}}

# (id, the command line built in the case's folder, what the one error line says)
CASES: list[tuple[str, Callable[[Inputs], list[str]], str]] = [
    # ---------------------------------------------------------------- recipes
    ("recipe-missing", lambda x: ["train", str(x.tmp / "nope.toml"), "--dry-run"], "nope.toml: recipe file not found"),
    ("recipe-is-a-directory", lambda x: ["train", str(x.tmp), "--dry-run"], "is a directory, not a recipe file"),
    ("recipe-not-utf8", lambda x: ["train", str(x.recipe(raw=b"# caf\xe9\n")), "--dry-run"], "recipe.toml: not UTF-8 text"),
    ("recipe-not-toml", lambda x: ["train", str(x.recipe(raw=b"[train\n")), "--dry-run"], "recipe.toml: not valid TOML"),
    ("recipe-unknown-section", lambda x: ["train", str(x.recipe({"trian": {"max_steps": 1}})), "--dry-run"], "[trian]: unknown key"),
    ("recipe-unknown-key", lambda x: ["train", str(x.recipe({"train": {"max_step": 1}})), "--dry-run"], "[train].max_step: unknown key"),
    ("recipe-lr-inf", lambda x: ["train", str(x.recipe({"optim": {"lr": float("inf")}})), "--dry-run"], "[optim].lr: Input should be a finite number"),
    ("recipe-lr-nan", lambda x: ["train", str(x.recipe({"optim": {"lr": float("nan")}})), "--dry-run"], "[optim].lr: Input should be a finite number"),
    ("recipe-lr-huge", lambda x: ["train", str(x.recipe({"optim": {"lr": 5.0}})), "--dry-run"], "[optim].lr: Input should be less than or equal to 1"),
    ("recipe-lr-negative", lambda x: ["train", str(x.recipe({"optim": {"lr": -1e-4}})), "--dry-run"], "[optim].lr: Input should be greater than 0"),
    ("recipe-weight-decay-overflows", lambda x: ["train", str(x.recipe({"optim": {"weight_decay": 1e300}})), "--dry-run"],
     "[optim]: weight_decay × lr = 8e+295 must be below 1"),
    ("recipe-weight-decay-zeroes", lambda x: ["train", str(x.recipe({"optim": {"lr": 0.5, "weight_decay": 2.0}})), "--dry-run"],
     "weight_decay × lr = 1 must be below 1"),
    ("recipe-epsilon-huge", lambda x: ["train", str(x.recipe({"train": {"epsilon": 1e308}})), "--dry-run"],
     "[train].epsilon: Input should be less than or equal to 10"),
    ("recipe-epsilon-high-huge", lambda x: ["train", str(x.recipe({"train": {"epsilon_high": 1e308}})), "--dry-run"],
     "[train].epsilon_high: Input should be less than or equal to 10"),
    ("recipe-reward-weight-nan", lambda x: ["train", str(x.recipe({"train": {"reward_weights": {"accuracy": float("nan")}}})),
                                            "--dry-run"], "[train.reward_weights].accuracy: Input should be a finite number"),
    ("recipe-beta2-one", lambda x: ["train", str(x.recipe({"optim": {"betas": [0.9, 1.0]}})), "--dry-run"], "[optim.betas].1: Input should be less than 1"),
    ("recipe-grad-norm-inf", lambda x: ["train", str(x.recipe({"optim": {"max_grad_norm": float("inf")}})), "--dry-run"],
     "[optim].max_grad_norm: Input should be a finite number"),
    ("recipe-seed-negative", lambda x: ["train", str(x.recipe({"run": {"seed": -1}})), "--dry-run"], "[run].seed: Input should be greater than or equal to 0"),
    ("recipe-seed-huge", lambda x: ["train", str(x.recipe({"run": {"seed": 2**40}})), "--dry-run"], "[run].seed: Input should be less than or equal to 4294967295"),
    ("recipe-workers-huge", lambda x: ["train", str(x.recipe({"verifier": {"workers": 100000}})), "--dry-run"], "[verifier].workers: Input should be less than or equal to 256"),
    ("recipe-tokens-huge", lambda x: ["train", str(x.recipe({"rollout": {"max_new_tokens": 10**12}})), "--dry-run"],
     "[rollout].max_new_tokens: Input should be less than or equal to 1000000"),
    ("recipe-tokens-beyond-context", lambda x: ["train", str(x.recipe({"rollout": {"max_new_tokens": 5000}})), "--dry-run"],
     "[rollout].max_new_tokens = 5000 does not fit the model's context of 1024 positions"),
    ("recipe-prompts-huge", lambda x: ["train", str(x.recipe({"train": {"prompts_per_step": 10**9}})), "--dry-run"],
     "[train].prompts_per_step: Input should be less than or equal to 65536"),
    ("recipe-k-one", lambda x: ["train", str(x.recipe({"rollout": {"num_generations": 1}})), "--dry-run"], "[rollout].num_generations: Input should be greater than or equal to 2"),
    ("recipe-temperature-zero", lambda x: ["train", str(x.recipe({"rollout": {"temperature": 0}})), "--dry-run"], "[rollout].temperature: Input should be greater than 0"),
    ("recipe-algorithm", lambda x: ["train", str(x.recipe({"train": {"algorithm": "ppo"}})), "--dry-run"], "[train].algorithm: Input should be 'dyme'"),
    ("recipe-dtype", lambda x: ["train", str(x.recipe({"model": {"dtype": "float8"}})), "--dry-run"], "[model].dtype: Input should be 'float32'"),
    ("recipe-lora-regex", lambda x: ["train", str(x.recipe({"model": {"lora": {"target_modules": "(["}}})), "--dry-run"],
     "[model.lora].target_modules: not a valid regular expression"),
    ("recipe-blank-answer-flag", lambda x: ["train", str(x.recipe({"verifier": {"answer_flag": "  "}})), "--dry-run"],
     "[verifier].answer_flag: must not be blank"),
    ("recipe-template-without-question", lambda x: ["train", str(x.recipe({"data": {"prompt_template": "Look."}})), "--dry-run"],
     "[data].prompt_template: must contain the placeholder {question}"),
    ("recipe-literal-secret", lambda x: ["train", str(x.recipe({"verifier": {"options": {"chart": {"api_key": "sk-1"}}}})), "--dry-run"],
     'chart.api_key looks like a secret: write api_key = { env = "VARIABLE" }'),
    ("recipe-unset-secret", lambda x: ["train", str(x.recipe({"verifier": {"options": {"chart": {"tolerance": {"env": "DYME_SWEEP_UNSET"}}}}})), "--dry-run"],
     "[verifier.options.chart].tolerance: the environment variable DYME_SWEEP_UNSET is not set"),
    ("recipe-unknown-verifier-options", lambda x: ["train", str(x.recipe({"verifier": {"options": {"chrat": {}}}})), "--dry-run"],
     "[verifier.options.chrat]: unknown verifier 'chrat'"),
    ("recipe-bad-verifier-option", lambda x: ["train", str(x.recipe({"verifier": {"options": {"chart": {"tolerance": "lots"}}}})), "--dry-run"],
     "[verifier.options.chart].tolerance: Input should be a valid number"),
    ("recipe-unknown-tiny-family", lambda x: ["train", str(x.recipe({"model": {"name_or_path": "tiny:nosuch"}})), "--dry-run"],
     "[model].name_or_path: unknown tiny model 'tiny:nosuch'"),
    ("recipe-missing-model-dir", lambda x: ["train", str(x.recipe({"model": {"name_or_path": str(x.tmp / "models" / "none")}})), "--dry-run"],
     "[model].name_or_path: cannot load"),
    ("recipe-model-path-from-the-wrong-folder", lambda x: ["train", str(x.recipe({"model": {"name_or_path": "models/mine"}}))],
     "cannot load model 'models/mine': no local directory"),
    ("recipe-llm-checker-without-server", lambda x: ["train", str(x.recipe({"supervision": {"checker": "llm"}})), "--dry-run"],
     '[supervision]: checker or refiner = "llm" needs base_url and model'),
    ("recipe-llm-key-variable-unset", lambda x: ["train", str(x.recipe({"supervision": {
        "checker": "llm", "base_url": "http://127.0.0.1:9/v1", "model": "m", "api_key_env": "DYME_SWEEP_UNSET_KEY"}})),
        "--dry-run"], "[supervision].api_key_env: the environment variable DYME_SWEEP_UNSET_KEY is not set"),
    ("recipe-evolution-without-the-llm", lambda x: ["train", str(x.recipe({"supervision": {"evolve_every": 5}})), "--dry-run"],
     "evolve_every needs checker"),
    ("recipe-missing-data", lambda x: ["train", str(x.recipe({"data": {"train": str(x.tmp / "none.jsonl")}})), "--dry-run"],
     "none.jsonl: dataset file not found"),
    ("recipe-data-is-a-directory", lambda x: ["train", str(x.recipe({"data": {"train": str(x.tmp)}})), "--dry-run"],
     "is a directory, not a dataset file"),
    ("recipe-save-every-zero", lambda x: ["train", str(x.recipe({"run": {"save_every": 0}})), "--dry-run"],
     "[run].save_every: Input should be greater than or equal to 1"),
    # ---------------------------------------------------------------- datasets
    ("data-not-json", lambda x: x.train_on(x.sample(), "{'id': 1}"), "data.jsonl:2: not valid JSON"),
    ("data-not-an-object", lambda x: x.train_on(x.sample(), "[1, 2]"), "data.jsonl:2: expected a JSON object"),
    ("data-not-utf8", lambda x: x.train_on(x.sample(), b'{"id": "caf\xe9"}'), "data.jsonl:2: not UTF-8 text"),
    ("data-nested-too-deeply", lambda x: x.train_on(x.sample(), "[" * 100_000 + "]" * 100_000), "data.jsonl:2: JSON nested too deeply"),
    ("data-missing-answer", lambda x: x.train_on({k: v for k, v in x.sample().items() if k != "answer"}), "data.jsonl:1: field 'answer': Field required"),
    ("data-question-not-text", lambda x: x.train_on(x.sample(question=5)), "data.jsonl:1: field 'question': Input should be a valid string"),
    ("data-unknown-field", lambda x: x.train_on(x.sample(questoin="?")), "data.jsonl:1: field 'questoin': Extra inputs are not permitted"),
    ("data-empty-answer", lambda x: x.train_on(x.sample(answer=" ")), "data.jsonl:1: field 'answer': the gold answer is empty"),
    ("data-empty-id", lambda x: x.train_on(x.sample(id="")), "data.jsonl:1: field 'id': String should have at least 1 character"),
    ("data-huge-question", lambda x: x.train_on(x.sample(question="x" * 100_001)), "data.jsonl:1: field 'question': String should have at most 100000 characters"),
    ("data-repeated-key", lambda x: x.train_on(json.dumps(x.sample())[:-1] + ', "answer": "7"}'),
     "data.jsonl:1: key 'answer' appears twice in one object"),
    ("data-number-of-5000-digits", lambda x: x.train_on(json.dumps(x.sample())[:-1] + ', "facts": {"red": ' + "9" * 5000 + "}}"),
     "data.jsonl:1: a number of more digits than can be read (at most 4300)"),
    ("data-empty-question", lambda x: x.train_on(x.sample(question="  ")), "data.jsonl:1: field 'question': the question is empty"),
    ("data-image-placeholder-in-question", lambda x: x.train_on(x.sample(question="<image> How many bars?")),
     "data.jsonl:1: field 'question': contains '<image>', a processor's image placeholder"),
    ("data-huge-answer", lambda x: x.train_on(x.sample(answer="7" * 100_000)),
     "data.jsonl:1: field 'answer': String should have at most 4096 characters"),
    ("data-prompt-beyond-the-context", lambda x: ["train", str(x.recipe({"data": {
        "train": str(x.dataset([x.sample(question="How many bars are there? " * 300)])), "test": None}}))],
     "its prompt of"),
    ("eval-prompt-beyond-the-context", lambda x: ["eval", "--checkpoint", str(sorted(x.trained().glob("checkpoints/*"))[-1]), "--data",
                                                  str(x.dataset([x.sample(question="Which bar is red? " * 300)]))],
     "new tokens do not fit the model's context of 1024 positions"),
    ("text-only-model-on-images", lambda x: ["train", str(x.recipe({"model": {"name_or_path": "tiny:llama"},
                                                                    "data": {"test": None}}))],
     "samples have images, and the model 'tiny:llama' reads text only"),
    ("data-repeated-id", lambda x: x.train_on(x.sample(id="a"), x.sample(id="a")), "data.jsonl:2: field 'id': 'a' is already the id of line 1"),
    ("data-images-not-a-list", lambda x: x.train_on(x.sample(images="images/0.png")), "data.jsonl:1: field 'images': Input should be a valid list"),
    ("data-image-missing", lambda x: x.train_on(x.sample(images=["images/none.png"])), "data.jsonl:1: field 'images'"),
    ("image-path-too-long", lambda x: x.train_on(x.sample(images=["images/" + "a" * 5000 + ".png"])),
     "data.jsonl:1: field 'images': the path 'images/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa'... (5011 characters) is too long"),
    ("image-truncated", lambda x: x.train_on(x.sample(images=[_image(x, "cut.png", _png(x)[:60])])), "data.jsonl:1: field 'images'"),
    ("image-not-an-image", lambda x: x.train_on(x.sample(images=[_image(x, "page.png", b"<html></html>")])), "data.jsonl:1: field 'images'"),
    ("image-empty", lambda x: x.train_on(x.sample(images=[_image(x, "empty.png", b"")])), "data.jsonl:1: field 'images'"),
    ("image-a-directory", lambda x: x.train_on(x.sample(images=["images"])), "data.jsonl:1: field 'images'"),
    ("image-absolute-path", lambda x: x.train_on(x.sample(images=[str(x.chart / x.sample()["images"][0])])),
     "allow it with [data].allow_external_images = true"),
    ("image-outside-the-folder", lambda x: x.train_on(x.sample(images=["../../" + x.sample()["images"][0]])),
     "allow it with [data].allow_external_images = true"),
    ("data-unknown-task", lambda x: x.train_on(x.sample(), x.sample(id="b", task="chrat")), "data.jsonl:2: field 'task': unknown verifier 'chrat'"),
    ("data-empty-file", lambda x: x.train_on(), "data.jsonl: no samples"),
    # ---------------------------------------------------------------- checkpoints and models
    ("checkpoint-damaged-state", _damaged_state, "trainer_state.pt"),
    ("checkpoint-planted-state", _planted_state, "refused: it holds objects other than tensors"),
    ("model-planted-weights", _planted_weights, "refused: a weights file holds objects other than tensors"),
    ("model-hostile-chat-template", _hostile_chat_template, "its chat template fails (SecurityError"),
    ("run-dir-not-empty", lambda x: [*_trained_recipe_args(x), "--output", str(_checkpoint_copy(x))], "pass --resume to continue it"),
    ("run-dir-recipe-changed", _changed_recipe, "was trained with another recipe: [optim].lr 0.001 -> 0.002"),
    ("run-dir-in-use", _locked_run, "is in use by another dyme process"),
    ("run-dir-under-a-file", lambda x: ["train", str(x.recipe()), "--output", str(_traces(x, GOOD_TRACE) / "run")], "traces.jsonl"),
    ("run-dir-override-without-resume", lambda x: ["train", str(x.recipe()), "--allow-recipe-change"],
     "--allow-recipe-change goes with --resume"),
    ("model-missing-checkpoint", lambda x: ["eval", "--checkpoint", str(x.tmp / "none"), "--data", str(x.chart / "test.jsonl")],
     "no such directory"),
    ("export-missing-checkpoint", lambda x: ["export", str(x.tmp / "none"), "--out", str(x.tmp / "out")], "no such directory"),
    # ---------------------------------------------------------------- verifier plugins
    ("verifier-unknown", lambda x: ["verifiers", "check", "chrat", "--cases", str(_verifier_cases(x, CASE))], "unknown verifier 'chrat'"),
    ("verifier-unknown-option", lambda x: ["verifiers", "check", "chart", "--option", "tolerence=0.1", "--cases", str(_verifier_cases(x, CASE))],
     "[verifier.options.chart].tolerence: unknown option"),
    ("verifier-bad-option-value", lambda x: ["verifiers", "check", "chart", "--option", "tolerance=-1", "--cases", str(_verifier_cases(x, CASE))],
     "[verifier.options.chart]: tolerance must be >= 0"),
    ("verifier-cases-not-json", lambda x: ["verifiers", "check", "chart", "--cases", str(_verifier_cases(x, CASE, "nope"))], "cases.jsonl:2"),
    ("verifier-case-bad-sample", lambda x: ["verifiers", "check", "chart", "--cases", str(_verifier_cases(x, {**CASE, "sample": {"id": "a"}}))],
     "cases.jsonl:1"),
    # ---------------------------------------------------------------- command-line arguments
    ("train-max-steps-zero", lambda x: ["train", str(x.recipe()), "--max-steps", "0"], "--max-steps"),
    ("inspect-steps-reversed", lambda x: ["inspect-traces", str(_traces(x, GOOD_TRACE)), "--step", "5:1"], "--step '5:1': the first step is after the last"),
    ("inspect-steps-malformed", lambda x: ["inspect-traces", str(_traces(x, GOOD_TRACE)), "--step", "a:b"], "--step 'a:b': expected A:B"),
    ("inspect-unknown-mode", lambda x: ["inspect-traces", str(_traces(x, GOOD_TRACE)), "--mode", "nosuch"], "--mode 'nosuch': expected one of"),
    ("inspect-unknown-flag", lambda x: ["inspect-traces", str(_traces(x, GOOD_TRACE)), "--flag", "nosuch"], "unknown flag 'nosuch'"),
    ("inspect-html-is-a-directory", lambda x: ["inspect-traces", str(_traces(x, GOOD_TRACE)), "--html", str(x.tmp)], "--html"),
    ("inspect-html-under-a-file", lambda x: ["inspect-traces", str(_traces(x, GOOD_TRACE)), "--html", str(_traces(x, GOOD_TRACE) / "r.html")],
     "is a file, not a folder"),
    ("inspect-trace-wrong-type", lambda x: ["inspect-traces", str(_traces(x, GOOD_TRACE, {**GOOD_TRACE, "step": "two"}))],
     "traces.jsonl:2: field 'step': Input should be a valid integer"),
    ("inspect-trace-not-json", lambda x: ["inspect-traces", str(_traces(x, GOOD_TRACE, "{"))], "traces.jsonl:2: not valid JSON"),
    ("inspect-missing", lambda x: ["inspect-traces", str(x.tmp / "none.jsonl")], "none.jsonl: no traces file"),
    ("eval-json-is-a-directory", lambda x: ["eval", "--checkpoint", "tiny:smolvlm", "--data", str(x.chart / "test.jsonl"), "--json", str(x.tmp)],
     "--json"),
    ("eval-traces-would-overwrite", lambda x: ["eval", "--checkpoint", "tiny:smolvlm", "--data", str(x.chart / "test.jsonl"),
                                               "--traces", str(_traces(x, GOOD_TRACE))], "the file exists and is not empty"),
    ("eval-missing-data", lambda x: ["eval", "--checkpoint", "tiny:smolvlm", "--data", str(x.tmp / "none.jsonl")], "none.jsonl: dataset file not found"),
    ("eval-template-without-question", lambda x: ["eval", "--checkpoint", "tiny:smolvlm", "--data", str(x.chart / "test.jsonl"),
                                                  "--prompt-template", "Look."], "--prompt-template must contain {question}"),
    ("prepare-negative-count", lambda x: ["prepare", "synthetic-chart", "--out", str(x.tmp / "p"), "--n-train", "-5"],
     "--n-train -5: must be between 1 and 10,000,000"),
    ("prepare-no-test-samples", lambda x: ["prepare", "synthetic-math", "--out", str(x.tmp / "p"), "--n-test", "0"],
     "--n-test 0: must be between 1 and 10,000,000"),
    ("eval-samples-unbounded", lambda x: ["eval", "--checkpoint", "tiny:smolvlm", "--data", str(x.chart / "test.jsonl"),
                                          "--samples", "100000"], "Invalid value for '--samples': Input should be less than or equal to 1024"),
    ("prepare-bad-bars", lambda x: ["prepare", "synthetic-chart", "--out", str(x.tmp / "p"), "--max-bars", "9"], "bars must satisfy"),
    ("prepare-out-holds-a-dataset", lambda x: ["prepare", "synthetic-chart", "--out", str(_written(x.tmp / "p", "train.jsonl"))],
     "already holds train.jsonl: pass --overwrite to replace it"),
    ("prepare-convert-out-holds-the-split", lambda x: ["prepare", "jsonl", "--input", str(x.dataset([x.sample()])), "--map",
     "question=question,answer=answer", "--out", str(_written(x.tmp / "p", "train.jsonl"))], "already holds train.jsonl"),
    ("prepare-refine-into-its-own-folder", lambda x: ["prepare", "refine", "--input", str(x.dataset([x.sample()])), "--out",
     str(x.tmp / "data"), "--base-url", "http://127.0.0.1:9/v1", "--model", "m"], "is the folder of --input"),
    ("compare-bad-lr", lambda x: ["compare", str(x.recipe()), "--lrs", "fast"], "--lrs"),
    ("compare-lr-inf", lambda x: ["compare", str(x.recipe()), "--lrs", "inf", "--out", str(x.tmp / "c")],
     "--lrs inf: Input should be a finite number"),
    ("compare-lr-negative", lambda x: ["compare", str(x.recipe()), "--lrs=-1", "--out", str(x.tmp / "c")],
     "--lrs -1.0: Input should be greater than 0"),
    ("compare-fixed-lr-too-large", lambda x: ["compare", str(x.recipe()), "--lrs", "dyme=5", "--out", str(x.tmp / "c")],
     "--lrs 5.0: Input should be less than or equal to 1"),
    ("compare-seed-huge", lambda x: ["compare", str(x.recipe()), "--seeds", "99999999999999999999", "--out", str(x.tmp / "c")],
     "--seeds 99999999999999999999: Input should be less than or equal to 4294967295"),
    # ---------------------------------------------------------------- bounds that keep the work and arithmetic finite
    ("recipe-num-iterations-unbounded", lambda x: ["train", str(x.recipe({"train": {"num_iterations": 10**9}})), "--dry-run"],
     "[train].num_iterations: Input should be less than or equal to 64"),
    ("recipe-tiny-model-too-large", lambda x: ["train", str(x.recipe({"model": {"tiny": {"hidden_size": 10**9}}})), "--dry-run"],
     "[model.tiny].hidden_size: Input should be less than or equal to 2048"),
    ("recipe-tiny-heads-do-not-split", lambda x: ["train", str(x.recipe({"model": {"tiny": {"hidden_size": 36}}})), "--dry-run"],
     "hidden_size and num_heads: the width must split into heads of an even size"),
    ("recipe-beta-huge", lambda x: ["train", str(x.recipe({"train": {"beta": 1e300}})), "--dry-run"],
     "[train].beta: Input should be less than or equal to 100"),
    ("recipe-eval-every-without-test", lambda x: ["train", str(x.recipe({"run": {"eval_every": 1}, "data": {"test": None}})), "--dry-run"],
     "[run].eval_every needs a held-out set: set [data].test"),
    ("recipe-base-url-not-a-url", lambda x: ["train", str(x.recipe({"supervision": {"checker": "llm", "base_url": "not a url",
                                                                                     "model": "m"}})), "--dry-run"],
     "[supervision].base_url: 'not a url' is not an http(s) URL"),
    ("recipe-base-url-file", lambda x: ["train", str(x.recipe({"supervision": {"refiner": "llm", "base_url": "file:///etc/passwd",
                                                                                "model": "m"}})), "--dry-run"],
     "[supervision].base_url: 'file:///etc/passwd' is not an http(s) URL"),
    ("prepare-refine-base-url-not-a-url", lambda x: ["prepare", "refine", "--input", str(x.dataset([x.sample()])), "--out",
     str(x.tmp / "r"), "--base-url", "localhost:8000", "--model", "m"], "--base-url: 'localhost:8000' is not an http(s) URL"),
    ("prepare-refine-timeout-huge", lambda x: ["prepare", "refine", "--input", str(x.dataset([x.sample()])), "--out",
     str(x.tmp / "r"), "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--timeout", "1e9"],
     "--timeout: Input should be less than or equal to 3600"),
    ("inspect-checker-url-not-a-url", lambda x: ["inspect-traces", str(_traces(x, GOOD_TRACE)), "--checker-url", "ftp://h/v1",
                                                 "--checker-model", "m"], "--checker-url: 'ftp://h/v1' is not an http(s) URL"),
    # ---------------------------------------------------------------- the run record, checkpoints and model files
    ("resume-without-recorded-recipe", _resume_without_recipe, "recipe.toml is missing, so nothing says what the run there was trained with"),
    ("resume-with-another-model-shape", _resume_with_another_model_shape,
     "was trained with another model: [model.tiny].hidden_size 32 -> 48; its checkpoints cannot take that change, not even with --allow-recipe-change"),
    ("resume-adding-lora", _resume_adding_lora, "was trained with another model: [model.lora].r (not set) -> 4"),
    ("eval-damaged-checkpoint", lambda x: _damaged_checkpoint(x, "eval"), "cannot load model"),
    ("export-damaged-checkpoint", lambda x: _damaged_checkpoint(x, "export"), "cannot load model"),
    ("eval-truncated-gguf", _truncated_gguf, "cannot load model"),
    ("eval-answer-flag-blank", lambda x: ["eval", "--checkpoint", "tiny:smolvlm", "--data", str(x.chart / "test.jsonl"),
                                          "--answer-flag", " "], "Invalid value for '--answer-flag': must not be blank"),
    ("verifiers-check-answer-flag-empty", lambda x: ["verifiers", "check", "chart", "--answer-flag", "", "--cases",
                                                     str(_verifier_cases(x, CASE))], "Invalid value for '--answer-flag': must not be blank"),
    ("compare-no-methods", lambda x: ["compare", str(x.recipe()), "--methods", "", "--out", str(x.tmp / "c")],
     "--methods: no method given; choose from dyme, sft"),
    ("compare-seeds-repeated", lambda x: ["compare", str(x.recipe()), "--seeds", "0,0", "--out", str(x.tmp / "c")],
     "--seeds 0,0 repeats a seed"),
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, chart_data):
    """One tiny 2-step run with checkpoints at steps 1 and 2, built when a case first needs it."""
    built: list[Path] = []

    def get() -> Path:
        if not built:
            from dyme_cli.trainer import train

            out = tmp_path_factory.mktemp("trained") / "run"
            recipe = small_recipe(chart_data, out, max_steps=2)
            recipe.run.save_every = 1
            train(recipe)
            built.append(out)
        return built[0]

    return get


@pytest.mark.parametrize("build, message", [pytest.param(b, m, id=i) for i, b, m in CASES])
def test_a_bad_input_is_one_error_line_and_exit_2(build, message, tmp_path, chart_data, trained_run, monkeypatch,
                                                 offline_hub):
    monkeypatch.chdir(tmp_path)
    inputs = Inputs(tmp_path, chart_data, trained_run)  # alive until the command ends (a case may hold a lock in it)
    result = runner.invoke(app, build(inputs))
    output = result.output
    assert result.exit_code == 2, f"{result.exception!r}\n{output}"  # an uncaught exception exits 1
    assert "Traceback" not in output and sum(line.startswith("error:") for line in output.splitlines()) <= 1, output
    assert message in " ".join(output.split()), output
    assert not (tmp_path / "pwned").exists()  # nothing a planted file held ran


def test_the_sweep_covers_at_least_60_bad_inputs():
    assert len(CASES) >= 60 and len({case_id for case_id, _, _ in CASES}) == len(CASES)
