"""Training throughput (samples/s) of a 0.5 MobileNet-112 student: online vs cached teacher vs student-only,
fp32 vs bf16, NCHW vs channels_last.

Run::

    .venv/bin/python -m benchmarks.training --quick          # a few steps per variant
    .venv/bin/python -m benchmarks.training --steps 20 --batch-size 64

``student_only`` trains against targets already in memory (the floor the teacher
modes are compared with); ``cached`` reads a prebuilt :class:`TeacherCache`;
``online`` runs the teacher on every batch (bf16). The teacher is dlib's ResNet
when ``teachers.TEACHERS`` can build ``dlib_resnet``; otherwise a stand-in
(1.0 MobileNet-150, random weights, same input contract) and the result says so.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from distill.config import TrainSettings
from distill.data.views import FaceViews
from distill.losses import DistillLoss
from distill.preprocess import Preprocessing
from distill.train import OnlineTeacher, build_teacher_cache, fit
from students import MobileNet
from teachers import TEACHERS, CallableTeacher

SHARED = Path(os.environ.get("FACEDISTILL_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def _faces(n: int, size: int = 150) -> np.ndarray:
    """The first ``n`` LFW images, centre-cropped to ``size`` (alignment does not change the speed)."""
    paths = sorted((SHARED / "data" / "lfw").rglob("*.jpg"))[:n]
    if len(paths) < n:
        raise FileNotFoundError(f"need {n} LFW images under {SHARED / 'data' / 'lfw'}")
    out = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        c = min(w, h) * 0.6
        img = img.crop(((w - c) / 2, (h - c) / 2, (w + c) / 2, (h + c) / 2)).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(img))
    return np.stack(out)


def _flip(face: np.ndarray, seed: int) -> np.ndarray:
    return face[:, ::-1] if seed & 1 else face


def _teacher() -> tuple[Any, str]:
    if "dlib_resnet" in TEACHERS:
        try:
            return TEACHERS.build("dlib_resnet"), "dlib_resnet"
        except Exception as e:  # noqa: BLE001 - report why and fall back
            reason = f"dlib_resnet could not be built ({type(e).__name__}: {e})"
    else:
        reason = "dlib_resnet is not registered"
    net = MobileNet(alpha=1.0, input_size=150, embedding_dim=128, normalize=False).eval()
    return CallableTeacher(net, name="standin_mobilenet_100_150", preprocessing=Preprocessing(150),
                           embedding_dim=128, normalized=False), f"stand-in teacher: {reason}"


class _InMemoryTargets:
    """Targets already in memory: the student-only floor."""

    num_views = None

    def __init__(self, n: int, dim: int) -> None:
        self.table = torch.randn(n, dim)

    def targets(self, faces: torch.Tensor, indices: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        return self.table[indices]


def benchmark_training(steps: int = 8, batch_size: int = 64, quick: bool = False,
                       log=print) -> dict[str, Any]:
    """samples/s per (mode, precision, layout); see the module docstring. Returns a JSON-able dict."""
    if quick:
        steps, batch_size = 4, 32
    n = steps * batch_size
    views = FaceViews(_faces(n), augment=_flip, seed=0)
    teacher, teacher_note = _teacher()
    pre = Preprocessing(112, alignment=teacher.preprocessing.alignment)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = build_teacher_cache(teacher, views, 1, Path(tmp) / "cache", batch_size=batch_size,
                                    precision="bf16", log=log)
        cache_s = time.perf_counter() - t0
        variants = [("student_only", p, cl) for p in ("fp32", "bf16") for cl in (False, True)]
        variants += [("cached", "fp32", True), ("online", "fp32", True)]
        for mode, precision, channels_last in variants:
            torch.manual_seed(0)
            student = MobileNet(alpha=0.5, input_size=112, embedding_dim=teacher.embedding_dim, normalize=False)
            source = {"student_only": lambda: _InMemoryTargets(len(views.faces), teacher.embedding_dim),
                      "cached": lambda: cache, "online": lambda: OnlineTeacher(teacher, "bf16")}[mode]()
            settings = TrainSettings(epochs=2, batch_size=batch_size, warmup_steps=0, precision=precision,
                                     channels_last=channels_last, checkpoint_every=10**6)
            # epoch 1 warms up (allocator, oneDNN kernels); samples/s is measured on epoch 2 only
            t_first = time.perf_counter()
            res = fit(student, pre, source, views, DistillLoss(), settings.model_copy(update={"epochs": 1}),
                      Path(tmp) / f"{mode}-{precision}-{channels_last}", progress=False, log=lambda m: None)
            warm = time.perf_counter() - t_first
            res = fit(student, pre, source, views, DistillLoss(), settings,
                      Path(tmp) / f"{mode}-{precision}-{channels_last}", resume=True, progress=False,
                      log=lambda m: None)
            row = {"mode": mode, "precision": precision, "channels_last": channels_last,
                   "samples_per_s": round(res.samples_per_s, 1), "warmup_epoch_s": round(warm, 2)}
            rows.append(row)
            log(json.dumps(row))
    floor = next(r["samples_per_s"] for r in rows if r["mode"] == "student_only" and r["precision"] == "fp32"
                 and r["channels_last"])
    cached = next(r["samples_per_s"] for r in rows if r["mode"] == "cached")
    return {"teacher": teacher_note, "steps": steps, "batch_size": batch_size, "threads": torch.get_num_threads(),
            "cache_build_s_per_image": round(cache_s / n, 4), "rows": rows,
            "cached_vs_student_only": round(cached / floor, 3), "target_cached_vs_student_only": 0.9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    print(json.dumps(benchmark_training(args.steps, args.batch_size, args.quick), indent=2))


if __name__ == "__main__":
    main()
