"""Word 3-gram shingles, Jaccard similarity and the reference index the parroted-reference detector queries
(rules in the package docstring)."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Mapping

# Thresholds (see the package docstring).
SHINGLE_N = 3
PARROT_SIMILARITY = 0.8

TOKEN_RE = re.compile(r"[a-z]+|\d+(?:\.\d+)?")  # lower-cased word and number tokens (shingles, fact tokens)


def shingles(text: str, n: int = SHINGLE_N) -> frozenset:
    """Word n-gram shingles of lower-cased word/number tokens."""
    tokens = TOKEN_RE.findall(text.lower())
    return frozenset(zip(*(tokens[i:] for i in range(n))))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 0.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


class ReferenceIndex:
    """Reference traces by prompt id, with an inverted index shingle -> prompt ids for near-copy lookups."""

    def __init__(self, references: Mapping[str, str], threshold: float = PARROT_SIMILARITY):
        self.threshold = threshold
        self.sets: dict[str, frozenset] = {pid: shingles(text or "") for pid, text in references.items()}
        postings: dict[tuple, list[str]] = defaultdict(list)
        for pid, grams in self.sets.items():
            for gram in grams:
                postings[gram].append(pid)
        self.postings = dict(postings)
        self._df = {gram: len(pids) for gram, pids in self.postings.items()}  # document frequency
        self._matches: dict[tuple[frozenset, str | None], tuple[str, float] | None] = {}

    def __contains__(self, prompt_id: object) -> bool:
        return prompt_id in self.sets

    def __len__(self) -> int:
        return len(self.sets)

    def best_match(self, text_or_shingles: str | frozenset, exclude: str | None = None) -> tuple[str, float] | None:
        """The most similar reference of another prompt (not `exclude`) with Jaccard >= threshold, or None.

        Prefix filtering: only the |A| - ceil(t|A|) + 1 rarest shingles of A are probed, which every set
        with Jaccard >= t must share one of; the candidates are then scored exactly.
        """
        grams = shingles(text_or_shingles) if isinstance(text_or_shingles, str) else text_or_shingles
        if not grams:
            return None
        key = (grams, exclude)  # rollouts often repeat a trace word for word (K samples, converged prompts)
        if key not in self._matches:
            self._matches[key] = self._best_match(grams, exclude)
        return self._matches[key]

    def _best_match(self, grams: frozenset, exclude: str | None) -> tuple[str, float] | None:
        size = len(grams)
        probe = size - math.ceil(self.threshold * size - 1e-9) + 1
        rarest = sorted(grams, key=lambda gram: self._df.get(gram, 0))[:probe]
        lo, hi = self.threshold * size, size / self.threshold
        best: tuple[str, float] | None = None
        seen = set()
        for gram in rarest:
            for pid in self.postings.get(gram, ()):
                if pid == exclude or pid in seen:
                    continue
                seen.add(pid)
                other = self.sets[pid]
                if not lo - 1e-9 <= len(other) <= hi + 1e-9:
                    continue
                score = jaccard(grams, other)
                if score >= self.threshold and (best is None or score > best[1] or (score == best[1] and pid < best[0])):
                    best = (pid, score)
        return best
