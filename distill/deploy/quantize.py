"""Post-training static int8 quantisation of an exported ONNX student, and what it costs.

onnxruntime's ``quantize_static`` in QDQ format with per-channel weights, calibrated on aligned
face crops (training faces, never the evaluation people); then verification accuracy of fp32 and
int8 on a pairs file, and onnxruntime latency of both.

Example::

    q = quantize_int8("student.onnx", "student.int8.onnx", calib_faces)
    acc = verification_accuracy({"fp32": OnnxEmbedder("student.onnx"),
                                 "int8": OnnxEmbedder("student.int8.onnx")}, faces, pairs)
    lat = onnx_latency("student.int8.onnx", batch_sizes=(1, 32))   # distill.models.exported
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from distill.hardware import cpu_capability
from distill.io import atomic_write_bytes

from .export import with_onnx_metadata
from distill.models.exported import INPUT_NAME, preprocessing_of, read_metadata

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


def int8_path(fp32_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    p = Path(fp32_path)
    return p.with_name(p.stem + ".int8" + (p.suffix or ".onnx"))


class FaceCalibrationReader:
    """onnxruntime ``CalibrationDataReader`` over aligned uint8 faces, preprocessed like the model's input."""

    def __init__(self, faces: np.ndarray, meta: dict[str, Any], batch_size: int = 32) -> None:
        self.faces, self.pre, self.batch_size = faces, preprocessing_of(meta), batch_size
        self.pos = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next calibration batch ``{input: (B, 3, S, S) float32}``, or None at the end."""
        if self.pos >= len(self.faces):
            return None
        batch = np.array(self.faces[self.pos:self.pos + self.batch_size], dtype=np.uint8)
        self.pos += self.batch_size
        return {INPUT_NAME: self.pre(torch.from_numpy(batch)).numpy()}

    def rewind(self) -> None:
        """Start again from the first face."""
        self.pos = 0

    def __iter__(self):  # onnxruntime >= 1.16 also iterates readers
        self.rewind()
        return iter(self.get_next, None)


def model_inputs(meta: dict[str, Any], faces: np.ndarray, batch: int = 256) -> np.ndarray:
    """Aligned uint8 faces ``(N, S0, S0, 3)`` -> the export's float32 input ``(N, 3, S, S)`` (its own
    preprocessing, from ``meta``), in batches of ``batch`` so a memory-mapped set stays out of RAM."""
    pre = preprocessing_of(meta)
    return np.concatenate([pre(torch.from_numpy(np.array(faces[i:i + batch], dtype=np.uint8))).numpy()
                           for i in range(0, len(faces), batch)])


def _fp32_metadata(fp32_path: str | Path, calib_faces: np.ndarray, method: str | None) -> dict[str, Any]:
    """The fp32 export's metadata, after checking the quantisation request.

    Raises:
        ValueError: unknown calibration ``method``, no calibration faces, or a file that is not fp32.
    """
    if method is not None and method not in CALIBRATION_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    if len(calib_faces) == 0:
        raise ValueError("int8 calibration needs aligned faces; none were given")
    meta = read_metadata(fp32_path)
    if meta["precision"] != "fp32":
        raise ValueError(f"{fp32_path} is already {meta['precision']}; quantise the fp32 export")
    return meta


def _write_int8(proto: Any, meta: dict[str, Any], calibration: dict[str, Any], out: str | Path) -> bytes:
    """Write the int8 graph to ``out`` with the fp32 metadata, ``precision="int8"`` and its calibration."""
    data = with_onnx_metadata(proto, {**meta, "precision": "int8", "calibration": calibration}).SerializeToString()
    atomic_write_bytes(out, data)
    return data


def quantize_int8(fp32_path: str | Path, out: str | Path, calib_faces: np.ndarray, *, method: str = "minmax",
                  per_channel: bool = True, batch_size: int = 32, recipe: Any = None) -> dict[str, Any]:
    """Statically quantise ``fp32_path`` to int8 (QDQ, per-channel) into ``out``, calibrated on ``calib_faces``.

    The metadata of the fp32 model is carried over with ``precision="int8"`` and the calibration
    recorded. Returns ``{"path", "bytes", "calibration"}``. ``recipe``: an
    :class:`~distill.deploy.int8.Int8Recipe` (e.g. ``int8.RECOMMENDED``: flagship TAR@1e-3 -1.1 points,
    cosine to fp32 0.999, docs/int8.md); ``None`` keeps the plain onnxruntime quantisation below.
    """
    if recipe is not None:
        return quantize_int8_recipe(fp32_path, out, calib_faces, recipe, method=method, per_channel=per_channel)
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    meta = _fp32_metadata(fp32_path, calib_faces, method)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="facedistill-int8-") as tmp:
        pre_path, q_path = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        # shape inference + graph optimisation first, as onnxruntime's quantisation guide advises
        quant_pre_process(str(fp32_path), str(pre_path), skip_symbolic_shape=True)
        quantize_static(str(pre_path), str(q_path), FaceCalibrationReader(calib_faces, meta, batch_size),
                        quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method])
        proto = onnx.load(str(q_path))
    calibration = {"faces": int(len(calib_faces)), "method": method, "per_channel": per_channel,
                   "format": "QDQ", "activations": "int8", "weights": "int8"}
    data = _write_int8(proto, meta, calibration, out)
    return {"path": Path(out), "bytes": len(data), "calibration": calibration}


def quantize_int8_recipe(fp32_path: str | Path, out: str | Path, calib_faces: np.ndarray, recipe: Any, *,
                         method: str | None = None, per_channel: bool | None = None) -> dict[str, Any]:
    """:func:`quantize_int8` with an :class:`~distill.deploy.int8.Int8Recipe` (``method`` / ``per_channel``
    override its calibration method / weight granularity when given). ``calib_faces``: aligned uint8
    training faces ``(N, S0, S0, 3)``, preprocessed here like the model's input. The file carries the
    fp32 metadata with ``precision="int8"`` and ``calibration`` = the recipe, the faces and the fp32 nodes.
    """
    from dataclasses import replace

    import onnx

    from .int8 import quantize_recipe

    meta = _fp32_metadata(fp32_path, calib_faces, method)
    recipe = replace(recipe, calibrate=method or recipe.calibrate,
                     per_channel=recipe.per_channel if per_channel is None else per_channel)
    x = model_inputs(meta, calib_faces)
    with tempfile.TemporaryDirectory(prefix="facedistill-int8-") as tmp:
        q = quantize_recipe(fp32_path, Path(tmp) / "int8.onnx", x, recipe)
        proto = onnx.load(str(q.path))
    calibration = {"faces": int(len(calib_faces)), "method": recipe.calibrate, "per_channel": recipe.per_channel,
                   "format": recipe.quant_format, "activations": recipe.activations,
                   "weights": "int8, 7-bit range (portable: no int16 saturation without VNNI)" if recipe.reduce_range
                   else "int8, full range (exact only with VNNI/AMX; AVX2 may saturate: docs/int8.md)",
                   "quantised_on": cpu_capability().label(),
                   **{k: v for k, v in q.record().items() if k != "faces"}}
    data = _write_int8(proto, meta, calibration, out)
    return {"path": Path(out), "bytes": len(data), "calibration": calibration}


# --------------------------------------------------------------------------- accuracy
def subset_pairs(n_pairs: int, is_same: np.ndarray, max_pairs: int | None) -> np.ndarray:
    """Indices of at most ``max_pairs`` pairs, half same / half different, evenly spaced in the file
    (so View-1's positional folds stay populated)."""
    idx = np.arange(n_pairs)
    if not max_pairs or max_pairs >= n_pairs:
        return idx
    out = []
    for want in (True, False):
        block = idx[is_same == want]
        k = min(len(block), max_pairs // 2)
        out.append(block[np.linspace(0, len(block) - 1, k).round().astype(np.int64)] if k else block[:0])
    return np.sort(np.concatenate(out))


def load_pairs(pairs_file: str | Path, images_root: str | Path, *, max_pairs: int | None = None):
    """``(rel_paths, PairIndex into rel_paths, people)`` of a LFW-format pairs file (optionally a subset)."""
    from distill.data.pairs import detect_image_ext, read_pairs
    from distill.evaluation import PairIndex

    proto = read_pairs(pairs_file, images_root, ext=detect_image_ext(images_root))
    keep = subset_pairs(len(proto), proto.is_same, max_pairs)
    a = [proto.rel_path_a[i] for i in keep]
    b = [proto.rel_path_b[i] for i in keep]
    rel = sorted(set(a) | set(b))
    pos = {p: i for i, p in enumerate(rel)}
    pairs = PairIndex([pos[p] for p in a], [pos[p] for p in b], proto.is_same[keep], proto.fold[keep])
    people = {p.split("/", 1)[0] for p in rel}
    return rel, pairs, people


def verification_accuracy(embedders: dict[str, Any], faces: np.ndarray, pairs: Any, *,
                          batch_size: int = 64) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Embed the same aligned faces with each embedder and verify on ``pairs`` (indices into ``faces``).

    Returns ``({label: VerificationResult}, {label: embeddings (N, D)})``.
    """
    from distill.evaluation import evaluate_pairs, extract_embeddings

    results, vectors = {}, {}
    for label, emb in embedders.items():
        vectors[label] = extract_embeddings(emb, faces, batch_size=batch_size, progress=True)
        results[label] = evaluate_pairs(vectors[label], pairs, emb.normalized)
    return results, vectors


def embedding_agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """How well model ``b`` reproduces model ``a`` on the same faces.

    ``relative_error``: mean ``||b - a||`` over the mean distance between ``a``'s embeddings of
    *different* faces. Cosine alone can hide a collapsed model (every face at nearly the same point,
    cosine ~1 to everything); a relative error near or above 0.1 means quantisation noise is
    comparable to what separates faces, and verification accuracy will suffer.
    """
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    err = float(np.linalg.norm(a - b, axis=1).mean())
    spread = float(np.linalg.norm(a[:, None] - a[None], axis=2)[np.triu_indices(len(a), 1)].mean()) \
        if len(a) > 1 else float("nan")
    return {"mean_cosine": float(cos.mean()), "min_cosine": float(cos.min()),
            "max_abs_diff": float(np.abs(a - b).max()), "mean_error": err, "spread": spread,
            "relative_error": err / spread if spread > 0 else float("inf")}


# --------------------------------------------------------------------------- latency
def latency_table(rows: Sequence[tuple[str, dict[str, dict[str, float]]]]) -> str:
    """Plain-text table of :func:`~distill.models.exported.onnx_latency` results, one row per (label, latency)."""
    from distill.evaluation.tables import text_table

    batches = sorted({int(b) for _, lat in rows for b in lat})
    head = ["model", *(f"b={b} ms/batch" for b in batches), *(f"b={b} img/s" for b in batches)]
    body = [[label, *(f"{lat[str(b)]['ms_per_batch']:.2f}" if str(b) in lat else "" for b in batches),
             *(f"{lat[str(b)]['images_per_s']:.0f}" if str(b) in lat else "" for b in batches)] for label, lat in rows]
    return "\n".join(text_table(head, body))
