"""The optimizer and its schedule: AdamW over the trainable parameters (no weight decay for biases and norms),
linear warmup then constant, linear or cosine decay; and what the training state holds in memory."""

from __future__ import annotations

import math

import torch

from .recipe import Recipe


# Parameters that get no weight decay: biases and normalisation weights (the transformers Trainer's rule).
NO_DECAY = (r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)")


def build_optimizer(model: torch.nn.Module, recipe: Recipe, max_steps: int):
    cfg = recipe.optim
    optimizer = torch.optim.AdamW(parameter_groups(model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup_steps, max_steps, cfg.schedule))
    return optimizer, scheduler


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The trainable parameters in two AdamW groups: with weight decay, and without it for biases and
    normalisation weights (found by transformers' own `get_parameter_names`)."""
    from transformers.trainer_pt_utils import get_parameter_names

    decayed = set(get_parameter_names(model, [torch.nn.LayerNorm], list(NO_DECAY)))
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [{"params": [p for name, p in trainable if name in decayed], "weight_decay": weight_decay},
            {"params": [p for name, p in trainable if name not in decayed], "weight_decay": 0.0}]


def lr_factor(step: int, warmup: int, total: int, schedule: str) -> float:
    """Linear warmup over `warmup` steps, then constant, linear or cosine decay to zero at `total`."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(1, total - warmup), 1.0)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the weights (tied ones once), their gradients and the optimizer state that this process holds (its
    shards of a sharded model, not their global size): what --dry-run estimates."""
    params = list({local(p).data_ptr(): p for p in model.parameters()}.values())
    tensors = params + [p.grad for p in params if p.grad is not None]
    tensors += [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return sum(t.numel() * t.element_size() for t in map(local, tensors))


def local(tensor: torch.Tensor) -> torch.Tensor:
    """The part of a tensor this process holds: its shard of a distributed tensor (DTensor), else the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def whole(tensor: torch.Tensor) -> torch.Tensor:
    """A distributed tensor's global value (every process takes part), else the tensor."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def peak_bytes() -> int:
    """The process's peak memory so far: allocated GPU memory on a GPU, resident memory on a CPU."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated()
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
