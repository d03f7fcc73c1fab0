"""Export a student checkpoint to ONNX or TorchScript, checked for parity on real aligned faces.

The exported graph is the student with its embedding head and normalisation (plus, optionally,
the trained projection into the teacher's space). Input: the preprocessed float tensor
``(B, 3, S, S)`` with a dynamic batch dimension (see :data:`~distill.models.exported.INPUT_DOC`);
output: ``(B, D)`` embeddings. Preprocessing (input size, mean/std, alignment template), embedding
dim, normalisation and the distance to use are recorded in the file's metadata.

Before anything is written, the exported bytes are run on real aligned faces and compared with
PyTorch; the file is only written when the max abs difference is within tolerance (1e-4 fp32).

Example::

    faces = align_rel_paths(lfw, sample_identity_images(lfw, 16), template="dlib_150").faces
    res = export_checkpoint("runs/r1/student.pt", "student.onnx", "onnx", faces)
    res["parity"]["max_abs_diff"]          # e.g. 2e-7
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from distill.io import atomic_write_bytes
from distill.preprocess import check_alignment

from distill.models.exported import (INPUT_NAME, METADATA_KEY, OUTPUT_NAME, ExportError, ExportModel, flat_metadata,
                                     load_export_model, preprocessing_of)

Format = Literal["onnx", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "torchscript")
#: max abs difference allowed between the exported fp32 model and PyTorch
PARITY_TOL = 1e-4
#: ONNX opset (the TorchScript-based exporter, which works offline without onnxscript)
OPSET = 17


def onnx_bytes(model: ExportModel, meta: dict[str, Any]) -> bytes:
    """Serialise ``model`` to ONNX (dynamic batch) with ``meta`` in ``metadata_props``."""
    import onnx

    size = meta["preprocessing"]["input_size"]
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated but is the offline one
        torch.onnx.export(model.eval(), (torch.zeros(2, 3, size, size),), buf, dynamo=False,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
                          dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                          do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    return with_onnx_metadata(proto, meta).SerializeToString()


def with_onnx_metadata(proto: Any, meta: dict[str, Any]) -> Any:
    """Replace ``proto``'s metadata_props by :func:`~distill.models.exported.flat_metadata` of ``meta``."""
    del proto.metadata_props[:]
    for k, v in flat_metadata(meta).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.doc_string = f"facedistill {meta['name']} ({meta['precision']}): input {meta['input']}"
    proto.producer_name = "facedistill"
    return proto


def torchscript_bytes(model: ExportModel, meta: dict[str, Any]) -> bytes:
    """Trace ``model`` (batch-agnostic: no shape-dependent control flow) with ``meta`` as an extra file."""
    size = meta["preprocessing"]["input_size"]
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export, still the mobile path
        traced = torch.jit.trace(model.eval(), torch.zeros(2, 3, size, size), check_trace=False)
        torch.jit.save(traced, buf, _extra_files={METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return buf.getvalue()


def load_exported(data: bytes, fmt: Format) -> Callable[[np.ndarray], np.ndarray]:
    """A function running exported bytes (not yet on disk) on preprocessed float32 input."""
    if fmt == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        return lambda x: sess.run([OUTPUT_NAME], {INPUT_NAME: x.astype(np.float32)})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(io.BytesIO(data), map_location="cpu")

    def run(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()
    return run


def parity(model: ExportModel, data: bytes, fmt: Format, faces: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
    """PyTorch vs the exported model on aligned uint8 faces: max/mean abs difference and min cosine.

    Runs batch sizes 1 and ``len(faces)`` through the export (dynamic batch is part of the check).
    """
    if len(faces) == 0:
        raise ExportError("parity check needs at least one aligned face")
    x = preprocessing_of(meta)(torch.from_numpy(np.array(faces, dtype=np.uint8))).numpy()
    with torch.no_grad():
        ref = model.eval()(torch.from_numpy(x)).numpy()
    run = load_exported(data, fmt)
    got, one = run(x), run(x[:1])
    diff = np.abs(np.concatenate([got - ref, one - ref[:1]]))
    cos = (got * ref).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
    return {"faces": int(len(faces)), "batch_sizes": [1, int(len(faces))], "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()), "min_cosine": float(cos.min())}


def export_checkpoint(checkpoint: str | Path, out: str | Path, fmt: Format, parity_faces: np.ndarray, *,
                      faces_alignment: str | None = None, with_projection: bool = False,
                      tol: float = PARITY_TOL) -> dict[str, Any]:
    """Export ``checkpoint`` (a ``student.pt``) to ``out`` after a parity check on ``parity_faces``.

    ``parity_faces``: aligned uint8 ``(N, S, S, 3)`` faces in the checkpoint's template
    (``faces_alignment`` names it, checked when given). Raises :class:`ExportError` (nothing written)
    when the max abs difference exceeds ``tol``. Returns ``{"path", "format", "metadata", "parity",
    "bytes", "model"}``.
    """
    model, meta = load_export_model(checkpoint, with_projection=with_projection)
    return export_model(model, meta, out, fmt, parity_faces, faces_alignment=faces_alignment, tol=tol)


def export_model(model: ExportModel, meta: dict[str, Any], out: str | Path, fmt: Format, parity_faces: np.ndarray,
                 *, faces_alignment: str | None = None, tol: float = PARITY_TOL) -> dict[str, Any]:
    """:func:`export_checkpoint` for a model already loaded with :func:`~distill.models.exported.load_export_model`."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if faces_alignment is not None:
        check_alignment(faces_alignment, preprocessing_of(meta), f"exported model {meta['name']}")
    meta = {**meta, "file_format": fmt}
    data = onnx_bytes(model, meta) if fmt == "onnx" else torchscript_bytes(model, meta)
    par = parity(model, data, fmt, parity_faces, meta)
    par["tolerance"] = tol
    if not par["max_abs_diff"] <= tol:
        raise ExportError(f"{fmt} export of {meta['source']} differs from PyTorch by {par['max_abs_diff']:.3g} "
                          f"(> {tol:g}) on {par['faces']} aligned faces; nothing was written to {out}")
    atomic_write_bytes(out, data)
    return {"path": Path(out), "format": fmt, "metadata": meta, "parity": par, "bytes": len(data), "model": model}


@torch.no_grad()
def set_batchnorm_statistics(model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """Set every BatchNorm's running mean/var to the exact statistics of batch ``x`` (then eval mode).

    For untrained models used in deployment checks and benchmarks: default running statistics
    (mean 0, var 1) make a deep random network's embeddings collapse onto one point.
    """
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: one pass gives the batch's exact statistics
    model.train()
    model(x)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    return model.eval()
