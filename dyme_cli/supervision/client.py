"""The one way dyme talks to a larger LLM: an OpenAI-compatible chat endpoint (vLLM, lmdeploy, llama.cpp server, a
hosted API) through the `openai` client, which times out each read and retries a request with exponential backoff.

Every wait has a deadline: a request, its retries included, ends within `ChatClient.deadline_s` even when the
server sends a byte every few seconds (the client's own timeout is per read); requests run concurrently, a bounded
number at a time, within a time budget; and a request given up on runs in a daemon thread, so it never holds a
step, a command or the process's exit."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from typing import Callable, TypeVar

from ..errors import first_line
from ..recipe import RecipeError, SupervisionSection

T = TypeVar("T")

BACKOFF_S = 8.0  # the openai client's longest wait between two tries of a request


class ReplyTimeout(TimeoutError):
    """No complete reply within a request's deadline."""


class ChatClient:
    """Replies of the recipe's `[supervision].model` at `base_url`; the API key, if any, from `api_key_env`."""

    def __init__(self, section: SupervisionSection):
        from openai import OpenAI

        if section.api_key_env and section.api_key_env not in os.environ:
            raise RecipeError(f"[supervision].api_key_env: the environment variable {section.api_key_env} is not set")
        key = os.environ[section.api_key_env] if section.api_key_env else ""
        self.model = section.model
        self.base_url = section.base_url
        self.client = OpenAI(base_url=section.base_url, api_key=key or "not-needed", timeout=section.timeout_s,
                             max_retries=section.max_retries)
        self.deadline_s = (1 + section.max_retries) * section.timeout_s + section.max_retries * BACKOFF_S

    def reply(self, messages: list[dict], max_tokens: int) -> str:
        """The model's reply; the `openai` client's errors (connection refused, timeout, HTTP errors) propagate, and
        ReplyTimeout when the request and its retries take longer than `deadline_s` in all."""
        def request() -> str:
            response = self.client.chat.completions.create(
                model=self.model, messages=messages, temperature=0.0, max_tokens=max_tokens)
            return response.choices[0].message.content or ""

        outcome = concurrently([request], 1, self.deadline_s)[0]
        if outcome is None:
            raise ReplyTimeout(f"no complete reply within {self.deadline_s:g} s")
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def unreachable(exc: BaseException) -> bool:
    """A server that is down or too slow (as opposed to one that answered with an error)."""
    from openai import APIConnectionError

    return isinstance(exc, (APIConnectionError, ReplyTimeout))


def failure(exc: BaseException) -> tuple[str, str]:
    """(kind, description) of a failed request: `unreachable` (down, too slow), `error` (the server answered with an
    HTTP error: 500, 401, 404 ...) or `reply` (an answer the client could not read)."""
    from openai import APIStatusError

    if unreachable(exc):
        return "unreachable", f"cannot be reached ({type(exc).__name__}: {first_line(exc)})"
    if isinstance(exc, APIStatusError):
        return "error", f"answers with an error (HTTP {exc.status_code}: {first_line(exc)})"
    return "reply", f"sent a reply that cannot be read ({type(exc).__name__}: {first_line(exc)})"


def concurrently(calls: list[Callable[[], T]], concurrency: int, budget_s: float | None,
                 on_done: Callable[[int, T | BaseException], None] | None = None) -> list[T | BaseException | None]:
    """Each call's result or exception, at most `concurrency` at a time; None for a call not finished within
    `budget_s` (None: no limit). `on_done(index, outcome)` runs in the caller's thread as each call ends, so what
    finished can be kept before an interrupt. An unfinished call is abandoned in its daemon thread, not awaited: a
    slow server never holds a training step longer than the budget, nor the process at exit."""
    outcomes: list = [None] * len(calls)
    finished: queue.Queue = queue.Queue()

    def run(index: int) -> None:
        try:
            finished.put((index, calls[index]()))
        except BaseException as exc:  # noqa: BLE001 (handed to the caller, who reports it)
            finished.put((index, exc))

    todo, running = deque(range(len(calls))), 0
    end = None if budget_s is None else time.monotonic() + budget_s
    while todo or running:
        while todo and running < concurrency:
            threading.Thread(target=run, args=(todo.popleft(),), name="dyme-llm", daemon=True).start()
            running += 1
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            break
        try:
            index, outcome = finished.get(timeout=left)
        except queue.Empty:
            break
        running -= 1
        outcomes[index] = outcome
        if on_done is not None:
            on_done(index, outcome)
    return outcomes
