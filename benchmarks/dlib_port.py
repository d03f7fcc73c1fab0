"""dlib-bin vs the torch port of dlib's face ResNet: images/s on the same chips, and parity.

Not a test (no timing asserts). Run::

    .venv/bin/python -m benchmarks.dlib_port            # prints a JSON dict

Example::

    from benchmarks.dlib_port import bench_dlib_port
    result = bench_dlib_port(n_chips=64, batch=32)
    result["torch_bf16"]["images_per_s"], result["max_abs_diff_fp32"]
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

SHARED = Path(os.environ.get("FACEDISTILL_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def load_chips(n_chips: int, lfw_root: Path | None = None) -> tuple[np.ndarray, str]:
    """``n_chips`` 150x150 dlib-aligned LFW faces (repeated if needed), or noise chips without LFW."""
    from PIL import Image

    from teachers.dlib_resnet import dlib_face_chips

    root = (lfw_root or SHARED / "data" / "lfw") / "lfw-deepfunneled"
    if not root.is_dir():
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (n_chips, 150, 150, 3), dtype=np.uint8), f"noise (no LFW at {root})"
    people = sorted(p for p in root.iterdir() if p.is_dir())
    step = max(1, len(people) // (n_chips + 8))
    paths = [sorted(p.glob("*.jpg"))[0] for p in people[::step]][: n_chips + 8]
    chips, _ = dlib_face_chips([np.asarray(Image.open(p).convert("RGB")) for p in paths])
    reps = -(-n_chips // max(1, len(chips)))
    return np.concatenate([chips] * reps)[:n_chips], f"LFW deep-funneled, dlib-aligned ({root})"


def _time(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_dlib_port(n_chips: int = 64, batch: int = 32, repeats: int = 3) -> dict:
    """Time dlib-bin and the torch port (fp32, bf16) on the same chips; report images/s and parity.

    dlib runs as shipped (its own threading); torch uses ``torch.get_num_threads()`` threads.
    """
    import dlib

    from teachers import TEACHERS
    from teachers.dlib_resnet import default_dlib_model_path

    chips, source = load_chips(n_chips)
    batches = [chips[i:i + batch] for i in range(0, len(chips), batch)]
    rec = dlib.face_recognition_model_v1(str(default_dlib_model_path()))

    def run_dlib() -> np.ndarray:
        return np.concatenate([np.array([np.array(d) for d in rec.compute_face_descriptor(list(b))])
                               for b in batches])

    result: dict = {"n_chips": len(chips), "batch": batch, "repeats": repeats, "chips": source,
                    "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    reference = run_dlib().astype(np.float32)
    result["dlib"] = {"images_per_s": len(chips) / _time(run_dlib, max(1, repeats - 1))}
    for precision in ("fp32", "bf16"):
        teacher = TEACHERS.build("dlib_resnet", precision=precision)
        tensors = [torch.from_numpy(b) for b in batches]

        def run_torch() -> np.ndarray:
            return torch.cat([teacher.embed(t) for t in tensors]).numpy()

        out = run_torch()
        result[f"torch_{precision}"] = {"images_per_s": len(chips) / _time(run_torch, repeats)}
        result[f"max_abs_diff_{precision}"] = float(np.abs(out - reference).max())
        cos = (out * reference).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(reference, axis=1)
        result[f"min_cosine_{precision}"] = float(cos.min())
    return result


if __name__ == "__main__":
    print(json.dumps(bench_dlib_port(), indent=2))
