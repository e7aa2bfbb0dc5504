"""Facts for samples that have none (the public chart and medical sets ship no table): the LLM reads the facts
a sample's reference states, once per sample (remembered by sample id), so that the checker and the refiner can
ground on them."""

from __future__ import annotations

from pathlib import Path

from ..data import Sample, append_jsonl, jsonl_records
from .client import ChatClient, concurrently

FACTS_PROMPT = ("List every fact about the image that this reasoning states (values, labels, counts, findings) as one "
                "JSON object mapping a short name to its value. Reply with the JSON object only.")
REPLY_TOKENS = 200


def facts_messages(sample: Sample) -> list[dict]:
    return [{"role": "system", "content": FACTS_PROMPT},
            {"role": "user", "content": f"Question: {sample.question}\nReasoning: {sample.reference}\nFacts:"}]


def parse_facts(reply: str) -> dict | None:
    """The JSON object in a reply (its plain values: text, numbers, booleans), or None when there is none."""
    import json

    start, end = reply.find("{"), reply.rfind("}")
    try:
        found = json.loads(reply[start : end + 1]) if 0 <= start < end else None
    except ValueError:
        return None
    if not isinstance(found, dict):
        return None
    plain = {str(k): v for k, v in found.items() if isinstance(v, (str, int, float, bool))}
    return plain or None


def with_facts(samples: list[Sample], client: ChatClient, concurrency: int, cache_file: Path | None) -> list[Sample]:
    """`samples`, those without facts but with a reference given the facts it states (where the reply held any)."""
    known = _cached(cache_file)
    todo = [s for s in samples if not s.facts and s.reference.strip() and s.id not in known]
    replies = concurrently([lambda s=s: client.reply(facts_messages(s), REPLY_TOKENS) for s in todo], concurrency, None)
    fresh = [{"id": s.id, "facts": parse_facts(r)} for s, r in zip(todo, replies) if isinstance(r, str)]
    known.update({record["id"]: record["facts"] for record in fresh})
    if fresh and cache_file is not None:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(cache_file, fresh)
    return [s.model_copy(update={"facts": known[s.id]}) if not s.facts and known.get(s.id) else s for s in samples]


def _cached(cache_file: Path | None) -> dict[str, dict | None]:
    known: dict[str, dict | None] = {}
    if cache_file is None or not cache_file.is_file():
        return known
    try:
        for _, record in jsonl_records(cache_file, "facts cache"):
            known[record.get("id")] = record.get("facts")
    except ValueError:  # a torn last line of an interrupted run: those samples are asked again
        pass
    return known
