"""Teacher embeddings of K fixed augmented views per image, computed once and memory-mapped.

Layout of ``cache_dir/<key>/``::

    manifest.json        the key fields (teacher fingerprint, augmentation recipe, seed, data fingerprint,
                         K, N, D) -- a stale cache is one whose manifest differs
    embeddings.f32       float32 (N, K, D), row n = view position n of the FaceViews (embeddings.f16:
                         float16, ``dtype="float16"``: half the disk and page cache; read back as float32)
    index.npy            face index of each row (FaceViews.indices)
    chunks/<c>.done      chunk c (positions c*chunk .. ) written and flushed (atomic marker files)
    complete.json        written last: sha256 of embeddings.f32; without it the cache is incomplete

Opening verifies the manifest, the file size, the ``complete`` marker, the checksum
and that no row is NaN/inf; anything wrong is reported and rebuilt, never used.
Building is resumable (done chunks are kept) and, under DDP, sharded over ranks: by default the ranks
fill one shared file chunk by chunk and each reads all of it; ``per_rank=True`` gives each rank its own
cache directory holding only its shard of the faces (:func:`~distill.data.views.shard_positions`:
``1/world`` of the rows), with its own manifest, checksum, resume and rebuild, and the trainer then draws
each rank's batches from its own shard (``EpochViewSampler(local=True)``).

Example::

    cache = build_teacher_cache(teacher, views, num_views=4, cache_dir=".cache/facedistill/teacher")
    targets = cache.get(indices, view_ids)           # (B, D) float32 tensor
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from distill.progress import progress_bar

from distill.data.views import FaceViews, shard_positions
from distill.fingerprint import array_digest, file_sha256
from distill.io import atomic_write, atomic_write_bytes, atomic_write_json

from . import ddp

FORMAT_VERSION = 1
#: stored dtypes: name -> (file suffix, numpy dtype). float16 keeps 11 significant bits: a target's cosine
#: to its float32 value is 1 - O(1e-7), and values beyond 65504 are refused (CacheError), never stored as inf
CACHE_DTYPES: dict[str, tuple[str, Any]] = {"float32": ("f32", np.float32), "float16": ("f16", np.float16)}
FLOAT16_MAX = float(np.finfo(np.float16).max)


class CacheError(RuntimeError):
    """The cache on disk cannot be used (stale, incomplete or corrupt); the message says why."""


def recipe_fingerprint(augment: Any) -> str:
    """Augmentation identity: ``augment.fingerprint()``/``.recipe`` when offered, else its qualified name + repr."""
    if augment is None:
        return "none"
    for attr in ("fingerprint", "recipe"):
        value = getattr(augment, attr, None)
        if value is not None:
            return str(value() if callable(value) else value)
    if hasattr(augment, "__qualname__"):  # a plain function: its repr holds a memory address
        return f"{augment.__module__}.{augment.__qualname__}"
    return repr(augment)


def data_fingerprint(views: FaceViews) -> str:
    """Digest of the aligned faces (all bytes; ~1 s per GB, or the faces' own ``fingerprint()`` when they
    are read lazily, as a RecordIO set is) and the selected indices."""
    own = getattr(views.faces, "fingerprint", None)
    if callable(own):
        h = hashlib.sha256(f"{own()}".encode())
        h.update(np.ascontiguousarray(np.asarray(views.indices, dtype=np.int64)).tobytes())
        return h.hexdigest()[:20]
    return array_digest(views.faces, np.asarray(views.indices, dtype=np.int64))


def cache_key(teacher_fingerprint: str, views: FaceViews, num_views: int, data_fp: str | None = None,
              dtype: str = "float32") -> dict:
    """The fields that decide whether a cache on disk can be used: teacher, augmentation, seed, data, K, N
    and, when not float32, the stored dtype (float32 keys are those of caches written before the choice)."""
    if dtype not in CACHE_DTYPES:
        raise ValueError(f"cache dtype {dtype!r}: use one of {', '.join(CACHE_DTYPES)}")
    augment = recipe_fingerprint(views.augment) + ("" if views.mix is None else f"+{views.mix.fingerprint()}")
    key = {"format": FORMAT_VERSION, "teacher": teacher_fingerprint, "augment": augment,
           "seed": int(views.seed), "clean_view0": bool(views.clean_view0),
           "data": data_fp or data_fingerprint(views), "num_views": int(num_views), "n": len(views)}
    return key if dtype == "float32" else {**key, "dtype": dtype}


def _stored(key: dict) -> tuple[str, Any]:
    """``(data file name, numpy dtype)`` of the cache ``key`` describes."""
    suffix, dtype = CACHE_DTYPES[key.get("dtype", "float32")]
    return f"embeddings.{suffix}", dtype


def _key_dir(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{key['teacher'].split('-')[0]}-{digest}"


@dataclass
class TeacherCache:
    """Read side of a complete cache: ``get(indices, view_ids) -> (B, D)`` float32 tensor.

    ``indices`` are face indices (what FaceViews returns as ``index``), ``view_ids`` in ``0..K-1``.
    """

    path: Path
    key: dict
    embeddings: np.ndarray  # (N, K, D) read-only memmap
    face_index: np.ndarray  # (N,) face index of each row
    positions: np.ndarray | None = None  # per-rank shard: the view positions of its rows (None: every position)
    kept: np.ndarray | None = None  # the faces training may use (a leak guard's exclusions); None: every face

    def __post_init__(self) -> None:
        self._row = np.full(int(self.face_index.max()) + 1 if len(self.face_index) else 0, -1, dtype=np.int64)
        self._row[self.face_index] = np.arange(len(self.face_index))

    @property
    def num_views(self) -> int:
        """K, the number of cached views per face."""
        return self.embeddings.shape[1]

    @property
    def dim(self) -> int:
        """D, the teacher's embedding dimension."""
        return self.embeddings.shape[2]

    def get(self, indices: torch.Tensor | np.ndarray, view_ids: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Teacher embeddings ``(B, D)`` float32 of faces ``indices`` in views ``view_ids``.
        
        Raises:
            KeyError: a face or view the cache does not hold."""
        idx = np.asarray(indices, dtype=np.int64)
        views = np.asarray(view_ids, dtype=np.int64)
        if idx.size and (idx.max() >= len(self._row) or (rows := self._row[idx]).min() < 0):
            raise KeyError(f"face index not in the teacher cache {self.path} (built for other data?)")
        if views.size and (views.min() < 0 or views.max() >= self.num_views):
            raise KeyError(f"view id outside 0..{self.num_views - 1} for cache {self.path}")
        if not idx.size:
            return torch.empty(0, self.dim)
        return torch.from_numpy(np.ascontiguousarray(self.embeddings[rows, views], dtype=np.float32))

    def targets(self, faces: torch.Tensor, indices: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        """The trainer's teacher-source interface (faces unused: the work was done at build time)."""
        return self.get(indices, view_ids)

    @property
    def per_rank(self) -> bool:
        """True for a rank's own shard (the trainer then samples only its positions)."""
        return self.positions is not None

    def only(self, faces: np.ndarray) -> "TeacherCache":
        """This cache for training on ``faces`` (face indices it holds) only: views made with
        ``FaceViews.subset(faces)`` then match it. Per-rank shards cannot be narrowed (ValueError)."""
        if self.positions is not None:
            raise ValueError("a per-rank teacher cache shard cannot leave faces out (train.cache_shards: per_rank)")
        faces = np.asarray(faces, dtype=np.int64)
        if len(faces) and (faces.max() >= len(self._row) or self._row[faces].min() < 0):
            raise KeyError(f"face index not in the teacher cache {self.path}")
        return dataclasses.replace(self, kept=faces)

    def mean_embeddings(self, chunk: int = 4096) -> np.ndarray:
        """Each face's teacher embedding averaged over its K cached views: float32 ``(N, D)`` in ``face_index``
        order (the leak guard's view of the training faces: no extra teacher pass)."""
        out = np.zeros((len(self.face_index), self.dim), np.float32)
        for a in range(0, len(out), chunk):
            out[a:a + chunk] = np.asarray(self.embeddings[a:a + chunk], dtype=np.float32).mean(1)
        return out

    def view_embeddings(self, view: int, chunk: int = 4096) -> np.ndarray:
        """Each face's teacher embedding of cached view ``view``: float32 ``(N, D)`` in ``face_index`` order (with
        ``FaceViews(clean_view0=True)``, view 0 is the clean face: the leak guard's better descriptor)."""
        if not 0 <= view < self.num_views:
            raise IndexError(f"view {view} is not cached (views 0..{self.num_views - 1})")
        out = np.zeros((len(self.face_index), self.dim), np.float32)
        for a in range(0, len(out), chunk):
            out[a:a + chunk] = np.asarray(self.embeddings[a:a + chunk, view], dtype=np.float32)
        return out

    def matches(self, views: FaceViews) -> bool:
        """Whether the cache was built on exactly these views (same length and face indices; a shard: its
        positions' face indices; narrowed by :meth:`only`: the kept faces)."""
        indices = np.asarray(views.indices)
        if self.kept is not None:
            return bool(np.array_equal(indices, self.kept))
        if self.positions is not None:
            return bool(len(self.positions) == len(self.face_index) and self.positions.max(initial=-1) < len(indices)
                        and np.array_equal(indices[self.positions], self.face_index))
        return len(views) == len(self.face_index) and np.array_equal(indices, self.face_index)


def open_cache(path: Path, key: dict) -> TeacherCache:
    """Open and verify a complete cache directory, or raise :class:`CacheError` saying what is wrong."""
    name, dtype = _stored(key)
    manifest_path, data_path, done_path = path / "manifest.json", path / name, path / "complete.json"
    if not manifest_path.exists():
        raise CacheError(f"{manifest_path} is missing")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("key") != key:
        diff = sorted(k for k in set(key) | set(manifest.get("key", {}))
                      if key.get(k) != manifest.get("key", {}).get(k))
        raise CacheError(f"{path} is stale: key fields differ ({', '.join(diff)})")
    if not done_path.exists():
        raise CacheError(f"{path} is incomplete: no complete.json marker")
    n, k, d = manifest["shape"]
    expected = n * k * d * np.dtype(dtype).itemsize
    if not data_path.exists() or data_path.stat().st_size != expected:
        size = data_path.stat().st_size if data_path.exists() else 0
        raise CacheError(f"{data_path} has {size} bytes, expected {expected} (truncated?)")
    complete = json.loads(done_path.read_text())
    if complete.get("sha256") != file_sha256(data_path):
        raise CacheError(f"{data_path} does not match the checksum in {done_path} (corrupt)")
    emb = np.memmap(data_path, dtype=dtype, mode="r", shape=(n, k, d))
    bad = ~np.isfinite(emb).all(axis=2)
    if bad.any():
        raise CacheError(f"{data_path}: {int(bad.sum())} non-finite rows")
    try:  # never unpickled: a tampered index (object array) is refused like a corrupt one
        face_index = np.load(path / "index.npy", allow_pickle=False)
    except (OSError, ValueError) as e:
        raise CacheError(f"{path / 'index.npy'} is unreadable ({e})") from None
    if face_index.shape != (n,):
        raise CacheError(f"{path / 'index.npy'} has shape {face_index.shape}, expected ({n},)")
    return TeacherCache(path=path, key=key, embeddings=emb, face_index=face_index)


def _index_matches(path: Path, face_index: np.ndarray) -> bool:
    try:
        return np.array_equal(np.load(path, allow_pickle=False), face_index)
    except (OSError, ValueError):
        return False


def _fill(path: Path, key: dict, shape: tuple[int, int, int], face_index: np.ndarray,
          compute: Callable[[np.ndarray, int, Any], np.ndarray], chunk: int, desc: str,
          prepare: Callable[[list[tuple[np.ndarray, int]]], Iterable[Any]] | None = None,
          local: bool = False) -> TeacherCache:
    """Create/resume the cache at ``path``; ``compute(rows, view_id, payload) -> (len, D)`` fills one block.

    ``prepare(blocks)``, given every ``(rows, view_id)`` still to fill in order, yields one payload per
    block (e.g. the augmented faces, made ahead by DataLoader workers); without it payloads are None.
    ``local``: this process alone owns the cache (a per-rank shard): no chunk sharing, no barriers.
    """
    dist, sync = (ddp.DistEnv(), _no_barrier) if local else (ddp.current(), ddp.barrier)
    n, k, d = shape
    name, dtype = _stored(key)
    data_path, chunk_dir, size = path / name, path / "chunks", n * k * d * np.dtype(dtype).itemsize
    if dist.is_main:
        manifest_path = path / "manifest.json"
        fresh = not manifest_path.exists() or json.loads(manifest_path.read_text()).get("key") != key
        if (fresh or not data_path.exists() or data_path.stat().st_size != size) and path.exists():
            shutil.rmtree(path)
        if not path.exists():
            path.mkdir(parents=True)
            chunk_dir.mkdir()
            with open(data_path, "wb") as f:
                try:  # reserve the space now: a full disk is an error here, not a SIGBUS in a memmap write later
                    if size:
                        os.posix_fallocate(f.fileno(), 0, size)
                except OSError as e:
                    f.close()
                    shutil.rmtree(path, ignore_errors=True)
                    raise CacheError(f"cannot reserve {size / 1e6:.1f} MB for the teacher cache {data_path} "
                                     f"({e.strerror}); free disk space or point data.cache_dir at a larger disk"
                                     ) from None
            atomic_write_json(manifest_path, {"key": key, "shape": [n, k, d], "chunk": chunk})
        if not _index_matches(path / "index.npy", face_index):  # new, or damaged since
            atomic_write(path / "index.npy", lambda f: np.save(f, face_index, allow_pickle=False))
    sync()
    num_chunks = (n + chunk - 1) // chunk
    mine = [c for c in range(num_chunks) if c % dist.world_size == dist.rank]
    done = [c for c in mine if (chunk_dir / f"{c}.done").exists()]
    if done:  # a resumed build re-checks what earlier runs marked done
        emb = np.memmap(data_path, dtype=dtype, mode="r", shape=(n, k, d))
        for c in done:
            if not np.isfinite(emb[c * chunk:(c + 1) * chunk]).all():
                (chunk_dir / f"{c}.done").unlink()
        del emb
    todo = [c for c in mine if not (chunk_dir / f"{c}.done").exists()]
    if todo:
        emb = np.memmap(data_path, dtype=dtype, mode="r+", shape=(n, k, d))
        bar = progress_bar(total=len(mine) * k, initial=(len(mine) - len(todo)) * k, desc=desc, unit="batch",
                   disable=not dist.is_main)
        blocks = [(c, np.arange(c * chunk, min(n, (c + 1) * chunk)), v) for c in todo for v in range(k)]
        payloads = prepare([(pos, v) for _, pos, v in blocks]) if prepare is not None else (None for _ in blocks)
        for (c, pos, v), payload in zip(blocks, payloads):
            out = compute(pos, v, payload)
            if out.shape != (len(pos), d):
                raise ValueError(f"teacher returned {out.shape} for a block of {len(pos)}, expected ({len(pos)}, {d})")
            if not np.isfinite(out).all():
                raise CacheError(f"teacher produced non-finite embeddings for positions {pos[0]}..{pos[-1]}, "
                                 f"view {v}; check the teacher weights and inputs")
            if dtype == np.float16 and np.abs(out).max(initial=0) > FLOAT16_MAX:
                raise CacheError(f"teacher embeddings reach {np.abs(out).max():.4g}, beyond float16's {FLOAT16_MAX:g}: "
                                 "set train.cache_dtype: float32")
            emb[pos, v] = out
            bar.update(1)
            if v == k - 1:  # the chunk's last view: it is complete
                emb.flush()
                atomic_write_bytes(chunk_dir / f"{c}.done", b"")
        bar.close()
        del emb
    sync()
    if dist.is_main:
        missing = [c for c in range(num_chunks) if not (chunk_dir / f"{c}.done").exists()]
        if missing:
            raise CacheError(f"{path}: chunks {missing[:5]} were not written")
        atomic_write_json(path / "complete.json", {"sha256": file_sha256(data_path)})
    sync()
    return open_cache(path, key)


def _no_barrier() -> None:
    """A per-rank shard's stand-in for :func:`ddp.barrier`: nobody else writes it."""


def _open_or_reset(path: Path, key: dict, log: Callable[[str], None], local: bool = False) -> TeacherCache | None:
    if not (path / "complete.json").exists():
        return None  # absent or being (re)built: resume
    try:
        return open_cache(path, key)
    except CacheError as e:
        log(f"teacher cache unusable, rebuilding: {e}")
        if local or ddp.current().is_main:
            (path / "complete.json").unlink(missing_ok=True)
            shutil.rmtree(path / "chunks", ignore_errors=True)
            (path / "chunks").mkdir(exist_ok=True)
        if not local:
            ddp.barrier()
        return None


class _Blocks(torch.utils.data.Dataset):
    """The augmented faces of each cache block, made by DataLoader workers while the teacher runs (none for
    blocks whose positions are all below ``skip_below``: a donor cache holds those)."""

    def __init__(self, views: FaceViews, blocks: list[tuple[np.ndarray, int]], skip_below: int = 0) -> None:
        self.views, self.blocks, self.skip_below = views, blocks, skip_below

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> torch.Tensor:
        pos, v = self.blocks[i]
        if pos.max(initial=-1) < self.skip_below:
            return torch.empty(0)
        return torch.stack([self.views[(int(p), v)][0] for p in pos])


def prefix_donor(cache_dir: Path, key: dict, views: FaceViews) -> TeacherCache | None:
    """A complete cache of the *first source alone* whose rows are this cache's first rows, or None.

    Several sources (``data.sources``) concatenate their faces; the views of face ``i`` depend only on
    ``(seed, i, view)`` and the recipe, so while no view mixes two faces (a mix draws its partner from the
    whole set), the first source's faces have the same views alone as in front of others: a run that adds
    sources to an earlier run reuses that run's teacher cache for them."""
    parts = getattr(views.faces, "parts", None)
    n = len(views.indices)
    if not parts or views.mix is not None or not np.array_equal(views.indices, np.arange(n)):
        return None
    first = parts[0]
    own = getattr(first, "fingerprint", None)
    fp = own() if callable(own) else array_digest(first, np.arange(len(first), dtype=np.int64))
    donor_key = {**key, "data": fp, "n": len(first)}
    path = _key_dir(cache_dir, donor_key)
    if not (path / "complete.json").exists():
        return None
    try:
        return open_cache(path, donor_key)
    except CacheError:
        return None


def build_teacher_cache(teacher: Any, views: FaceViews, num_views: int, cache_dir: str | Path,
                        batch_size: int = 64, *, data_fp: str | None = None, workers: int = 0,
                        log: Callable[[str], None] = print, dtype: str = "float32",
                        per_rank: bool = False) -> TeacherCache:
    """Embed views ``0..num_views-1`` of every face in ``views`` with ``teacher`` once; reuse when valid.

    Args:
        teacher: anything with ``.embed(uint8 NHWC) -> (B, D)``, ``.fingerprint()`` and ``.embedding_dim``.
        views: the FaceViews the student will train on (same augmentation, seed and faces).
        The teacher runs in its own precision (``teacher.precision``, part of its fingerprint); the
        embeddings are stored as ``dtype`` (float32, or float16: half the size, read back as float32).
        data_fp: a known fingerprint of the aligned faces (skips hashing them).
        per_rank: under torchrun, each rank builds and keeps only its shard (see the module docs); a single
            process ignores it.
        workers: DataLoader processes that augment the next blocks while the teacher embeds this one.

    Example::

        cache = build_teacher_cache(teacher, views, 4, cfg.data.cache_dir / "teacher")
    """
    key = cache_key(teacher.fingerprint(), views, num_views, data_fp, dtype)
    env = ddp.current()
    local = per_rank and env.distributed
    positions = shard_positions(len(views), env.rank, env.world_size) if local else np.arange(len(views))
    if local:
        key = {**key, "shard": f"{env.rank}/{env.world_size}"}
    path = _key_dir(Path(cache_dir), key)
    cache = _open_or_reset(path, key, log, local)
    if cache is not None:
        return dataclasses.replace(cache, positions=positions) if local else cache
    device = next((p.device for p in teacher.parameters()), torch.device("cpu")) if hasattr(teacher, "parameters") \
        else torch.device("cpu")
    donor = None if local else prefix_donor(Path(cache_dir), key, views)
    reused = 0 if donor is None else len(donor.face_index)
    if donor is not None:
        log(f"teacher cache: the first {reused} faces' views are those of {donor.path} (an earlier run on the "
            f"first source alone): copied, not recomputed")

    def prepare(blocks: list[tuple[np.ndarray, int]]) -> Iterable[torch.Tensor]:
        at = [(positions[rows], v) for rows, v in blocks]  # cache rows -> view positions
        return torch.utils.data.DataLoader(_Blocks(views, at, skip_below=reused), batch_size=None,
                                           num_workers=workers, prefetch_factor=2 if workers else None)

    def compute(pos: np.ndarray, view_id: int, faces: torch.Tensor) -> np.ndarray:
        if donor is not None and pos.max(initial=-1) < reused:
            return np.asarray(donor.embeddings[pos, view_id], dtype=np.float32)
        return teacher.embed(faces.to(device)).float().cpu().numpy()

    shard = f", shard {env.rank}/{env.world_size}" if local else ""
    cache = _fill(path, key, (len(positions), num_views, int(teacher.embedding_dim)),
                  np.asarray(views.indices)[positions], compute, batch_size,
                  f"teacher cache ({teacher.name}, K={num_views}, {getattr(teacher, 'precision', 'fp32')}{shard})",
                  prepare, local)
    return dataclasses.replace(cache, positions=positions) if local else cache


def build_lookup_cache(lookup: Callable[[np.ndarray], Any], fingerprint: str, dim: int, views: FaceViews,
                       cache_dir: str | Path, batch_size: int = 1024, *, data_fp: str | None = None,
                       log: Callable[[str], None] = print, dtype: str = "float32") -> TeacherCache:
    """K=1 cache from precomputed embeddings: ``lookup(face_indices) -> (B, D)`` fills view 0.

    A precomputed teacher embedded the *un-augmented* faces, so ``views`` must have
    ``clean_view0=True`` (the student then trains on view 0 = the clean face).

    Example::

        cache = build_lookup_cache(lambda idx: pre.lookup([paths[i] for i in idx]), pre.fingerprint(),
                                   pre.embedding_dim, views, cache_dir)
    """
    if views.augment is not None and not views.clean_view0:
        raise ValueError("precomputed embeddings are of clean faces: build FaceViews(..., clean_view0=True)")
    key = cache_key(fingerprint, views, 1, data_fp, dtype)
    path = _key_dir(Path(cache_dir), key)
    cache = _open_or_reset(path, key, log)
    if cache is not None:
        return cache
    face_index = np.asarray(views.indices)

    def compute(pos: np.ndarray, view_id: int, _payload: Any) -> np.ndarray:
        out = lookup(face_index[pos])
        return (out.detach().float().cpu().numpy() if isinstance(out, torch.Tensor)
                else np.asarray(out, dtype=np.float32))

    return _fill(path, key, (len(views), 1, dim), face_index, compute, batch_size, "teacher cache (lookup)")
