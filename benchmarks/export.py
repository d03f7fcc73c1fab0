"""Exported students on CPU: fp32 vs int8 ONNX latency, file size, and (trained students) the int8 accuracy cost.

Run::

    .venv/bin/python -m benchmarks.export runs/r1/student.pt runs/r2/student.pt     # trained: + LFW DevTest accuracy
    .venv/bin/python -m benchmarks.export --alphas 1.0 0.5 --input-size 112         # latency of fresh students
    .venv/bin/python -m benchmarks.export --alphas 0.25 --input-size 64 --quick     # seconds

Latency is onnxruntime's CPU provider, median over repeats, with ``torch.get_num_threads()`` intra-op threads.
Fresh students (no checkpoint) have BatchNorm statistics set from real LFW faces so int8 calibration sees
realistic activation ranges; their accuracy is meaningless and not reported.
"""
from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from distill.io import atomic_write_json


def fresh_checkpoint(alpha: float, input_size: int, out: Path, *, embedding_dim: int = 128,
                     alignment: str = "dlib_150", cache_dir: str | Path = ".cache/facedistill") -> Path:
    """An untrained MobileNet student saved like ``RUN/student.pt`` (BatchNorm statistics from LFW faces)."""
    from distill.deploy.export import set_batchnorm_statistics
    from distill.deploy.faces import align_rel_paths, default_lfw_images, sample_identity_images
    from distill.models import StudentSpec, save_student
    from distill.preprocess import student_preprocessing
    from teachers import TEACHERS

    torch.manual_seed(0)
    kwargs: dict[str, Any] = {"input_size": input_size, "embedding_dim": embedding_dim, "normalize": True}
    preset = {1.0: "100", 0.75: "075", 0.5: "050", 0.25: "025"}.get(alpha)
    spec = StudentSpec(f"mobilenet_v1_{preset}", kwargs) if preset else \
        StudentSpec("mobilenet_v1", {**kwargs, "alpha": alpha})
    student, pre = spec.build(), student_preprocessing(input_size, alignment)
    lfw = default_lfw_images()
    if lfw is not None:
        faces = align_rel_paths(lfw, sample_identity_images(lfw, 64, seed=7), template=alignment,
                                cache_dir=cache_dir, progress=False).faces
        set_batchnorm_statistics(student, pre(torch.from_numpy(np.array(faces))))
    return save_student(out, student.eval(), spec, pre, TEACHERS.build("dlib_resnet", weights=None))


def bench_export(checkpoints: Sequence[str | Path] = (), *, alphas: Sequence[float] = (), input_size: int = 112,
                 out_dir: str | Path | None = None, pairs: str | Path | None = None, max_pairs: int | None = None,
                 calib_count: int | None = None, batch_sizes: Sequence[int] = (1, 32), quick: bool = False,
                 cache_dir: str | Path = ".cache/facedistill") -> dict[str, Any]:
    """fp32 vs int8 rows for each checkpoint (accuracy on ``pairs``, default LFW DevTest) and each fresh
    student of width ``alphas`` at ``input_size`` (latency and size only).

    Returns ``{"machine", "rows": [{"model", "precision", "bytes", "latency": {batch: ...}, "accuracy"}]}``.
    """
    from distill.deploy.workflow import export_student

    if quick:
        calib_count, max_pairs = 32, max_pairs or 100
    tmp = tempfile.TemporaryDirectory(prefix="facedistill-bench-export-") if out_dir is None else None
    out = Path(out_dir or tmp.name)  # type: ignore[union-attr]
    jobs: list[tuple[Path, bool]] = [(Path(c), True) for c in checkpoints]
    for a in alphas:
        jobs.append((fresh_checkpoint(a, input_size, out / f"fresh_{a:g}_{input_size}" / "student.pt",
                                      cache_dir=cache_dir), False))
    rows: list[dict[str, Any]] = []
    try:
        for ckpt, trained in jobs:
            name = ckpt.parent.name
            s = export_student(ckpt, out / f"{name}.onnx", "onnx", int8=True, calib_count=calib_count,
                               pairs=pairs, evaluate=trained, max_pairs=max_pairs,
                               latency_batches=tuple(batch_sizes), log=lambda _m: None, cache_dir=cache_dir)
            acc = s.get("accuracy") if trained else None
            for prec, size in (("fp32", s["bytes"]), ("int8", s["int8"]["bytes"])):
                rows.append({"model": s["name"], "checkpoint": str(ckpt), "trained": trained, "precision": prec,
                             "bytes": size, "latency": s["latency"][prec],
                             "accuracy": acc["accuracy"][prec] if acc else None,
                             "tar_at_1e-3": acc["tar"][prec] if acc else None,
                             "n_pairs": acc["n_pairs"] if acc else None,
                             "int8_mean_cosine_to_fp32": s["int8"]["agreement_with_fp32"]["mean_cosine"]
                             if prec == "int8" else None})
    finally:
        if tmp is not None:
            tmp.cleanup()
    machine = {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    return {"machine": machine, "batch_sizes": list(batch_sizes), "rows": rows}


def teacher_onnx(out: Path, name: str = "dlib_resnet", *, calib_faces: np.ndarray | None = None) -> dict[str, Path]:
    """The teacher as deployed users would run it: fp32 ONNX (preprocessed ``(B, 3, S, S)`` in, embedding out)
    and its plain static int8 quantisation (onnxruntime's default recipe), both in ``out``."""
    import onnx

    from distill.deploy.int8 import BASELINE, quantize_recipe
    from teachers import build_teacher

    teacher = build_teacher(name, precision="fp32").eval()
    size = teacher.preprocessing.input_size
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / f"{name}.onnx"
    torch.onnx.export(teacher, (torch.zeros(2, 3, size, size),), str(fp32), dynamo=False, input_names=["input"],
                      output_names=["embedding"], opset_version=17, dynamic_axes={"input": {0: "batch"}})
    onnx.checker.check_model(onnx.load(str(fp32)))
    x = teacher.preprocessing(torch.from_numpy(calib_faces)).numpy() if calib_faces is not None else \
        np.random.default_rng(0).standard_normal((64, 3, size, size)).astype(np.float32)
    int8 = quantize_recipe(fp32, out / f"{name}.int8.onnx", x, BASELINE).path
    return {"fp32": fp32, "int8": int8}


def bench_deployed(alphas: Sequence[float] = (1.0, 0.75, 0.5, 0.25), input_size: int = 112, *,
                   batch_sizes: Sequence[int] = (1, 32), rounds: int = 30, threads: int | None = None,
                   cache_dir: str | Path = ".cache/facedistill") -> dict[str, Any]:
    """The speed-up a deployed user gets: teacher and students all exported to ONNX and run by onnxruntime,
    fp32 and int8 (students: the recommended recipe; teacher: onnxruntime's default), at each batch size,
    timed interleaved in one run. Rows give images/s, the student/teacher speed-up in the same precision,
    the mult-adds ratio and the speed-up as a fraction of it."""
    from distill.deploy.faces import align_rel_paths, default_lfw_images, sample_identity_images
    from distill.deploy.int8 import compare_throughput
    from distill.deploy.workflow import export_student
    from distill.profile import profile
    from students import MobileNet
    from teachers import build_teacher

    threads = threads or torch.get_num_threads()
    teacher = build_teacher("dlib_resnet", precision="fp32")
    t_cost = profile(teacher, teacher.preprocessing.input_size).mult_adds
    lfw = default_lfw_images()
    calib = align_rel_paths(lfw, sample_identity_images(lfw, 256, seed=1), template="dlib_150",
                            cache_dir=cache_dir, progress=False).faces if lfw is not None else None
    with tempfile.TemporaryDirectory(prefix="facedistill-deployed-") as tmp:
        files = {f"teacher {k}": v for k, v in teacher_onnx(Path(tmp), calib_faces=np.asarray(calib)).items()}
        costs = {}
        for a in alphas:
            ckpt = fresh_checkpoint(a, input_size, Path(tmp) / f"s{a:g}" / "student.pt", cache_dir=cache_dir)
            s = export_student(ckpt, Path(tmp) / f"s{a:g}.onnx", "onnx", int8=True, evaluate=False, latency=False,
                               log=lambda _m: None, cache_dir=cache_dir)
            files[f"{a:g} fp32"], files[f"{a:g} int8"] = Path(s["path"]), Path(s["int8"]["path"])
            costs[a] = profile(MobileNet(alpha=a, input_size=input_size, embedding_dim=128), input_size).mult_adds
        timing = {b: compare_throughput(files, b, threads=threads, rounds=rounds) for b in batch_sizes}
    rows = []
    for a in alphas:
        for prec in ("fp32", "int8"):
            for b in batch_sizes:
                s_ips = timing[b][f"{a:g} {prec}"].images_per_s
                t_ips = timing[b][f"teacher {prec}"].images_per_s
                ratio = t_cost / costs[a]
                rows.append({"alpha": a, "input_size": input_size, "precision": prec, "batch": b,
                             "student_images_per_s": s_ips, "teacher_images_per_s": t_ips,
                             "speedup": s_ips / t_ips, "mult_adds_ratio": ratio,
                             "fraction_of_ratio": s_ips / t_ips / ratio,
                             "int8_vs_fp32": s_ips / timing[b][f"{a:g} fp32"].images_per_s})
    return {"threads": threads, "rounds": rounds, "teacher": "dlib_resnet", "teacher_mult_adds": t_cost,
            "rows": rows}


def deployed_markdown(doc: dict[str, Any]) -> str:
    """The BENCHMARKS.md table of :func:`bench_deployed`."""
    head = ["student", "precision", "batch", "student img/s", "teacher img/s", "speed-up", "mult-adds ratio",
            "of the ratio", "int8 / fp32"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        lines.append(f"| {r['alpha']:g} MobileNet-{r['input_size']} | {r['precision']} | {r['batch']} | "
                     f"{r['student_images_per_s']:,.0f} | {r['teacher_images_per_s']:,.0f} | {r['speedup']:.1f}x | "
                     f"{r['mult_adds_ratio']:.1f}x | {r['fraction_of_ratio']:.0%} | {r['int8_vs_fp32']:.2f}x |")
    return "\n".join(lines) + (f"\n\nonnxruntime CPU provider, {doc['threads']} threads, teacher and students timed "
                               f"interleaved ({doc['rounds']} rounds, median). int8: the students' recommended recipe, "
                               f"the teacher's onnxruntime default.\n")


def to_markdown(doc: dict[str, Any]) -> str:
    """The BENCHMARKS.md table: one row per (student, precision)."""
    bs = doc["batch_sizes"]
    head = ["student", "precision", "file MB"] + [f"ms/img b={b}" for b in bs] + [f"img/s b={b}" for b in bs] + \
        ["LFW DevTest acc", "cos(int8, fp32)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in doc["rows"]:
        lat = r["latency"]
        cells = [r["model"] + ("" if r["trained"] else " (untrained)"), r["precision"], f"{r['bytes'] / 1e6:.2f}"]
        cells += [f"{lat[str(b)]['ms_per_image']:.2f}" for b in bs] + [f"{lat[str(b)]['images_per_s']:.0f}" for b in bs]
        cells.append(f"{100 * r['accuracy']:.2f}% ({r['n_pairs']} pairs)" if r["accuracy"] is not None else "n/a")
        cells.append(f"{r['int8_mean_cosine_to_fp32']:.5f}" if r["int8_mean_cosine_to_fp32"] is not None else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\nonnxruntime CPU provider, {doc['machine']['threads']} threads.\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", type=Path, help="trained RUN/student.pt files")
    p.add_argument("--alphas", nargs="*", type=float, default=[], help="fresh students of these widths")
    p.add_argument("--input-size", type=int, default=112)
    p.add_argument("--pairs", type=Path, help="pairs file for accuracy (default LFW pairsDevTest.txt)")
    p.add_argument("--max-pairs", type=int)
    p.add_argument("--batch-sizes", nargs="*", type=int, default=[1, 32])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cache-dir", type=Path, default=Path(".cache/facedistill"), help="aligned-face cache")
    p.add_argument("--json", type=Path, help="write the result as JSON")
    args = p.parse_args(argv)
    if not args.checkpoints and not args.alphas:
        p.error("give student.pt checkpoints and/or --alphas")
    doc = bench_export(args.checkpoints, alphas=args.alphas, input_size=args.input_size, pairs=args.pairs,
                       max_pairs=args.max_pairs, batch_sizes=args.batch_sizes, quick=args.quick,
                       cache_dir=args.cache_dir)
    print(to_markdown(doc))
    if args.json:
        atomic_write_json(args.json, doc)
    return doc


if __name__ == "__main__":
    main()
