"""Exported model files (ONNX, TorchScript): their metadata record and how to run them.

An exported model's input is the *preprocessed* float tensor ``(B, 3, S, S)``, RGB, NCHW,
``(pixel - mean) / std`` with mean/std in 0..255 units, computed from a face aligned with the
recorded template and resized to ``S``; its output is the ``(B, D)`` embedding. Everything needed
to feed it is recorded in the file (ONNX ``metadata_props`` / TorchScript extra file
``facedistill.json``); :func:`read_metadata` reads either. :func:`export_graph` turns a student
file into the graph that is exported, with that record.

Example::

    emb = OnnxEmbedder("runs/r1/student.onnx")
    vectors = emb.embed(torch.from_numpy(aligned_faces))   # (B, D) float32
    meta = read_metadata("runs/r1/student.onnx")           # {"input_size": 112, "distance": "cosine", ...}
    lat = onnx_latency("runs/r1/student.onnx", batch_sizes=(1, 32))
"""

from __future__ import annotations

import json
import statistics
import time
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from distill.embedder import ModuleEmbedder
from distill.errors import InputError, MissingInputError
from distill.fingerprint import file_sha256
from distill.io import describe_file
from distill.evaluation.results import CostResult
from distill.preprocess import Preprocessing

from .student import SavedStudent, StudentSpec, load_student

#: format tag of the metadata written into every exported model
METADATA_FORMAT = "facedistill-export-v1"
#: ONNX metadata key / TorchScript extra file that holds the full JSON record
METADATA_KEY = "facedistill.json"
INPUT_NAME, OUTPUT_NAME = "input", "embedding"
INPUT_DOC = ("float32 (B, 3, S, S), RGB, NCHW: an aligned face resized to S (bilinear, antialiased) and "
             "normalised (pixel - mean) / std with mean/std in 0..255 units, per channel")


class ExportError(InputError, ValueError):
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
    """The :class:`~distill.preprocess.Preprocessing` an exported model's metadata records."""
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
        raise MissingInputError(f"exported model {path} does not exist")
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
        raise ExportError(f"{path} is not a readable ONNX model: it is {describe_file(path)} ({type(e).__name__}). "
                          f"Export a student with `distill export`, or copy the file again") from None
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


def check_graph_agrees(session: Any, meta: dict[str, Any], path: Path) -> None:
    """Refuse a file whose metadata contradicts its graph: input ``(B, 3, S, S)`` with ``S`` the recorded input
    size, output ``(B, D)`` with ``D`` the recorded embedding dimension (dimensions the graph leaves symbolic
    are not checked).

    Raises:
        ExportError: the input or output tensor is missing or its shape disagrees (names both, exit 2).
    """
    ins = {i.name: i.shape for i in session.get_inputs()}
    outs = {o.name: o.shape for o in session.get_outputs()}
    size, dim = int(meta["preprocessing"]["input_size"]), int(meta["embedding_dim"])
    problems = []
    if INPUT_NAME not in ins:
        problems.append(f"it has no input named {INPUT_NAME!r} (inputs: {', '.join(ins)})")
    elif len(ins[INPUT_NAME]) != 4 or any(isinstance(d, int) and d != want for d, want in
                                          zip(ins[INPUT_NAME][1:], (3, size, size))):
        problems.append(f"the metadata says input (B, 3, {size}, {size}) but the graph's input is {ins[INPUT_NAME]}")
    if OUTPUT_NAME not in outs:
        problems.append(f"it has no output named {OUTPUT_NAME!r} (outputs: {', '.join(outs)})")
    elif isinstance(outs[OUTPUT_NAME][-1], int) and outs[OUTPUT_NAME][-1] != dim:
        problems.append(f"the metadata says {dim}-D embeddings but the graph outputs {outs[OUTPUT_NAME]}")
    if problems:
        raise ExportError(f"{path}: its facedistill metadata contradicts its graph: {'; '.join(problems)}. The file "
                          f"was edited or its metadata copied from another export; export the student again with "
                          f"`distill export`")


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
        check_graph_agrees(self.session, self.meta, self.path)
        self.name = self.meta["name"]
        self.preprocessing = preprocessing_of(self.meta)
        self.normalized = bool(self.meta["normalized"])
        self.embedding_dim = int(self.meta["embedding_dim"])
        #: part of embedding-cache keys: onnx fp32/int8 outputs are not PyTorch's
        self.precision = f"onnx-{self.meta['precision']}"

    def fingerprint(self) -> str:
        """The source weights' fingerprint (+ precision): a student.pt and its fp32 ONNX agree."""
        return model_identity(self.meta)

    def content_digest(self) -> str:
        """sha256 of the file's bytes: two int8 files of one student (other calibration) differ here."""
        return _file_digest(self.path)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed float32 ``(B, 3, S, S)`` -> ``(B, D)`` float32."""
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})[0]

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned uint8 faces ``(B, H, W, 3)`` -> ``(B, D)`` float32 via onnxruntime."""
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
        """The source weights' fingerprint (+ precision), as for ONNX exports."""
        return model_identity(self.meta)

    def content_digest(self) -> str:
        """sha256 of the file's bytes (see :meth:`OnnxEmbedder.content_digest`)."""
        return _file_digest(self.path)

    @torch.no_grad()
    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        """Aligned uint8 faces ``(B, H, W, 3)`` -> ``(B, D)`` float32."""
        return self.module(self.preprocessing(faces)).float()


class StudentEmbedder(ModuleEmbedder):
    """A student file (``student.pt``) as an embedder whose fingerprint matches its fp32 exports.

    ``module`` is the exported graph (student, plus the projection when asked for).
    """

    def __init__(self, module: nn.Module, preprocessing: Preprocessing, *, name: str, normalized: bool,
                 fingerprint: str, embedding_dim: int) -> None:
        super().__init__(module, preprocessing, name=name, normalized=normalized)
        self._fingerprint, self.embedding_dim = fingerprint, embedding_dim

    def fingerprint(self) -> str:
        """Equal to the fingerprint of this student's fp32 exports (a gallery accepts either)."""
        return self._fingerprint


# --------------------------------------------------------------------------- student file -> graph
class ExportModel(nn.Module):
    """Student + optional projection into the teacher's space (+ L2 normalisation): the exported graph."""

    def __init__(self, student: nn.Module, projection: nn.Module | None = None,
                 normalize_projection: bool = False) -> None:
        super().__init__()
        self.student = student
        self.projection = projection
        self.normalize_projection = normalize_projection

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(B, 3, S, S)`` -> ``(B, D)`` embeddings."""
        e = self.student(x)
        if self.projection is not None:
            e = self.projection(e)
            if self.normalize_projection:
                e = F.normalize(e, dim=1)
        return e


@lru_cache(maxsize=64)
def _file_digest_at(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path)


def _file_digest(path: Path) -> str:
    st = path.stat()
    return _file_digest_at(path.resolve(), st.st_size, st.st_mtime_ns)


def model_identity(meta: dict[str, Any]) -> str:
    """What a gallery compares to decide "same model": source fingerprint, plus precision unless fp32."""
    return meta["fingerprint"] + ("" if meta["precision"] == "fp32" else f"-{meta['precision']}")


def export_graph(saved: SavedStudent, *, with_projection: bool = False, source: str = ""
                 ) -> tuple[ExportModel, dict[str, Any]]:
    """The graph to export for a loaded student file, and its metadata record (fp32).

    ``with_projection`` appends the trained student->teacher projection, so embeddings land in the
    teacher's space and its galleries.

    Raises:
        ExportError: ``with_projection`` but the file has no projection.
    """
    teacher = saved.teacher
    normalized = saved.normalized
    projection = None
    if with_projection:
        proj_state = saved.projection
        if not proj_state:
            raise ExportError(f"{source or saved.name} has no projection head (the student was trained in the "
                              f"teacher's dimension); export without --with-projection")
        w = proj_state["weight"]
        projection = nn.Linear(w.shape[1], w.shape[0], bias="bias" in proj_state)
        projection.load_state_dict(proj_state)
        normalized = bool(teacher.get("normalized", normalized))
    model = ExportModel(saved.module, projection, normalize_projection=normalized).eval()
    dim = int(projection.out_features) if projection is not None else saved.embedding_dim
    spec = saved.spec
    meta = {
        "format": METADATA_FORMAT, "name": saved.name,
        "student": None if spec is None else {"name": spec.name, "kwargs": spec.kwargs},
        "preprocessing": saved.preprocessing.to_dict(), "input": INPUT_DOC, "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME, "embedding_dim": dim, "normalized": normalized,
        "distance": "cosine" if normalized else "euclidean",
        "space": f"teacher:{teacher.get('name')}" if projection is not None else "student",
        "teacher": teacher, "precision": "fp32",
        "fingerprint": saved.fingerprint(with_projection=projection is not None),
        "source": source,
    }
    return model, json.loads(json.dumps(meta))  # exactly what a reader of the file gets back (lists, not tuples)


def load_export_model(checkpoint: str | Path, *, with_projection: bool = False
                      ) -> tuple[ExportModel, dict[str, Any]]:
    """:func:`export_graph` of the student file ``checkpoint``."""
    return export_graph(load_student(checkpoint), with_projection=with_projection, source=str(checkpoint))


def student_embedder(saved: SavedStudent, *, with_projection: bool = False, source: str = "") -> StudentEmbedder:
    """A loaded student file as an embedder with the same fingerprint as its fp32 exports."""
    model, meta = export_graph(saved, with_projection=with_projection, source=source)
    return StudentEmbedder(model, preprocessing_of(meta), name=meta["name"], normalized=meta["normalized"],
                           fingerprint=model_identity(meta), embedding_dim=meta["embedding_dim"])


# --------------------------------------------------------------------------- latency and cost
def onnx_latency(path: str | Path, *, batch_sizes: Iterable[int] = (1, 32), warmup: int = 2, repeats: int = 10,
                 threads: int | None = None, seed: int = 0) -> dict[str, dict[str, float]]:
    """Median onnxruntime wall time per batch on random preprocessed input (CPU provider).

    Returns ``{str(batch): {"ms_per_batch", "ms_per_image", "images_per_s", "repeats"}}`` (ms, images/s).
    """
    emb = OnnxEmbedder(path, threads=threads)
    size = emb.preprocessing.input_size
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, float]] = {}
    for b in batch_sizes:
        x = rng.standard_normal((b, 3, size, size), dtype=np.float32)
        for _ in range(warmup):
            emb.run(x)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            emb.run(x)
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        out[str(b)] = {"ms_per_batch": med * 1e3, "ms_per_image": med * 1e3 / b, "images_per_s": b / med,
                       "repeats": repeats}
    return out


def onnx_cost(path: str | Path, *, batch_sizes: Sequence[int] = (1, 32), latency: bool = True) -> CostResult:
    """The cost (:class:`~distill.evaluation.results.CostResult`) of an exported ONNX file.

    Params and mult-adds of the architecture (rebuilt from the metadata's student spec), file size
    in bytes, and onnxruntime latency under ``latency["onnx-<precision>"]`` (``images_per_s`` = the
    largest batch).

    Raises:
        ExportError: the metadata records no registered architecture to count.
    """
    from distill.profile import profile

    meta = read_metadata(path)
    size = int(meta["preprocessing"]["input_size"])
    if not meta.get("student"):
        raise ExportError(f"{path}: the metadata records no student architecture (exported from an unregistered "
                          f"class), so its params and mult-adds cannot be counted")
    c = profile(StudentSpec(meta["student"]["name"], dict(meta["student"]["kwargs"])).build(), size)
    out = CostResult(c.params, c.mult_adds, size, file_bytes=Path(path).stat().st_size,
                     threads=torch.get_num_threads(), runtime=f"onnxruntime {meta['precision']}")
    if latency:
        lat = onnx_latency(path, batch_sizes=batch_sizes)
        out.latency[f"onnx-{meta['precision']}"] = lat
        out.images_per_s = lat[str(max(batch_sizes))]["images_per_s"]
    return out
