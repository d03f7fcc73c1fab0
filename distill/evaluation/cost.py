"""What a model costs: parameters, mult-adds, file size and measured CPU throughput.

Example::

    cost = measure_cost(student, input_size=112, fast=True)   # CostResult
    cost.images_per_s                                         # fp32, batch 32
    cost.images_per_s_at("bf16", 32)
"""
from __future__ import annotations

import contextlib
import io
import statistics
import time

import torch
import torch.nn as nn

from distill.profile import profile

from .results import CostResult


def state_dict_bytes(module: nn.Module) -> int:
    """Size of the serialised state dict (what a checkpoint of the weights occupies)."""
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getbuffer().nbytes


@torch.inference_mode()
def measure_throughput(module: nn.Module, input_size: int, batch_size: int, *, fast: bool = False,
                       warmup: int = 2, repeats: int = 5, min_seconds: float = 0.0) -> dict:
    """Median wall time of a forward pass on a random ``(B, 3, S, S)`` batch after warm-up.

    ``fast``: bf16 autocast + channels_last (the fast CPU inference path). Repeats run at least
    ``repeats`` times and until ``min_seconds`` have passed. Returns ms per batch and images/s.
    """
    was_training = module.training
    module.eval()
    x = torch.randn(batch_size, 3, input_size, input_size)
    ctx = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if fast else contextlib.nullcontext
    if fast:
        x = x.contiguous(memory_format=torch.channels_last)
        module = module.to(memory_format=torch.channels_last)
    try:
        for _ in range(warmup):
            with ctx():
                module(x)
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < repeats or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            with ctx():
                module(x)
            times.append(time.perf_counter() - t0)
    finally:
        if fast:
            module.to(memory_format=torch.contiguous_format)
        module.train(was_training)
    med = statistics.median(times)
    return {"batch_size": batch_size, "ms_per_batch": med * 1e3, "images_per_s": batch_size / med,
            "repeats": len(times)}


def measure_cost(module: nn.Module, input_size: int, *, batch_sizes: tuple[int, ...] = (1, 32),
                 fast: bool = True, latency: bool = True, warmup: int = 2, repeats: int = 5) -> CostResult:
    """Params, mult-adds (:func:`distill.profile.profile`), weight file size (bytes) and CPU throughput.

    ``latency["fp32"][str(B)]`` always; ``latency["bf16"]`` too when ``fast`` and the module has torch weights
    (a model run outside torch, an ONNX teacher, runs its own precision: bf16 autocast would not touch it).
    ``images_per_s`` is fp32 at batch 32 (or the largest batch measured); ``None`` when ``latency=False``.
    The weight size is the module's own ``file_bytes`` when it declares one (a model file), else its state dict's.
    """
    c = profile(module, input_size)
    fast = fast and next(module.parameters(), None) is not None
    size = getattr(module, "file_bytes", None)
    out = CostResult(c.params, c.mult_adds, input_size, file_bytes=int(size) if size else state_dict_bytes(module),
                     threads=torch.get_num_threads())
    if latency:
        for name, use_fast in (("fp32", False), ("bf16", True)) if fast else (("fp32", False),):
            out.latency[name] = {str(b): measure_throughput(module, input_size, b, fast=use_fast,
                                                            warmup=warmup, repeats=repeats)
                                 for b in batch_sizes}
        ref = 32 if 32 in batch_sizes else max(batch_sizes)
        out.images_per_s = out.images_per_s_at("fp32", ref)
        if fast:
            out.images_per_s_bf16 = out.images_per_s_at("bf16", ref)
    return out
