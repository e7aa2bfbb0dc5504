"""The one way dyme talks to a larger LLM: an OpenAI-compatible chat endpoint (vLLM, lmdeploy, llama.cpp server, a
hosted API) through the `openai` client, which times out each request and retries it with exponential backoff.
Requests run concurrently, a bounded number at a time, within a time budget."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Callable, TypeVar

from ..recipe import RecipeError, SupervisionSection

T = TypeVar("T")


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

    def reply(self, messages: list[dict], max_tokens: int) -> str:
        """The model's reply; the `openai` client's errors (connection refused, timeout, HTTP errors) propagate."""
        response = self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=0.0, max_tokens=max_tokens)
        return response.choices[0].message.content or ""


def unreachable(exc: BaseException) -> bool:
    """A server that is down or too slow (as opposed to one that answered with an error)."""
    from openai import APIConnectionError

    return isinstance(exc, APIConnectionError)


def concurrently(calls: list[Callable[[], T]], concurrency: int, budget_s: float | None
                 ) -> list[T | BaseException | None]:
    """Each call's result or exception, at most `concurrency` at a time; None for a call not finished within
    `budget_s` (None: no limit). An unfinished call is abandoned, not awaited: a slow server never holds a training
    step longer than the budget."""
    if not calls:
        return []
    pool = ThreadPoolExecutor(max_workers=min(concurrency, len(calls)), thread_name_prefix="dyme-llm")
    futures = [pool.submit(call) for call in calls]
    wait(futures, timeout=budget_s)
    pool.shutdown(wait=False, cancel_futures=True)
    return [(f.exception() or f.result()) if f.done() and not f.cancelled() else None for f in futures]
