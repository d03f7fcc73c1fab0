"""Content digests: the one home of "which weights" and "which pixels" in cache keys and model identities.

Example::

    state_digest(student.state_dict())            # '3f1c9a0b7d2e4f61' (16 hex digits)
    array_digest(aligned_faces)                    # reads a memmap in chunks
    file_sha256("student.int8.onnx")               # 64 hex digits
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

#: hex digits kept of a state digest (64 bits: collisions are not a concern for caches)
STATE_DIGITS = 16
#: bytes hashed per chunk when digesting large (memory-mapped) arrays
CHUNK_BYTES = 64 << 20


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file's bytes (read in 16 MiB chunks): model files, cache payloads, weights sources."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(16 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_digest(*states: Mapping[str, torch.Tensor] | None) -> str:
    """sha256 over the sorted names and raw bytes of one or more state dicts (``None`` = empty)."""
    h = hashlib.sha256()
    for state in states:
        for k, v in sorted((state or {}).items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:STATE_DIGITS]


def array_digest(arr: np.ndarray, *extra: np.ndarray, digits: int = 20) -> str:
    """sha256 over ``arr``'s shape, dtype and bytes (read in chunks: a memmap is fine), then ``extra`` arrays.

    About 1 s per GB. Used for aligned faces (teacher cache and embedding cache keys).
    """
    h = hashlib.sha256(f"{tuple(arr.shape)}|{arr.dtype}".encode())
    row = max(1, int(np.prod(arr.shape[1:])) * arr.dtype.itemsize) if arr.ndim else 1
    step = max(1, CHUNK_BYTES // row)
    for i in range(0, len(arr) if arr.ndim else 1, step):
        h.update(np.ascontiguousarray(arr[i:i + step] if arr.ndim else arr).tobytes())
    for e in extra:
        h.update(np.ascontiguousarray(e).tobytes())
    return h.hexdigest()[:digits]
