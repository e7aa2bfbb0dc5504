"""One run across N processes (`accelerate launch`): which share of the work a process takes, and how the shares
come together again. With one process every function here is the identity, and nothing is communicated.

The strategy a run follows is a `Parallel`, the one place that says how the step's work is split, how the model
is prepared and its gradients meet, and how a checkpoint is written and read across the processes. `Replicated`
(every process holds the whole model) is the one implemented.

Every process computes the same list of work (the step's prompts, the evaluation's samples), takes a contiguous
share of it, and sees every process's results again in the same order, so the gate, the loss's denominators, the
metrics and the logs are those of the whole step on every process; only the main process writes. The
communication is accelerate's (`gather_object`, `reduce`, `broadcast_object_list` over the process group that
`accelerate launch` sets up: gloo on CPUs, NCCL on GPUs).
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence, TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, reduce

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


def sum_gradients(parameters: Sequence[torch.nn.Parameter]) -> None:
    """Replace each gradient by its sum over the processes (a process with no rows of its own contributes zeros).

    The processes do uneven work in a step (the gate gives each prompt 0, 1 or K rows), so they cannot use DDP's
    per-backward hooks, which need every process to run the same backward passes; each process accumulates its
    own rows' gradients, and the sum is taken once, before clipping."""
    if count() == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    for parameter, total in zip(parameters, reduce(grads, reduction="sum")):
        parameter.grad = total


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


class Parallel(Protocol):
    """How a run spreads over the processes."""

    def share(self, n: int) -> range:
        """The indices of the step's `n` prompts this process samples and verifies."""

    def deal_rows(self, sizes: Sequence[int]) -> list[int]:
        """The indices of the step's rows (by their token counts) this process learns from."""

    def prepare(self, accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer
                ) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The trained model and its optimizer, placed (and wrapped or sharded) for the processes."""

    def prepare_frozen(self, accelerator, model: torch.nn.Module) -> torch.nn.Module:
        """A model that is only read (the KL reference), placed for the processes."""

    def reduce_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """Make every process's gradients the whole step's, once per optimizer step, before clipping."""

    def whole_model(self, accelerator, model: torch.nn.Module) -> torch.nn.Module:
        """The model whose weights a checkpoint saves."""

    def write_checkpoint(self, write: Callable[[], None]) -> None:
        """Run `write` (which saves the weights and the trainer state) where it must run; every process returns
        once the checkpoint is complete."""

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer state a checkpoint saves."""

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        """Restore what `optimizer_state` gave, read from a checkpoint by every process."""


class Replicated:
    """Every process holds the whole model, its gradients and the optimizer state. Each samples a contiguous share
    of the step's prompts (`share`), learns from a share of the whole step's rows balanced by token count (`deal`)
    and accumulates their gradients; `sum_gradients` adds them up once per optimizer step. The model is not wrapped in DDP, whose hooks need the same backward passes on every process
    (`evaluation_mode` is accelerate's name for "device placement and autocast, no wrapper"). The main process
    writes checkpoints (every process holds the same state), and every process reads them whole."""

    def share(self, n: int) -> range:
        return share(n)

    def deal_rows(self, sizes: Sequence[int]) -> list[int]:
        return deal(sizes, count())[PartialState().process_index]

    def prepare(self, accelerator, model, optimizer):
        return accelerator.prepare_model(model, evaluation_mode=True), accelerator.prepare_optimizer(optimizer)

    def prepare_frozen(self, accelerator, model):
        return accelerator.prepare_model(model, evaluation_mode=True)

    def reduce_gradients(self, parameters) -> None:
        sum_gradients(parameters)

    def whole_model(self, accelerator, model):
        return accelerator.unwrap_model(model)

    def write_checkpoint(self, write: Callable[[], None]) -> None:
        if is_main():
            write()
        wait_for_everyone()

    def optimizer_state(self, optimizer) -> dict:
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)
