"""Checkpoints that load with ``torch.load(weights_only=True)``: only tensors, dicts, lists, numbers, strings.

A checkpoint holds the student, the loss (its projection), optimizer, scheduler,
step / epoch / position in the epoch, every RNG state (as tensors), the config
dict and bookkeeping; it is written atomically (distill.io), so a kill at any
moment leaves the previous checkpoint intact.

Example::

    save_checkpoint(run_dir / "checkpoints" / "last.pt", state)
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.io import ModelFileError, atomic_torch_save, safe_torch_load


class CheckpointError(RuntimeError):
    """A checkpoint is missing or unreadable; the message names the file."""


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch RNG states as plain tensors/lists."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(py_version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss": py_gauss},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (must be weights_only-loadable: checked by the tests)."""
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint (``weights_only``, nothing pickled runs).
    
    Raises:
        CheckpointError: missing or unreadable; the message names the file and what to do."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; start without resume, or point run_dir at the run to resume")
    try:
        return safe_torch_load(path)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same to the user
        what = e.what if isinstance(e, ModelFileError) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path} could not be loaded: it is {what}; delete it to restart the run from "
                              "scratch") from None
