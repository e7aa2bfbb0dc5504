"""A recipe is a TOML file; this module is its typed schema, with every default in one place.

Unknown keys and bad values are rejected, and the error names the TOML key (`[train].loss_type`).
Relative paths in a recipe are resolved against the current working directory.
"""

from __future__ import annotations

import re
import sys
import urllib.parse
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .dyme import ALGORITHMS
from .data import QUESTION, BadImages, Samples, instruction_template, read_samples
from .errors import BadArgument, UserError, first_line, validation_problem

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


DEFAULT_REWARD_WEIGHTS = {"accuracy": 1.0, "format": 0.5}  # [train].reward_weights, and dyme eval's trace rewards


class RecipeError(UserError, ValueError):
    """A recipe that cannot be used; the message is one line naming the file and the key."""


SECRET_KEY = re.compile(r"(^|_)(key|apikey|token|secret|password|passwd|credentials?)$", re.IGNORECASE)
Tracker = Literal["tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "clearml", "dvclive", "swanlab", "aim"]
MAX_SEED = 2**32 - 1  # numpy's and CUDA's seeds are 32-bit
MAX_WORKERS = 256  # verifier processes
MAX_CLIP = 10.0  # [train].epsilon(_high): a clip range wider than this clips nothing a real ratio reaches


class _Section(BaseModel):
    """Every float of a recipe is finite: `lr = inf` or `nan` would train a model of NaNs."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class TinyModel(_Section):
    """Size of the embedded models (`name_or_path = "tiny:<family>"`), built from a config, random init. The
    bounds keep them tiny: a larger model is a checkpoint, not a shape in a recipe."""

    vocab_size: int = Field(512, ge=64, le=65536, description="the tokenizer's vocabulary (trained on the data)")
    hidden_size: int = Field(64, ge=8, le=2048, description="the language model's width")
    num_layers: int = Field(2, ge=1, le=48, description="decoder layers")
    num_heads: int = Field(4, ge=1, le=64, description="attention heads")
    intermediate_size: int = Field(128, ge=8, le=8192, description="the MLPs' width")
    vision_hidden_size: int = Field(64, ge=8, le=2048, description="the vision tower's width")
    vision_layers: int = Field(2, ge=1, le=48, description="vision encoder layers")
    vision_heads: int = Field(4, ge=1, le=64, description="vision attention heads")
    image_size: int = Field(48, ge=8, le=1024, description="image side in pixels")
    patch_size: int = Field(8, ge=1, le=1024, description="vision patch side")
    scale_factor: int = Field(2, ge=1, le=16,
        description="pixel-shuffle factor of the connector (image tokens per image = (image_size / patch_size / "
        "scale_factor)^2)")

    @model_validator(mode="after")
    def _patches_fit(self) -> "TinyModel":
        grid = self.image_size // self.patch_size
        if self.image_size % self.patch_size or grid % self.scale_factor:
            raise ValueError("image_size must be a multiple of patch_size * scale_factor")
        for width, heads, names in ((self.hidden_size, self.num_heads, "hidden_size and num_heads"),
                                    (self.vision_hidden_size, self.vision_heads, "vision_hidden_size and vision_heads")):
            if width % heads or (width // heads) % 2:
                raise ValueError(f"{names}: the width must split into heads of an even size (rotary embeddings)")
        return self


class LoraSection(_Section):
    """`[model.lora]`: train low-rank adapters instead of the full weights (PEFT)."""

    r: int = Field(16, ge=1, description="the adapters' rank")
    alpha: float = Field(32.0, gt=0,
        description="scaling of the adapters' update (alpha / r; alpha / sqrt(r) with use_rslora)")
    dropout: float = Field(0.05, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: Optional[str] = Field(
        None, description="regex over module names; default: the language model's attention and MLP projections")
    use_rslora: bool = Field(False, description="rank-stabilised scaling alpha / sqrt(r) (PEFT's use_rslora)")

    @field_validator("target_modules")
    @classmethod
    def _is_regex(cls, pattern: Optional[str]) -> Optional[str]:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return pattern


class ModelSection(_Section):
    name_or_path: str = Field(..., description="hub id, local save_pretrained directory, or tiny:<family>")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the weights' storage dtype (and the optimizer state's)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field(
        "no", description="autocast compute dtype over the stored weights (accelerate); 'no' computes in `dtype`")
    processor: dict[str, Any] = Field(
        {}, description="options passed to AutoProcessor.from_pretrained (image resolution, tiling, ...)")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field("sdpa",
        description="the attention kernel; the shared-prefix update needs sdpa or eager")
    trust_remote_code: bool = Field(False,
        description="run a hub model's own modelling code (only for models you trust)")
    freeze_vision: bool = Field(True,
        description="keep the vision tower's weights fixed (the connector and language model train)")
    gradient_checkpointing: bool = Field(False,
        description="recompute activations in the backward pass: less memory, more time")
    reuse_prompt: bool = Field(
        True, description="compute each prompt's work once: one prefill (images included) shared by its K rollouts, "
        "and in the update logits only where completion tokens are scored; false repeats it per row (the plain "
        "path, for models whose generate or forward lacks cache continuation or logits_to_keep)")
    shared_prefix: bool = Field(
        True, description="with reuse_prompt, the update reads each prompt (its images included) once for its rows "
        "in a micro-batch: one sequence of the prompt and their completions under a grouped attention mask (sdpa or "
        "eager attention; flash_attention_2 forwards every row whole); false forwards every row whole")
    lora: Optional[LoraSection] = None
    tiny: TinyModel = TinyModel()


class DataSection(_Section):
    train: Path = Field(..., description="the training set (JSONL in dyme's dataset schema, images beside it)")
    test: Optional[Path] = Field(None, description="the held-out set for eval_before / eval_after / eval_every")
    prompt_template: Optional[str] = Field(
        None, description="the user turn's text, with a {question} placeholder; default: the paper's instruction")
    bad_images: BadImages = Field(
        "fail", description="what happens to a sample whose image cannot be read: 'fail' stops with an error "
        "naming it, 'skip' leaves the sample out and reports how many were")
    allow_external_images: bool = Field(
        False, description="image paths that are absolute or climb out of the dataset's folder are refused "
        "unless this is true")

    def read(self, path: Path, on_progress: Callable[[int, int], None] | None = None) -> Samples:
        """The dataset at `path` (train or test), its images checked by this section's rules (`on_progress` as in
        data.read_samples)."""
        return read_samples(path, bad_images=self.bad_images, allow_external_images=self.allow_external_images,
                            on_progress=on_progress)

    @field_validator("prompt_template")
    @classmethod
    def _has_question(cls, template: Optional[str]) -> Optional[str]:
        if template is not None and QUESTION not in template:
            raise ValueError(f"must contain the placeholder {QUESTION}")
        return template


class RolloutSection(_Section):
    num_generations: int = Field(8, ge=2, le=1024, description="K rollouts per prompt")
    temperature: float = Field(1.0, gt=0, le=100, description="sampling temperature of the rollouts")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the rollouts (1.0: off)")
    top_k: int = Field(0, ge=0, le=1_000_000, description="0: off")
    repetition_penalty: float = Field(1.0, gt=0, le=100, description="1.0: off")
    max_new_tokens: int = Field(300, ge=1, le=1_000_000, description="checked against the model's context length")
    prompts_per_generate: int = Field(8, ge=1, le=65536, description="prompts per generate() call")
    backend: Literal["transformers"] = Field(
        "transformers", description="what samples the rollouts (rollout.BACKENDS): the policy's own transformers "
        "generate; a vLLM backend is not shipped until it is verified on a GPU")


class TrainSection(_Section):
    algorithm: Literal[ALGORITHMS] = Field("dyme", description="one of dyme.METHODS with a memorization rule")
    memorize_below: float = Field(
        0.5, ge=0, le=1,
            description="algorithm = threshold: memorize while fewer than this fraction of rollouts are correct")
    max_steps: int = Field(100, ge=1, le=10_000_000, description="training steps")
    prompts_per_step: int = Field(32, ge=1, le=65536, description="B: prompts per step (each gets K rollouts)")
    all_correct: Literal["skip", "explore"] = Field("skip",
        description="what a prompt whose K rollouts are all correct does: skip (DyME) or explore")
    scale_rewards: Literal["group", "batch", "none"] = Field("group",
        description="what the advantage r - mean divides by: the group's std (+ std_eps), the whole step's, or "
        "nothing")
    std_eps: float = Field(1e-4, gt=0, le=1, description="epsilon added to the std in A = (r - mean) / (std + eps)")
    reward_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_REWARD_WEIGHTS),
        description="weight of each reward component in the total reward (a component without a weight counts zero)")
    loss_type: Literal["grpo", "bnpo", "dr_grpo", "dapo"] = Field("grpo",
        description="how token losses are averaged (grpo: per row, then over rows; bnpo: per micro-batch; dapo: over "
        "the step's tokens; dr_grpo: a constant N x L), formulas in losses.py")
    epsilon: float = Field(0.2, ge=0, le=MAX_CLIP, description="the ratio's clip range below 1")
    epsilon_high: Optional[float] = Field(None, ge=0, le=MAX_CLIP, description="above 1; defaults to epsilon")
    num_iterations: int = Field(1, ge=1, le=64, description="mu: updates per batch of rollouts")
    beta: float = Field(0.0, ge=0, le=100, description="KL coefficient; 0 loads no reference model")
    loss_scale: Literal["rollouts", "active_rows"] = Field(
        "rollouts", description="what the loss averages over: every row of the step (B*K rollouts, the authors' "
        "scale) or only the rows with a non-zero advantage")

    @property
    def clip_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


class OptimSection(_Section):
    lr: float = Field(8e-5, gt=0, le=1, description="AdamW's learning rate")
    weight_decay: float = Field(0.01, ge=0,
        description="AdamW's decoupled weight decay (not on biases and norms); weight_decay x lr < 1")
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = Field((0.9, 0.999),
        description="AdamW's betas")
    warmup_steps: int = Field(0, ge=0, le=10_000_000, description="steps of linear warm-up from 0 to lr")
    schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="the learning rate after warm-up")
    max_grad_norm: float = Field(1.0, gt=0, le=1e6, description="gradients are clipped to this norm")
    micro_batch_size: int = Field(8, ge=1, le=65536, description="rows per forward/backward")

    @model_validator(mode="after")
    def _decay_keeps_the_weights(self) -> "OptimSection":
        if self.lr * self.weight_decay >= 1:
            raise ValueError(f"weight_decay × lr = {self.weight_decay * self.lr:g} must be below 1: every step "
                             "multiplies the weights by 1 - lr × weight_decay")
        return self


class VerifierSection(_Section):
    answer_flag: str = Field("Answer:", min_length=1,
        description="the text that introduces the final answer in a completion (and in a memorized target)")
    timeout_s: float = Field(5.0, gt=0, le=86400,
        description="per verify call; a slower call counts as a failed verdict")
    workers: int = Field(2, ge=1, le=MAX_WORKERS, description="verifier worker processes")
    options: dict[str, dict[str, Any]] = Field(
        {}, description='verifier name -> its options; a secret is written { env = "VARIABLE" } and read from there')

    @field_validator("answer_flag")
    @classmethod
    def _not_blank(cls, flag: str) -> str:
        if not flag.strip():
            raise ValueError("must not be blank: completions are split at it")
        return flag

    @field_validator("options")
    @classmethod
    def _secrets_from_the_environment(cls, options: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """The recipe is recorded in the run directory: a secret written into it would be copied there."""
        for verifier, values in options.items():
            for key, value in values.items():
                if SECRET_KEY.search(key) and env_variable(value) is None:
                    raise ValueError(f"{verifier}.{key} looks like a secret: write {key} = {{ env = \"VARIABLE\" }} "
                                     "and set VARIABLE in the environment, so that it is never written to a run")
        return options


class RunSection(_Section):
    output_dir: Path = Field(Path("runs/dyme"),
        description="the run directory (checkpoints, logs, the recorded recipe)")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="the run's seed: data order, rollouts, initialisation")
    save_every: int = Field(50, ge=1, description="a checkpoint every N steps (and after the last)")
    log_every: int = Field(10, ge=1, description="when the output is no terminal (a file, a pipe, a scheduler's log): "
                           "a plain line every N steps, and at every evaluation and checkpoint")
    keep_checkpoints: int = Field(2, ge=1, description="how many of the newest checkpoints are kept")
    eval_before: bool = Field(False, description="held-out accuracy on [data].test before the first step")
    eval_after: bool = Field(False, description="held-out accuracy on [data].test after the last step")
    eval_every: Optional[int] = Field(
        None, ge=1, description="held-out accuracy on [data].test every N steps, logged as eval_accuracy")
    eval_limit: Optional[int] = Field(None, ge=1, description="evaluate on the first N held-out samples only")
    eval_batch_size: int = Field(64, ge=1, le=65536, description="prompts per generate call in evaluations")
    report_to: list[Tracker] = Field(
        [], description="experiment trackers (accelerate's) that also receive every step's metrics; metrics.jsonl "
        "stays the record")


class SupervisionSection(_Section):
    """`[supervision]`: the paper's visual supervision by a larger LLM behind an OpenAI-compatible server (vLLM,
    lmdeploy, llama.cpp server, a hosted API): a checker that rates each rollout's thinking (the `thinking` reward)
    and a refiner that rewrites reference traces before training (the memorization targets)."""

    checker: Literal["local", "llm"] = Field("local", description="local: the verifier's keyword-F1 thinking reward")
    refiner: Literal["none", "llm"] = Field("none",
        description="llm: rewrite the training samples' reference traces with the LLM before training")
    base_url: Optional[str] = Field(None, description="e.g. http://127.0.0.1:8000/v1")
    model: Optional[str] = Field(None, description="the served model's name")
    api_key_env: Optional[str] = Field(None, description="environment variable holding the API key (never the key)")
    timeout_s: float = Field(60.0, gt=0, le=3600, description="per try of a request (the longest wait for a byte); "
                             "a request ends within (1 + max_retries) x timeout_s + 8 s per retry, however slow the server")
    max_retries: int = Field(2, ge=0, le=10, description="per request, with exponential backoff (the openai client's)")
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight at once")
    step_budget_s: float = Field(
        120.0, gt=0, le=86400, description="the most time rating a step's rollouts may take; later ones fall back")
    cache: bool = Field(True, description="remember ratings and refined references in the run directory")
    template: Optional[str] = Field(None, description="the refiner's reference template: a file path or the text")
    evolve_every: Optional[int] = Field(
        None, ge=1, description="every N steps a correct rollout rated high may propose a new template (off: none)")

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: Optional[str]) -> Optional[str]:
        if url is not None:
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
        return url

    @model_validator(mode="after")
    def _server_given(self) -> "SupervisionSection":
        if (self.checker == "llm" or self.refiner == "llm") and not (self.base_url and self.model):
            raise ValueError("checker or refiner = \"llm\" needs base_url and model")
        if self.evolve_every is not None and not (self.checker == "llm" and self.refiner == "llm"):
            raise ValueError("evolve_every needs checker = \"llm\" (the ratings) and refiner = \"llm\" (the template)")
        return self

    @property
    def uses_llm(self) -> bool:
        return self.checker == "llm" or self.refiner == "llm"


class Recipe(_Section):
    run: RunSection = RunSection()
    model: ModelSection
    data: DataSection
    rollout: RolloutSection = RolloutSection()
    train: TrainSection = TrainSection()
    optim: OptimSection = OptimSection()
    verifier: VerifierSection = VerifierSection()
    supervision: SupervisionSection = SupervisionSection()

    @model_validator(mode="after")
    def _evaluates_on_a_test_set(self) -> "Recipe":
        if self.run.eval_every is not None and self.data.test is None:
            raise ValueError("[run].eval_every needs a held-out set: set [data].test")
        return self

    @property
    def prompt_template(self) -> str:
        """[data].prompt_template, or the authors' instruction built from [verifier].answer_flag."""
        return self.data.prompt_template or instruction_template(self.verifier.answer_flag)


def env_variable(value: Any) -> str | None:
    """The environment variable an option written `{ env = "VARIABLE" }` is read from; None for a plain value."""
    if isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str):
        return value["env"]
    return None


def _key_path(loc: tuple) -> str:
    parts = [str(p) for p in loc]
    if len(parts) == 1:
        return f"[{parts[0]}]"
    return f"[{'.'.join(parts[:-1])}].{parts[-1]}"


def load_recipe(path: Path) -> Recipe:
    """Parse and validate a recipe; raise RecipeError with one line naming the file and key."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except IsADirectoryError:
        raise RecipeError(f"{path}: is a directory, not a recipe file") from None
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    except (tomllib.TOMLDecodeError, RecursionError) as exc:
        raise RecipeError(f"{path}: not valid TOML: {first_line(exc)}") from None
    return recipe_from_dict(raw, source=str(path))


def recipe_from_dict(raw: dict, source: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as exc:
        loc, msg = validation_problem(exc, unknown="unknown key")
        key = f"{_key_path(loc)}: " if loc else ""  # a rule across sections names its keys in its message
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise RecipeError(f"{source}: {key}{msg}{more}") from None


def section_from_options(section: type, options: dict[str, str], **values):
    """A recipe section built from command-line options, checked as the recipe's would be; a refused value is one
    line naming its option (`options` maps a field to its option, e.g. {"base_url": "--base-url"})."""
    try:
        return section(**values)
    except ValidationError as exc:
        loc, msg = validation_problem(exc)
        field = str(loc[0]) if loc else ""
        raise BadArgument(f"{options.get(field, field or 'options')}: {msg}") from None


def recipe_to_toml(recipe: Recipe) -> str:
    """The resolved recipe (every default filled in, the prompt template too) as TOML, for the run directory."""
    data = recipe.model_dump(mode="json", exclude_none=True)
    data["data"]["prompt_template"] = recipe.prompt_template
    return toml_text(data)


def toml_text(table: dict) -> str:
    """A recipe-shaped dict as TOML: nested dicts as sections (reward_weights and options inline), None left out."""
    lines: list[str] = []
    _emit_table(lines, [], table)
    return "\n".join(lines).strip() + "\n"


_INLINE_TABLES = ("reward_weights", "options")


def _emit_table(lines: list[str], prefix: list[str], table: dict) -> None:
    table = {k: v for k, v in table.items() if v is not None}
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict) or k in _INLINE_TABLES}
    if prefix:
        lines.append(f"\n[{'.'.join(prefix)}]")
    for key, value in scalars.items():
        lines.append(f"{key} = {_toml_value(value)}")
    for key, value in table.items():
        if key not in scalars:
            _emit_table(lines, prefix + [key], value)


def _toml_value(value: Any) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
