"""Hub ids versus local paths: the one rule for models and datasets.

A hub id is `name` or `org/name` made of letters, digits, `_`, `.` and `-`, not starting with `.`, and not
ending in a data-file suffix. Anything else (`./x`, `/abs`, `~/x`, `a/b/c`, `train.jsonl`) is a local path.
"""

from __future__ import annotations

import re

DATA_SUFFIXES = (".parquet", ".arrow", ".json", ".jsonl", ".csv")
_HUB_ID = re.compile(r"[\w-][\w.-]*(?:/[\w.-]+)?")


def is_hub_id(text: str) -> bool:
    return _HUB_ID.fullmatch(text) is not None and not text.lower().endswith(DATA_SUFFIXES)
