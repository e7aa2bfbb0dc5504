"""`dyme export`: merge a LoRA adapter into its base model and save an ordinary model directory."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import BadArgument
from ..ui import console, quiet_transformers


def export_command(
    checkpoint: str = typer.Argument(..., help="A LoRA adapter checkpoint (or any checkpoint directory)."),
    out: Path = typer.Option(..., "--out", help="Directory for the merged save_pretrained model and its processor."),
    dtype: str = typer.Option("float32", "--dtype", help="float32, bfloat16 or float16."),
) -> None:
    """Merge a LoRA adapter into its base model and save an ordinary model directory (loadable without PEFT)."""
    from ..modeling import load_policy, save_policy

    if dtype not in ("float32", "bfloat16", "float16"):
        raise BadArgument(f"--dtype must be float32, bfloat16 or float16, not '{dtype}'")
    if out.exists() and any(out.iterdir()):
        raise BadArgument(f"{out} is not empty; choose a new directory")
    quiet_transformers()
    policy = load_policy(checkpoint, dtype)
    save_policy(policy, out)
    console.print(f"saved the merged model to {out}")
