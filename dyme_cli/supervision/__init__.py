"""Visual supervision by a larger LLM (the paper's checker and refiner), behind an OpenAI-compatible server.

    checker  rates each rollout's thinking low / medium / high -> the `thinking` reward 0 / 0.5 / 1 (checker.py)
    refiner  rewrites the training samples' reference traces into a template before training (refiner.py)

Both fall back to what dyme does without them (the verifier's local thinking reward, the original reference) when
the server is down, slow or unreadable, and count it; both remember their answers in RUN/supervision/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..recipe import SupervisionSection
from .checker import PARSE_RETRIES, Checker, CheckerCounts, checker_messages, parse_rating
from .client import ChatClient, concurrently
from .facts import parse_facts, with_facts
from .refiner import DEFAULT_TEMPLATE, RefineReport, Refiner, rejection, template_version
from .templates import Template, TemplateStore, best_thinking

__all__ = [
    "DEFAULT_TEMPLATE", "PARSE_RETRIES", "ChatClient", "Checker", "CheckerCounts", "RefineReport", "Refiner", "Template",
    "TemplateStore", "best_thinking", "checker_for", "checker_messages", "concurrently", "parse_facts", "parse_rating",
    "refiner_for", "rejection", "template_store", "template_text", "template_version", "with_facts",
]


def template_text(template: str | None) -> str:
    """`[supervision].template`: a file's text when it names an existing file, else the text itself."""
    if template is None:
        return DEFAULT_TEMPLATE
    path = Path(template)
    return path.read_text(encoding="utf-8").strip() if len(template) < 4096 and path.is_file() else template


def checker_for(section: SupervisionSection, cache_dir: Path, process: int,
                on_message: Callable[[str], None]) -> Checker | None:
    """The LLM checker of `[supervision]` (None when `checker = "local"`), its ratings kept in `cache_dir`."""
    if section.checker != "llm":
        return None
    cache = cache_dir / f"checker.{process}.jsonl" if section.cache else None
    return Checker(ChatClient(section), section.concurrency, section.step_budget_s, cache, on_message)


def refiner_for(section: SupervisionSection, cache_file: Path | None, answer_flag: str, template: str | None = None
                ) -> Refiner:
    """The LLM refiner of `[supervision]`, with `template` (default: the recipe's, see template_text)."""
    return Refiner(ChatClient(section), template or template_text(section.template), answer_flag, section.concurrency,
                   cache_file if section.cache else None)


def template_store(section: SupervisionSection, folder: Path) -> TemplateStore:
    """The run's templates (templates.py), starting from the recipe's."""
    return TemplateStore(folder, template_text(section.template))
