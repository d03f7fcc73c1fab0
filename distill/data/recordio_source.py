"""RecordIO training sets as a training source: ``data.source: recordio`` with ``data.root`` the folder of
insightface's ``train.rec`` + ``train.idx`` (+ ``property``), or the ``.rec`` file itself.

The images are read where they are (:class:`~distill.data.recordio.RecordIOFaces`: random access through the
index, one file handle per process, so DataLoader workers each read their own), never unpacked to disk:
:class:`RecordFaces` is a lazy ``(N, S, S, 3)`` uint8 array whose face ``i`` is decoded (and re-framed from
``data.aligned``, default ``arcface_112``, to the teacher's template: :func:`~distill.data.templates.reframe_crop`)
when a view of it is made. Memory is flat in the number of records (an int64 position each); the teacher
cache keys on the index file's bytes and the positions, not on decoded pixels.

The set's identity labels (from its identity records, else each image's header) are counted in the record;
they cannot be matched to the names of an evaluation protocol, so ``data.exclude_identities_in`` and
``data.holdout_fraction`` are refused and the record says the identity-disjointness is by data set and
unchecked. Evaluate on ``eval.pairs`` (a ``.bin`` set or LFW pairs with ``eval.images_root``).

Example::

    cfg = load_config("run.yaml", ["data.source=recordio", "data.root=/data/faces_emore"])
    faces, names, labels, record = prepare_recordio(cfg, "arcface_112", print)
    faces.shape, faces[0].shape, names[0]     # (5822653, 112, 112, 3), (112, 112, 3), "train.rec#1"
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from distill.config import Config, ConfigError

from .recordio import RecordIOError, RecordIOFaces
from .sources import SOURCE_KINDS, Log, SourceKind, Sources, TrainData
from .templates import TEMPLATE_SIZE, ReframeError, reframe_crop, reframe_matrix

#: the template of insightface's RecordIO crops
RECORDIO_TEMPLATE = "arcface_112"


class RecordFaces:
    """Images ``positions`` of a RecordIO set as a read-only ``(N, S, S, 3)`` uint8 array (``S`` of
    ``template``), decoded and re-framed from ``src`` on every access; ``faces[i]`` one face, a slice or an
    index array a stacked batch."""

    ndim = 4
    dtype = np.dtype(np.uint8)

    def __init__(self, data: RecordIOFaces, positions: np.ndarray, src: str, template: str) -> None:
        self.data, self.src, self.template = data, src, template
        self.positions = np.asarray(positions, dtype=np.int64)
        size = TEMPLATE_SIZE[template]
        self.shape = (len(self.positions), size, size, 3)

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: Any) -> np.ndarray:
        if isinstance(i, (int, np.integer)):
            return reframe_crop(self.data.image(int(self.positions[i])), self.src, self.template)
        picked = self.positions[i]
        return np.stack([reframe_crop(self.data.image(int(p)), self.src, self.template) for p in picked]) \
            if len(picked) else np.empty((0, *self.shape[1:]), np.uint8)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        """Every face decoded (small sets and tests only: a training set is read face by face)."""
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def fingerprint(self) -> str:
        """Identity of these faces for cache keys: the index file's bytes, the .rec's size, the positions and
        the templates (hashing decoded pixels would read the whole set)."""
        rec = self.data.records
        h = hashlib.sha256(Path(rec.idx_path).read_bytes())
        h.update(f"{Path(rec.rec_path).stat().st_size}|{self.src}|{self.template}".encode())
        h.update(np.ascontiguousarray(self.positions).tobytes())
        return h.hexdigest()[:20]


class RecordKeys(Sequence[str]):
    """``"<file>.rec#<key>"`` names of the training faces (for precomputed-embedding lookups), made on demand."""

    def __init__(self, faces: RecordFaces) -> None:
        self._name, self._keys = Path(faces.data.records.rec_path).name, faces.data.image_keys[faces.positions]

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [f"{self._name}#{k}" for k in self._keys[i]]
        return f"{self._name}#{int(self._keys[i])}"


def _check(cfg: Config, template: str) -> str:
    """The crops' template; ConfigError for what a RecordIO source cannot honour."""
    if cfg.data.exclude_identities_in or cfg.data.holdout_fraction is not None:
        raise ConfigError("data.source recordio: its identities are numbers that no evaluation protocol names, so "
                          "data.exclude_identities_in and data.holdout_fraction cannot hold anyone out; remove them "
                          "and evaluate on eval.pairs (a .bin set, or pairs files with eval.images_root)")
    src = cfg.data.aligned or RECORDIO_TEMPLATE
    try:
        if src != template:
            reframe_matrix(src, template)
    except ReframeError as e:
        raise ConfigError(f"data.aligned: the RecordIO crops are {src} and the teacher needs {template}: {e}. "
                          "Distil a teacher whose template is arcface_112 or dlib_150 from this set") from None
    return src


def prepare_recordio(cfg: Config, template: str,
                     log: Callable[[str], None]) -> tuple[RecordFaces, RecordKeys, np.ndarray, dict[str, Any]]:
    """``(faces, names, labels, record)`` of a ``data.source: recordio`` config (see the module docs), what
    :func:`~distill.data.prepare.prepare_train` returns as its ``TrainData``.

    Raises:
        ConfigError: a key the source cannot honour (named). MissingInputError, RecordIOError: the files."""
    src = _check(cfg, template)
    data = RecordIOFaces(cfg.data.root)  # type: ignore[arg-type]
    positions = np.arange(len(data), dtype=np.int64)
    if cfg.data.max_train_images and len(positions) > cfg.data.max_train_images:
        positions = np.sort(np.random.default_rng(cfg.seed).choice(len(positions), cfg.data.max_train_images,
                                                                   replace=False))
    labels = data.labels()[positions]
    faces = RecordFaces(data, positions, src, template)
    rec = data.records.rec_path
    log(f"training set: {len(positions)} of {len(data)} RecordIO images of {len(np.unique(labels))} identities "
        f"from {rec} ({src} crops{', re-framed to ' + template if src != template else ''}; read in place)")
    record = {"source": "recordio", "rec": str(rec), "records": len(data), "train_images": len(positions),
              "train_identities": int(len(np.unique(labels))), "aligned_as": src, "template": template,
              "split": {"identity_disjoint": f"by data set, not checked: training images from {rec} (RecordIO, "
                                             "numbered identities), evaluation images from eval.pairs",
                        "train_images": len(positions), "held_out_identities": 0}}
    return faces, RecordKeys(faces), labels, record


@SOURCE_KINDS.register("recordio", description="an insightface/MXNet RecordIO set (train.rec + train.idx), in place")
class RecordIOSource(SourceKind):
    """``data.source: recordio`` (see the module docs)."""

    def problems(self, cfg: Config) -> list[str]:
        """data.root must hold train.rec (or be the .rec file)."""
        root = cfg.data.root
        if root is not None and (root.is_file() or (root / "train.rec").is_file()):
            return []
        return [f"training faces: data.root {root} is not a RecordIO set (a folder holding train.rec and train.idx, "
                "as insightface's faces_emore/, or the .rec file itself)"]

    def resolve(self, cfg: Config, log: Log) -> Sources:
        """The set read in place; evaluation images under eval.images_root; nothing to exclude by name."""
        assert cfg.data.root is not None
        return Sources(cfg.data.root, Path(cfg.eval.images_root or cfg.data.root), list(cfg.eval.pairs), [])

    def train(self, cfg: Config, template: str, log: Log, sources: Sources, run_dir: Path | None) -> TrainData:
        """:func:`prepare_recordio` as the run's training data."""
        return TrainData(None, *prepare_recordio(cfg, template, log))

    def describe(self, cfg: Config, missing: bool) -> dict[str, Any]:
        """Records and training images (the index read; no image decoded)."""
        out: dict[str, Any] = {"source": "recordio", "root": str(cfg.data.root)}
        if missing:
            return out
        try:
            n = len(RecordIOFaces(cfg.data.root))  # type: ignore[arg-type]
        except (RecordIOError, OSError):  # the run itself reports these, with their remedy
            return out
        return {**out, "records": n, "train_images": min(n, cfg.data.max_train_images or n)}
