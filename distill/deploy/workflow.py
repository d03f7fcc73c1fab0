"""``distill export`` end to end: export + parity, then optionally int8 with its accuracy and latency cost.

Example::

    summary = export_student("runs/r1/student.pt", "deploy/student.onnx", "onnx", int8=True,
                             pairs="../shared/data/lfw/pairsDevTest.txt")
    summary["parity"]["max_abs_diff"], summary["accuracy"]["int8"]["accuracy_mean"]
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .export import PARITY_TOL, export_model
from .faces import DEFAULT_CACHE_DIR, align_rel_paths, default_lfw_images, sample_identity_images
from distill.models.exported import ExportError, OnnxEmbedder, load_export_model, onnx_latency

from distill.data.pairs import detect_image_ext, read_pairs

from .int8 import RECOMMENDED
from .int8_check import Int8Tolerance, compare_int8, layer_report
from .quantize import embedding_agreement, int8_path, latency_table, quantize_int8

#: calibration faces of the plain recipe (onnxruntime defaults; the recommended recipe carries its own)
PLAIN_CALIB_FACES = 256

Log = Callable[[str], None]


def default_pairs_file() -> Path | None:
    """LFW's View-1 test pairs (``pairsDevTest.txt``) beside the shared LFW images, when present."""
    lfw = default_lfw_images()
    f = lfw.parent / "pairsDevTest.txt" if lfw is not None else None
    return f if f is not None and f.is_file() else None


def pairs_images_root(pairs: Path) -> Path:
    """LFW layout: images live in ``lfw-deepfunneled`` beside the pairs file (else the file's folder)."""
    cand = pairs.parent / "lfw-deepfunneled"
    return cand if cand.is_dir() else pairs.parent


def calibration_images(checkpoint: str | Path, n: int, *, calib_images: str | Path | None = None,
                       exclude_identities: set[str] = frozenset(), seed: int = 0) -> tuple[Path, list[str], str]:
    """Where int8 calibration faces come from: ``(root, rel_paths, description)``.

    ``calib_images`` when given; else the training images of the checkpoint's run
    (``RUN/split/train_images.json``); else LFW. Identities in ``exclude_identities`` (the
    evaluation people) are never used.
    """
    if calib_images is not None:
        root = Path(calib_images)
        if not root.is_dir():
            raise ExportError(f"--calib-images {root} is not a folder of face images")
        return root, sample_identity_images(root, n, seed=seed, exclude_identities=exclude_identities), str(root)
    split = Path(checkpoint).parent / "split" / "train_images.json"
    if split.is_file():
        from distill.data.folders import load_image_list

        images = load_image_list(split)
        if images.root.is_dir():
            keep = [p for p in images.rel_paths if p.split("/", 1)[0] not in exclude_identities]
            if keep:
                pick = np.random.default_rng(seed).choice(len(keep), min(n, len(keep)), replace=False)
                return images.root, [keep[i] for i in sorted(pick)], f"training images of the run ({split})"
    lfw = default_lfw_images()
    if lfw is None:
        raise ExportError("no calibration faces: pass --calib-images DIR (identity folders of face photos from "
                          "the training data), or make ../shared/data/lfw available")
    return lfw, sample_identity_images(lfw, n, seed=seed, exclude_identities=exclude_identities), str(lfw)


def export_student(checkpoint: str | Path, out: str | Path, fmt: str = "onnx", *, int8: bool = False,
                   int8_out: str | Path | None = None, with_projection: bool = False,
                   parity_images: str | Path | None = None, parity_count: int = 16,
                   calib_images: str | Path | None = None, calib_count: int | None = None, calibrate: str = "minmax",
                   pairs: str | Path | None = None, images_root: str | Path | None = None,
                   max_pairs: int | None = None, evaluate: bool = True, align_backend: str = "dlib",
                   cache_dir: str | Path = DEFAULT_CACHE_DIR, latency: bool = True,
                   latency_batches: Sequence[int] = (1, 32), tol: float = PARITY_TOL, recipe: str = "recommended",
                   layers: bool = False, tolerance: Int8Tolerance = Int8Tolerance(),
                   log: Log = print) -> dict[str, Any]:
    """Export ``checkpoint`` with a parity check; with ``int8``, quantise and measure both models.

    Parity faces: ``parity_count`` images of ``parity_images`` (default: the shared LFW folder),
    aligned with the checkpoint's template. With ``int8`` (ONNX only): the ``recipe``
    (``"recommended"``: :data:`~distill.deploy.int8.RECOMMENDED`; ``"plain"``: onnxruntime's default),
    calibrated on ``calib_count`` faces (default: the number the recipe was measured with, 1,024 for the
    recommended one; 256 for plain; see :func:`calibration_images`); with ``layers`` the
    layer-by-layer comparison; fp32 and int8 verification on ``pairs`` (default LFW
    ``pairsDevTest.txt``; ``max_pairs`` takes a balanced subset; ``evaluate=False`` skips it) and on
    every pair of its people's images, checked against ``tolerance``; onnxruntime latency.
    Returns a JSON-ready summary (``summary["int8"]["within_tolerance"]``: None when not measured).
    """
    if fmt != "onnx" and int8:
        raise ExportError("int8 quantisation works on ONNX exports; use --format onnx with --int8")
    model, meta = load_export_model(checkpoint, with_projection=with_projection)
    template = meta["preprocessing"]["alignment"]
    root = Path(parity_images) if parity_images is not None else default_lfw_images()
    if root is None or not root.is_dir():
        raise ExportError("no faces for the parity check: pass --parity-images DIR (face photos, identity folders "
                          "or flat), or make ../shared/data/lfw available")
    rel = sample_identity_images(root, parity_count)
    parity_faces = align_rel_paths(root, rel, template=template, backend=align_backend, cache_dir=cache_dir).faces
    res = export_model(model, meta, out, fmt, parity_faces, faces_alignment=template, tol=tol)  # type: ignore[arg-type]
    par = res["parity"]
    log(f"exported {meta['name']} -> {res['path']} ({fmt}, {res['bytes'] / 1e6:.2f} MB, {meta['embedding_dim']}-D "
        f"{meta['distance']}, input {meta['preprocessing']['input_size']}px {template})")
    log(f"parity vs PyTorch on {par['faces']} aligned faces from {root}: max abs diff {par['max_abs_diff']:.2e} "
        f"(tolerance {tol:g}), min cosine {par['min_cosine']:.6f}")
    summary: dict[str, Any] = {"checkpoint": str(checkpoint), "name": meta["name"], "format": fmt,
                               "path": str(res["path"]), "bytes": res["bytes"], "metadata": meta, "parity": par}
    if not int8:
        if latency and fmt == "onnx":
            summary["latency"] = {"fp32": onnx_latency(res["path"], batch_sizes=latency_batches)}
            log(latency_table([("fp32", summary["latency"]["fp32"])]))
        return summary

    # --- int8: calibrate on training faces, never on the evaluation people
    pairs = None if not evaluate else Path(pairs) if pairs is not None else default_pairs_file()
    people: set[str] = set()
    if pairs is not None:
        img_root = Path(images_root) if images_root is not None else pairs_images_root(pairs)
        people = read_pairs(pairs, img_root, ext=detect_image_ext(img_root), check_exists=False).people()
    if calib_count is None:
        calib_count = RECOMMENDED.calib_faces if recipe == "recommended" else PLAIN_CALIB_FACES
    croot, crel, where = calibration_images(checkpoint, calib_count, calib_images=calib_images,
                                            exclude_identities=people)
    calib = align_rel_paths(croot, crel, template=template, backend=align_backend, cache_dir=cache_dir).faces
    qout = Path(int8_out) if int8_out is not None else int8_path(out)
    q = quantize_int8(res["path"], qout, np.asarray(calib), method=calibrate,
                      recipe=RECOMMENDED if recipe == "recommended" else None)
    fp32_nodes = len(q["calibration"].get("fp32_nodes") or [])
    log(f"int8 -> {qout} ({q['bytes'] / 1e6:.2f} MB, {recipe} recipe: {q['calibration']['method']} calibration on "
        f"{q['calibration']['faces']} faces ({where}), {fp32_nodes} nodes kept in fp32)")
    fp32, i8 = OnnxEmbedder(res["path"]), OnnxEmbedder(qout)
    summary["int8"] = {"path": str(qout), "bytes": q["bytes"], "recipe": recipe,
                       "calibration": {**q["calibration"], "source": where}}
    faces_t = torch.from_numpy(np.array(parity_faces))
    agree = embedding_agreement(fp32.embed(faces_t).numpy(), i8.embed(faces_t).numpy())
    summary["int8"]["agreement_with_fp32"] = agree
    if layers:
        report = layer_report(res["path"], qout, calib, recipe, meta)
        summary["int8"]["layers"] = [asdict(r) for r in report.layers]
        log("int8 against fp32, layer by layer (SQNR in dB; keep the worst in fp32):\n" + report.table())
    check = None
    if pairs is not None:
        check = compare_int8(fp32, i8, pairs, img_root, template=template, align_backend=align_backend,
                             cache_dir=cache_dir, max_pairs=max_pairs, tolerance=tolerance, log=log)
        summary["accuracy"] = check.to_dict()
    else:
        log("int8 accuracy not measured" + (" (no pairs file found: pass --pairs FILE)" if evaluate else ""))
    summary["int8"]["within_tolerance"] = None if check is None else not check.misses
    if latency:
        summary["latency"] = {"fp32": onnx_latency(res["path"], batch_sizes=latency_batches),
                              "int8": onnx_latency(qout, batch_sizes=latency_batches)}
        log("onnxruntime CPU latency (median):\n" + latency_table(list(summary["latency"].items())))
    if check is not None:
        log(check.verdict())
    return summary
