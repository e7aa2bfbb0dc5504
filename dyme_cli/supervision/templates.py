"""Template evolution: the refiner's template learns from the policy's best thinking.

Every `[supervision].evolve_every` steps, a correct rollout that the checker rated high proposes a new template
(one request), and one comparison request decides whether it replaces the current one. Every template is kept in
RUN/supervision/templates/ with its provenance (the step, prompt and rollout it came from), so a resumed run
goes on with the newest one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..data import append_jsonl, jsonl_records
from .client import ChatClient

HISTORY = "history.jsonl"
REPLY_TOKENS = 300

PROPOSE = ("You maintain a template that tells a writer how to lay out the reasoning from an image's facts to an "
           "answer. Given the current template and a reasoning that a judge rated excellent, write an improved "
           "template that keeps what makes the reasoning good. Reply with the template only, in at most 80 words.")
COMPARE = ("Two templates tell a writer how to lay out the reasoning from an image's facts to an answer. Which one "
           "leads to reasoning that reads the needed facts correctly and supports the answer step by step? Reply "
           "with one letter: A or B.")


@dataclass(frozen=True)
class Template:
    version: int
    text: str


def propose_messages(current: str, thinking: str) -> list[dict]:
    return [{"role": "system", "content": PROPOSE},
            {"role": "user", "content": f"Current template: {current}\nExcellent reasoning: {thinking}\nNew template:"}]


def compare_messages(current: str, proposed: str) -> list[dict]:
    return [{"role": "system", "content": COMPARE},
            {"role": "user", "content": f"A: {current}\nB: {proposed}\nBetter:"}]


def prefers_proposal(reply: str) -> bool:
    """True when the comparison's reply chooses B (the proposal); anything else keeps the current template."""
    match = re.search(r"\b([AB])\b", reply.strip())
    return bool(match) and match.group(1) == "B"


class TemplateStore:
    """The run's templates, newest last, each with where it came from."""

    def __init__(self, folder: Path, initial: str):
        self.folder = folder
        self.history = [record for _, record in jsonl_records(folder / HISTORY, "templates")] \
            if (folder / HISTORY).is_file() else []
        if not self.history:
            self._keep({"version": 0, "template": initial, "step": 0, "source": "recipe"})

    @property
    def current(self) -> Template:
        return Template(self.history[-1]["version"], self.history[-1]["template"])

    def evolve(self, client: ChatClient, thinking: str, step: int, source: str) -> Template | None:
        """Ask for a template built on `thinking` and keep it if the comparison prefers it; the new one, or None."""
        current = self.current
        proposed = client.reply(propose_messages(current.text, thinking), REPLY_TOKENS).strip()
        if not proposed or proposed == current.text:
            return None
        if not prefers_proposal(client.reply(compare_messages(current.text, proposed), 4)):
            return None
        self._keep({"version": current.version + 1, "template": proposed, "step": step, "source": source})
        return self.current

    def _keep(self, record: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"v{record['version']:03d}.txt").write_text(record["template"] + "\n", encoding="utf-8")
        append_jsonl(self.folder / HISTORY, [record])
        self.history.append(record)


def best_thinking(candidates: list[tuple[str, str, float, bool]]) -> tuple[str, str] | None:
    """(thinking, source) of the first correct rollout rated high among (thinking, source, rating, correct)."""
    return next(((thinking, source) for thinking, source, rating, correct in candidates if rating == 1.0 and correct
                 and thinking.strip()), None)

