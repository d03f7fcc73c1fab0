"""Rescalings that leave the fp32 function unchanged and make it easier to quantise.

:func:`equalize_cross_layer` (Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", ICCV 2019, sec. 4.1) balances the weight ranges of ``Conv -> Relu -> Conv`` pairs;
:func:`equalize_activations` balances the per-channel activation ranges instead (data-driven: what
per-tensor activation quantisation needs once weights are per-channel). Bias correction, which needs
the quantised model, lives in :mod:`.recipe` (:func:`~.recipe.correct_output_bias`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .graph import _attr, _consumers, _initializers, _run_batched, _session, _with_outputs, load_model

#: operators whose output keeps the input's sign pattern; a positive per-channel scale passes through them
_POSITIVE_HOMOGENEOUS = ("Relu",)


@dataclass(frozen=True)
class EqualizedPair:
    """One equalised ``Conv -> Relu -> Conv`` pair: weight-range spread (max/min over channels) before and after."""

    first: str
    second: str
    channels: int
    spread_before: float
    spread_after: float


@dataclass(frozen=True)
class Equalization:
    """:func:`equalize_cross_layer`'s record."""

    pairs: tuple[EqualizedPair, ...]
    iterations: int








def equalizable_pairs(model: Any) -> list[tuple[Any, Any]]:
    """``(conv1, conv2)`` node pairs joined by one Relu (or directly), each edge used by nothing else.

    Both convs need constant weights (initializers used once, so scaling cannot leak into another node);
    ``conv2`` is either dense (``group == 1``) or depthwise (``group == channels``, one filter per channel).
    Graph outputs in between are refused (scaling would change them).
    """
    inits, cons = _initializers(model), _consumers(model)
    uses: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    graph_outputs = {o.name for o in model.graph.output}

    def only_consumer(t: str) -> Any | None:
        c = cons.get(t, [])
        return c[0] if len(c) == 1 and t not in graph_outputs else None

    pairs = []
    for a in model.graph.node:
        if a.op_type != "Conv" or len(a.input) < 2 or a.input[1] not in inits or uses.get(a.input[1]) != 1:
            continue
        nxt = only_consumer(a.output[0])
        if nxt is not None and nxt.op_type in _POSITIVE_HOMOGENEOUS:
            nxt = only_consumer(nxt.output[0])
        if nxt is None or nxt.op_type != "Conv" or len(nxt.input) < 2 or nxt.input[1] not in inits \
                or uses.get(nxt.input[1]) != 1:
            continue
        channels = inits[a.input[1]].dims[0]
        group = int(_attr(nxt, "group", 1))
        w2 = inits[nxt.input[1]].dims
        if _attr(a, "group", 1) != 1 and _attr(a, "group", 1) != channels:
            continue  # grouped first conv: its output channels still map 1:1 to filters, but keep it simple
        if group == 1 and w2[1] == channels or group == channels and w2[0] == channels and w2[1] == 1:
            pairs.append((a, nxt))
    return pairs


def _channel_ranges(w: np.ndarray, axis: int) -> np.ndarray:
    """max |w| per index along ``axis``."""
    return np.abs(np.moveaxis(w, axis, 0)).reshape(w.shape[axis], -1).max(1)


def equalize_cross_layer(model: Any, *, iterations: int = 20, tol: float = 1e-3,
                         min_scale: float = 1e-4) -> tuple[Any, Equalization]:
    """Cross-layer equalisation of every ``Conv -> Relu -> Conv`` pair (Nagel et al. 2019, sec. 4.1).

    For channel ``i`` between ``conv1`` (weights ``W1``, output channels on axis 0, bias ``b1``)
    and ``conv2`` (``W2``; input channel ``i`` is axis 1 when dense, axis 0 when depthwise):
    ``r1_i = max|W1[i]|``, ``r2_i = max|W2[:, i]|``, ``s_i = sqrt(r1_i / r2_i)``;
    ``W1[i] /= s_i``, ``b1[i] /= s_i``, ``W2[:, i] *= s_i``. Since ``Relu(x / s) = Relu(x) / s`` the
    model computes the same function (up to float rounding). Chains (stem -> dw -> pw -> dw ...)
    share layers between pairs, so the pass repeats until no scale moves by more than ``tol`` (at
    most ``iterations`` sweeps), as the paper does. ``s`` is clipped to ``[min_scale, 1/min_scale]``
    (dead channels, all-zero weights, keep ``s = 1``).

    BatchNorm must already be folded into the convs (the exporter does this for eval-mode models).
    Returns ``(new ModelProto, Equalization)``; the input model is not modified.
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(load_model(model))
    inits = _initializers(m)
    pairs = equalizable_pairs(m)
    arrays = {name: numpy_helper.to_array(t).astype(np.float64) for name, t in inits.items()
              if any(name in (a.input[1:] + b.input[1:]) for a, b in pairs)}

    def spread(r: np.ndarray) -> float:
        r = r[r > 0]
        return float(r.max() / r.min()) if r.size else 1.0

    def ranges(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
        w2 = arrays[b.input[1]]
        return _channel_ranges(arrays[a.input[1]], 0), _channel_ranges(w2, 0 if int(_attr(b, "group", 1)) > 1 else 1)

    before = [ranges(a, b) for a, b in pairs]
    sweeps = 0
    for sweeps in range(1, iterations + 1):
        moved = 0.0
        for a, b in pairs:
            r1, r2 = ranges(a, b)
            ok = (r1 > 0) & (r2 > 0)
            s = np.ones_like(r1)
            s[ok] = np.clip(np.sqrt(r1[ok] / r2[ok]), min_scale, 1.0 / min_scale)
            shape1 = (-1,) + (1,) * (arrays[a.input[1]].ndim - 1)
            arrays[a.input[1]] /= s.reshape(shape1)
            if len(a.input) > 2 and a.input[2]:
                arrays[a.input[2]] /= s
            w2 = arrays[b.input[1]]
            axis = 0 if int(_attr(b, "group", 1)) > 1 else 1
            shape2 = [1] * w2.ndim
            shape2[axis] = -1
            arrays[b.input[1]] = w2 * s.reshape(shape2)
            moved = max(moved, float(np.abs(np.log(s)).max()) if s.size else 0.0)
        if moved < tol:
            break
    for name, arr in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(arr.astype(numpy_helper.to_array(inits[name]).dtype), name))
    after = [ranges(a, b) for a, b in pairs]
    rec = tuple(EqualizedPair(a.name, b.name, len(r0[0]), max(spread(r0[0]), spread(r0[1])),
                              max(spread(r1[0]), spread(r1[1]))) for (a, b), r0, r1 in zip(pairs, before, after))
    return m, Equalization(rec, sweeps)


def _scalable_pairs(model: Any) -> list[tuple[Any, Any, Any]]:
    """``(conv1, relu, consumer)`` where channel ``i`` of ``conv1``'s Relu output can be scaled by ``s_i``
    and undone in ``consumer``: a Conv (:func:`equalizable_pairs`) or, through global average pooling
    and Flatten, a Gemm/MatMul with a constant weight (the embedding head)."""
    inits, cons = _initializers(model), _consumers(model)
    outs = {o.name for o in model.graph.output}

    def only(t: str) -> Any | None:
        c = cons.get(t, [])
        return c[0] if len(c) == 1 and t not in outs else None

    found = []
    for a, b in equalizable_pairs(model):
        relu = only(a.output[0])
        if relu is not None and relu.op_type == "Relu":
            found.append((a, relu, b))
    for a in model.graph.node:
        if a.op_type != "Conv" or len(a.input) < 2 or a.input[1] not in inits:
            continue
        relu = only(a.output[0])
        pool = only(relu.output[0]) if relu is not None and relu.op_type == "Relu" else None
        if pool is None or pool.op_type != "GlobalAveragePool":
            continue
        nxt = only(pool.output[0])
        if nxt is not None and nxt.op_type == "Flatten":
            nxt = only(nxt.output[0])
        if nxt is not None and nxt.op_type in ("Gemm", "MatMul") and len(nxt.input) > 1 and nxt.input[1] in inits:
            if nxt.op_type == "Gemm" and int(_attr(nxt, "transA", 0)):
                continue
            found.append((a, relu, nxt))
    return found


@dataclass(frozen=True)
class ActivationScaling:
    """One ``conv -> Relu -> consumer`` edge rescaled by :func:`equalize_activations`."""

    conv: str
    consumer: str
    channels: int
    spread_before: float   # max / median of the per-channel activation maxima
    spread_after: float


def equalize_activations(model: Any, inputs: np.ndarray, *, alpha: float = 1.0, only: Sequence[str] | None = None,
                         max_scale: float = 1e3, batch_size: int = 64) -> tuple[Any, tuple[ActivationScaling, ...]]:
    """Rescale Relu-output channels so that each uses more of its tensor's int8 range (data-driven).

    Per-tensor activation quantisation gives every channel the same step, set by the channel with
    the largest values; a channel whose values stay at a tenth of that max is quantised 20 dB
    coarser relative to its own signal. For ``conv -> Relu -> consumer`` (:func:`_scalable_pairs`),
    with ``r_i`` the max of channel ``i`` over ``inputs`` and ``R = max_i r_i``:
    ``s_i = (R / r_i) ** alpha`` (clipped to ``[1, max_scale]``), ``conv`` output channel ``i``
    (weights and bias) times ``s_i``, the consumer's input channel ``i`` divided by ``s_i``. Exact for
    every input (``Relu(s x) = s Relu(x)``, pooling is linear); ``inputs`` only choose ``s``.
    ``alpha = 1`` equalises the ranges fully (best when the consumer stays fp32 or its weights are
    per-channel and well conditioned); smaller values trade activation for consumer-weight resolution,
    as SmoothQuant's migration strength does (Xiao et al. 2023). ``only``: conv node names to restrict to.
    Returns ``(new ModelProto, records)``; the input model is not modified.
    """
    import onnx
    from onnx import numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(load_model(model))
    inits = _initializers(m)
    pairs = [p for p in _scalable_pairs(m) if only is None or p[0].name in set(only)]
    if not pairs:
        return m, ()
    names = [r.output[0] for _, r, _ in pairs]
    sess = _session(_with_outputs(m, names), opt_level="disable")
    maxima: list[np.ndarray] | None = None
    for outs in _run_batched(sess, inputs, names, batch_size):
        cur = [o.max(axis=tuple(i for i in range(o.ndim) if i != 1)) for o in outs]
        maxima = cur if maxima is None else [np.maximum(a, b) for a, b in zip(maxima, cur)]
    records = []
    for (a, _, b), r in zip(pairs, maxima or []):
        r = r.astype(np.float64)
        live = r > 0
        s = np.ones_like(r)
        s[live] = np.clip((r.max() / r[live]) ** alpha, 1.0, max_scale)
        w1 = numpy_helper.to_array(inits[a.input[1]]).astype(np.float64)
        w1 = w1 * s.reshape((-1,) + (1,) * (w1.ndim - 1))
        inits[a.input[1]].CopyFrom(numpy_helper.from_array(w1.astype(np.float32), a.input[1]))
        if len(a.input) > 2 and a.input[2]:
            b1 = numpy_helper.to_array(inits[a.input[2]]).astype(np.float64) * s
            inits[a.input[2]].CopyFrom(numpy_helper.from_array(b1.astype(np.float32), a.input[2]))
        w2 = numpy_helper.to_array(inits[b.input[1]]).astype(np.float64)
        if b.op_type == "Conv":
            axis = 0 if int(_attr(b, "group", 1)) > 1 else 1
        else:  # Gemm/MatMul: input features on axis 0 of B, or axis 1 when Gemm's transB
            axis = 1 if b.op_type == "Gemm" and int(_attr(b, "transB", 0)) else 0
        shape = [1] * w2.ndim
        shape[axis] = -1
        w2 = w2 / s.reshape(shape)
        inits[b.input[1]].CopyFrom(numpy_helper.from_array(w2.astype(np.float32), b.input[1]))
        med = float(np.median(r[live])) if live.any() else 1.0
        after = r * s
        records.append(ActivationScaling(a.name, b.name, len(r), float(r.max() / med),
                                         float(after.max() / np.median(after[live])) if live.any() else 1.0))
    return m, tuple(records)


