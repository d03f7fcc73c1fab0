"""ONNX graph plumbing shared by the int8 tools: loading, sessions, batched runs, error metrics, node lookups."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np


def load_model(model: Any) -> Any:
    """An ``onnx.ModelProto`` from a path or a ModelProto (returned as is, not copied)."""
    import onnx

    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _session(model: Any, *, opt_level: str = "all", threads: int | None = None, profile_prefix: str | None = None,
             spinning: bool = True):
    """An onnxruntime CPU session of a path or ModelProto; ``opt_level`` in ``disable|basic|extended|all``
    (``SessionOptions.graph_optimization_level``); ``threads`` ``None``: onnxruntime's default (all cores).
    ``spinning=False`` stops idle intra-op threads from busy-waiting after a run: needed when several
    sessions take turns, or each one's spinning threads steal the cores of the next (measured here:
    interleaved fp32/int8 students ran at half their solo speed with spinning, at 97-99% without)."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    opts = ort.SessionOptions()
    opts.graph_optimization_level = levels[opt_level]
    opts.intra_op_num_threads = threads or 0
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spinning:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix is not None:
        opts.enable_profiling = True
        opts.profile_file_prefix = profile_prefix
    data = model.SerializeToString() if not isinstance(model, (str, Path)) else str(model)
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def _run_batched(sess: Any, inputs: np.ndarray, names: list[str], batch_size: int) -> Iterator[list[np.ndarray]]:
    feed = sess.get_inputs()[0].name
    for i in range(0, len(inputs), batch_size):
        yield sess.run(names, {feed: np.ascontiguousarray(inputs[i:i + batch_size], dtype=np.float32)})


def run_model(model: Any, inputs: np.ndarray, *, batch_size: int = 64, threads: int | None = None) -> np.ndarray:
    """The first output of ``model`` on ``inputs`` ``(N, ...)`` float32, in batches: ``(N, D)``."""
    sess = _session(load_model(model) if not isinstance(model, (str, Path)) else model, threads=threads)
    out = sess.get_outputs()[0].name
    return np.concatenate([r[0] for r in _run_batched(sess, inputs, [out], batch_size)])


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantisation-noise ratio ``10 log10(sum ref^2 / sum (ref - test)^2)`` in dB (inf if equal).

    6.02 dB per bit: an ideal uniform 8-bit quantiser of a full-range signal gives about 48 dB.
    """
    ref = np.asarray(ref, np.float64)
    noise = float(((ref - np.asarray(test, np.float64)) ** 2).sum())
    signal = float((ref ** 2).sum())
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


def centered_sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """SQNR of the part of ``test`` that moves distances between samples, in dB.

    Signal: ``ref`` minus its mean over samples (axis 0); noise: ``test - ref`` minus *its* mean
    over samples. A shift common to every sample cancels in every distance between two outputs
    (and is removed by a bias correction), so it is left out of both.
    """
    ref = np.asarray(ref, np.float64)
    err = np.asarray(test, np.float64) - ref
    return sqnr_db(ref - ref.mean(0), ref - ref.mean(0) + (err - err.mean(0)))


def mean_cosine(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean over samples (axis 0) of the cosine between flattened samples of ``ref`` and ``test``."""
    a = np.asarray(ref, np.float64).reshape(len(ref), -1)
    b = np.asarray(test, np.float64).reshape(len(test), -1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-300), 1.0)
    return float(cos.mean())


def _with_outputs(model: Any, names: Sequence[str]) -> Any:
    """A copy of ``model`` whose graph also outputs ``names`` (float tensors, shape left open)."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    return m


def _initializers(model: Any) -> dict[str, Any]:
    return {t.name: t for t in model.graph.initializer}


def _consumers(model: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            out.setdefault(i, []).append(n)
    return out


def _attr(node: Any, name: str, default: Any) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default
