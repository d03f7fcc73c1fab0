"""What this CPU makes fast: the one place precision choices consult.

bf16 autocast pays off on CPUs with AMX tiles (Sapphire Rapids and later): there the dlib teacher ran
1,184 img/s in bf16 against 434 in fp32 (BENCHMARKS.md, an AMX machine). Without AMX, on AVX-512
with only ``avx512_bf16``, bf16 is *slower*: 255 against 337 img/s for the same teacher, batch 128,
measured on this project's 2-core VM (``python -m benchmarks.inference``). So ``precision: auto``
means bf16 with AMX and fp32 without.

Example::

    resolve_precision("auto")      # "bf16" on an AMX CPU, else "fp32"
"""
from __future__ import annotations

from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def has_amx() -> bool:
    """Whether this CPU has AMX tiles usable by torch (oneDNN's fast bf16/int8 matmuls)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - an unknown probe means "not known to be there"
        return False


def resolve_precision(precision: str) -> str:
    """``"auto"`` -> ``"bf16"`` with AMX, else ``"fp32"``; ``"fp32"`` and ``"bf16"`` unchanged.

    Raises:
        ValueError: another value.
    """
    if precision == "auto":
        return "bf16" if has_amx() else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision
