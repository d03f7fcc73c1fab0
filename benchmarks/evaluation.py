"""Evaluation cost: 10-fold verification on 6,000 pairs, and 1:N search with FAISS vs plain numpy.

Run::

    .venv/bin/python -m benchmarks.evaluation --quick                      # seconds: 10k gallery, dim 128
    .venv/bin/python -m benchmarks.evaluation --sizes 10000 100000 --dims 128 512
    .venv/bin/python -m benchmarks.evaluation --sizes 1000000 --dims 128   # minutes and ~1-2 GB; run once

Search: the gallery is ``N`` random unit vectors; each query is a gallery vector plus noise
(cosine ~0.7 to it, like a second photo of an enrolled person), or a fresh random vector with
``--queries random`` (the worst case for approximate indexes). Recall@1 is measured against
exact search. For IVF (nlist = 4 sqrt(N)) and HNSW (M=32) the probe/efSearch settings are swept
upwards until recall@1 >= ``--target`` (0.99) and the first such setting is reported.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import faiss
import numpy as np

from distill.evaluation.search import build_index, default_nlist, search
from distill.evaluation.verify import PairIndex, evaluate_pairs
from distill.io import atomic_write_json


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[Any, float]:
    """Result of ``fn`` and its median wall time over ``repeats`` runs."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, float(np.median(times))


def random_gallery(n: int, dim: int, seed: int = 0, chunk: int = 100_000) -> np.ndarray:
    """``n`` random unit vectors, generated in chunks (1M x 512 float32 is 2 GB)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        out[i:i + m] = _unit(rng.standard_normal((m, dim), dtype=np.float32))
    return out


def make_queries(gallery: np.ndarray, n: int, kind: str, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = gallery.shape[1]
    if kind == "random":
        return _unit(rng.standard_normal((n, dim), dtype=np.float32))
    # noise of the same norm as the signal: cosine to the enrolled vector ~ 1/sqrt(2) ~ 0.71
    base = gallery[rng.integers(0, len(gallery), n)]
    return _unit(base + _unit(rng.standard_normal((n, dim), dtype=np.float32)))


def numpy_top1(gallery: np.ndarray, queries: np.ndarray, chunk: int = 256) -> np.ndarray:
    """Exact top-1 by inner product with plain numpy matrix products (queries chunked for memory)."""
    out = np.empty(len(queries), np.int64)
    for i in range(0, len(queries), chunk):
        out[i:i + chunk] = np.argmax(queries[i:i + chunk] @ gallery.T, axis=1)
    return out


def bench_verification(n_pairs: int = 6000, dim: int = 128, folds: int = 10, seed: int = 0) -> dict:
    """Time of the full 10-fold protocol on ``n_pairs`` pairs (scores + k-fold + ROC + TAR@FAR + EER)."""
    rng = np.random.default_rng(seed)
    ids = 1000
    centres = _unit(rng.standard_normal((ids, dim)))
    labels = rng.integers(0, ids, 4 * n_pairs)
    emb = _unit(centres[labels] + 1.3 * _unit(rng.standard_normal((len(labels), dim))))
    half = n_pairs // 2
    by_id = {i: np.nonzero(labels == i)[0] for i in range(ids)}
    multi = [i for i, v in by_id.items() if len(v) >= 2]
    same_a, same_b = [], []
    for i in rng.choice(multi, half):
        a, b = rng.choice(by_id[i], 2, replace=False)
        same_a.append(a), same_b.append(b)
    diff_a, diff_b = rng.integers(0, len(labels), half), rng.integers(0, len(labels), half)
    keep = labels[diff_a] != labels[diff_b]
    diff_a, diff_b = diff_a[keep], diff_b[keep]
    idx_a, idx_b = np.r_[same_a, diff_a], np.r_[same_b, diff_b]
    same = np.r_[np.ones(len(same_a), bool), np.zeros(len(diff_a), bool)]
    pairs = PairIndex(idx_a, idx_b, same, np.arange(len(same)) % folds)
    res, t = _timed(lambda: evaluate_pairs(emb, pairs, normalized=True))
    _, t_np = _timed(lambda: np.einsum("ij,ij->i", emb[idx_a], emb[idx_b]))
    return {"n_pairs": len(pairs), "dim": dim, "folds": folds, "seconds_total": t,
            "seconds_numpy_pair_scores": t_np, "accuracy_mean": res.accuracy_mean, "auc": res.auc}


def _sweep(build: Callable[[], faiss.Index], set_param: Callable[[faiss.Index, int], None], values: list[int],
           queries: np.ndarray, exact: np.ndarray, target: float, name: str) -> dict:
    index, t_build = _timed(build, repeats=1)
    points, chosen = [], None
    for v in values:
        set_param(index, v)
        (_, ids), t = _timed(lambda: search(index, queries, 1), repeats=2)
        recall = float(np.mean(ids[:, 0] == exact))
        points.append({name: v, "recall_at_1": recall, "queries_per_s": len(queries) / t})
        if recall >= target:
            chosen = points[-1]
            break
    return {"build_s": t_build, "sweep": points, "chosen": chosen}


def bench_search(n: int, dim: int, n_queries: int = 1000, queries_kind: str = "near", target: float = 0.99,
                 seed: int = 0) -> dict:
    """Queries/s and recall@1 of numpy, FAISS flat, IVF and HNSW on one gallery size and dim."""
    t0 = time.perf_counter()
    gallery = random_gallery(n, dim, seed)
    queries = make_queries(gallery, n_queries, queries_kind, seed + 1)
    out: dict = {"n": n, "dim": dim, "queries": n_queries, "queries_kind": queries_kind,
                 "gallery_gen_s": time.perf_counter() - t0}
    exact, t_np = _timed(lambda: numpy_top1(gallery, queries), repeats=1 if n >= 1_000_000 else 2)
    out["numpy"] = {"queries_per_s": n_queries / t_np, "recall_at_1": 1.0}
    flat, t_b = _timed(lambda: build_index(gallery, "ip", "flat"), repeats=1)
    (_, ids), t = _timed(lambda: search(flat, queries, 1), repeats=1 if n >= 1_000_000 else 2)
    out["flat"] = {"build_s": t_b, "queries_per_s": n_queries / t, "recall_at_1": float(np.mean(ids[:, 0] == exact))}
    del flat
    nlist = default_nlist(n)
    probes = [p for p in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024) if p <= nlist] + [nlist]
    out["ivf"] = {"nlist": nlist, **_sweep(lambda: build_index(gallery, "ip", "ivf", nlist=nlist, nprobe=1),
                                           lambda ix, v: setattr(ix, "nprobe", v), sorted(set(probes)),
                                           queries, exact, target, "nprobe")}
    ef_c = 200 if n < 1_000_000 else 80      # 1M on 2 cores: keep the build within minutes
    out["hnsw"] = {"M": 32, "efConstruction": ef_c,
                   **_sweep(lambda: build_index(gallery, "ip", "hnsw", hnsw_m=32, ef_construction=ef_c),
                            lambda ix, v: setattr(ix.hnsw, "efSearch", v), [16, 32, 64, 128, 256, 512, 1024],
                            queries, exact, target, "efSearch")}
    return out


def to_markdown(doc: dict) -> str:
    v = doc.get("verification")
    lines = []
    if v:
        lines += [f"10-fold verification on {v['n_pairs']} pairs (dim {v['dim']}): {1e3 * v['seconds_total']:.0f} ms "
                  f"in total (numpy pair scores alone: {1e3 * v['seconds_numpy_pair_scores']:.1f} ms).", ""]
    lines += ["| gallery | dim | numpy q/s | flat q/s | IVF setting | IVF q/s | IVF recall | HNSW setting | "
              "HNSW q/s | HNSW recall | IVF / HNSW build s |", "|" + "---|" * 11]
    for r in doc.get("search", []):
        ivf, hnsw = r["ivf"]["chosen"] or r["ivf"]["sweep"][-1], r["hnsw"]["chosen"] or r["hnsw"]["sweep"][-1]
        lines.append(f"| {r['n']:,} | {r['dim']} | {r['numpy']['queries_per_s']:.0f} | {r['flat']['queries_per_s']:.0f} "
                     f"| nlist {r['ivf']['nlist']}, nprobe {ivf['nprobe']} | {ivf['queries_per_s']:.0f} | "
                     f"{ivf['recall_at_1']:.3f} | M 32, efSearch {hnsw['efSearch']} | {hnsw['queries_per_s']:.0f} | "
                     f"{hnsw['recall_at_1']:.3f} | {r['ivf']['build_s']:.1f} / {r['hnsw']['build_s']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: 10k gallery, dim 128, 200 queries")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--queries-kind", choices=["near", "random"], default="near")
    ap.add_argument("--target", type=float, default=0.99, help="recall@1 the IVF/HNSW sweeps stop at")
    ap.add_argument("--threads", type=int, default=None, help="FAISS OpenMP threads (default: all cores)")
    ap.add_argument("--skip-verification", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("runs/benchmarks/evaluation.json"))
    args = ap.parse_args(argv)
    if args.quick:
        args.sizes, args.dims, args.queries = [10_000], [128], 200
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    doc: dict = {"machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                 "faiss_threads": faiss.omp_get_max_threads(), "faiss": faiss.__version__,
                 "numpy": np.__version__, "args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_verification:
        doc["verification"] = bench_verification(6000 if not args.quick else 2000)
        print(json.dumps(doc["verification"]), flush=True)
    doc["search"] = []
    for n in args.sizes:
        for d in args.dims:
            r = bench_search(n, d, args.queries, args.queries_kind, args.target)
            doc["search"].append(r)
            print(json.dumps({k: r[k] for k in ("n", "dim", "numpy", "flat")}), flush=True)
            atomic_write_json(args.out, doc)       # keep partial results of long runs
    print(to_markdown(doc))
    atomic_write_json(args.out, doc)
    return doc


if __name__ == "__main__":
    main()
