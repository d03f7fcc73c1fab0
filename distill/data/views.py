"""Deterministic augmented views of aligned faces.

A *view* of aligned face ``i`` is a pure function of ``(seed, i, view_id)``, so
a cached teacher embedding of view ``(i, v)`` always matches the pixels the
student sees for ``(i, v)``, and a resumed run replays exactly the same views.

Example::

    views = FaceViews(aligned_uint8, augment=build_augmentation(cfg.data.augment), seed=0)
    face, i, v = views[(12, 3)]            # uint8 (S, S, 3) tensor, 12, 3
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

#: an augmentation: (uint8 HWC image, seed) -> uint8 HWC image of the same size
Augment = Callable[[np.ndarray, int], np.ndarray]


def view_seed(seed: int, index: int, view_id: int) -> int:
    """A 32-bit seed that depends on all three numbers (stable across processes and platforms)."""
    digest = hashlib.blake2b(f"{seed}:{index}:{view_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class Mix:
    """Views that mix two training faces (Beyer et al., CVPR 2022: the teacher labels the mix, no labels needed).

    ``mixup``: probability that a view is a pixel blend ``lam * a + (1 - lam) * b``; ``cutmix``:
    probability that it is ``a`` with a rectangle of ``b`` pasted in (area ``1 - lam``). ``lam`` is
    uniform in ``[lam_low, 1 - lam_low]``; the partner ``b`` is another training face in its own
    augmented view. Which views mix, with whom and how is a pure function of ``(seed, face, view)``.
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    lam_low: float = 0.2

    def __post_init__(self) -> None:
        if not (0 <= self.mixup and 0 <= self.cutmix and self.mixup + self.cutmix <= 1):
            raise ValueError(f"mix probabilities must be >= 0 and sum to at most 1, got mixup={self.mixup}, "
                             f"cutmix={self.cutmix} (data.augment.mixup / data.augment.cutmix)")

    @property
    def active(self) -> bool:
        """Whether any view mixes."""
        return self.mixup + self.cutmix > 0

    def fingerprint(self) -> str:
        """Part of teacher-cache keys: cached targets of mixed views depend on the recipe."""
        return f"mix(mixup={self.mixup:g},cutmix={self.cutmix:g},lam_low={self.lam_low:g})"


#: salt of the mixing decisions (so they are independent of the augmentation drawn from the same seed)
_MIX_SALT = 0x5EED_F00D


class FaceViews(Dataset):
    """Aligned faces ``(N, S, S, 3)`` uint8 (a memmap is fine) -> augmented views keyed by ``(index, view_id)``.

    ``view_id`` 0 with ``clean_view0=True`` is the un-augmented face; with ``mix`` some views blend
    two faces (:class:`Mix`).
    """

    def __init__(self, faces: np.ndarray, augment: Augment | None = None, seed: int = 0,
                 indices: Sequence[int] | None = None, clean_view0: bool = False, mix: Mix | None = None,
                 groups: np.ndarray | None = None, shares: Sequence[float | None] | None = None) -> None:
        if faces.ndim != 4 or faces.shape[-1] != 3 or faces.dtype != np.uint8:
            raise ValueError(f"expected uint8 faces (N,S,S,3), got {faces.dtype} {faces.shape}")
        self.faces, self.augment, self.seed, self.clean_view0 = faces, augment, seed, clean_view0
        self.mix = mix if mix is not None and mix.active else None
        self.indices = np.arange(len(faces)) if indices is None else np.asarray(indices, dtype=np.int64)
        #: the source of each face (``data.sources``) and each source's share of an epoch (None: proportional)
        self.groups = None if groups is None else np.asarray(groups, dtype=np.int64)
        self.shares = None if shares is None else list(shares)

    def subset(self, indices: Sequence[int]) -> "FaceViews":
        """The same views of fewer faces (``indices`` into ``faces``; e.g. those a leak guard kept): every kept
        face's views stay pixel for pixel what they were, so a teacher cache of the full set still labels them.

        Raises:
            ValueError: views mix two faces (a partner could be a face left out; the mix draws on the set)."""
        if self.mix is not None:
            raise ValueError("a subset of views that mix faces would change the mixes (partners are drawn from "
                             "the set); leave the faces out before the views are made")
        return FaceViews(self.faces, self.augment, self.seed, indices, self.clean_view0, None, self.groups,
                         self.shares)

    def position_groups(self) -> np.ndarray | None:
        """The source of each position (``groups[indices]``), or None with one source."""
        return None if self.groups is None else self.groups[self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def _augmented(self, index: int, view_id: int) -> np.ndarray:
        face = np.asarray(self.faces[index])
        if self.augment is None or (self.clean_view0 and view_id == 0):
            return face
        return self.augment(face, view_seed(self.seed, int(index), int(view_id)))

    def identity(self) -> str:
        """A digest of which faces these views draw from (their count and ``indices``): a checkpoint records it
        so that a resumed run refuses another training set."""
        h = hashlib.blake2b(f"{len(self.faces)}:{self.faces.shape[1:]}:".encode(), digest_size=8)
        h.update(np.ascontiguousarray(self.indices, dtype=np.int64).tobytes())
        return h.hexdigest()

    def view(self, index: int, view_id: int) -> np.ndarray:
        """View ``view_id`` of face ``index`` (an index into ``faces``, not into ``indices``): uint8 ``(S, S, 3)``."""
        face = self._augmented(index, view_id)
        if self.mix is None or (self.clean_view0 and view_id == 0):
            return face
        rng = np.random.default_rng([view_seed(self.seed, int(index), int(view_id)), _MIX_SALT])
        u = rng.random()
        if u >= self.mix.mixup + self.mix.cutmix or len(self.indices) < 2:
            return face
        p = int(rng.integers(len(self.indices)))
        partner = int(self.indices[p])
        if partner == index:  # never a face with itself
            partner = int(self.indices[(p + 1) % len(self.indices)])
        other = self._augmented(partner, int(rng.integers(1 << 30)))
        lam = rng.uniform(self.mix.lam_low, 1 - self.mix.lam_low)
        if u < self.mix.mixup:
            return (lam * face.astype(np.float32) + (1 - lam) * other.astype(np.float32) + 0.5).astype(np.uint8)
        h, w = face.shape[:2]
        bh, bw = int(round(h * np.sqrt(1 - lam))), int(round(w * np.sqrt(1 - lam)))
        y, x = int(rng.integers(0, h - bh + 1)), int(rng.integers(0, w - bw + 1))
        out = face.copy()
        out[y:y + bh, x:x + bw] = other[y:y + bh, x:x + bw]
        return out

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        pos, view_id = key
        index = int(self.indices[pos])
        return torch.from_numpy(np.ascontiguousarray(self.view(index, view_id))), index, int(view_id)


def share_counts(sizes: Sequence[int], shares: Sequence[float | None], total: int) -> np.ndarray:
    """How many of an epoch's ``total`` samples each source gets: ``round(share * total)`` for sources with a
    share, the rest split over the others in proportion to their ``sizes`` (shares are scaled up to fill the
    epoch when every source has one). int64 array summing to ``total``."""
    sizes = np.asarray(sizes, dtype=np.float64)
    fixed = np.array([s is not None for s in shares])
    want = np.array([s or 0.0 for s in shares], dtype=np.float64)
    if fixed.all():
        want = want / want.sum()
    else:
        free = sizes * ~fixed
        want = np.where(fixed, want, (1 - want[fixed].sum()) * free / max(free.sum(), 1))
    counts = np.floor(want * total).astype(np.int64)
    counts[np.argsort(-(want * total - counts))[:total - counts.sum()]] += 1  # largest remainders
    return counts


def share_order(groups: np.ndarray, shares: Sequence[float | None], rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray]:
    """One epoch of positions drawn by source share: ``(positions, repeat)``, as many as ``groups``, shuffled.

    Source ``g`` contributes :func:`share_counts` positions: passes over its own shuffled positions, cut where
    its count ends; ``repeat`` numbers the pass (0 first) so a position seen twice in an epoch gets another
    cached view."""
    parts, reps = [], []
    sizes = np.bincount(groups, minlength=len(shares))
    for g, count in enumerate(share_counts(sizes, shares, len(groups))):
        own = np.flatnonzero(groups == g)
        if count == 0 or not len(own):
            continue
        passes = -(-count // len(own))
        parts.append(np.concatenate([rng.permutation(own) for _ in range(passes)])[:count])
        reps.append(np.repeat(np.arange(passes), len(own))[:count])
    order = rng.permutation(sum(len(p) for p in parts))
    return np.concatenate(parts)[order], np.concatenate(reps)[order]


def shard_positions(length: int, rank: int, world: int) -> np.ndarray:
    """Rank ``rank``'s positions of a data set sharded over ``world`` processes: ``rank, rank + world, ...``,
    cut to ``length // world`` so that every rank holds as many (int64 array)."""
    return np.arange(rank, length, world, dtype=np.int64)[:length // world]


class EpochViewSampler(Sampler):
    """Yields ``(position, view_id)`` keys for one epoch: a seeded shuffle of positions.

    Views: ``num_views=None`` (online teacher) gives ``view_id = epoch``, a fresh
    view every epoch. With K cached views, sample ``p`` gets
    ``(epoch + offset[p]) % K`` with a seeded per-sample offset: every image
    still cycles through all K views once per K epochs (full coverage, unlike
    independent random draws, which leave ~(1-1/K)^K of views unseen per cycle),
    while one batch mixes different views instead of all showing view ``epoch % K``.

    Sharding: with ``num_replicas > 1`` rank ``r`` takes every ``num_replicas``-th
    position of the epoch order starting at ``r`` (equal-sized, disjoint), so the
    ranks' ``k``-th batches together are exactly the single-process ``k``-th global batch.

    ``local=True`` (a teacher cache sharded per rank): rank ``r`` draws only from its own shard,
    :func:`shard_positions` (positions ``r, r + W, ...``), shuffled per epoch and rank: it reads only the
    targets its process stored; the global batch is then not the single-process one.

    ``groups`` + ``shares`` (several sources, ``data.sources[].share``): each epoch draws every source's
    share of its ``length`` samples from that source (:func:`share_order`); a source drawn more than once in
    an epoch moves on to the next cached view with each pass.

    ``set_start(n)`` skips this rank's first ``n`` keys of the epoch (mid-epoch resume).

    Example::

        sampler = EpochViewSampler(len(views), seed=0, num_views=4)
        sampler.set_epoch(3)
        keys = list(sampler)          # [(pos, view_id), ...]
    """

    def __init__(self, length: int, *, seed: int = 0, num_views: int | None = None, shuffle: bool = True,
                 rank: int = 0, num_replicas: int = 1, drop_last: bool = True, local: bool = False,
                 groups: np.ndarray | None = None, shares: Sequence[float | None] | None = None) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        self.shares = list(shares) if groups is not None and shares and any(s is not None for s in shares) else None
        self.groups = None if self.shares is None else np.asarray(groups, dtype=np.int64)
        if self.groups is not None and (len(self.groups) != length or local):
            raise ValueError("source shares need one group per position and a shared (not per-rank) teacher cache")
        self.length, self.seed, self.num_views, self.shuffle = length, seed, num_views, shuffle
        self.rank, self.num_replicas, self.drop_last, self.local = rank, num_replicas, drop_last, local
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` (its shuffle and view ids) from its first key."""
        self.epoch = epoch
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip this rank's first ``start`` keys of the epoch (mid-epoch resume)."""
        self.start = int(start)

    def positions(self) -> np.ndarray:
        """This rank's positions of the epoch: a seeded shuffle, sharded over ranks (or of its own shard)."""
        return self._keys()[0]

    def _keys(self) -> tuple[np.ndarray, np.ndarray]:
        """This rank's ``(positions, pass number)`` of the epoch (the pass is 0 without source shares)."""
        if self.groups is not None:
            order, repeat = share_order(self.groups, self.shares, np.random.default_rng([self.seed, self.epoch]))
            per_rank = len(order) // self.num_replicas
            return (order[self.rank::self.num_replicas][:per_rank],
                    repeat[self.rank::self.num_replicas][:per_rank])
        return self._plain(), np.zeros(0, dtype=np.int64)

    def _plain(self) -> np.ndarray:
        if self.local:
            own = shard_positions(self.length, self.rank, self.num_replicas)
            rng = np.random.default_rng([self.seed, self.epoch, self.rank])
            return rng.permutation(own) if self.shuffle else own
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.length) if self.shuffle
                 else np.arange(self.length))
        per_rank = len(order) // self.num_replicas
        return order[self.rank::self.num_replicas][:per_rank]

    def view_ids(self, positions: np.ndarray, repeat: np.ndarray | None = None) -> np.ndarray:
        """The view id of each position: the epoch (online), or a per-sample cycle through K views (moved on by
        ``repeat``, a position's pass number within the epoch)."""
        extra = 0 if repeat is None or not len(repeat) else repeat
        if self.num_views is None:
            return self.epoch * (1 + int(np.max(extra, initial=0))) + extra + np.zeros(len(positions), np.int64)
        offset = np.random.default_rng([self.seed, 7919]).integers(0, self.num_views, size=self.length)
        return (self.epoch + offset[positions] + extra) % self.num_views

    def __iter__(self) -> Iterator[Any]:
        pos, repeat = self._keys()
        pos, repeat = pos[self.start:], repeat[self.start:] if len(repeat) else None
        for p, v in zip(pos.tolist(), self.view_ids(pos, repeat).tolist()):
            yield (int(p), int(v))

    def __len__(self) -> int:
        return max(0, self.length // self.num_replicas - self.start)
