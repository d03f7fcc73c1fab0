"""Peak memory (max RSS) of a short distillation training run and of 1:N evaluation at a 1M gallery.

Each task runs in its own child process (``python -m benchmarks.memory --task ...``), so every
number belongs to one task alone. The peak is the child's ``VmHWM`` from /proc (the high-water
mark of its own address space); the kernel's per-child ``ru_maxrss`` from ``os.wait4`` is kept
as a cross-check (it also counts the pre-exec fork of the parent, so it can read higher). A ``baseline`` task (imports only) gives the floor every
Python + torch process pays.

Run one task by hand::

    .venv/bin/python -m benchmarks.memory --task eval --gallery 1000000 --dim 128

Example::

    from benchmarks.memory import bench_memory
    res = bench_memory(quick=True)
    res["tasks"]["eval"]["max_rss_mib"]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

SHARED = Path(os.environ.get("FACEDISTILL_SHARED", Path(__file__).resolve().parents[2] / "shared"))
ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- child tasks
def _vm_hwm_kib() -> int | None:
    """This process's peak RSS from /proc/self/status (KiB), or None off Linux."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _lfw_faces(n: int, size: int = 150) -> tuple[Any, str]:
    """``n`` LFW images centre-cropped to ``size`` (the content does not change memory use)."""
    import numpy as np
    from PIL import Image

    root = SHARED / "data" / "lfw" / "lfw-deepfunneled"
    paths = sorted(root.glob("*/*.jpg"))[:n]
    if len(paths) < n:
        raise FileNotFoundError(f"the training memory task needs {n} LFW images under {root}; found {len(paths)}. "
                                "Set FACEDISTILL_SHARED to the folder holding data/lfw.")
    out = []
    for p in paths:
        img = Image.open(p).convert("RGB")
        w, h = img.size
        c = min(w, h) * 0.6
        out.append(np.asarray(img.crop(((w - c) / 2, (h - c) / 2, (w + c) / 2, (h + c) / 2))
                              .resize((size, size), Image.BILINEAR)))
    return np.stack(out), str(root)


def task_baseline() -> dict[str, Any]:
    """Import what the other tasks import, and nothing else: the floor."""
    import faiss  # noqa: F401
    import torch  # noqa: F401

    import distill.train  # noqa: F401
    import students  # noqa: F401
    import teachers  # noqa: F401

    return {}


def task_train(steps: int, batch_size: int, alpha: float = 0.5, input_size: int = 112) -> dict[str, Any]:
    """A short online-distillation run with :func:`distill.train.fit`: dlib teacher (bf16) -> MobileNet."""
    import torch

    from distill.config import AugmentSettings, TrainSettings
    from distill.data.augment import build_augmentation
    from distill.data.views import FaceViews
    from distill.losses import DistillLoss
    from distill.preprocess import Preprocessing
    from distill.train import OnlineTeacher, fit
    from students import MobileNet
    from teachers import TEACHERS, default_dlib_model_path

    try:
        default_dlib_model_path()
        teacher, note = TEACHERS.build("dlib_resnet", precision="bf16"), "dlib_resnet (real weights)"
    except FileNotFoundError as e:   # same architecture and memory without the weight file
        teacher, note = TEACHERS.build("dlib_resnet", weights=None, precision="bf16"), f"dlib_resnet, random ({e})"
    faces, source = _lfw_faces(steps * batch_size)
    views = FaceViews(faces, augment=build_augmentation(AugmentSettings()), seed=0)
    student = MobileNet(alpha=alpha, input_size=input_size, embedding_dim=teacher.embedding_dim, normalize=False)
    settings = TrainSettings(epochs=1, batch_size=batch_size, warmup_steps=0, checkpoint_every=10**6)
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(student, Preprocessing(input_size, alignment=teacher.preprocessing.alignment),
                  OnlineTeacher(teacher), views, DistillLoss(), settings, Path(tmp), progress=False,
                  log=lambda m: None)
    return {"teacher": note, "student": f"mobilenet_{alpha:g}_{input_size}", "steps": res.steps,
            "batch_size": batch_size, "images": len(faces), "data": source, "precision": settings.precision,
            "channels_last": settings.channels_last, "samples_per_s": res.samples_per_s,
            "threads": torch.get_num_threads()}


def task_eval(gallery: int, dim: int, queries: int = 1000, k: int = 10) -> dict[str, Any]:
    """1:N search at a ``gallery``-vector index of random unit vectors: exact FAISS search, top-``k``."""
    import numpy as np

    from benchmarks.evaluation import make_queries, random_gallery
    from distill.evaluation.search import build_index, search

    g = random_gallery(gallery, dim, seed=0)
    q = make_queries(g, queries, "near", seed=1)
    index = build_index(g, "ip", "flat")
    t0 = time.perf_counter()
    scores, ids = search(index, q, k)
    seconds = time.perf_counter() - t0
    return {"gallery": gallery, "dim": dim, "queries": queries, "k": k, "index": "faiss flat (exact, inner product)",
            "vectors_mib": g.nbytes / 2**20, "search_s": seconds, "results_finite": bool(np.isfinite(scores).all()),
            "ids_valid": bool(((ids >= 0) & (ids < gallery)).all())}


TASKS: dict[str, Callable[..., dict[str, Any]]] = {"baseline": task_baseline, "train": task_train, "eval": task_eval}


# --------------------------------------------------------------------------- parent
def run_task(task: str, args: list[str], timeout: float = 1800) -> dict[str, Any]:
    """Run ``python -m benchmarks.memory --task TASK ARGS`` and return its JSON plus its peak RSS.

    ``max_rss_mib``: the child's VmHWM; ``wait4_maxrss_mib``: ``ru_maxrss`` of this child alone
    (``os.wait4``, so earlier tasks do not leak into it, unlike ``RUSAGE_CHILDREN``).
    """
    cmd = [sys.executable, "-m", "benchmarks.memory", "--task", task, *args]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, cwd=ROOT, env=env)
        deadline = t0 + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                raise TimeoutError(f"memory task {task!r} ran over {timeout:.0f} s: {' '.join(cmd)}")
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)   # we reaped it; keep Popen consistent
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RuntimeError(f"memory task {task!r} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"{stderr[-2000:]}")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"memory task {task!r} printed no JSON result: {stdout[-500:]}\n{stderr[-1000:]}")
    res = json.loads(lines[-1])
    # VmHWM is the peak of the child's own address space. ru_maxrss from wait4 is kept as a
    # cross-check: Linux folds in the RSS the forked copy of *this* process had before exec,
    # so it can read higher by up to the parent's size.
    res.update({"max_rss_mib": res.get("vm_hwm_mib") or usage.ru_maxrss / 1024,
                "wait4_maxrss_mib": usage.ru_maxrss / 1024, "wall_s": wall, "command": " ".join(cmd[1:])})
    return res


def settings(quick: bool) -> dict[str, Any]:
    """Task sizes of a full or a ``quick`` run."""
    if quick:
        return {"train": {"steps": 2, "batch_size": 8}, "eval": {"gallery": 20_000, "dim": 128, "queries": 100}}
    return {"train": {"steps": 10, "batch_size": 64}, "eval": {"gallery": 1_000_000, "dim": 128, "queries": 1000}}


def bench_memory(quick: bool = False, log: Callable[[str], None] = print, **overrides: Any) -> dict[str, Any]:
    """Peak RSS of the baseline, training and evaluation tasks, each in its own process."""
    cfg = {**settings(quick), **overrides}
    tasks: dict[str, Any] = {}
    plan = [("baseline", []),
            ("train", ["--steps", str(cfg["train"]["steps"]), "--batch-size", str(cfg["train"]["batch_size"])]),
            ("eval", ["--gallery", str(cfg["eval"]["gallery"]), "--dim", str(cfg["eval"]["dim"]),
                      "--queries", str(cfg["eval"]["queries"])])]
    for name, args in plan:
        log(f"memory: {name} ...")
        tasks[name] = run_task(name, args)
        log(f"memory: {name} peak RSS {tasks[name]['max_rss_mib']:.0f} MiB")
    return {"settings": cfg, "tasks": tasks}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(TASKS), help="run one task in this process (what the parent spawns)")
    ap.add_argument("--quick", action="store_true", help="tiny tasks (smoke test)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--gallery", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args(argv)
    if args.task is None:
        print(json.dumps(bench_memory(args.quick), indent=2))
        return
    kwargs = {"baseline": {}, "train": {"steps": args.steps, "batch_size": args.batch_size},
              "eval": {"gallery": args.gallery, "dim": args.dim, "queries": args.queries}}[args.task]
    res = TASKS[args.task](**kwargs)
    print(json.dumps({"task": args.task, **res, "vm_hwm_mib": (_vm_hwm_kib() or 0) / 1024}), flush=True)


if __name__ == "__main__":
    main()
