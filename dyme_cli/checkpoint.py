"""What a checkpoint holds and how it is written and read: the policy's weights and processor (modeling.save_policy),
and the trainer state (step, optimizer, scheduler, RNG), written atomically (rundir.new_checkpoint) where the
run's Parallel says, and read back only as tensors and plain values.
"""

from __future__ import annotations

import errno
import random
from pathlib import Path

import torch
from safetensors import SafetensorError

from . import processes
from .errors import first_line
from .modeling import ModelLoadError, Policy, load_for_recipe, save_policy
from .recipe import Recipe
from .rundir import RunDir, RunDirError, checkpoint_step, state_file
from .step import Engine


def save_checkpoint(engine: Engine, run: RunDir, step: int) -> Path:
    """The model and processor with the trainer state: the whole weights and optimizer state come together on the
    main process (the run's Parallel; every process takes part), which writes them; every process returns once
    the checkpoint is complete."""
    model = engine.policy.model
    weights = engine.parallel.model_state(model)
    optimizer = engine.parallel.optimizer_state(model, engine.optimizer)
    failed: CheckpointNotWritten | None = None
    if processes.is_main():
        try:
            write_checkpoint(engine, run, step, weights, optimizer)
        except CheckpointNotWritten as exc:
            failed = exc
    if processes.any_process(failed is not None):  # every process waits for the main one, and stops with it
        raise failed or RunDirError(f"step {step}: the main process could not write the checkpoint")
    return run.checkpoint(step)


class CheckpointNotWritten(RunDirError):
    """The disk (or the quota) filled up while a checkpoint was written: nothing of it is kept, the earlier ones are
    untouched."""

    def __init__(self, step: int, run: RunDir, needed: int):
        kept = run.checkpoints()
        since = f"the last checkpoint is {kept[-1]}" if kept else "no checkpoint was saved"
        super().__init__(f"step {step}: no space left on the device of {run.path} for its checkpoint (about "
                         f"{needed / 2**20:,.0f} MiB); nothing of it was kept and {since}; free the space and "
                         "continue with --resume")


def out_of_space(exc: BaseException) -> bool:
    """Whether a failed write ran out of disk or quota: an OSError saying so, or the message safetensors and
    torch.save turn it into."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(exc)
    return any(sign in text for sign in ("No space left on device", "os error 28", "Disk quota exceeded",
                                         "file write failed"))


def tensor_bytes(state) -> int:
    """The bytes of every tensor in a (nested) state dict."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(tensor_bytes(value) for value in state)
    return 0


def write_checkpoint(engine: Engine, run: RunDir, step: int, weights: dict | None, optimizer: dict) -> None:
    """The checkpoint of `step`, written atomically; CheckpointNotWritten when the disk fills up on the way."""
    try:
        _write(engine, run, step, weights, optimizer)
    except Exception as exc:
        if not out_of_space(exc):
            raise
        model = engine.accelerator.unwrap_model(engine.policy.model)
        raise CheckpointNotWritten(step, run, tensor_bytes(weights or model.state_dict()) + tensor_bytes(optimizer)
                                   ) from None


def _write(engine: Engine, run: RunDir, step: int, weights: dict | None, optimizer: dict) -> None:
    with run.new_checkpoint(step, keep=engine.recipe.run.keep_checkpoints) as directory:
        save_policy(engine.policy, directory, engine.accelerator.unwrap_model(engine.policy.model), state_dict=weights)
        state = {
            "step": step,
            "optimizer": optimizer,
            "scheduler": engine.scheduler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        torch.save(state, state_file(directory))


def restore_state(engine: Engine, checkpoint: Path, state: dict) -> int:
    """The optimizer, scheduler and RNG of `state` (read from `checkpoint` by load_checkpoint); its step."""
    try:
        engine.parallel.load_optimizer_state(engine.policy.model, engine.optimizer, state["optimizer"])
    except (ValueError, KeyError, RuntimeError) as exc:  # e.g. a checkpoint written before biases and norms had their own no-decay group
        raise RunDirError(f"{checkpoint}: its optimizer state does not fit this model and optimizer "
                          f"({first_line(exc)}); resume with the dyme version that wrote it, or start a new run") from None
    engine.scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return int(state["step"])


STATE_KEYS = ("step", "optimizer", "scheduler", "rng")  # what save_checkpoint writes and restore_state reads
LOAD_ERRORS = (ModelLoadError, SafetensorError, OSError, RuntimeError)  # weights that are missing, cut short, garbled


def load_checkpoint(recipe: Recipe, checkpoint: Path) -> tuple[Policy, Path, dict]:
    """The policy saved in `checkpoint`, the checkpoint, and its trainer state, found to be its step's; RunDirError
    saying what is damaged otherwise."""
    if not checkpoint.is_dir():
        raise RunDirError("not a directory")
    state = checked_state(state_file(checkpoint), checkpoint_step(checkpoint))
    try:
        # A LoRA checkpoint holds only the adapter: it is loaded on its base model, trainable, not merged.
        return load_for_recipe(recipe.model, str(checkpoint), merge_adapter=False), checkpoint, state
    except LOAD_ERRORS as exc:
        raise RunDirError(f"its weights do not load: {first_line(exc)}") from None


def checked_state(path: Path, step: int) -> dict:
    """The trainer state in `path`; RunDirError unless it is one as save_checkpoint writes it, of step `step`."""
    state = load_state(path)
    if not isinstance(state, dict) or any(key not in state for key in STATE_KEYS):
        raise RunDirError(f"{path}: not a trainer state")
    if state["step"] != step:
        raise RunDirError(f"{path}: the trainer state of step {state['step']}, not of step {step}")
    return state


def load_state(path: Path) -> dict:
    """The trainer state, unpickled safely: tensors, containers and numbers only (torch's `weights_only`), so a
    checkpoint from someone else cannot run code on `--resume`."""
    import pickle

    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise RunDirError(f"{path}: refused: it holds objects other than tensors and plain values, which could run "
                          f"code when loaded ({first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise RunDirError(f"{path}: cannot read the trainer state ({first_line(exc)})") from None
