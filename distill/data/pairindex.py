"""A verification protocol as indices into an array of faces: the data floor's pair type.

Protocols (:mod:`distill.data.protocols`, ``.bin`` sets) build it; the evaluation floor scores it
(:func:`distill.evaluation.verify.evaluate_pairs`), which re-exports it.

Example::

    pairs = PairIndex(idx_a=[0, 2], idx_b=[1, 3], is_same=[True, False], fold=[0, 1])
    len(pairs), pairs.subset(pairs.is_same).idx_a
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PairIndex:
    """A pairs protocol as indices into an array of aligned faces.

    ``fold`` numbers the cross-validation folds (LFW: 0..9, 600 pairs each).
    """

    idx_a: np.ndarray
    idx_b: np.ndarray
    is_same: np.ndarray
    fold: np.ndarray

    def __post_init__(self) -> None:
        cast = {"idx_a": np.int64, "idx_b": np.int64, "is_same": bool, "fold": np.int64}
        for name, dtype in cast.items():
            object.__setattr__(self, name, np.asarray(getattr(self, name)).astype(dtype).ravel())
        n = len(self.idx_a)
        bad = [k for k in cast if len(getattr(self, k)) != n]
        if bad:
            raise ValueError(f"PairIndex arrays must have the same length ({n}); differing: {', '.join(bad)}")

    def __len__(self) -> int:
        return len(self.idx_a)

    def subset(self, mask: np.ndarray) -> "PairIndex":
        """The pairs selected by a boolean mask or an index array."""
        return PairIndex(self.idx_a[mask], self.idx_b[mask], self.is_same[mask], self.fold[mask])
