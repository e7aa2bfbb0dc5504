"""The train/test layout every synthetic generator writes: one seeded stream per split, honest test references."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from ..data import Sample, write_samples

TEST_SEED_OFFSET = 1_000_003  # the test split's seed, so the two splits never share a random stream


def write_splits(
    out: Path, *, n_train: int, n_test: int, seed: int, quality: str,
    make: Callable[[int, str, random.Random, str], Sample],
) -> dict[str, int]:
    """Write `out/train.jsonl` and `out/test.jsonl`; `make(index, split, rng, quality)` builds one sample (and
    writes its images). The test split always gets "high" quality: it is for measuring, not learning."""
    out = Path(out)
    counts = {}
    for split, n, split_seed in (("train", n_train, seed), ("test", n_test, seed + TEST_SEED_OFFSET)):
        rng = random.Random(split_seed)
        split_quality = quality if split == "train" else "high"
        counts[split] = write_samples(out / f"{split}.jsonl", [make(i, split, rng, split_quality) for i in range(n)])
    return counts
