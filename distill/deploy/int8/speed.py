"""int8 speed on this CPU: interleaved throughput (fair on a shared machine) and the per-operator profile."""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .graph import _session, load_model


@dataclass(frozen=True)
class Throughput:
    """onnxruntime wall time of one batch (CPU provider): median and best of the timed runs."""

    batch: int
    ms_per_batch: float
    best_ms_per_batch: float
    repeats: int
    threads: int
    opt_level: str

    @property
    def images_per_s(self) -> float:
        """From the median time."""
        return self.batch / self.ms_per_batch * 1e3

    @property
    def best_images_per_s(self) -> float:
        """From the fastest run: the least disturbed by other work on a shared machine."""
        return self.batch / self.best_ms_per_batch * 1e3


def compare_throughput(models: dict[str, Any], batch: int, *, threads: int = 2, rounds: int = 30,
                       runs_per_round: int = 1, warmup: int = 3, opt_level: str = "all",
                       input_size: int | None = None, seed: int = 0) -> dict[str, Throughput]:
    """Images/s of several models at ``batch``, timed *interleaved* (one run of each model per round) so
    that load from other processes hits every model alike; median and best over ``rounds``. With more than
    one model the sessions do not spin between runs (see :func:`~distill.deploy.int8.graph._session`).

    Input: random ``(batch, 3, S, S)`` float32, S from each model's graph (``input_size`` when the graph
    leaves it open), so models of different resolutions (a teacher and its student) compare fairly.
    ``threads``: ``intra_op_num_threads``; ``opt_level``: ``SessionOptions.graph_optimization_level``
    (``all`` enables the QDQ -> QLinearConv fusions and the NCHWc / NHWC layout transformers).
    """
    sessions = {k: _session(load_model(m) if not isinstance(m, (str, Path)) else m, opt_level=opt_level,
                            threads=threads, spinning=len(models) == 1) for k, m in models.items()}
    rng = np.random.default_rng(seed)
    feeds = {}
    for k, sess in sessions.items():
        side = sess.get_inputs()[0].shape[-1]
        size = side if isinstance(side, int) else input_size
        if size is None:
            raise ValueError(f"{k}: the graph leaves the input size open; pass input_size")
        feeds[k] = {sess.get_inputs()[0].name: rng.standard_normal((batch, 3, size, size)).astype(np.float32)}
    for _ in range(warmup):
        for k, sess in sessions.items():
            sess.run(None, feeds[k])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, sess in sessions.items():
            t0 = time.perf_counter()
            for _ in range(runs_per_round):
                sess.run(None, feeds[k])
            times[k].append((time.perf_counter() - t0) / runs_per_round)
    return {k: Throughput(batch, float(np.median(v)) * 1e3, float(np.min(v)) * 1e3, rounds, threads, opt_level)
            for k, v in times.items()}


def throughput(model: Any, batch: int, **kwargs: Any) -> Throughput:
    """:func:`compare_throughput` of one model."""
    return compare_throughput({"model": model}, batch, **kwargs)["model"]


@dataclass(frozen=True)
class OpTime:
    """Time onnxruntime spends per batch in one operator type of the optimised graph (sum of its nodes)."""

    op: str
    ms_per_batch: float
    share: float
    nodes: int


@dataclass(frozen=True)
class OpProfile:
    """:func:`profile_ops`'s result: per-operator time, largest first, and the nodes that ran."""

    ops: tuple[OpTime, ...]
    batch: int
    runs: int
    total_ms_per_batch: float
    nodes: tuple[tuple[str, str, float], ...] = field(default=())  # (node, op as executed, median ms/batch)

    def table(self) -> str:
        """The per-operator times as a text table, slowest first."""
        lines = [f"{'op':28s} {'ms/batch':>9s} {'share':>6s} {'nodes':>6s}"]
        for o in self.ops:
            lines.append(f"{o.op:28s} {o.ms_per_batch:9.2f} {100 * o.share:5.1f}% {o.nodes:6d}")
        lines.append(f"{'total (node time)':28s} {self.total_ms_per_batch:9.2f}  batch {self.batch}, {self.runs} runs")
        return "\n".join(lines)


def profile_ops(model: Any, batch: int, *, runs: int = 10, threads: int = 2, opt_level: str = "all",
                input_size: int | None = None) -> OpProfile:
    """Per-node and per-operator time of ``model`` from onnxruntime's profiler (``SessionOptions.enable_profiling``).

    One warm-up run, then ``runs`` profiled runs on random input ``(batch, 3, S, S)``; each node's
    time is the median of its ``Node`` events' ``dur`` (microseconds) over the runs, so a run slowed
    by other work on a shared machine does not count; operator rows sum their nodes. The op names are
    those of the optimised graph, so they show which kernels onnxruntime picked (``QLinearConv``,
    ``com.microsoft.nchwc`` ``Conv``, ``Transpose`` / ``ReorderInput`` at layout boundaries, ...).
    """
    m = load_model(model)
    with tempfile.TemporaryDirectory(prefix="facedistill-prof-") as tmp:
        sess = _session(m, opt_level=opt_level, threads=threads)
        inp = sess.get_inputs()[0]
        size = input_size or int(inp.shape[-1])
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        sess.run(None, {inp.name: x})  # warm-up outside the profile
        sess = _session(m, opt_level=opt_level, threads=threads, profile_prefix=str(Path(tmp) / "ort"))
        sess.run(None, {inp.name: x})
        for _ in range(runs):
            sess.run(None, {inp.name: x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    per_node: dict[str, list[Any]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_node.setdefault(e["name"][: -len("_kernel_time")], [op, []])[1].append(e["dur"] / 1e3)
    nodes = tuple((k, v[0], float(np.median(v[1]))) for k, v in per_node.items())
    by_op: dict[str, list[float]] = {}
    for _, op, ms in nodes:
        by_op.setdefault(op, []).append(ms)
    total = sum(ms for _, _, ms in nodes)
    ops = sorted((OpTime(op, sum(v), sum(v) / total if total else 0.0, len(v)) for op, v in by_op.items()),
                 key=lambda o: -o.ms_per_batch)
    return OpProfile(tuple(ops), batch, runs, total, nodes)
