"""Batched embedding extraction with optional flip TTA and an on-disk cache.

Example::

    emb = extract_embeddings(teacher, faces, batch_size=128, flip_tta=True,
                             cache_dir=".cache/facedistill/embeddings")   # (N, D) float32
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import re
from pathlib import Path

import numpy as np
import torch
from distill.progress import progress_bar

from distill.embedder import Embedder
from distill.fingerprint import array_digest, state_digest
from distill.io import atomic_write_bytes

log = logging.getLogger(__name__)


def model_fingerprint(embedder: Embedder) -> str | None:
    """What identifies the model's outputs: its own ``fingerprint()`` (teachers, loaded model files), a
    digest of a wrapped module's state dict (:class:`~distill.embedder.ModuleEmbedder`), or ``None``."""
    fp = getattr(embedder, "fingerprint", None)
    if callable(fp):
        return str(fp())
    module = getattr(embedder, "module", None)
    if isinstance(module, torch.nn.Module):
        return f"{embedder.name}-{type(module).__qualname__}-{state_digest(module.state_dict())}"
    return None


def cache_path(cache_dir: str | Path, embedder: Embedder, faces: np.ndarray, flip_tta: bool,
               cache_key: str | None = None) -> Path:
    """``cache_dir/<model name>-<hash>.npy``, the hash covering model, data, preprocessing, flip and precision
    (and, for exported model files, their bytes: ``content_digest()``).

    ``cache_key`` replaces the pixel hash of ``faces`` when given (e.g. the aligned-face cache key, which
    already names paths, sizes, mtimes and template) and is required for models that cannot be fingerprinted.
    """
    model_fp = model_fingerprint(embedder)
    if model_fp is None:
        raise ValueError(f"cannot fingerprint embedder {embedder.name!r} (no fingerprint() and no .module); "
                         "pass cache_key=... that changes whenever its weights change, or cache_dir=None")
    key = {
        "model": model_fp,
        "data": cache_key if cache_key is not None else array_digest(faces),
        "n": int(len(faces)),
        "preprocessing": embedder.preprocessing.fingerprint(),
        "normalized": bool(embedder.normalized),
        "flip_tta": bool(flip_tta),
        "precision": str(getattr(embedder, "precision", getattr(embedder, "fast", ""))),
    }
    digest_of = getattr(embedder, "content_digest", None)
    if callable(digest_of):  # model files: the bytes, since their fingerprint names the source student only
        key["file"] = str(digest_of())
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", embedder.name)[:60]
    return Path(cache_dir) / f"{safe}-{digest}.npy"


def _load_cached(path: Path, n: int) -> np.ndarray | None:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (ValueError, OSError) as e:       # truncated or foreign file: recompute, don't crash
        log.warning("ignoring unreadable embedding cache %s (%s); recomputing", path, e)
        return None
    if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != n:
        log.warning("ignoring embedding cache %s with shape %s %s (expected (%d, D) float32)",
                    path, arr.shape, arr.dtype, n)
        return None
    return arr


def _l2n(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def extract_embeddings(embedder: Embedder, faces: np.ndarray, *, batch_size: int = 128, flip_tta: bool = False,
                       cache_dir: str | Path | None = None, cache_key: str | None = None,
                       progress: bool = True) -> np.ndarray:
    """Embed aligned uint8 faces ``(N, S, S, 3)`` (a memmap is fine) -> ``(N, D)`` float32.

    ``flip_tta``: also embed the horizontal mirror and combine: sum then L2-normalise for
    normalised models, mean for raw ones (keeps raw distances in the model's units).
    With ``cache_dir`` the result is stored as a plain ``.npy`` (written atomically, loaded
    without pickle) and a second call with the same model/data/settings skips the model.
    """
    if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != np.uint8:
        raise ValueError(f"expected aligned uint8 faces (N,S,S,3), got {faces.dtype} {tuple(faces.shape)}")
    path = None
    if cache_dir is not None:
        path = cache_path(cache_dir, embedder, faces, flip_tta, cache_key)
        cached = _load_cached(path, len(faces))
        if cached is not None:
            log.info("embeddings of %s loaded from %s", embedder.name, path)
            return cached
    chunks: list[np.ndarray] = []
    bar = progress_bar(total=len(faces), desc=f"embed {embedder.name}" + (" +flip" if flip_tta else ""),
               unit="img", disable=not progress, leave=False)
    with torch.inference_mode():
        for i in range(0, len(faces), batch_size):
            batch = np.ascontiguousarray(faces[i:i + batch_size])
            e = embedder.embed(torch.from_numpy(np.array(batch))).float().cpu().numpy()
            if flip_tta:
                mirrored = np.ascontiguousarray(batch[:, :, ::-1, :])
                e2 = embedder.embed(torch.from_numpy(mirrored)).float().cpu().numpy()
                e = _l2n(e + e2) if embedder.normalized else (e + e2) / 2
            chunks.append(e.astype(np.float32, copy=False))
            bar.update(len(batch))
    bar.close()
    out = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
    if not np.all(np.isfinite(out)):
        raise FloatingPointError(f"{embedder.name} produced non-finite embeddings for "
                                 f"{int((~np.isfinite(out).all(1)).sum())} of {len(out)} faces")
    if path is not None:
        buf = io.BytesIO()
        np.save(buf, out, allow_pickle=False)
        atomic_write_bytes(path, buf.getvalue())
    return out
