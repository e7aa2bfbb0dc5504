"""Verifier calls in worker processes, each under a deadline.

A plugin that raises or hangs must not stop training, and the deadline has to hold whichever thread asks
(math-verify's own timeout uses `signal.alarm`, which only works in the main thread). So every call runs in a
worker process: a call past its deadline kills its worker, which is replaced, and, like a call that raised,
becomes an incorrect verdict with zero rewards whose `detail` names the problem. The caller counts them.
"""

from __future__ import annotations

import multiprocessing
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, Sequence

from .plugins import VerifierError
from .verdict import Verdict

Job = tuple[str, str, Any]  # (verifier name, completion, sample)
MAX_REWARD = 1e6  # a reward's magnitude beyond which a group's mean and std could overflow: a plugin's bug


# What stops a run: Ctrl-C, SIGTERM (SLURM, Kubernetes, spot preemption, `timeout`) and SIGHUP (a closed
# terminal; not on Windows). The training loop turns the first into a checkpoint and a clean stop.
STOP_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


def failed_verdict(detail: str) -> Verdict:
    return Verdict(False, None, {"format": 0.0, "accuracy": 0.0}, detail)


def _serve(conn: Connection, verifiers: dict) -> None:
    """Worker loop: verify each job received, send back (verdict, None) or (None, error)."""
    for signum in STOP_SIGNALS:  # Ctrl-C, or a scheduler's SIGTERM to the whole job, is the parent's to handle:
        signal.signal(signum, signal.SIG_IGN)  # it finishes the step (these verify calls included), then stops us
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        name, completion, sample = job
        try:
            result = (verifiers[name].verify(completion, sample), None)
        except BaseException as exc:  # noqa: BLE001 (a plugin's bug, its sys.exit or KeyboardInterrupt too, becomes
            result = (None, f"verifier '{name}' raised {type(exc).__name__}: {exc}")  # a failed verdict in the parent
        try:
            conn.send(result)
        except Exception as exc:
            conn.send((None, f"verifier '{name}' returned a result that cannot be sent back: {exc}"))


def contract_problem(verdict: Any) -> str | None:
    """What breaks the plugin contract in a returned verdict (checked in the parent, where a bad value would train
    the wrong mode or put NaN into the weights): a Verdict with a bool `correct` and finite numeric rewards."""
    if not isinstance(verdict, Verdict):
        return f"a {type(verdict).__name__} instead of a Verdict"
    if not isinstance(verdict.correct, bool):
        return f"correct = {verdict.correct!r}, not a bool"
    if not isinstance(verdict.rewards, dict):
        return f"rewards = {verdict.rewards!r}, not a dict"
    for name, value in verdict.rewards.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"reward '{name}' = {_short(value)}, not a number"
        if not -MAX_REWARD <= value <= MAX_REWARD:  # NaN too; an int of any size compares exactly
            return f"reward '{name}' = {_short(value)}, not a finite number within ±{MAX_REWARD:g}"
    return None


def _short(value: Any) -> str:
    """A value for a one-line message: an int of thousands of digits has no repr (Python refuses), a float has."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass
class _Worker:
    process: Any
    conn: Connection
    job: int | None = None
    deadline: float = 0.0


class VerifierPool:
    """Runs `verify` for many jobs on `workers` processes, each call limited to `timeout_s` seconds.

    Verifier instances are pickled into the workers, so they must be picklable (plain attributes).
    Workers start on first use and are reused until `close()`.
    """

    def __init__(self, verifiers: dict[str, Any], timeout_s: float = 5.0, workers: int = 1):
        self.verifiers = verifiers
        self.timeout_s = timeout_s
        self.size = max(1, workers)
        self._context = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
        self._workers: list[_Worker] = []

    def __enter__(self) -> "VerifierPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def verify(self, jobs: Sequence[Job]) -> list[tuple[Verdict, bool]]:
        """(verdict, failed) per job, in order; failed means the plugin raised, hung or died."""
        results: list[tuple[Verdict, bool] | None] = [None] * len(jobs)
        pending = deque(range(len(jobs)))
        while len(self._workers) < min(self.size, len(jobs)):
            self._workers.append(self._start())
        while pending or any(w.job is not None for w in self._workers):
            for worker in self._workers:
                if worker.job is None and pending:
                    self._assign(worker, pending.popleft(), jobs)
            busy = [w for w in self._workers if w.job is not None]
            timeout = max(0.0, min(w.deadline for w in busy) - time.monotonic())
            ready = wait([w.conn for w in busy], timeout=timeout)
            for worker in busy:
                index = worker.job
                if worker.conn in ready:
                    results[index] = self._collect(worker, jobs[index][0])
                elif time.monotonic() >= worker.deadline:
                    results[index] = (failed_verdict(f"verifier '{jobs[index][0]}' timed out after {self.timeout_s:g} s"), True)
                    self._replace(worker)
        return results  # type: ignore[return-value]

    def verify_groups(self, groups: Sequence[tuple[str, Any, Sequence[str]]]) -> tuple[list[list[Verdict]], list[str]]:
        """Verdicts for groups of completions (verifier name, sample, completions), grouped like the input, and
        the details of the calls that failed (they are incorrect verdicts too)."""
        results = iter(self.verify([(name, text, sample) for name, sample, texts in groups for text in texts]))
        grouped = [[next(results) for _ in texts] for _, _, texts in groups]
        failures = [verdict.detail for group in grouped for verdict, failed in group if failed]
        return [[verdict for verdict, _ in group] for group in grouped], failures

    def close(self) -> None:
        for worker in self._workers:
            self._stop(worker, graceful=True)
        self._workers = []

    def _start(self) -> _Worker:
        parent, child = self._context.Pipe()
        process = self._context.Process(target=_serve, args=(child, self.verifiers), daemon=True)
        try:
            process.start()  # pickles the verifiers
        except Exception as exc:
            raise VerifierError(f"verifiers must be picklable to run in worker processes: {type(exc).__name__}: {exc}") from None
        finally:
            child.close()
        return _Worker(process, parent)

    def _assign(self, worker: _Worker, index: int, jobs: Sequence[Job]) -> None:
        worker.conn.send(jobs[index])
        worker.job = index
        worker.deadline = time.monotonic() + self.timeout_s

    def _collect(self, worker: _Worker, name: str) -> tuple[Verdict, bool]:
        try:
            verdict, error = worker.conn.recv()
        except (EOFError, OSError):
            worker.process.join(1)
            code = worker.process.exitcode
            self._replace(worker)
            return failed_verdict(f"verifier '{name}' worker exited (code {code})"), True
        worker.job = None
        if error is not None:
            return failed_verdict(error), True
        problem = contract_problem(verdict)
        if problem is not None:
            return failed_verdict(f"verifier '{name}' returned {problem}"), True
        return verdict, False

    def _replace(self, worker: _Worker) -> None:
        self._stop(worker, graceful=False)
        fresh = self._start()
        worker.process, worker.conn, worker.job = fresh.process, fresh.conn, None

    @staticmethod
    def _stop(worker: _Worker, graceful: bool) -> None:
        if graceful and worker.process.is_alive():
            try:
                worker.conn.send(None)
            except OSError:
                pass
            worker.process.join(0.5)
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join()
        worker.conn.close()
