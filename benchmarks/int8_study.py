"""The int8 study: where PTQ breaks a student, which recipe keeps its accuracy, and what int8 buys in speed.

Run (LFW under ../shared/data/lfw; aligned faces cached under .cache/facedistill)::

    .venv/bin/python -m benchmarks.int8_study --checkpoint results/flagship_student.pt --out runs/int8_study
    .venv/bin/python -m benchmarks.int8_study --onnx a025=/tmp/a025.onnx --variants short --out runs/int8_a025

For each student (a ``student.pt``, exported to fp32 ONNX with ``distill export``, or an fp32 ``.onnx``
from it) it writes ``OUT/<name>/study.json`` and prints markdown:

* the per-layer int8-vs-fp32 table of the onnxruntime default (:func:`distill.deploy.int8.compare_layers`)
  and the one-quantiser-at-a-time sensitivity (:func:`distill.deploy.int8.layer_sensitivity`);
* one row per recipe variant: LFW DevTest 10-fold accuracy, TAR@FAR=1e-3 on every pair of the DevTest
  people's images, mean cosine of int8 to fp32 embeddings (raw, and of the variation between faces)
  on held-out *training* faces, and file size;
* with ``--speed``: images/s of fp32, the default int8 and the recommended recipe at batch 32 and 1
  (interleaved timing, median and best), and onnxruntime's per-operator / per-layer-kind time.

Calibration uses LFW training faces (people outside pairsDevTest.txt), never the evaluation people; the
cosine columns use other training faces than calibration. Recipes are chosen on those, DevTest is reported.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from distill.deploy.int8 import (BASELINE, RECOMMENDED, Int8Recipe, calibrate, centered_sqnr_db, compare_layers,
                                 compare_throughput, layer_sensitivity, mean_cosine, prepare_fp32,
                                 profile_ops, quantize_prepared, quantize_recipe, run_model)

LFW = Path("../shared/data/lfw")
#: held-out training faces for the cosine columns (after the calibration faces in the same sample)
HOLDOUT = 1024


# --------------------------------------------------------------------------- data
@dataclass
class StudyData:
    """Aligned uint8 faces and the DevTest protocols (indices into ``dev_faces``)."""

    calib_faces: np.ndarray      # (N, 150, 150, 3) training faces, calibration
    holdout_faces: np.ndarray    # (HOLDOUT, ...) other training faces, for the cosine to fp32
    dev_faces: np.ndarray        # every image of the DevTest people
    dev_pairs: Any               # PairIndex of pairsDevTest.txt
    all_pairs: Any               # PairIndex of every pair of dev_faces


def load_study_data(lfw: Path, n_calib: int, template: str = "dlib_150") -> StudyData:
    """LFW faces for the study, aligned to ``template`` (cached): calibration and hold-out faces sampled
    (spread over identities, seed 0) from people outside pairsDevTest.txt; all images of the DevTest people."""
    from distill.data import all_pairs, read_pairs, scan_identity_folder
    from distill.deploy.faces import align_rel_paths, sample_identity_images
    from distill.evaluation import PairIndex

    root = lfw / "lfw-deepfunneled"
    proto = read_pairs(lfw / "pairsDevTest.txt", root, ext=".jpg")
    people = proto.people()
    train = sample_identity_images(root, n_calib + HOLDOUT, seed=0, exclude_identities=people)
    if {p.split("/", 1)[0] for p in train} & people:
        raise RuntimeError("calibration sample contains evaluation people")  # never: excluded above
    at = align_rel_paths(root, train, template=template)
    scanned = scan_identity_folder(root)
    dev_rel = [p for p in scanned.rel_paths if p.split("/", 1)[0] in people]
    ad = align_rel_paths(root, dev_rel, template=template)
    faces_t, faces_d = np.asarray(at.faces), np.asarray(ad.faces)
    pos = {p: i for i, p in enumerate(ad.rel_paths)}
    keep = [i for i in range(len(proto)) if proto.rel_path_a[i] in pos and proto.rel_path_b[i] in pos]
    dev = PairIndex([pos[proto.rel_path_a[i]] for i in keep], [pos[proto.rel_path_b[i]] for i in keep],
                    proto.is_same[keep], proto.fold[keep])
    a, b, same, fold = all_pairs(np.array([p.split("/", 1)[0] for p in ad.rel_paths]))
    return StudyData(faces_t[:-HOLDOUT], faces_t[-HOLDOUT:], faces_d, dev, PairIndex(a, b, same, fold))


def onnx_meta(path: Path) -> dict[str, Any]:
    """The facedistill metadata record of an exported ONNX file (read directly, no library import)."""
    import onnx

    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return json.loads(props["facedistill.json"])


def preprocess(faces: np.ndarray, meta: dict[str, Any], batch: int = 256) -> np.ndarray:
    """Aligned uint8 faces -> the model input ``(N, 3, S, S)`` float32 (resize + (x - mean) / std)."""
    import torch

    from distill.preprocess import Preprocessing

    p = meta["preprocessing"]
    pre = Preprocessing(input_size=int(p["input_size"]), mean=tuple(p["mean"]), std=tuple(p["std"]),
                        alignment=p["alignment"])
    return np.concatenate([pre(torch.from_numpy(np.array(faces[i:i + batch]))).numpy()
                           for i in range(0, len(faces), batch)])


def export_fp32(checkpoint: Path, out: Path) -> Path:
    """``distill export CHECKPOINT -o OUT`` (fp32, parity-checked against PyTorch) in a subprocess."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "distill.cli", "export", str(checkpoint), "-o", str(out), "--no-latency"]
    subprocess.run(cmd, check=True)
    return out


# --------------------------------------------------------------------------- measurements
@dataclass(frozen=True)
class Quality:
    """One model's verification numbers and, for int8, its agreement with the fp32 model."""

    accuracy: float          # DevTest 10-fold accuracy, %
    accuracy_std: float
    tar_1e3: float           # TAR at FAR=1e-3 on every pair of the DevTest people's images, %
    cosine: float | None = None           # mean cosine int8 vs fp32 on held-out training faces
    centered_cosine: float | None = None  # the same after removing each model's mean embedding
    centered_sqnr_db: float | None = None


def verification(emb: np.ndarray, data: StudyData, normalized: bool) -> tuple[float, float, float]:
    """(DevTest accuracy %, its std %, TAR@FAR=1e-3 % on all pairs) of embeddings of ``data.dev_faces``."""
    from distill.evaluation import metrics
    from distill.evaluation.search import pair_scores

    s = pair_scores(emb, data.dev_pairs.idx_a, data.dev_pairs.idx_b, normalized)
    kf = metrics.kfold_accuracy(s, data.dev_pairs.is_same, data.dev_pairs.fold)
    sa = pair_scores(emb, data.all_pairs.idx_a, data.all_pairs.idx_b, normalized)
    tar = metrics.tar_at_far(sa, data.all_pairs.is_same, (1e-3,))[0][1e-3]
    return 100 * kf.mean, 100 * kf.std, 100 * float(tar or 0.0)


@dataclass(frozen=True)
class Row:
    """A recipe variant's result on one student."""

    label: str
    recipe: dict[str, Any]
    quality: Quality
    bytes: int
    seconds: float


def evaluate(model: Any, dev_x: np.ndarray, hold_x: np.ndarray, data: StudyData, normalized: bool,
             ref: tuple[np.ndarray, np.ndarray] | None) -> tuple[Quality, tuple[np.ndarray, np.ndarray]]:
    """Embed the DevTest and hold-out inputs with ``model`` and measure; ``ref``: the fp32 embeddings."""
    e_dev, e_hold = run_model(model, dev_x), run_model(model, hold_x)
    acc, std, tar = verification(e_dev, data, normalized)
    if ref is None:
        return Quality(acc, std, tar), (e_dev, e_hold)
    r = ref[1]
    return Quality(acc, std, tar, mean_cosine(r, e_hold), mean_cosine(r - r.mean(0), e_hold - e_hold.mean(0)),
                   centered_sqnr_db(r, e_hold)), (e_dev, e_hold)


def variants(kind: str) -> list[Int8Recipe]:
    """The recipe grid: ``full`` (every lever the study measured, flagship) or ``short`` (other widths)."""
    rec = RECOMMENDED
    short = [BASELINE, replace(BASELINE, fp32_head=True),
             replace(rec, equalize_activations=False, bias_correction=False),
             replace(rec, fp32_last=1), rec, replace(rec, fp32_last=4)]
    if kind == "short":
        return short
    head = replace(BASELINE, fp32_head=True)
    return [
        BASELINE,
        replace(BASELINE, calib_faces=1024),
        head,
        replace(head, calib_faces=1024),
        replace(head, calib_faces=2048),
        replace(head, calib_faces=1024, moving_average=True),
        replace(head, calib_faces=1024, calibrate="percentile", percentile=99.99),
        replace(head, calib_faces=1024, calibrate="percentile", percentile=99.999),
        replace(head, calib_faces=1024, calibrate="entropy"),
        replace(head, calib_faces=1024, equalize=True),
        replace(head, calib_faces=1024, equalize_activations=True),
        replace(head, calib_faces=1024, fp32_first=1),
        replace(head, calib_faces=1024, fp32_first=1, fp32_last=2),
        replace(head, calib_faces=1024, fp32_first=1, fp32_last=4),
        replace(head, calib_faces=1024, fp32_first=1, fp32_last=4, equalize=True),
        replace(rec, equalize_activations=False),
        replace(rec, fp32_last=0),
        replace(rec, fp32_last=1),
        replace(rec, fp32_first=0),
        rec,
        replace(rec, bias_correction=False),
        replace(rec, activations="int8"),
        replace(rec, activation_symmetric=True),
        replace(rec, reduce_range=True),
        replace(rec, per_channel=False),
        replace(rec, quant_format="QOperator"),
        replace(rec, fp32_last=4),
        replace(rec, calib_faces=256),
    ]


def calibration_key(r: Int8Recipe) -> tuple:
    """Recipes with the same key share one calibration (same prepared graph, same range estimator, same data)."""
    return (r.calibrate, r.percentile, r.calib_faces, r.moving_average, r.equalize, r.equalize_activations,
            r.activation_alpha)


def run_variants(fp32: Path, name: str, data: StudyData, recipes: Sequence[Int8Recipe], out: Path,
                 log=print) -> tuple[Quality, list[Row]]:
    """fp32 reference and one :class:`Row` per recipe (calibrations shared where the key allows)."""
    meta = onnx_meta(fp32)
    normalized = bool(meta["normalized"])
    calib_x = preprocess(data.calib_faces, meta)
    dev_x, hold_x = preprocess(data.dev_faces, meta), preprocess(data.holdout_faces, meta)
    base_q, ref = evaluate(str(fp32), dev_x, hold_x, data, normalized, None)
    log(f"{name} fp32: DevTest {base_q.accuracy:.2f} +- {base_q.accuracy_std:.2f}  TAR@1e-3 {base_q.tar_1e3:.1f}")
    rows: list[Row] = []
    prepared: dict[tuple, Any] = {}
    for r in recipes:
        t0 = time.perf_counter()
        path = out / f"{name}.variant.int8.onnx"
        x = calib_x[:r.calib_faces]
        if len(x) < r.calib_faces:
            raise ValueError(f"recipe needs {r.calib_faces} calibration faces, the study has {len(calib_x)}")
        key = calibration_key(r)
        if r.bias_correction:  # a post-pass on the quantised model: quantize_recipe does the whole thing
            q = quantize_recipe(str(fp32), path, x, r, calibration_cache=out / f"ranges-{abs(hash(key))}.json")
        else:
            if key not in prepared:
                p = prepare_fp32(str(fp32), r, x)
                cache = out / f"ranges-{abs(hash(key))}.json"
                cache.unlink(missing_ok=True)
                calibrate(p.model, x, r, cache)
                prepared[key] = (p, cache)
            p, cache = prepared[key]
            q = quantize_prepared(p, path, r, cache, calib_faces=len(x))
        quality, _ = evaluate(q.path, dev_x, hold_x, data, normalized, ref)
        row = Row(r.label(), asdict(r), quality, q.bytes, time.perf_counter() - t0)
        rows.append(row)
        log(f"  {row.label}: DevTest {quality.accuracy:.2f}  TAR {quality.tar_1e3:.1f}  cos {quality.cosine:.4f}  "
            f"centred cos {quality.centered_cosine:.4f}  ({row.seconds:.0f} s)")
    return base_q, rows


def variants_table(base: Quality, rows: Sequence[Row], fp32_bytes: int) -> str:
    """Markdown: one row per variant, with the gaps to fp32."""
    lines = ["| recipe | DevTest acc % | vs fp32 | TAR@1e-3 % | vs fp32 | cos to fp32 | centred cos | MB |",
             "|---|---|---|---|---|---|---|---|",
             f"| fp32 | {base.accuracy:.2f} ± {base.accuracy_std:.2f} |  | {base.tar_1e3:.1f} |  | 1 | 1 | "
             f"{fp32_bytes / 1e6:.2f} |"]
    for r in rows:
        q = r.quality
        lines.append(f"| {r.label} | {q.accuracy:.2f} ± {q.accuracy_std:.2f} | {q.accuracy - base.accuracy:+.2f} | "
                     f"{q.tar_1e3:.1f} | {q.tar_1e3 - base.tar_1e3:+.1f} | {q.cosine:.4f} | {q.centered_cosine:.4f} | "
                     f"{r.bytes / 1e6:.2f} |")
    return "\n".join(lines)


def diagnose(fp32: Path, data: StudyData, out: Path, n: int = 128) -> dict[str, str]:
    """Per-layer table and sensitivity of the onnxruntime default (BASELINE) int8 model."""
    meta = onnx_meta(fp32)
    calib_x = preprocess(data.calib_faces[:BASELINE.calib_faces], meta)
    hold_x = preprocess(data.holdout_faces[:n], meta)
    p = prepare_fp32(str(fp32))
    q = quantize_recipe(p.model, out / "baseline.int8.onnx", calib_x, BASELINE)
    layers = compare_layers(p.model, q.path, hold_x)
    head = quantize_recipe(p.model, out / "head_fp32.int8.onnx", calib_x, replace(BASELINE, fp32_head=True))
    sens = layer_sensitivity(p.model, head.path, hold_x)
    # the recommended recipe against its own (equalised, same-function) fp32 graph: tensor names and scales match
    rec_x = preprocess(data.calib_faces[:RECOMMENDED.calib_faces], meta)
    rp = prepare_fp32(str(fp32), RECOMMENDED, rec_x)
    rq = quantize_prepared(rp, out / "rec_diag.int8.onnx", RECOMMENDED, calibrate(rp.model, rec_x, RECOMMENDED,
                                                                                   out / "rec_diag_ranges.json"),
                           calib_faces=len(rec_x))
    rec_layers = compare_layers(rp.model, rq.path, hold_x)
    return {"layers": layers.table(), "sensitivity_head_fp32": sens.table(top=12),
            "layers_recommended": rec_layers.table()}


def layer_kind(node: str) -> str:
    """MobileNet node name -> stem / depthwise / pointwise / head-and-glue (for the per-kind time split)."""
    if "depthwise" in node:
        return "depthwise conv"
    if "pointwise" in node:
        return "pointwise conv"
    if "stem" in node:
        return "stem conv"
    return "other"


def speed(fp32: Path, data: StudyData, out: Path, *, threads: Sequence[int] = (1, 2)) -> dict[str, Any]:
    """Throughput of fp32, the default int8 and the recommended recipe at batch 32 and 1 (interleaved, per
    thread count), and the per-node time split at batch 32 on one thread (median over 3 x 15 profiled runs)."""
    meta = onnx_meta(fp32)
    calib_x = preprocess(data.calib_faces, meta)
    models = {"fp32": str(fp32)}
    for label, r in (("int8 default", BASELINE), ("int8 recommended", RECOMMENDED)):
        models[label] = str(quantize_recipe(str(fp32), out / f"{label.split()[1]}.int8.onnx",
                                            calib_x[:r.calib_faces], r).path)
    res: dict[str, Any] = {"throughput": {}, "profile": {}}
    for t in threads:
        for batch, rounds in ((32, 60), (1, 600)):
            tp = compare_throughput(models, batch, threads=t, rounds=rounds)
            res["throughput"][f"t{t} b{batch}"] = {k: asdict(v) | {"images_per_s": v.images_per_s,
                                                                   "best_images_per_s": v.best_images_per_s}
                                                   for k, v in tp.items()}
    node_ms: dict[str, dict[str, tuple[str, list[float]]]] = {k: {} for k in models}
    for _ in range(3):
        for label, path in models.items():
            for node, op, ms in profile_ops(path, 32, runs=15, threads=1).nodes:
                node_ms[label].setdefault(node, (op, []))[1].append(ms)
    for label, nodes in node_ms.items():
        kinds: dict[str, float] = {}
        ops: dict[str, float] = {}
        for node, (op, v) in nodes.items():
            ms = float(np.median(v))
            kinds[layer_kind(node)] = kinds.get(layer_kind(node), 0.0) + ms
            ops[op] = ops.get(op, 0.0) + ms
        res["profile"][label] = {"by_kind_ms": kinds, "by_op_ms": dict(sorted(ops.items(), key=lambda x: -x[1])),
                                 "nodes": {n: [op, float(np.median(v))] for n, (op, v) in nodes.items()}}
    return res


def speed_markdown(res: dict[str, Any]) -> str:
    """Markdown of :func:`speed`'s result."""
    lines = ["| threads, batch | model | img/s median | vs fp32 | img/s best | vs fp32 |", "|---|---|---|---|---|---|"]
    for cond, tp in res["throughput"].items():
        f = tp["fp32"]
        for k, v in tp.items():
            lines.append(f"| {cond} | {k} | {v['images_per_s']:.0f} | {v['images_per_s'] / f['images_per_s']:.2f}x | "
                         f"{v['best_images_per_s']:.0f} | {v['best_images_per_s'] / f['best_images_per_s']:.2f}x |")
    kinds = sorted({k for p in res["profile"].values() for k in p["by_kind_ms"]})
    lines += ["", "time per batch of 32, one thread, ms (median node time; onnxruntime profiler):", "",
              "| model | " + " | ".join(kinds) + " | total |", "|---|" + "---|" * (len(kinds) + 1)]
    for label, p in res["profile"].items():
        lines.append(f"| {label} | " + " | ".join(f"{p['by_kind_ms'].get(k, 0.0):.2f}" for k in kinds)
                     + f" | {sum(p['by_kind_ms'].values()):.2f} |")
    lines += ["", "| model | " + " | ".join(["op", "ms"] * 4) + " |", "|---|" + "---|" * 8]
    for label, p in res["profile"].items():
        top = list(p["by_op_ms"].items())[:4]
        lines.append(f"| {label} | " + " | ".join(f"{op} | {ms:.2f}" for op, ms in top) + " |" * (1 if top else 0))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.int8_study", description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", action="append", default=[], type=Path, help="student.pt (repeatable)")
    ap.add_argument("--onnx", action="append", default=[], metavar="NAME=FILE", help="fp32 ONNX export (repeatable)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--lfw", type=Path, default=LFW)
    ap.add_argument("--calib", type=int, default=2048, help="calibration faces available (default 2048)")
    ap.add_argument("--variants", choices=("full", "short", "none"), default="full")
    ap.add_argument("--no-diagnose", action="store_true", help="skip the per-layer and sensitivity tables")
    ap.add_argument("--speed", action="store_true", help="also measure throughput and profiles")
    args = ap.parse_args(argv)
    students: list[tuple[str, Path]] = []
    for ck in args.checkpoint:
        name = ck.stem if ck.stem != "student" else ck.parent.name
        students.append((name, export_fp32(ck, args.out / name / "student.onnx")))
    for spec in args.onnx:
        name, _, path = spec.partition("=")
        students.append((name, Path(path)))
    if not students:
        ap.error("give --checkpoint or --onnx")
    templates = {onnx_meta(p)["preprocessing"]["alignment"] for _, p in students}
    data = {t: load_study_data(args.lfw, args.calib, t) for t in templates}
    for name, fp32 in students:
        out = args.out / name
        out.mkdir(parents=True, exist_ok=True)
        d = data[onnx_meta(fp32)["preprocessing"]["alignment"]]
        result: dict[str, Any] = {"student": name, "fp32": str(fp32)}
        print(f"## {name}\n")
        if not args.no_diagnose:
            diag = diagnose(fp32, d, out)
            result["diagnosis"] = diag
            print("per-layer int8 (onnxruntime default) vs fp32:\n```\n" + diag["layers"] + "\n```\n")
            print("one quantiser at a time (head fp32):\n```\n" + diag["sensitivity_head_fp32"] + "\n```\n")
            print("per-layer, recommended recipe (before its output bias correction):\n```\n"
                  + diag["layers_recommended"] + "\n```\n")
        if args.variants != "none":
            base, rows = run_variants(fp32, name, d, variants(args.variants), out)
            result["fp32_quality"] = asdict(base)
            result["rows"] = [asdict(r) for r in rows]
            print(variants_table(base, rows, fp32.stat().st_size) + "\n")
        if args.speed:
            sp = speed(fp32, d, out)
            result["speed"] = sp
            print(speed_markdown(sp) + "\n")
        (out / "study.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
