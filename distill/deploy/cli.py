"""``distill export`` and ``distill gallery build|search``; :func:`register_cli` adds them to the CLI.

Example (in ``distill.cli.build_parser``)::

    from distill.deploy.cli import register_cli
    register_cli(sub)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import UsageError

from .faces import DEFAULT_CACHE_DIR


def _usage(msg: str) -> Exception:
    return UsageError(msg)


def _batches(text: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated batch sizes like 1,32, got {text!r}") from None
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1, got {text!r}")
    return out


def _jsonable(obj: Any) -> Any:
    from distill.evaluation.results import jsonable

    return jsonable(obj)


# --------------------------------------------------------------------------- export
def cmd_export(args: argparse.Namespace) -> int:
    """``distill export CHECKPOINT -o FILE``: export with a parity check, optionally int8."""
    from distill.io import atomic_write_json

    from .workflow import export_student

    if args.int8 and args.format != "onnx":
        raise _usage("--int8 needs --format onnx (int8 uses onnxruntime's static quantisation)")
    if not args.checkpoint.is_file():
        raise _usage(f"checkpoint {args.checkpoint} does not exist (the deployable student is RUN/student.pt)")
    from .int8_check import Int8Tolerance

    summary = export_student(
        args.checkpoint, args.output, args.format, int8=args.int8, int8_out=args.int8_output,
        recipe=args.int8_recipe, layers=args.layers,
        tolerance=Int8Tolerance(args.max_accuracy_drop, args.max_tar_drop, args.min_cosine),
        with_projection=args.with_projection, parity_images=args.parity_images, parity_count=args.parity_count,
        calib_images=args.calib_images, calib_count=args.calib_count, calibrate=args.calibrate, pairs=args.pairs,
        images_root=args.images_root, max_pairs=args.max_pairs, evaluate=not args.no_accuracy,
        align_backend=args.align_backend,
        cache_dir=args.cache_dir, latency=not args.no_latency, latency_batches=args.latency_batches)
    record = args.json or Path(str(args.output) + ".export.json")
    atomic_write_json(record, _jsonable(summary))
    print(f"export record -> {record}")
    if summary.get("int8", {}).get("within_tolerance") is False and not args.allow_accuracy_loss:
        print("distill: error: the int8 file misses the accuracy tolerance (see above); it was written anyway. "
              "Pass --allow-accuracy-loss to accept it, or ship the fp32 file.", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- gallery
def cmd_gallery_build(args: argparse.Namespace) -> int:
    """``distill gallery build``: enrol identity folders into a FAISS gallery."""
    from .gallery import build_gallery
    from distill.models import load_embedder

    if not args.images.is_dir():
        raise _usage(f"--images {args.images} is not a folder (expected identity folders DIR/<person>/<image>)")
    emb = load_embedder(args.model, with_projection=args.with_projection)
    calibration = _build_calibration(args, emb)
    res = build_gallery(emb, args.model, args.images, args.output, allow_cross_model=args.allow_cross_model,
                        overwrite=args.overwrite, index_kind=args.index, align_backend=args.align_backend,
                        cache_dir=args.cache_dir, no_face=args.no_face, multi_face=args.multi_face,
                        calibration=calibration, batch_size=args.batch_size)
    multi = [p for p, v in res["several_faces"].items() if not v["enrolled"]]
    print(f"gallery {res['gallery']}: {res['items']} faces of {res['identities']} identities "
          f"({res['added']} added, {res['already_present']} already enrolled, {len(res['skipped'])} images "
          f"skipped, {len(res['no_face'])} of them with no face found, {len(multi)} with several faces) with "
          f"{res['model']['name']} [{res['model']['fingerprint']}]")
    print(f"  decisions: " + (f"calibrated on {res['calibration']} (search with --far 1e-3)" if res["calibration"]
                              else "not calibrated (--calibration-images DIR or --report RUN/report.json lets "
                                   "searches decide by false-accept rate)"))
    if res["skipped_identities"]:
        print(f"  {len(res['skipped_identities'])} identity folders skipped (no usable image): "
              f"{', '.join(res['skipped_identities'][:10])}")
    for path, why in list(res["skipped"].items())[:10]:
        print(f"  skipped {path}: {why}")
    if res["no_face"] and args.no_face == "skip":
        print("  (images with no face found are not enrolled; --no-face center enrols their centre crops)")
    return 0


def _build_calibration(args: argparse.Namespace, emb: Any) -> Any:
    """The gallery's :class:`~distill.deploy.decision.Calibration`: every pair of ``--calibration-images``,
    else ``--report``'s ROC, else the report of the run a ``student.pt`` comes from (when it has this model)."""
    from .decision import DecisionError, calibration_from_embeddings, calibration_from_report

    if args.calibration_images is not None:
        from distill.data.folders import scan_identity_folder
        from distill.evaluation import extract_embeddings

        from .faces import align_rel_paths

        if not args.calibration_images.is_dir():
            raise _usage(f"--calibration-images {args.calibration_images} is not a folder of identity folders")
        scan = scan_identity_folder(args.calibration_images)
        af = align_rel_paths(args.calibration_images, scan.rel_paths, template=emb.preprocessing.alignment,
                             backend=args.align_backend, cache_dir=args.cache_dir, no_face="skip")
        vectors = extract_embeddings(emb, af.faces, progress=False)
        return calibration_from_embeddings(vectors, scan.labels[af.indices], bool(emb.normalized),
                                           f"{args.calibration_images} ({len(af)} images, every pair)")
    if args.report is not None:
        return calibration_from_report(args.report, args.report_model or emb.name, args.protocol)
    beside = Path(args.model).parent / "report.json"
    if Path(args.model).is_file() and beside.is_file():
        try:
            return calibration_from_report(beside, args.report_model or emb.name, args.protocol)
        except DecisionError:
            return None
    return None


def _probe_files(items: list[Path]) -> list[Path]:
    from distill.data.folders import IMAGE_EXTENSIONS

    out: list[Path] = []
    for p in items:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            out.append(p)
        else:
            raise _usage(f"probe image {p} does not exist")
    if not out:
        where = ", ".join(str(p) for p in items)
        raise _usage(f"no probe images found in {where} (image files: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return out


def _search_threshold(args: argparse.Namespace, gal: Any, emb: Any) -> tuple[Any, list[str]]:
    """The decision rule of a search (:func:`~distill.deploy.decision.decide`), or ``(None, [])`` for none."""
    from .decision import calibration_from_report, decide

    if args.threshold is None and args.far is None:
        return None, []
    cal = gal.calibration
    if args.report is not None:
        cal = calibration_from_report(args.report, args.report_model or emb.name, args.protocol)
    return decide(gal.score, cal, threshold=args.threshold, far=args.far, force=args.force_threshold)


def _answers(gal: Any, emb: Any, faces: list[Any], args: argparse.Namespace, score: float | None) -> list[dict]:
    """One answer per probe face (all faces, or the largest of each photo with ``--faces largest``)."""
    from distill.evaluation import extract_embeddings

    from .gallery import search_gallery

    if args.faces == "largest":
        faces = [f for f in faces if f.index == 0]
    if not faces:
        return []
    vectors = extract_embeddings(emb, np.stack([f.crop for f in faces]), progress=False)
    return [{"image": str(f.image), "face": f.index, "faces_in_image": f.faces_in_image, "box": f.box, **r}
            for f, r in zip(faces, search_gallery(gal, vectors, k=args.k, threshold=score))]


def cmd_gallery_search(args: argparse.Namespace) -> int:
    """``distill gallery search``: identify every face in photos against a gallery."""
    from .faces import probe_faces
    from .gallery import check_model, load_gallery, no_face_result, score_text
    from distill.models import load_embedder

    if args.k < 1:
        raise _usage(f"--k must be >= 1, got {args.k}")
    gal = load_gallery(args.gallery)
    emb = load_embedder(args.model or gal.model["ref"], with_projection=args.with_projection)
    check_model(gal, emb, allow_cross_model=args.allow_cross_model)
    rule, warnings = _search_threshold(args, gal, emb)
    for w in warnings:
        print(f"distill: warning: {w}", file=sys.stderr)
    files = _probe_files(args.images)
    faces, skipped = probe_faces(files, template=emb.preprocessing.alignment, backend=args.align_backend)
    answers = _answers(gal, emb, faces, args, None if rule is None else rule.score)
    faceless = {p: why for p, why in skipped.items() if why.startswith("no face found")}
    answers += [{"image": p, "faces_in_image": 0, **no_face_result(why)} for p, why in faceless.items()]
    order = {str(f): i for i, f in enumerate(files)}
    answers.sort(key=lambda a: (order.get(a["image"], len(order)), a.get("face", 0)))
    unreadable = {p: why for p, why in skipped.items() if p not in faceless}
    if args.json:
        print(json.dumps(_jsonable({"gallery": str(gal.root), "model": emb.name, "metric": gal.metric,
                                    "score": gal.score.kind, "threshold": None if rule is None else rule.to_dict(),
                                    "skipped": unreadable, "probes": answers}), indent=2))
        return 0
    if rule is not None:
        print(rule.text())
    for a in answers:
        if not a["face_found"]:
            print(f"{a['image']}  -> no face found (no decision)")
            continue
        where = f"face {a['face'] + 1} of {a['faces_in_image']} at box {[round(v) for v in a['box']]}" \
            if a["faces_in_image"] > 1 else "1 face"
        top = a["matches"][0]
        verdict = "" if a["decision"] is None else (f"  -> {top['identity']}" if a["decision"] == "same"
                                                     else "  -> unknown (no gallery identity within the threshold)")
        print(f"{a['image']} [{where}]{verdict}")
        for m in a["matches"]:
            print(f"  {m['rank']:2d}. {m['identity']:30s} {score_text(m['score'], gal.metric)}  {Path(m['path']).name}")
    for path, why in unreadable.items():
        print(f"{path}: skipped ({why})")
    return 0


# --------------------------------------------------------------------------- parser
def _align_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--align-backend", choices=("dlib", "mtcnn", "yunet", "none"), default="dlib",
                   help="landmark detector used to align faces ('none': images are aligned crops); default dlib")
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR,
                   help=f"cache folder for aligned faces (default {DEFAULT_CACHE_DIR}, shared with `distill run`)")


def register_cli(subparsers: Any) -> None:
    """Add ``export`` and ``gallery build|search`` to the ``distill`` sub-command parsers."""
    _export_parser(subparsers)
    _gallery_parser(subparsers)


def _export_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "export", help="export a student to ONNX or TorchScript (parity-checked; optional int8)",
        description="Export RUN/student.pt as one graph (student + embedding head + normalisation) with dynamic "
                    "batch. Input: the preprocessed float tensor (B,3,S,S), RGB, (pixel - mean)/std; input size, "
                    "mean/std, alignment template, embedding dim, normalisation and distance are stored in the "
                    "file's metadata. The export is run on real aligned faces and must match PyTorch within "
                    "1e-4. --int8 adds a statically quantised ONNX model (the recommended recipe) and prints "
                    "fp32 and int8 side by side: accuracy on the pairs, TAR@FAR=1e-3 on every pair of their "
                    "people, cosine of int8 to fp32, latency; writes them into the export record; and exits 1 "
                    "when int8 misses the tolerance, unless --allow-accuracy-loss (the file is written anyway).")
    p.add_argument("checkpoint", type=Path, help="student checkpoint (RUN/student.pt)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", help="default onnx")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="exported model file")
    p.add_argument("--int8", action="store_true", help="also write FILE.int8.onnx (static int8) and compare it")
    p.add_argument("--int8-output", type=Path, metavar="FILE", help="int8 file (default: FILE with .int8.onnx)")
    p.add_argument("--with-projection", action="store_true",
                   help="append the trained student->teacher projection (embeddings in the teacher's space)")
    p.add_argument("--parity-images", type=Path, metavar="DIR",
                   help="face photos for the parity check (default: the shared LFW folder)")
    p.add_argument("--parity-count", type=int, default=16, help="faces in the parity check (default 16)")
    p.add_argument("--calib-images", type=Path, metavar="DIR",
                   help="int8 calibration photos (default: the run's training images, else LFW minus the pairs' "
                        "people)")
    p.add_argument("--calib-count", type=int, default=None,
                   help="calibration faces (default: 1024 for the recommended recipe, as measured; 256 for plain)")
    p.add_argument("--calibrate", choices=("minmax", "entropy", "percentile"), default="minmax",
                   help="activation range calibration (default minmax)")
    p.add_argument("--int8-recipe", choices=("recommended", "plain"), default="recommended",
                   help="recommended (default): head, stem and last block in fp32, activation equalisation and "
                        "output bias correction (docs/int8.md); plain: onnxruntime's default quantisation")
    p.add_argument("--layers", action="store_true",
                   help="print and record the int8-vs-fp32 error of every layer (which to keep in fp32)")
    p.add_argument("--max-accuracy-drop", type=float, default=0.5, metavar="POINTS",
                   help="int8 tolerance: accuracy points it may lose on the pairs (default 0.5)")
    p.add_argument("--max-tar-drop", type=float, default=2.0, metavar="POINTS",
                   help="int8 tolerance: TAR@FAR=1e-3 points it may lose on every pair of the pairs' people "
                        "(default 2)")
    p.add_argument("--min-cosine", type=float, default=0.99,
                   help="int8 tolerance: mean cosine of int8 to fp32 embeddings (default 0.99)")
    p.add_argument("--allow-accuracy-loss", action="store_true",
                   help="exit 0 even when the int8 file misses the tolerance (it is always written)")
    p.add_argument("--pairs", type=Path, metavar="FILE",
                   help="LFW-format pairs file for the fp32 vs int8 accuracy (default: LFW pairsDevTest.txt)")
    p.add_argument("--images-root", type=Path, metavar="DIR",
                   help="folder the pairs' images live in (default: lfw-deepfunneled beside the pairs file)")
    p.add_argument("--max-pairs", type=int, metavar="N", help="evaluate a balanced subset of N pairs")
    p.add_argument("--no-accuracy", action="store_true", help="--int8 without the fp32/int8 accuracy comparison")
    p.add_argument("--latency-batches", type=_batches, default=(1, 32), metavar="B,B",
                   help="batch sizes for the latency measurement (default 1,32)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency measurement")
    p.add_argument("--json", type=Path, metavar="FILE",
                   help="where to write the export record (default: FILE.export.json beside the export)")
    _align_args(p)
    p.set_defaults(func=cmd_export)



def _gallery_parser(subparsers: Any) -> None:
    g = subparsers.add_parser("gallery", help="build or search a FAISS gallery of known faces",
                              description="Enrol identity folders into a FAISS gallery and search it with photos.")
    gsub = g.add_subparsers(dest="gallery_command", metavar="ACTION")
    gsub.required = True
    b = gsub.add_parser("build", help="enrol identity folders (DIR/<person>/<image>) into a gallery",
                        description="Align (with the cache), embed and index every image of DIR/<person>/. Images "
                                    "with no face found are not enrolled (listed; --no-face center enrols them), "
                                    "folders with no usable image are skipped and counted. The gallery stores the "
                                    "model's fingerprint; adding with another model is refused unless "
                                    "--allow-cross-model.")
    b.add_argument("--model", required=True, metavar="MODEL",
                   help="student.pt, an exported .onnx / TorchScript file, teacher:NAME (e.g. teacher:dlib_resnet) or "
                        "teacher:CONFIG.yaml (the teacher section of a run config: an ONNX teacher with its options)")
    b.add_argument("--images", type=Path, required=True, metavar="DIR", help="identity folders to enrol")
    b.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="gallery folder")
    b.add_argument("--index", choices=("flat", "ivf", "hnsw"), default="flat",
                   help="FAISS index (flat = exact; default)")
    b.add_argument("--allow-cross-model", action="store_true",
                   help="deliberately add embeddings of a different model (same embedding space only)")
    b.add_argument("--overwrite", action="store_true", help="replace an existing gallery instead of adding to it")
    b.add_argument("--with-projection", action="store_true", help="student.pt: embed in the teacher's space")
    b.add_argument("--no-face", choices=("skip", "center"), default="skip",
                   help="images where no face is found: skip them (default; listed) or enrol their centre crop")
    b.add_argument("--multi-face", choices=("skip", "dominant"), default="skip",
                   help="photos with several faces: skip them (default; listed, since it is not known which face is "
                        "the person) or enrol the face taken only when it is 2x the area of every other")
    b.add_argument("--calibration-images", type=Path, metavar="DIR",
                   help="identity folders of people (others than the enrolled ones, ideally): every pair is scored "
                        "with the model and stored, so searches can decide by false-accept rate (--far)")
    b.add_argument("--report", type=Path, metavar="FILE",
                   help="calibrate from an evaluation report.json (or its run folder) instead; default: the report "
                        "beside a student.pt, when it evaluated that model")
    b.add_argument("--report-model", metavar="NAME", help="model entry of the report (default: the model's name)")
    b.add_argument("--protocol", metavar="NAME",
                   help="report protocol (default: the one with the most impostor pairs)")
    b.add_argument("--batch-size", type=int, default=64, help="images embedded per batch (default 64)")
    _align_args(b)
    b.set_defaults(func=cmd_gallery_build)

    s = gsub.add_parser("search", help="identify faces in photos against a gallery",
                        description="Detect every face in each photo, align and embed it, print the top-k gallery "
                                    "identities with their scores and, with --far or --threshold, a same/different "
                                    "decision for the best one; each answer names its face (index, box, faces in the "
                                    "photo). A photo in which no face is found is reported as 'no face found' and "
                                    "never decided (JSON: face_found false). --threshold is checked against the "
                                    "score's range and, on a calibrated gallery, against the FAR it means: one that "
                                    "accepts over 1%% of impostors is refused unless --force-threshold.")
    s.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="probe photos (or folders of photos)")
    s.add_argument("--gallery", type=Path, required=True, metavar="DIR")
    s.add_argument("--k", type=int, default=5, help="identities to list per photo (default 5)")
    thr = s.add_mutually_exclusive_group()
    thr.add_argument("--threshold", type=float,
                     help="decision threshold in the model's units: cosine (accept >= T) for normalised models, "
                          "Euclidean distance (accept <= T, e.g. 0.6 for dlib) for raw ones")
    thr.add_argument("--far", type=float, help="decide at this false-accept rate (e.g. 1e-3), from the gallery's "
                                               "calibration or --report's ROC")
    s.add_argument("--force-threshold", action="store_true",
                   help="apply a --threshold that accepts more than 1%% of the calibration's impostors")
    s.add_argument("--faces", choices=("all", "largest"), default="all",
                   help="answer for every face of a photo (default) or only its largest")
    s.add_argument("--report", type=Path, metavar="FILE",
                   help="evaluation report.json (or its run folder) to calibrate with instead of the gallery's own")
    s.add_argument("--report-model", metavar="NAME", help="model entry of the report (default: the model's name)")
    s.add_argument("--protocol", metavar="NAME", help="report protocol (default: the one with the most impostors)")
    s.add_argument("--model", metavar="MODEL", help="embed with this model (default: the gallery's)")
    s.add_argument("--allow-cross-model", action="store_true",
                   help="deliberately search with a model other than the gallery's (same embedding space only)")
    s.add_argument("--with-projection", action="store_true", help="student.pt: embed in the teacher's space")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    _align_args(s)
    s.set_defaults(func=cmd_gallery_search)
