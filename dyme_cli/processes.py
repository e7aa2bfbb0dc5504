"""One run across N processes (`accelerate launch`): which share of the work a process takes, and how the shares
come together again. With one process every function here is the identity, and nothing is communicated.

The strategy a run follows is a `Parallel`, the one place that says how the step's work is split, how the model
is prepared and its gradients meet, and how a checkpoint is written and read across the processes. `DataParallel`
implements it for each of `LAYOUTS`: the weights replicated (DDP) or sharded (FSDP2), through torch's composable
`replicate` and `fully_shard`, chosen by the launch configuration (`launched_layout`).

Every process computes the same list of work (the step's prompts, the evaluation's samples), takes a contiguous
share of it, and sees every process's results again in the same order, so the gate, the loss's denominators, the
metrics and the logs are those of the whole step on every process; only the main process writes. The
communication is accelerate's (`gather_object`, `reduce`, `broadcast_object_list` over the process group that
`accelerate launch` sets up: gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol, Sequence, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, reduce
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_optimizer_state_dict)

from .errors import UserError

T = TypeVar("T")


def count() -> int:
    return PartialState().num_processes


def is_main() -> bool:
    return PartialState().is_main_process


def share(n: int, process: int | None = None, processes: int | None = None) -> range:
    """The indices of `n` items that `process` takes: contiguous, the first n % N processes one more (the split of
    accelerate's `split_between_processes`), so gathering the shares in process order restores the order."""
    state = PartialState()
    process = state.process_index if process is None else process
    processes = state.num_processes if processes is None else processes
    size, extra = divmod(n, processes)
    start = process * size + min(process, extra)
    return range(start, start + size + (process < extra))


def deal(sizes: Sequence[int], processes: int) -> list[list[int]]:
    """The indices of items of `sizes` dealt to `processes` hands, each hand in index order: largest first, in
    snake order (hands 0, 1, ..., N-1, then N-1, ..., 0, ...), so that the hands hold the same number of items
    within one and their total sizes differ by at most the largest item. A pure function: every process computes
    the same deal."""
    hands: list[list[int]] = [[] for _ in range(processes)]
    for rank, item in enumerate(sorted(range(len(sizes)), key=lambda i: (-sizes[i], i))):
        lap, seat = divmod(rank, processes)
        hands[seat if lap % 2 == 0 else processes - 1 - seat].append(item)
    return [sorted(hand) for hand in hands]


def everyone(items: list[T]) -> list[T]:
    """Every process's `items`, concatenated in process order, on every process."""
    return items if count() == 1 else gather_object(items)


def summed(values: Sequence[float]) -> list[float]:
    """Each value summed over the processes."""
    if count() == 1:
        return list(values)
    totals = reduce(torch.tensor(values, dtype=torch.float64, device=PartialState().device), reduction="sum")
    return totals.tolist()


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any of them (a stop signal reaching one rank stops all)."""
    return flag if count() == 1 else bool(summed([float(flag)])[0])


def on_main(work: Callable[[], T]) -> T:
    """`work()` on the main process only (checks and writes of the run directory), its result or its exception
    given to every process, so that a refusal stops all of them with the same error instead of leaving the others
    waiting."""
    if count() == 1:
        return work()
    outcome: list = [None]
    if is_main():
        try:
            outcome[0] = (True, work())
        except Exception as exc:  # handed to every process, raised there too
            outcome[0] = (False, exc)
    broadcast_object_list(outcome)
    succeeded, value = outcome[0]
    if not succeeded:
        raise value
    return value


def wait_for_everyone() -> None:
    PartialState().wait_for_everyone()


def leave(finished: bool) -> None:
    """This process's end in a launched run: once every process has `finished` (not after an error, where the
    others may never arrive), the wrapped model freed and then the process group destroyed, so that its
    communication threads stop before the interpreter exits (gloo's, left running, now and then abort the process
    at exit: "terminate called without an active exception"). The model is freed by a collection first: it lies
    in reference cycles, and its communication state holds the group, which would otherwise outlive
    `destroy_process_group` until the interpreter tears down. Nothing without a process group."""
    import torch.distributed as dist

    if not dist.is_initialized():
        return
    if finished:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()


#: How the trained model lies over the processes (`accelerate launch --config_file recipes/accelerate/...`):
#:   replicate      every process holds the whole model, its gradients and optimizer state (DDP)
#:   shard          FSDP2 full shard (ZeRO-3): weights, gradients and optimizer state split between the processes,
#:                  each layer's weights gathered for its forward and backward, freed after each
#:   shard-grad-op  FSDP2 with `reshard_after_forward = False` (ZeRO-2 layout): as `shard`, but a layer's gathered
#:                  weights are kept from its forward to its backward
LAYOUTS = ("replicate", "shard", "shard-grad-op")


def launched_layout(environ=os.environ) -> str:
    """The layout the launch configuration asks for: `accelerate launch` exports a config's FSDP settings to the
    processes (ACCELERATE_USE_FSDP, FSDP_VERSION, FSDP_RESHARD_AFTER_FORWARD). dyme shards the model itself, with
    torch's `fully_shard`, so accelerate's own plugin (which would wrap the model again, and on a CPU runs unsharded)
    is turned off here, before the Accelerator is made; FSDP_VERSION, which accelerate exports only for FSDP, still
    tells the next run of the same process (`dyme compare`)."""
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true" and "FSDP_VERSION" not in environ:
        return "replicate"
    environ["ACCELERATE_USE_FSDP"] = "false"
    if environ.get("FSDP_VERSION", "1") != "2":
        raise UserError("the launch configuration asks for FSDP version 1: dyme shards with FSDP2; set "
                        "`fsdp_version: 2` in its fsdp_config (recipes/accelerate/fsdp2.yaml)")
    return "shard" if environ.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true" else "shard-grad-op"


def launched_offload(environ=os.environ) -> bool:
    """Whether the launch configuration asks for CPU offload of the sharded state (`fsdp_offload_params: true`)."""
    return environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true"


class Parallel(Protocol):
    """How a run spreads over the processes."""

    layout: str

    def share(self, n: int) -> range:
        """The indices of the step's `n` prompts this process samples and verifies."""

    def deal_rows(self, sizes: Sequence[int]) -> list[int]:
        """The indices of the step's rows (by their token counts) this process learns from."""

    def prepare(self, accelerator, model: torch.nn.Module) -> torch.nn.Module:
        """The trained model, placed (and replicated or sharded) for the processes; its optimizer is made after."""

    def prepare_frozen(self, accelerator, model: torch.nn.Module) -> torch.nn.Module:
        """A model that is only read (the KL reference), placed for the processes."""

    def gathered(self, model: torch.nn.Module) -> ContextManager:
        """Within it, every process holds the whole weights and runs the model without communicating (rollouts
        and evaluations, whose lengths differ between the processes)."""

    def uneven_images(self, model: torch.nn.Module, images: bool, text: bool) -> bool:
        """Before an update, told whether this process's rows include some with images and some with text only:
        whether rows with and without images meet in the step, on several processes. Then the vision tower runs on
        some processes' micro-batches and not on others', and the gradient reduction also takes the weights a
        process left unused, as zero gradients, so that the processes' calls agree. Where no process has an
        image, those weights have no gradient anywhere, and the optimizer leaves them as one process would."""

    def model_state(self, model: torch.nn.Module) -> dict | None:
        """The whole model's weights for a checkpoint, on the main process (None: save the model as it is).
        Every process calls it."""

    def optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """The whole optimizer state by parameter name, on the main process, so that it loads on any number of
        processes. Every process calls it."""

    def load_optimizer_state(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Restore what `optimizer_state` gave, read from a checkpoint by every process."""


@dataclass
class DataParallel:
    """Every process samples and verifies a contiguous share of the step's prompts (`share`), and learns from a
    share of the whole step's rows balanced by token count (`deal`), in as many micro-batches as every other
    process (step.dealt_micro_batches pads with zero-weight rows), because the model's hooks make the same
    collective calls on every process. The model is wrapped per decoder layer and at its root, by torch's
    composable DDP (`replicate`) or FSDP2 (`fully_shard`) as `layout` says; gradients are summed over the
    processes in the backward pass (the loss already divides by the whole step's denominators). With one process
    nothing is wrapped. `offload` (sharded layouts) keeps the shards of the weights, their gradients and the
    optimizer state in host memory, and runs the optimizer step there (FSDP2's CPUOffloadPolicy)."""

    layout: str = "replicate"
    offload: bool = False

    def share(self, n: int) -> range:
        return share(n)

    def deal_rows(self, sizes: Sequence[int]) -> list[int]:
        return deal(sizes, count())[PartialState().process_index]

    def prepare(self, accelerator, model):
        model = accelerator.prepare_model(model, evaluation_mode=True)  # device placement and autocast only
        if count() > 1:
            distribute(model, self.layout, accelerator.mixed_precision, self.offload)
        return model

    def prepare_frozen(self, accelerator, model):
        model = accelerator.prepare_model(model, evaluation_mode=True)
        if count() > 1 and self.layout != "replicate":
            distribute(model, self.layout, accelerator.mixed_precision, self.offload)
        return model

    @contextmanager
    def gathered(self, model):
        units = wrapped_units(model)  # the root first
        sharded = self.layout != "replicate"  # a replicated unit never reshards after its forward
        for unit in units:
            if sharded:
                unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                if sharded:
                    unit.set_reshard_after_forward(self.layout == "shard" and unit is not units[0], recurse=False)

    def uneven_images(self, model, images, text):
        units = wrapped_units(model)
        if not units:
            return False
        images, text = (total > 0 for total in summed([float(images), float(text)]))
        for unit in units:  # off otherwise: it would also send zeros for weights whose gradient comes later
            unit.set_reduce_scatter_unused_params(images and text, recurse=False)
        return images and text

    def model_state(self, model) -> dict | None:
        if not wrapped_units(model):
            return None
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        tied = tied_names(model)
        return {name: tensor for name, tensor in state.items() if name not in tied}

    def optimizer_state(self, model, optimizer) -> dict:
        return get_optimizer_state_dict(model, _torch_optimizer(optimizer),
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, model, optimizer, state: dict) -> None:
        if any(isinstance(p, int) for group in state["param_groups"] for p in group["params"]):
            optimizer.load_state_dict(state)  # parameters by index: a checkpoint of an earlier dyme version
            return
        saved = [len(group["params"]) for group in state["param_groups"]]
        if saved != [len(group["params"]) for group in optimizer.param_groups]:  # torch would merge them silently
            raise ValueError(f"its parameter groups hold {saved} parameters, this optimizer's "
                             f"{[len(group['params']) for group in optimizer.param_groups]}")
        # Not strict: a parameter that never had a gradient (a vision tower on text-only data) has no state yet
        set_optimizer_state_dict(model, _torch_optimizer(optimizer), state,
                                 options=StateDictOptions(full_state_dict=True, strict=False))


def distribute(model: torch.nn.Module, layout: str, mixed_precision: str = "no", offload: bool = False) -> None:
    """Wrap `model` in place for `layout`: each decoder layer of its language model and then the root (the model
    under a PEFT wrapper, so that `get_image_features`, called outside `forward` by the update, gathers the
    weights it reads, as the root's other forward methods do). Sharded, `mixed_precision` ("bf16", "fp16") is
    FSDP2's policy: weights gathered and computed in that dtype, gradients reduced in float32 (accelerate's
    autocast still keeps its float32 operations); `offload` is FSDP2's CPU offload."""
    from torch.distributed._composable.replicate_with_fsdp import replicate
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard, register_fsdp_forward_method

    from .modeling import decoder_layers

    mesh = init_device_mesh(PartialState().device.type, (count(),))
    root = model.get_base_model() if hasattr(model, "get_base_model") else model
    policies = {"mp_policy": precision_policy(mixed_precision)}
    if offload:
        policies["offload_policy"] = CPUOffloadPolicy(pin_memory=torch.cuda.is_available())
    for unit in [*decoder_layers(root), root]:
        if layout == "replicate":
            replicate(unit, mesh=mesh)
        else:  # the root keeps its weights from forward to backward whatever the layout (FSDP2 does so too)
            fully_shard(unit, mesh=mesh, reshard_after_forward=layout == "shard" and unit is not root, **policies)
    for unit in wrapped_units(root):
        unit.set_gradient_divide_factor(1.0)  # a sum over the processes, not a mean
        unit.set_force_sum_reduction_for_comms(True)  # as a plain SUM: gloo has no pre-multiplied sum
    if hasattr(root, "get_image_features"):
        register_fsdp_forward_method(root, "get_image_features")


def precision_policy(mixed_precision: str):
    """FSDP2's mixed-precision policy for accelerate's `mixed_precision`: the weights gathered in the compute
    dtype (half the bytes gathered and held unsharded), the gradients reduced in float32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    compute = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mixed_precision)
    return MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32 if compute else None)


def tied_names(model: torch.nn.Module) -> set[str]:
    """The names of parameters that are another's (tied input and output embeddings): a gathered state dict holds
    them as copies, which `save_pretrained` would then write twice."""
    first: dict[int, str] = {}
    tied = set()
    for name, parameter in model.named_parameters(remove_duplicate=False):
        if first.setdefault(id(parameter), name) != name:
            tied.add(name)
    return tied


def wrapped_units(model: torch.nn.Module) -> list:
    """The modules `distribute` wrapped, the root first; none for a model that is not distributed."""
    from torch.distributed.fsdp import FSDPModule

    return [module for module in model.modules() if isinstance(module, FSDPModule)]


def _torch_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's wrapper (torch's state-dict functions read its `state`)."""
    return getattr(optimizer, "optimizer", optimizer)
