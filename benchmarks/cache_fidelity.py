"""What a float16 teacher cache (``train.cache_dtype: float16``) loses against float32: every target of
real float32 caches stored as float16 and read back, compared per target (cosine, relative L2 error).

Usage::

    .venv/bin/python -m benchmarks.cache_fidelity                      # every complete cache under the default dir
    .venv/bin/python -m benchmarks.cache_fidelity .cache/facedistill/teacher/sface-1234abcd

Prints one line per cache: teacher, N x K x D, the cosine of float16 to float32 targets (mean, min) and the
relative L2 error (mean, max). Reads the caches; writes nothing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path(".cache/facedistill/teacher")


def compare(path: Path, chunk: int = 4096) -> dict:
    """float16 round trip of the float32 cache at ``path``: per-target cosine and relative error."""
    manifest = json.loads((path / "manifest.json").read_text())
    n, k, d = manifest["shape"]
    emb = np.memmap(path / "embeddings.f32", np.float32, "r", shape=(n * k, d))
    cos, rel = [], []
    for a in range(0, n * k, chunk):
        x = np.asarray(emb[a:a + chunk], np.float64)
        y = x.astype(np.float16).astype(np.float64)
        nx, ny = np.linalg.norm(x, axis=1), np.linalg.norm(y, axis=1)
        cos.append((x * y).sum(1) / np.maximum(nx * ny, 1e-30))
        rel.append(np.linalg.norm(x - y, axis=1) / np.maximum(nx, 1e-30))
    c, r = np.concatenate(cos), np.concatenate(rel)
    return {"cache": path.name, "teacher": manifest["key"]["teacher"], "shape": [n, k, d],
            "cosine_mean": float(c.mean()), "cosine_min": float(c.min()), "rel_error_mean": float(r.mean()),
            "rel_error_max": float(r.max())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.cache_fidelity", description=__doc__.split("\n")[0])
    ap.add_argument("caches", nargs="*", type=Path, help=f"cache folders (default: every complete one in {DEFAULT_DIR})")
    args = ap.parse_args(argv)
    paths = args.caches or sorted(p.parent for p in DEFAULT_DIR.glob("*/complete.json"))
    paths = [p for p in paths if (p / "embeddings.f32").is_file()]
    if not paths:
        raise SystemExit(f"no complete float32 teacher cache found ({', '.join(map(str, args.caches)) or DEFAULT_DIR})")
    for p in paths:
        r = compare(p)
        n, k, d = r["shape"]
        print(f"{r['teacher']}: {n:,} x {k} x {d} targets; float16 vs float32 cosine mean {r['cosine_mean']:.9f} "
              f"min {r['cosine_min']:.9f}; relative L2 error mean {r['rel_error_mean']:.2e} max {r['rel_error_max']:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
