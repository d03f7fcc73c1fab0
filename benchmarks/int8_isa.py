"""The shipped int8 export on the x86 instruction sets users have: this CPU and an AVX2-only EPYC (QEMU).

Run (LFW under ../shared/data/lfw; aligned faces cached under .cache/facedistill)::

    .venv/bin/python -m benchmarks.int8_isa --checkpoint results/flagship_student.pt --out runs/int8_isa

Exports the checkpoint to fp32 ONNX, quantises it with the recommended recipe (7-bit weights, the
portable default) and with the same recipe at full weight range, calibrated on 1,024 LFW training faces
(people outside the pairs file), then embeds every image of the pairs file's people with each int8
file on this CPU and under ``qemu-x86_64 -cpu EPYC-Rome`` (:mod:`distill.deploy.int8.emulate`: AVX2 and
FMA, no AVX-512, no VNNI), and scores each against fp32 with the export's own check
(:func:`distill.deploy.int8_check.score_int8`: pairs-file accuracy, TAR@FAR=1e-3 on every pair, mean
cosine to fp32, the tolerance). Prints a markdown table and writes ``OUT/int8_isa.json``.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from distill.deploy.faces import DEFAULT_CACHE_DIR, align_rel_paths
from distill.deploy.int8 import RECOMMENDED
from distill.deploy.int8.emulate import AVX2_CPU, run_onnx
from distill.deploy.int8_check import check_faces, score_int8
from distill.deploy.quantize import model_inputs, quantize_int8
from distill.deploy.workflow import calibration_images, export_student, pairs_images_root
from distill.data.pairs import detect_image_ext, read_pairs
from distill.hardware import cpu_capability
from distill.models.exported import read_metadata

PAIRS = Path("../shared/data/lfw/pairsDevTest.txt")
VARIANTS = {"7-bit weights (recommended, shipped)": RECOMMENDED,
            "full-range weights": replace(RECOMMENDED, reduce_range=False)}


def _int8_files(fp32: Path, checkpoint: Path, out: Path, people: set[str], meta: dict) -> dict[str, Path]:
    """Quantise ``fp32`` with each of :data:`VARIANTS`, on the same 1,024 calibration faces."""
    croot, crel, _ = calibration_images(checkpoint, RECOMMENDED.calib_faces, exclude_identities=people)
    calib = np.asarray(align_rel_paths(croot, crel, template=meta["preprocessing"]["alignment"],
                                       cache_dir=DEFAULT_CACHE_DIR).faces)
    files = {}
    for i, (name, recipe) in enumerate(VARIANTS.items()):
        files[name] = out / f"variant{i}.int8.onnx"
        quantize_int8(fp32, files[name], calib, recipe=recipe)
    return files


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments, measure, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", type=Path, default=Path("results/flagship_student.pt"))
    ap.add_argument("--pairs", type=Path, default=PAIRS)
    ap.add_argument("--out", type=Path, default=Path("runs/int8_isa"))
    ap.add_argument("--cpu", default=AVX2_CPU, help="QEMU CPU model of the emulated machine (default %(default)s)")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    fp32 = args.out / "student.onnx"
    export_student(args.checkpoint, fp32, "onnx", latency=False, log=lambda m: None)
    meta = read_metadata(fp32)
    root = pairs_images_root(args.pairs)
    people = read_pairs(args.pairs, root, ext=detect_image_ext(root), check_exists=False).people()
    files = _int8_files(fp32, args.checkpoint, args.out, people, meta)
    faces = check_faces(args.pairs, root, template=meta["preprocessing"]["alignment"], cache_dir=DEFAULT_CACHE_DIR)
    x = model_inputs(meta, faces.faces)
    ref = run_onnx(fp32, x)
    here = cpu_capability().label()
    rows = []
    for name, path in files.items():
        for cpu, label in ((None, here), (args.cpu, f"{args.cpu} under QEMU: x86_64 AVX2 (no VNNI)")):
            t0 = time.time()
            emb = run_onnx(path, x, cpu=cpu)
            check = score_int8({"fp32": ref, "int8": emb}, faces, bool(meta["normalized"]), cpu=label)
            rows.append({"variant": name, "cpu": label, "seconds": round(time.time() - t0, 1), **check.to_dict(),
                         "within_tolerance": not check.misses})
            print(f"{name} on {label}: {check.verdict()}", flush=True)
    doc = {"checkpoint": str(args.checkpoint), "pairs": str(args.pairs), "faces": int(len(x)), "rows": rows,
           "command": "python -m benchmarks.int8_isa " + " ".join(argv or []), "seconds": round(time.time() - start)}
    (args.out / "int8_isa.json").write_text(json.dumps(doc, indent=2))
    print(markdown(doc))


def markdown(doc: dict) -> str:
    """The table of :func:`main`'s rows."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f}"  # noqa: E731
    lines = ["| int8 file | CPU | DevTest acc % fp32 -> int8 | TAR@1e-3 % fp32 -> int8 | cos to fp32 | within |",
             "|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        lines.append(f"| {r['variant']} | {r['cpu']} | {pct(r['accuracy']['fp32'])} -> {pct(r['accuracy']['int8'])} "
                     f"| {pct(r['tar']['fp32'])} -> {pct(r['tar']['int8'])} | {r['mean_cosine']:.4f} | "
                     f"{'yes' if r['within_tolerance'] else 'no'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
