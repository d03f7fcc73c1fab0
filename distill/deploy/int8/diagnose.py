"""Where int8 breaks: per-layer comparison against fp32, and the sensitivity of each quantiser alone.

:func:`compare_layers` runs an fp32 model and its QDQ int8 model on the same faces and reports SQNR
(dB) and cosine of every intermediate tensor (:class:`LayerReport`, ``.table()``);
:func:`layer_sensitivity` keeps one quantiser at a time and reports the output error each causes
alone (:class:`SensitivityReport`): the rows to keep in fp32.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .graph import _consumers, _initializers, _run_batched, _session, _with_outputs, centered_sqnr_db, load_model, mean_cosine, sqnr_db

#: onnxruntime's suffixes for the tensors a QDQ model inserts (onnxruntime.quantization.quant_utils)
_DQ_SUFFIX = "_DequantizeLinear_Output"


@dataclass(frozen=True)
class LayerError:
    """int8 against fp32 on one intermediate tensor (batch of real inputs).

    ``sqnr_db`` / ``cosine``: the tensor as the int8 model's consumers see it (after its own
    quantise-dequantise when it is quantised) against the fp32 model's tensor: the error
    accumulated from the input up to here. ``centered_sqnr_db``: the same error against the
    tensor's variation across inputs (each element minus its mean over the inputs; the error's
    own mean removed too, :func:`centered_sqnr_db`): low when inputs differ by little next to a
    large common value, as a collapsed embedding's features do. ``local_sqnr_db``: the fp32 tensor
    against its own quantise-dequantise with the int8 model's scale and zero point (the resolution
    of its range alone; ``None`` when the tensor is not quantised).
    """

    index: int
    tensor: str
    op: str
    node: str
    shape: tuple[int, ...]
    quantized: bool
    sqnr_db: float
    cosine: float
    local_sqnr_db: float | None
    centered_sqnr_db: float = math.nan


@dataclass(frozen=True)
class LayerReport:
    """:func:`compare_layers`'s result: one :class:`LayerError` per fp32 tensor, in graph order."""

    layers: tuple[LayerError, ...]
    samples: int

    def output(self) -> LayerError:
        """The last row (the model's output)."""
        return self.layers[-1]

    def drops(self) -> np.ndarray:
        """dB lost at each row relative to the previous row; ``nan`` for the first row and after an exact
        (fp32, infinite-SQNR) row, where there is nothing to lose from."""
        s = np.array([x.sqnr_db for x in self.layers], dtype=np.float64)
        prev = np.r_[np.nan, s[:-1]]
        with np.errstate(invalid="ignore"):
            d = prev - s
        d[~np.isfinite(prev)] = np.nan
        return d

    def biggest_drop(self) -> LayerError:
        """The row where the accumulated SQNR falls most from the row before: the first layer to look at
        (else the first row with an error at all, else the first row)."""
        d = self.drops()
        if np.isfinite(d).any():
            return self.layers[int(np.nanargmax(d))]
        return next((x for x in self.layers if math.isfinite(x.sqnr_db)), self.layers[0])

    def first_below(self, db: float) -> LayerError | None:
        """The first row whose accumulated SQNR is below ``db`` (``None`` if none)."""
        return next((x for x in self.layers if x.sqnr_db < db), None)

    def table(self, *, short: bool = True) -> str:
        """Plain-text table: index, node, op, per-sample shape, quantised, local SQNR, SQNR, drop, cosine."""
        drops = self.drops()
        rows = [("#", "node" if short else "tensor", "op", "shape", "q", "local dB", "SQNR dB", "drop", "centred dB",
                 "cosine")]
        for x, d in zip(self.layers, drops):
            name = _short_name(x.node) if short else x.tensor
            rows.append((str(x.index), name, x.op, "x".join(map(str, x.shape)), "y" if x.quantized else "-",
                         "" if x.local_sqnr_db is None else f"{x.local_sqnr_db:.1f}", _db(x.sqnr_db),
                         "" if np.isnan(d) else f"{d:+.1f}", _db(x.centered_sqnr_db), f"{x.cosine:.5f}"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i in (1, 2) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        worst = self.biggest_drop()
        lines.append(f"{self.samples} inputs; biggest drop at #{worst.index} {_short_name(worst.node)} ({worst.op}); "
                     f"output SQNR {_db(self.output().sqnr_db)} dB (centred {_db(self.output().centered_sqnr_db)} dB), "
                     f"cosine {self.output().cosine:.5f}. q: quantised tensor; local: its own rounding and "
                     f"clipping; SQNR/cosine: accumulated from the input; centred: against the variation "
                     f"between inputs")
        return "\n".join(lines)


def _db(v: float) -> str:
    return "inf" if math.isinf(v) else f"{v:.1f}"


def _short_name(name: str) -> str:
    """``/student/blocks/blocks.3/pointwise/pointwise.0/Conv`` -> ``blocks.3/pointwise.0/Conv``."""
    parts = [p for p in name.split("/") if p]
    keep = [p for p in parts if p not in ("student",)]
    if len(keep) >= 4:  # drop repeated parents (blocks/blocks.3 -> blocks.3)
        keep = [p for i, p in enumerate(keep) if not (i + 1 < len(keep) and keep[i + 1].startswith(p + "."))]
    return "/".join(keep) or name




def _float_node_outputs(model: Any) -> list[tuple[str, Any]]:
    """``(tensor, node)`` for every float32 node output of a graph, in graph (topological) order.

    Types come from ONNX shape inference; outputs it cannot type, and integer outputs (``Shape`` in
    an L2-normalising head), are left out: they cannot be compared as activations.
    """
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    typed = list(inferred.graph.value_info) + list(inferred.graph.output)
    types = {v.name: v.type.tensor_type.elem_type for v in typed}
    return [(o, n) for n in model.graph.node for o in n.output if o and types.get(o) == onnx.TensorProto.FLOAT]


def _fake_quant(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """ONNX ``DequantizeLinear(QuantizeLinear(x))`` for a per-tensor scale (round half to even, saturate)."""
    info = np.iinfo(zero_point.dtype)
    q = np.clip(np.round(x / scale) + zero_point.astype(np.int64), info.min, info.max)
    return ((q - zero_point.astype(np.int64)) * scale).astype(np.float32)


def compare_layers(fp32_model: Any, int8_model: Any, inputs: np.ndarray, *, batch_size: int = 32,
                   threads: int | None = None) -> LayerReport:
    """Per-tensor SQNR and cosine of a QDQ int8 model against its fp32 model on ``inputs``.

    Args:
        fp32_model: path or ``onnx.ModelProto`` of the float model.
        int8_model: its QDQ quantisation (``quantize_static(..., quant_format=QDQ)``); tensors are
            matched by name, so it must come from ``fp32_model`` (or from the pre-processed copy the
            quantiser saw: rows absent from the int8 graph, e.g. nodes fused away, are skipped).
        inputs: ``(N, ...)`` float32 model inputs (preprocessed real faces, a few dozen suffice).

    Both models run with graph optimisation disabled so every tensor exists; the int8 model's
    arithmetic is then onnxruntime's float simulation of QDQ (dequantise, float op, quantise), which
    equals the integer kernels up to rounding of the requantisation. ``local_sqnr_db`` applies the
    int8 model's scale and zero point of a tensor to the *fp32* tensor (numpy), so it isolates the
    resolution and clipping of that one range. Returns a :class:`LayerReport`. Raises ``ValueError``
    when no tensor of the two graphs matches (not a QDQ model of this one).
    """
    from onnx import numpy_helper

    f32, i8 = load_model(fp32_model), load_model(int8_model)
    consts = {t.name: numpy_helper.to_array(t) for t in i8.graph.initializer}
    i8_outputs = {o for n in i8.graph.node for o in n.output}
    qnode = {n.input[0]: n for n in i8.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in i8.graph.node if n.op_type == "DequantizeLinear"}
    rows: list[tuple[str, Any, str, tuple[np.ndarray, np.ndarray] | None]] = []  # tensor, node, int8 name, (s, zp)
    for t, node in _float_node_outputs(f32):
        q = qnode.get(t)
        if q is not None and q.output[0] in dq_of:  # quantised: consumers see the dequantised copy
            params = (consts[q.input[1]], consts[q.input[2]]) if q.input[1] in consts and len(q.input) > 2 \
                and q.input[2] in consts and consts[q.input[1]].size == 1 else None
            rows.append((t, node, dq_of[q.output[0]], params))
        elif t in i8_outputs:
            rows.append((t, node, t, None))
    if not rows:
        raise ValueError("no tensor of the fp32 graph appears in the int8 graph: give the int8 model quantised "
                         "from this fp32 model (QDQ format)")
    f_names = [r[0] for r in rows]
    i_names = list(dict.fromkeys(r[2] for r in rows))
    sf = _session(_with_outputs(f32, f_names), opt_level="disable", threads=threads)
    si = _session(_with_outputs(i8, i_names), opt_level="disable", threads=threads)
    acc = {t: np.zeros(4) for t in f_names}  # sum ref^2, sum err^2, cosine sum, local noise
    sums: dict[str, list[np.ndarray]] = {}     # per-element sums of ref and err, for the centred SQNR
    shapes: dict[str, tuple[int, ...]] = {}
    n = 0
    for fo, io in zip(_run_batched(sf, inputs, f_names, batch_size), _run_batched(si, inputs, i_names, batch_size)):
        got = dict(zip(i_names, io))
        for (t, _, seen, params), ref in zip(rows, fo):
            ref64 = ref.astype(np.float64)
            err = got[seen] - ref64
            a = acc[t]
            a[0] += float((ref64 ** 2).sum())
            a[1] += float((err ** 2).sum())
            a[2] += mean_cosine(ref, got[seen]) * len(ref)
            if params is not None:
                a[3] += float(((ref64 - _fake_quant(ref, *params)) ** 2).sum())
            s_ref, s_err = ref64.sum(0), err.sum(0)
            if t in sums:
                sums[t][0] += s_ref
                sums[t][1] += s_err
            else:
                sums[t] = [s_ref, s_err]
            shapes[t] = tuple(int(s) for s in ref.shape[1:])
        n += len(fo[0])

    def db(signal: float, noise: float) -> float:
        return math.inf if noise <= 0 else 10 * math.log10(max(signal, 1e-300) / noise)

    layers = []
    for i, (t, node, seen, params) in enumerate(rows):
        s, e, c, le = acc[t]
        s_ref, s_err = sums[t]
        centred = db(s - float((s_ref ** 2).sum()) / n, e - float((s_err ** 2).sum()) / n)
        layers.append(LayerError(i, t, node.op_type, node.name or t, shapes[t], seen != t, db(s, e), c / n,
                                 None if params is None else db(s, le), centred))
    return LayerReport(tuple(layers), n)


@dataclass(frozen=True)
class Sensitivity:
    """Output error of the int8 model when only one quantiser is kept (every other tensor in fp32).

    ``kind``: ``weight`` (the node's int8 weights; its bias stays as quantised) or ``activation``
    (the node's output QuantizeLinear/DequantizeLinear). ``sqnr_db``: model output against fp32;
    ``centered_sqnr_db``: :func:`centered_sqnr_db`, the error that changes distances between
    faces against the variation that separates them (an embedding whose faces differ by little
    next to a large common vector has a high ``sqnr_db`` and a low ``centered_sqnr_db``). Noise
    powers of independent quantisers roughly add, so the rows with the lowest
    ``centered_sqnr_db`` are the ones whose fp32 would help most.
    """

    node: str
    op: str
    kind: Literal["weight", "activation"]
    tensor: str
    sqnr_db: float
    centered_sqnr_db: float


@dataclass(frozen=True)
class SensitivityReport:
    """:func:`layer_sensitivity`'s rows, most harmful first, plus the all-quantised reference."""

    rows: tuple[Sensitivity, ...]
    all_sqnr_db: float
    all_centered_sqnr_db: float
    samples: int

    def table(self, top: int | None = None) -> str:
        """Plain-text table: node, op, kind, output SQNR and centred SQNR (dB) with only that quantiser."""
        rows = [("node", "op", "kind", "out dB", "out centred dB")]
        for r in self.rows[:top]:
            rows.append((_short_name(r.node), r.op, r.kind, _db(r.sqnr_db), _db(r.centered_sqnr_db)))
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.append(f"all quantisers: out {_db(self.all_sqnr_db)} dB, centred {_db(self.all_centered_sqnr_db)} dB "
                     f"({self.samples} inputs)")
        return "\n".join(lines)


def _qdq_units(i8: Any) -> list[tuple[str, str, str, Any]]:
    """``(kind, float tensor, consumer-facing tensor, DequantizeLinear node)`` for every quantiser of a QDQ graph.

    Activations: ``X -> QuantizeLinear -> DequantizeLinear -> Y``. Weights/biases: an initializer
    ``W_quantized -> DequantizeLinear -> Y`` (``Y`` is ``W_DequantizeLinear_Output`` or ``W``).
    """
    inits = {t.name for t in i8.graph.initializer}
    q_out = {n.output[0]: n for n in i8.graph.node if n.op_type == "QuantizeLinear"}
    units = []
    for n in i8.graph.node:
        if n.op_type != "DequantizeLinear":
            continue
        src = n.input[0]
        if src in q_out:
            units.append(("activation", q_out[src].input[0], n.output[0], n))
        elif src in inits:
            out = n.output[0]
            base = out[: -len(_DQ_SUFFIX)] if out.endswith(_DQ_SUFFIX) else src.removesuffix("_quantized")
            units.append(("weight", base, out, n))
    return units


def _bypass(i8: Any, f32: Any, drop: set[str]) -> Any:
    """A copy of QDQ graph ``i8`` in which the quantisers whose DequantizeLinear node is in ``drop`` are
    undone: consumers read the float tensor (activations) or ``f32``'s initializer (weights).

    onnxruntime's QDQ quantiser removes a Relu/Clip that follows a Conv (the QuantizeLinear's range
    clips instead; ``QDQKeepRemovableActivations``); undoing that quantiser puts a copy of the fp32
    activation node back, so the bypassed graph computes the fp32 function.
    """
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(i8)
    f32_inits = _initializers(f32)
    f32_producer = {o: n for n in f32.graph.node for o in n.output}
    i8_producer = {o: n for n in m.graph.node for o in n.output}
    rename: dict[str, str] = {}
    add = []
    acts = []
    for kind, base, out, dq in _qdq_units(m):
        if dq.name not in drop:
            continue
        if kind == "activation":
            fp, ip = f32_producer.get(base), i8_producer.get(base)
            if fp is not None and ip is not None and fp.op_type != ip.op_type and fp.op_type in ("Relu", "Clip"):
                act = onnx.NodeProto()
                act.CopyFrom(fp)
                act.name = fp.name + "_restored"
                del act.input[:]
                act.input.extend([base] + list(fp.input[1:]))
                del act.output[:]
                act.output.append(base + "_restored")
                acts.append(act)
                for c in fp.input[1:]:  # Clip bounds
                    if c in f32_inits:
                        add.append(f32_inits[c])
                rename[out] = base + "_restored"
            else:
                rename[out] = base
        elif base in f32_inits:
            src = onnx.TensorProto()
            src.CopyFrom(f32_inits[base])
            src.name = out
            add.append(src)
    dead = {o for o in rename} | {t.name for t in add}
    keep = [n for n in m.graph.node if not (n.op_type == "DequantizeLinear" and n.output[0] in dead)]
    for n in keep:
        for i, x in enumerate(n.input):
            if x in rename:
                n.input[i] = rename[x]
    for o in m.graph.output:  # a dequantised graph output (quantised head): copy the float tensor to it
        if o.name in rename:
            keep.append(onnx.helper.make_node("Identity", [rename[o.name]], [o.name], name=o.name + "_bypass"))
    for a in acts:  # right after its input's producer keeps the graph topologically sorted
        pos = next(i for i, n in enumerate(keep) if a.input[0] in n.output)
        keep.insert(pos + 1, a)
    del m.graph.node[:]
    m.graph.node.extend(keep)
    m.graph.initializer.extend(add)
    # QuantizeLinear nodes left without consumers are harmless; drop them to keep sessions quiet
    used = {x for n in m.graph.node for x in n.input} | {o.name for o in m.graph.output}
    live = [n for n in m.graph.node if n.op_type != "QuantizeLinear" or n.output[0] in used]
    del m.graph.node[:]
    m.graph.node.extend(live)
    return m


def layer_sensitivity(fp32_model: Any, int8_model: Any, inputs: np.ndarray, *, batch_size: int = 64,
                      threads: int | None = None) -> SensitivityReport:
    """For every quantiser of a QDQ model, the model output's error with only that quantiser active.

    ``fp32_model`` supplies the float weights (same initializer names: the prepared graph the
    quantiser saw, see :func:`prepare_fp32`). Runs ``1 + number of quantisers`` float simulations
    (graph optimisation off) on ``inputs``. Rows sorted by ``centered_sqnr_db``, lowest first.
    """
    f32, i8 = load_model(fp32_model), load_model(int8_model)
    ref = np.concatenate([r[0] for r in _run_batched(_session(f32, opt_level="disable", threads=threads), inputs,
                                                      [f32.graph.output[0].name], batch_size)]).astype(np.float64)
    units = _qdq_units(i8)
    all_names = {u[3].name for u in units}
    producers = {o: n for n in f32.graph.node for o in n.output}
    consumers = _consumers(f32)

    def out_error(model: Any) -> tuple[float, float]:
        sess = _session(model, opt_level="disable", threads=threads)
        got = np.concatenate([r[0] for r in _run_batched(sess, inputs, [model.graph.output[0].name], batch_size)])
        return sqnr_db(ref, got), centered_sqnr_db(ref, got)

    full = out_error(i8)
    rows = []
    for kind, base, out, dq in units:
        if kind == "activation":
            node = producers.get(base)
        else:
            node = (consumers.get(base) or [None])[0]
        if node is None:
            continue
        if kind == "weight" and list(node.input).index(base) != 1:
            continue  # biases are int32 at the product of scales: negligible noise, not a lever
        db, cdb = out_error(_bypass(i8, f32, all_names - {dq.name}))
        rows.append(Sensitivity(node.name, node.op_type, kind, base, db, cdb))
    rows.sort(key=lambda r: r.centered_sqnr_db)
    return SensitivityReport(tuple(rows), full[0], full[1], len(inputs))


