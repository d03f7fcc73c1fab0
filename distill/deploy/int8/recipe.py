"""The int8 recipe: which layers stay fp32, which rescalings run, how the ranges are calibrated, bias correction.

:class:`Int8Recipe` + :func:`quantize_recipe`: onnxruntime ``quantize_static`` with the knobs
``benchmarks/int8_study.py`` measured; :func:`calibrate` streams the calibration data and caches the
ranges so variants share them. :data:`RECOMMENDED` is the study's choice, :data:`BASELINE`
onnxruntime's default.
"""
from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .graph import _attr, _consumers, _initializers, _run_batched, _session, _with_outputs, load_model
from .rescale import ActivationScaling, Equalization, equalize_activations, equalize_cross_layer

Calibration = Literal["minmax", "entropy", "percentile", "distribution"]
ActType = Literal["uint8", "int8"]
QFormat = Literal["QDQ", "QOperator"]


class ArrayReader:
    """onnxruntime ``CalibrationDataReader`` over preprocessed inputs ``(N, ...)`` float32, in batches.

    Supports ``set_range`` and ``len`` so calibration can walk the data in chunks
    (onnxruntime's ``CalibStridedMinMax`` protocol) instead of holding every activation at once.
    """

    def __init__(self, inputs: np.ndarray, input_name: str, batch_size: int = 32) -> None:
        self.inputs, self.input_name, self.batch_size = inputs, input_name, batch_size
        self.start, self.end, self.pos = 0, len(inputs), 0

    def __len__(self) -> int:
        return len(self.inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Read only rows ``start:stop`` of the inputs from now on (streamed calibration)."""
        self.start, self.end, self.pos = start_index, min(end_index, len(self.inputs)), start_index

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.pos >= self.end:
            return None
        stop = min(self.pos + self.batch_size, self.end)
        batch = np.ascontiguousarray(self.inputs[self.pos:stop], dtype=np.float32)
        self.pos = stop
        return {self.input_name: batch}

    def rewind(self) -> None:
        self.pos = self.start

    def __iter__(self):
        self.rewind()
        return iter(self.get_next, None)


@dataclass(frozen=True)
class Int8Recipe:
    """How to quantise a student (onnxruntime ``quantize_static`` arguments that the study varied).

    Attributes:
        calibrate: activation range estimator: ``minmax`` (ranges of the calibration data),
            ``entropy`` (KL-divergence threshold, TensorRT's method), ``percentile`` (``percentile`` of
            |x| or of x), ``distribution``.
        percentile: for ``percentile`` (onnxruntime's ``CalibPercentile``, default 99.999).
        calib_faces: how many calibration faces the recipe was measured with (a recommendation;
            :func:`quantize_recipe` uses what it is given and records it).
        fp32_head: keep the embedding head (global pooling and every node after it: Flatten,
            Gemm/MatMul, BatchNorm, L2 normalisation) in fp32; its input arrives dequantised.
        fp32_first / fp32_last: keep the first / last that many conv layers (each with its Relu) in
            fp32 (:func:`conv_layers`); the stem is the first, the last pointwise conv the last.
        fp32_nodes: further node names to keep in fp32 (e.g. from :func:`layer_sensitivity`).
        equalize: cross-layer equalisation of weight ranges (:func:`equalize_cross_layer`) before calibration.
        equalize_activations / activation_alpha: rescale Relu-output channels to use the whole
            activation range (:func:`equalize_activations`, chosen on the calibration inputs).
        bias_correction: add the mean int8 error of the fp32 head's output back to its bias
            (:func:`correct_output_bias`, on the calibration inputs; needs ``fp32_head``).
        activations: ``uint8`` (onnxruntime's U8S8, the fast path of x86 VNNI/AMX kernels) or ``int8``.
        activation_symmetric / weight_symmetric: onnxruntime's ``ActivationSymmetric`` / ``WeightSymmetric``.
        per_channel: one weight scale per output channel (essential for depthwise convs).
        reduce_range: 7-bit weights. Without VNNI (AVX2, AVX-512F/BW) onnxruntime's u8 x s8 kernels sum
            pairs of products in saturating int16 and full-range weights clip; 7 bits never do, so the
            file computes the same integers on every x86 ISA (:mod:`.emulate`, docs/int8.md section 0).
        quant_format: ``QDQ`` (QuantizeLinear/DequantizeLinear around float ops, fused by onnxruntime)
            or ``QOperator`` (QLinearConv etc. written out).
        moving_average: ``CalibMovingAverage`` for ``minmax`` (mean of per-batch min/max).
    """

    calibrate: Calibration = "minmax"
    percentile: float = 99.999
    calib_faces: int = 256
    fp32_head: bool = False
    fp32_first: int = 0
    fp32_last: int = 0
    fp32_nodes: tuple[str, ...] = ()
    equalize: bool = False
    equalize_activations: bool = False
    activation_alpha: float = 1.0
    bias_correction: bool = False
    activations: ActType = "int8"
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    per_channel: bool = True
    reduce_range: bool = False
    quant_format: QFormat = "QDQ"
    moving_average: bool = False

    def label(self) -> str:
        """A short description for tables, e.g. ``minmax/1024, head fp32, CLE, u8``."""
        cal = self.calibrate + (f"{self.percentile:g}" if self.calibrate == "percentile" else "") \
            + ("+ma" if self.moving_average else "")
        parts = [f"{cal}/{self.calib_faces}"]
        fp32 = (["first %d" % self.fp32_first] if self.fp32_first else []) \
            + (["last %d" % self.fp32_last] if self.fp32_last else []) + (["head"] if self.fp32_head else [])
        if fp32:
            parts.append("fp32: " + " + ".join(fp32))
        if self.fp32_nodes:
            parts.append(f"+{len(self.fp32_nodes)} fp32 nodes")
        if self.equalize:
            parts.append("CLE")
        if self.equalize_activations:
            parts.append("act-eq" + (f" a={self.activation_alpha:g}" if self.activation_alpha != 1 else ""))
        if self.bias_correction:
            parts.append("bias-corr")
        parts.append("u8" if self.activations == "uint8" else "s8")
        if self.activation_symmetric:
            parts.append("act sym")
        if not self.weight_symmetric:
            parts.append("w asym")
        if not self.per_channel:
            parts.append("per-tensor")
        if self.reduce_range:
            parts.append("reduce_range")
        if self.quant_format != "QDQ":
            parts.append(self.quant_format)
        return ", ".join(parts)


#: the onnxruntime default the export used before this study (RESULTS.md: 92.80% -> 80.10%)
BASELINE = Int8Recipe()
#: the recipe the study chose (benchmarks/int8_study.py): min/max ranges of 1,024 training faces;
#: in fp32 the stem and first depthwise conv (onnxruntime's int8 kernels are 3x slower than fp32 on
#: 3- and 16-channel inputs), the last depthwise-separable block and the embedding head (the
#: head amplifies their int8 noise ~45 dB); activation ranges equalised; the head's bias corrected;
#: uint8 activations (onnxruntime's x86 int8 kernels are u8 x s8); 7-bit weights (``reduce_range``), the
#: portable choice: a user's CPU without VNNI computes what the accuracy check measured (docs/int8.md)
RECOMMENDED = Int8Recipe(calibrate="minmax", calib_faces=1024, fp32_head=True, fp32_first=2, fp32_last=2,
                         equalize_activations=True, bias_correction=True, activations="uint8", reduce_range=True)


def head_nodes(model: Any) -> list[str]:
    """Names of the embedding-head nodes: the first global pooling (``GlobalAveragePool``/``ReduceMean``
    over H, W) and every node downstream of it. Empty when the graph has no global pooling."""
    m = load_model(model)
    start = next((n for n in m.graph.node if n.op_type in ("GlobalAveragePool", "GlobalMaxPool")
                  or n.op_type == "ReduceMean" and list(_attr(n, "axes", [])) in ([2, 3], [-2, -1])), None)
    if start is None:
        return []
    cons = _consumers(m)
    seen: dict[str, None] = {}
    todo = [start]
    while todo:
        n = todo.pop()
        if n.name in seen:
            continue
        seen[n.name] = None
        for o in n.output:
            todo.extend(cons.get(o, []))
    order = [n.name for n in m.graph.node]
    return sorted(seen, key=order.index)


def conv_layers(model: Any) -> list[list[str]]:
    """The graph's Conv nodes in order, each with the activation nodes that directly follow it
    (Relu, Clip: the nodes onnxruntime fuses into the quantised conv): ``[[conv, relu], ...]``."""
    m = load_model(model)
    cons = _consumers(m)
    layers = []
    for n in m.graph.node:
        if n.op_type != "Conv":
            continue
        layer = [n.name]
        nxt = cons.get(n.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type in ("Relu", "Clip"):
            layer.append(nxt[0].name)
        layers.append(layer)
    return layers


def fp32_node_names(model: Any, recipe: "Int8Recipe") -> list[str]:
    """The nodes ``recipe`` keeps in fp32 in ``model`` (a prepared graph): the head, the first
    ``fp32_first`` and last ``fp32_last`` conv layers (with their activations), and ``fp32_nodes``.
    Raises ``ValueError`` when ``fp32_nodes`` names a node the graph does not have."""
    m = load_model(model)
    names = {n.name for n in m.graph.node}
    unknown = set(recipe.fp32_nodes) - names
    if unknown:
        raise ValueError(f"fp32_nodes not in the graph: {', '.join(sorted(unknown))}")
    layers = conv_layers(m)
    if recipe.fp32_first + recipe.fp32_last > len(layers):
        raise ValueError(f"fp32_first + fp32_last = {recipe.fp32_first + recipe.fp32_last} but the graph has "
                         f"{len(layers)} conv layers")
    chosen = [x for layer in layers[:recipe.fp32_first] for x in layer]
    chosen += [x for layer in layers[len(layers) - recipe.fp32_last:] for x in layer] if recipe.fp32_last else []
    chosen += head_nodes(m) if recipe.fp32_head else []
    chosen += list(recipe.fp32_nodes)
    order = [n.name for n in m.graph.node]
    return sorted(dict.fromkeys(chosen), key=order.index)


def _unshare_initializers(model: Any) -> Any:
    """Give every Conv/Gemm/MatMul its own copy of a weight or bias initializer that several nodes share.

    The TorchScript exporter merges identical constants (e.g. equal folded BatchNorm biases of several
    convs). Shared tensors would make a per-layer rescaling leak into other layers, and make
    onnxruntime's quantiser feed an fp32 conv with the DequantizeLinear of a quantised neighbour's
    bias, which keeps it out of the fast NCHWc kernels (measured: a 3x3 depthwise conv 30x slower).
    """
    import onnx

    inits = _initializers(model)
    seen: set[str] = set()
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        for i in range(1, len(n.input)):
            name = n.input[i]
            if name not in inits:
                continue
            if name in seen:  # a later user: point it at a private copy
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = f"{name}__{n.name}"
                model.graph.initializer.append(copy)
                n.input[i] = copy.name
            else:
                seen.add(name)
    return model


def _name_nodes(model: Any) -> Any:
    """Give unnamed nodes a unique name (onnxruntime's quantiser and nodes_to_exclude need names)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in used:
                name += "_"
            n.name = name
            used.add(name)
    return model


@dataclass(frozen=True)
class PreparedModel:
    """The float graph the quantiser sees (:func:`prepare_fp32`) and the function-preserving rescalings applied."""

    model: Any  # onnx.ModelProto
    equalization: Equalization | None = None
    activation_scaling: tuple[ActivationScaling, ...] = ()


def prepare_fp32(model: Any, recipe: "Int8Recipe | None" = None, inputs: np.ndarray | None = None) -> PreparedModel:
    """The float graph to quantise: onnxruntime's ``quant_pre_process`` (shape inference and basic graph
    optimisation, e.g. MatMul + BatchNorm -> Gemm), named nodes, no weight or bias shared between nodes
    (:func:`_unshare_initializers`), then what ``recipe`` asks: :func:`equalize_cross_layer` (``equalize``)
    and :func:`equalize_activations` on ``inputs`` (``equalize_activations``; raises ``ValueError``
    without inputs). The result computes the same function as ``model`` (to float rounding).
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="facedistill-int8-") as tmp:
        src, dst = Path(tmp) / "in.onnx", Path(tmp) / "pre.onnx"
        onnx.save(load_model(model), str(src))
        quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)
        pre = _unshare_initializers(_name_nodes(onnx.load(str(dst))))
    eq, scaling = None, ()
    if recipe is not None and recipe.equalize:
        pre, eq = equalize_cross_layer(pre)
    if recipe is not None and recipe.equalize_activations:
        if inputs is None or len(inputs) == 0:
            raise ValueError("activation equalisation needs calibration inputs")
        pre, scaling = equalize_activations(pre, inputs, alpha=recipe.activation_alpha)
    return PreparedModel(pre, eq, scaling)


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile, "distribution": CalibrationMethod.Distribution}
    if name not in methods:
        raise ValueError(f"unknown calibration method {name!r}; use one of {', '.join(methods)}")
    return methods[name]


def calibrate(model: Any, inputs: np.ndarray, recipe: Int8Recipe, cache: str | Path, *,
              chunk: int = 256, batch_size: int = 32) -> Path:
    """Activation ranges of ``model`` (a prepared float graph, see :func:`prepare_fp32`) on ``inputs``,
    written to ``cache`` in onnxruntime's calibration-cache JSON (``quantize_static(calibration_cache_path=)``).

    onnxruntime's histogram calibrators keep every intermediate output of the data they are given
    (hundreds of MB per 256 faces here); this feeds ``chunk`` inputs at a time and lets them merge
    histograms (min/max: running extremes; ``moving_average``: onnxruntime's per-batch average).
    Returns ``cache``. Raises ``ValueError`` for an unknown method or no inputs.
    """
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data
    from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

    if len(inputs) == 0:
        raise ValueError("calibration needs at least one input")
    method = _calibration_method(recipe.calibrate)
    extra: dict[str, Any] = {}
    if recipe.calibrate == "percentile":
        extra["percentile"] = recipe.percentile
    if recipe.moving_average:
        extra["moving_average"] = True
    ops = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))
    m = load_model(model)
    with tempfile.TemporaryDirectory(prefix="facedistill-calib-") as tmp:
        import onnx

        path = Path(tmp) / "model.onnx"
        onnx.save(m, str(path))
        cal = create_calibrator(path, ops, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=method, extra_options=extra)
        # histogram calibrators stack a chunk's batches into one array: they must have equal sizes
        reader = ArrayReader(inputs, m.graph.input[0].name, batch_size if recipe.calibrate == "minmax" else chunk)
        for start in range(0, len(inputs), chunk):
            reader.set_range(start, start + chunk)
            cal.collect_data(reader)
        ranges = cal.compute_data()
        del cal
    save_tensors_data(ranges, Path(cache))
    return Path(cache)


@dataclass(frozen=True)
class QuantizedModel:
    """:func:`quantize_recipe`'s result."""

    path: Path
    bytes: int
    recipe: Int8Recipe
    calib_faces: int
    fp32_nodes: tuple[str, ...]
    equalization: Equalization | None = None
    activation_scaling: tuple[ActivationScaling, ...] = ()
    bias_correction: "BiasCorrection | None" = None

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (for the exported file's metadata)."""
        return {"recipe": asdict(self.recipe), "label": self.recipe.label(), "faces": self.calib_faces,
                "fp32_nodes": list(self.fp32_nodes),
                "equalized_pairs": len(self.equalization.pairs) if self.equalization else 0,
                "activation_scaled_pairs": len(self.activation_scaling),
                "bias_correction": asdict(self.bias_correction) if self.bias_correction else None}


def quantize_prepared(prepared: Any, out: str | Path, recipe: Int8Recipe, calibration_cache: str | Path,
                      *, calib_faces: int) -> QuantizedModel:
    """``quantize_static`` of a prepared float graph with ranges from :func:`calibrate` (no data pass).

    ``prepared``: a :class:`PreparedModel` (or a ModelProto / path already prepared). Lets one
    calibration serve every recipe that differs only in quantiser options (format, symmetry,
    activation type, fp32 nodes). Writes ``out`` (no metadata) and returns a :class:`QuantizedModel`.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    info = prepared if isinstance(prepared, PreparedModel) else PreparedModel(load_model(prepared))
    m = info.model
    excluded = fp32_node_names(m, recipe)
    extra = {"ActivationSymmetric": recipe.activation_symmetric, "WeightSymmetric": recipe.weight_symmetric}
    with tempfile.TemporaryDirectory(prefix="facedistill-int8-") as tmp:
        src, dst = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(m, str(src))
        quantize_static(str(src), str(dst), None,
                        quant_format=QuantFormat.QDQ if recipe.quant_format == "QDQ" else QuantFormat.QOperator,
                        per_channel=recipe.per_channel, reduce_range=recipe.reduce_range,
                        activation_type=QuantType.QUInt8 if recipe.activations == "uint8" else QuantType.QInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=excluded,
                        calibrate_method=_calibration_method(recipe.calibrate), extra_options=extra,
                        calibration_cache_path=str(calibration_cache))
        data = dst.read_bytes()
    Path(out).write_bytes(data)
    return QuantizedModel(Path(out), len(data), recipe, calib_faces, tuple(excluded), info.equalization,
                          info.activation_scaling)


def quantize_recipe(fp32_model: Any, out: str | Path, inputs: np.ndarray, recipe: Int8Recipe, *,
                    calibration_cache: str | Path | None = None) -> QuantizedModel:
    """Quantise ``fp32_model`` to ``out`` with ``recipe``, calibrated on preprocessed ``inputs`` ``(N, 3, S, S)``.

    ``inputs`` must come from training faces, never from the people a model is evaluated on.
    ``calibration_cache``: where to keep the ranges (reused by :func:`quantize_prepared`); a
    temporary file by default. Returns a :class:`QuantizedModel` (``out`` holds no facedistill
    metadata; :func:`distill.deploy.quantize.quantize_int8` adds it).
    """
    prepared = prepare_fp32(fp32_model, recipe, inputs)
    with tempfile.TemporaryDirectory(prefix="facedistill-calib-") as tmp:
        cache = Path(calibration_cache) if calibration_cache is not None else Path(tmp) / "ranges.json"
        calibrate(prepared.model, inputs, recipe, cache)
        q = quantize_prepared(prepared, out, recipe, cache, calib_faces=len(inputs))
    if not recipe.bias_correction:
        return q
    if not recipe.fp32_head:
        raise ValueError("bias_correction corrects the fp32 head's bias: set fp32_head too")
    fixed, corr = correct_output_bias(prepared.model, q.path, inputs)
    data = fixed.SerializeToString()
    Path(out).write_bytes(data)
    return replace(q, bytes=len(data), bias_correction=corr)


@dataclass(frozen=True)
class BiasCorrection:
    """:func:`correct_output_bias`'s record: the shift removed from the head's output, and the share of the
    int8 error (mean squared, on the calibration inputs) that the shift was."""

    node: str
    shift_norm: float
    common_error_share: float


def correct_output_bias(fp32_model: Any, int8_model: Any, inputs: np.ndarray, *,
                        batch_size: int = 64) -> tuple[Any, BiasCorrection]:
    """Empirical bias correction of the fp32 embedding head of an int8 model (Nagel et al. 2019, sec. 4.2,
    measured instead of derived): ``c = E[y_fp32 - y_int8]`` over ``inputs`` at the output of the last
    Gemm (before any L2 normalisation), added to that Gemm's bias in the int8 model.

    Quantisation errors of all layers add a shift common to every face (rounding is biased where
    activations are all positive); it cancels in distances between two int8 embeddings but not
    between an int8 probe and an fp32 gallery, and it lowers the cosine to fp32. The Gemm must be
    float (``Int8Recipe.fp32_head``). Returns ``(new int8 ModelProto, BiasCorrection)``; raises
    ``ValueError`` when the int8 graph has no float Gemm with constant weights.
    """
    import onnx
    from onnx import numpy_helper

    f32, i8 = load_model(fp32_model), onnx.ModelProto()
    i8.CopyFrom(load_model(int8_model))
    inits = _initializers(i8)
    gemm = next((n for n in reversed(list(i8.graph.node)) if n.op_type == "Gemm"), None)
    if gemm is None or gemm.input[1] not in inits:
        raise ValueError("no float Gemm with constant weights in the int8 graph: keep the head in fp32 (fp32_head)")
    out = gemm.output[0]
    f_name = out if out in {o for n in f32.graph.node for o in n.output} else None
    if f_name is None:
        raise ValueError(f"the fp32 graph has no tensor {out}; give the prepared graph the int8 model came from")
    sf = _session(_with_outputs(f32, [out]), opt_level="disable")
    si = _session(_with_outputs(i8, [out]), opt_level="disable")
    diffs, sq = [], 0.0
    for a, b in zip(_run_batched(sf, inputs, [out], batch_size), _run_batched(si, inputs, [out], batch_size)):
        d = a[0].astype(np.float64) - b[0]
        diffs.append(d.sum(0))
        sq += float((d ** 2).sum())
    shift = np.sum(diffs, axis=0) / len(inputs)
    share = float((shift ** 2).sum() * len(inputs) / sq) if sq > 0 else 0.0
    if len(gemm.input) > 2 and gemm.input[2] in inits:
        bias = numpy_helper.to_array(inits[gemm.input[2]]).astype(np.float64)
        c = bias * float(_attr(gemm, "beta", 1.0)) + shift
        inits[gemm.input[2]].CopyFrom(numpy_helper.from_array(
            (c / float(_attr(gemm, "beta", 1.0))).astype(np.float32), gemm.input[2]))
    else:
        name = gemm.name + "_bias_correction"
        i8.graph.initializer.append(numpy_helper.from_array(shift.astype(np.float32), name))
        if len(gemm.input) > 2:
            raise ValueError(f"Gemm {gemm.name} has a non-constant bias; cannot correct it")
        gemm.input.append(name)
    return i8, BiasCorrection(gemm.name, float(np.linalg.norm(shift)), share)


