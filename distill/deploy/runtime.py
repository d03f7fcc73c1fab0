"""Run exported models: metadata, :class:`OnnxEmbedder`, :class:`TorchScriptEmbedder`, and
:func:`load_embedder` that turns any model reference into an :class:`~distill.embedder.Embedder`.

An exported model's input is the *preprocessed* float tensor ``(B, 3, S, S)``, RGB, NCHW,
``(pixel - mean) / std`` with mean/std in 0..255 units, computed from a face aligned with the
recorded template and resized to ``S``; its output is the ``(B, D)`` embedding. Everything needed
to feed it is recorded in the file (ONNX ``metadata_props`` / TorchScript extra file
``facedistill.json``); :func:`read_metadata` reads either.

Example::

    emb = load_embedder("runs/r1/student.onnx")          # or student.pt, model.ts, "teacher:dlib_resnet"
    vectors = emb.embed(torch.from_numpy(aligned_faces))   # (B, D) float32
    meta = read_metadata("runs/r1/student.onnx")           # {"input_size": 112, "distance": "cosine", ...}
"""
from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.embedder import ModuleEmbedder
from distill.preprocess import Preprocessing

#: format tag of the metadata written into every exported model
METADATA_FORMAT = "facedistill-export-v1"
#: ONNX metadata key / TorchScript extra file that holds the full JSON record
METADATA_KEY = "facedistill.json"
INPUT_NAME, OUTPUT_NAME = "input", "embedding"
INPUT_DOC = ("float32 (B, 3, S, S), RGB, NCHW: an aligned face resized to S (bilinear, antialiased) and "
             "normalised (pixel - mean) / std with mean/std in 0..255 units, per channel")
TEACHER_PREFIX = "teacher:"


class ExportError(ValueError):
    """A model file or reference cannot be exported or loaded; the message says what to do."""


# --------------------------------------------------------------------------- metadata
def flat_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """String key/values for ONNX ``metadata_props``: one key per field, plus the full JSON record."""
    pre = meta["preprocessing"]
    return {
        METADATA_KEY: json.dumps(meta, sort_keys=True),
        "format": meta["format"], "name": meta["name"],
        "input": INPUT_DOC, "input_size": str(pre["input_size"]),
        "mean": ",".join(f"{v:g}" for v in pre["mean"]), "std": ",".join(f"{v:g}" for v in pre["std"]),
        "alignment": pre["alignment"], "embedding_dim": str(meta["embedding_dim"]),
        "normalized": str(meta["normalized"]).lower(), "distance": meta["distance"],
        "precision": meta["precision"], "fingerprint": meta["fingerprint"],
    }


def preprocessing_of(meta: dict[str, Any]) -> Preprocessing:
    p = meta["preprocessing"]
    return Preprocessing(input_size=int(p["input_size"]), mean=tuple(float(v) for v in p["mean"]),
                         std=tuple(float(v) for v in p["std"]), alignment=p["alignment"])


def _check_meta(meta: Any, path: Path) -> dict[str, Any]:
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise ExportError(f"{path}: metadata is not a {METADATA_FORMAT} record; export the model with "
                          f"`distill export` so its preprocessing travels with it")
    return meta


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata record of an exported ``.onnx`` or TorchScript file (see the module docs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"exported model {path} does not exist")
    if _is_torchscript(path):
        extra = {METADATA_KEY: ""}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return _check_meta(json.loads(extra[METADATA_KEY]), path)
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - a foreign/truncated file gets one clear line
        raise ExportError(f"{path} is not a readable ONNX model ({e})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if METADATA_KEY not in props:
        raise ExportError(f"{path} has no '{METADATA_KEY}' metadata; export it with `distill export` "
                          f"(found keys: {', '.join(sorted(props)) or 'none'})")
    return _check_meta(json.loads(props[METADATA_KEY]), path)


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith(f"/extra/{METADATA_KEY}") for n in z.namelist())


# --------------------------------------------------------------------------- embedders
class OnnxEmbedder:
    """An exported ONNX model as an :class:`~distill.embedder.Embedder` (onnxruntime, CPU).

    Example::

        emb = OnnxEmbedder("student.int8.onnx")
        emb.name, emb.preprocessing.input_size, emb.normalized
        vectors = emb.embed(torch.from_numpy(faces_uint8))     # (B, D) float32 tensor
    """

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.meta = read_metadata(self.path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.name = self.meta["name"]
        self.preprocessing = preprocessing_of(self.meta)
        self.normalized = bool(self.meta["normalized"])
        self.embedding_dim = int(self.meta["embedding_dim"])
        #: part of embedding-cache keys: onnx fp32/int8 outputs are not PyTorch's
        self.precision = f"onnx-{self.meta['precision']}"

    def fingerprint(self) -> str:
        """The source weights' fingerprint (+ precision): a student.pt and its fp32 ONNX agree."""
        return model_identity(self.meta)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32 ``(B, 3, S, S)`` -> ``(B, D)`` float32."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.run(self.preprocessing(faces).numpy()))


class TorchScriptEmbedder:
    """An exported TorchScript model as an :class:`~distill.embedder.Embedder`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        self.name = self.meta["name"]
        self.preprocessing = preprocessing_of(self.meta)
        self.normalized = bool(self.meta["normalized"])
        self.embedding_dim = int(self.meta["embedding_dim"])
        self.precision = "torchscript-fp32"

    def fingerprint(self) -> str:
        return model_identity(self.meta)

    @torch.no_grad()
    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        return self.module(self.preprocessing(faces)).float()


class StudentEmbedder(ModuleEmbedder):
    """A student checkpoint (``student.pt``) as an embedder whose fingerprint matches its exports."""

    def __init__(self, module: nn.Module, preprocessing: Preprocessing, *, name: str, normalized: bool,
                 fingerprint: str, embedding_dim: int) -> None:
        super().__init__(module, preprocessing, name=name, normalized=normalized)
        self._fingerprint, self.embedding_dim = fingerprint, embedding_dim

    def fingerprint(self) -> str:
        return self._fingerprint


# --------------------------------------------------------------------------- checkpoints -> graph
class ExportModel(nn.Module):
    """Student + optional projection into the teacher's space (+ L2 normalisation): the exported graph."""

    def __init__(self, student: nn.Module, projection: nn.Module | None = None,
                 normalize_projection: bool = False) -> None:
        super().__init__()
        self.student = student
        self.projection = projection
        self.normalize_projection = normalize_projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = self.student(x)
        if self.projection is not None:
            e = self.projection(e)
            if self.normalize_projection:
                e = F.normalize(e, dim=1)
        return e


def _hash_state(*states: dict[str, torch.Tensor] | None) -> str:
    h = hashlib.sha256()
    for state in states:
        for k, v in sorted((state or {}).items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def model_identity(meta: dict[str, Any]) -> str:
    """What a gallery compares to decide "same model": source fingerprint, plus precision unless fp32."""
    return meta["fingerprint"] + ("" if meta["precision"] == "fp32" else f"-{meta['precision']}")


def load_export_model(checkpoint: str | Path, *, with_projection: bool = False
                      ) -> tuple[ExportModel, dict[str, Any]]:
    """A student checkpoint as the graph to export, and its metadata record (fp32).

    ``with_projection`` appends the trained student->teacher projection (when the checkpoint has
    one), so embeddings land in the teacher's space and its galleries.
    """
    from distill.pipeline import load_student

    student, spec, pre, state = load_student(Path(checkpoint))
    teacher = dict(state.get("teacher") or {})
    normalized = bool(spec.kwargs.get("normalize", True))
    projection, proj_state = None, None
    if with_projection:
        proj_state = state.get("projection")
        if not proj_state:
            raise ExportError(f"{checkpoint} has no projection head (the student was trained in the teacher's "
                              f"dimension); export without --with-projection")
        w = proj_state["weight"]
        projection = nn.Linear(w.shape[1], w.shape[0], bias="bias" in proj_state)
        projection.load_state_dict(proj_state)
        normalized = bool(teacher.get("normalized", normalized))
    model = ExportModel(student, projection, normalize_projection=normalized).eval()
    with torch.no_grad():
        dim = int(model(torch.zeros(2, 3, pre.input_size, pre.input_size)).shape[1])
    name = f"{spec.name}-{pre.input_size}"
    meta = {
        "format": METADATA_FORMAT, "name": name, "student": {"name": spec.name, "kwargs": spec.kwargs},
        "preprocessing": pre.to_dict(), "input": INPUT_DOC, "input_name": INPUT_NAME, "output_name": OUTPUT_NAME,
        "embedding_dim": dim, "normalized": normalized,
        "distance": "cosine" if normalized else "euclidean",
        "space": f"teacher:{teacher.get('name')}" if projection is not None else "student",
        "teacher": teacher, "precision": "fp32",
        "fingerprint": f"{name}-{_hash_state(state['state_dict'], proj_state)}",
        "source": str(checkpoint),
    }
    return model, json.loads(json.dumps(meta))  # exactly what a reader of the file gets back (lists, not tuples)


# --------------------------------------------------------------------------- any reference -> embedder
def load_embedder(ref: str | Path, *, with_projection: bool = False) -> Any:
    """An :class:`~distill.embedder.Embedder` for ``ref``:

    * ``teacher:NAME`` - a registered teacher with its default real weights, in fp32;
    * ``*.onnx`` - :class:`OnnxEmbedder`; a TorchScript export - :class:`TorchScriptEmbedder`;
    * a ``student.pt`` checkpoint - :class:`StudentEmbedder` (same fingerprint as its fp32 exports).
    """
    s = str(ref)
    if s.startswith(TEACHER_PREFIX):
        from teachers import build_teacher

        teacher = build_teacher(s[len(TEACHER_PREFIX):], precision="fp32")
        if not getattr(teacher, "can_embed", True):
            raise ExportError(f"teacher {s!r} cannot embed images (it is a black box of precomputed embeddings)")
        return teacher
    path = Path(s)
    if not path.is_file():
        raise FileNotFoundError(f"model {path} does not exist (give a student.pt checkpoint, an exported "
                                f".onnx / TorchScript file, or teacher:NAME)")
    if path.suffix.lower() == ".onnx":
        return OnnxEmbedder(path)
    if _is_torchscript(path):
        return TorchScriptEmbedder(path)
    model, meta = load_export_model(path, with_projection=with_projection)
    return StudentEmbedder(model, preprocessing_of(meta), name=meta["name"], normalized=meta["normalized"],
                           fingerprint=model_identity(meta), embedding_dim=meta["embedding_dim"])


def embedder_dim(embedder: Any) -> int | None:
    return getattr(embedder, "embedding_dim", None)
