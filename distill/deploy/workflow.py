"""``distill export`` end to end: export + parity, then optionally int8 with its accuracy and latency cost.

Example::

    summary = export_student("runs/r1/student.pt", "deploy/student.onnx", "onnx", int8=True,
                             pairs="../shared/data/lfw/pairsDevTest.txt")
    summary["parity"]["max_abs_diff"], summary["accuracy"]["int8"]["accuracy_mean"]
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .export import PARITY_TOL, export_model
from .faces import DEFAULT_CACHE_DIR, align_rel_paths, default_lfw_images, sample_identity_images
from distill.models.exported import ExportError, OnnxEmbedder, load_export_model, onnx_latency

from .quantize import embedding_agreement, int8_path, latency_table, load_pairs, quantize_int8, verification_accuracy

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
                   calib_images: str | Path | None = None, calib_count: int = 256, calibrate: str = "minmax",
                   pairs: str | Path | None = None, images_root: str | Path | None = None,
                   max_pairs: int | None = None, evaluate: bool = True, align_backend: str = "dlib",
                   cache_dir: str | Path = DEFAULT_CACHE_DIR, latency: bool = True,
                   latency_batches: Sequence[int] = (1, 32), tol: float = PARITY_TOL,
                   log: Log = print) -> dict[str, Any]:
    """Export ``checkpoint`` with a parity check; with ``int8``, quantise and measure both models.

    Parity faces: ``parity_count`` images of ``parity_images`` (default: the shared LFW folder),
    aligned with the checkpoint's template. With ``int8`` (ONNX only): calibration on
    ``calib_count`` faces (see :func:`calibration_images`), accuracy of fp32 and int8 on ``pairs``
    (default LFW ``pairsDevTest.txt``; ``max_pairs`` takes a balanced subset; ``evaluate=False`` skips it),
    and onnxruntime latency.
    Returns a JSON-ready summary.
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
    eval_rel, eval_pairs, people = [], None, set()
    if pairs is not None:
        img_root = Path(images_root) if images_root is not None else pairs_images_root(pairs)
        eval_rel, eval_pairs, people = load_pairs(pairs, img_root, max_pairs=max_pairs)
    croot, crel, where = calibration_images(checkpoint, calib_count, calib_images=calib_images,
                                            exclude_identities=people)
    calib = align_rel_paths(croot, crel, template=template, backend=align_backend, cache_dir=cache_dir).faces
    qout = Path(int8_out) if int8_out is not None else int8_path(out)
    q = quantize_int8(res["path"], qout, np.asarray(calib), method=calibrate)
    log(f"int8 -> {qout} ({q['bytes'] / 1e6:.2f} MB, QDQ per-channel, {calibrate} calibration on "
        f"{q['calibration']['faces']} faces: {where})")
    fp32, i8 = OnnxEmbedder(res["path"]), OnnxEmbedder(qout)
    summary["int8"] = {"path": str(qout), "bytes": q["bytes"], "calibration": {**q["calibration"], "source": where}}
    faces_t = torch.from_numpy(np.array(parity_faces))
    agree = embedding_agreement(fp32.embed(faces_t).numpy(), i8.embed(faces_t).numpy())
    summary["int8"]["agreement_with_fp32"] = agree
    log(f"int8 vs fp32 embeddings on the parity faces: mean cosine {agree['mean_cosine']:.5f}, "
        f"min {agree['min_cosine']:.5f}; error {agree['relative_error']:.3f} of the distance between faces")
    if not agree["relative_error"] < 0.1:
        log(f"warning: int8 error is {agree['relative_error']:.2g} of the typical distance between different faces "
            f"(fp32 faces are {agree['spread']:.3g} apart on average): expect an accuracy drop. A tiny spread "
            f"means a collapsed student whose fp32 accuracy already hangs on minute differences")
    if eval_pairs is not None:
        af = align_rel_paths(img_root, eval_rel, template=template, backend=align_backend, cache_dir=cache_dir)
        pos = {p: i for i, p in enumerate(af.rel_paths)}
        if len(pos) != len(eval_rel):  # images skipped in alignment: drop their pairs
            keep = np.array([eval_rel[a] in pos and eval_rel[b] in pos
                             for a, b in zip(eval_pairs.idx_a, eval_pairs.idx_b)], dtype=bool)
            remap = np.array([pos.get(p, -1) for p in eval_rel])
            eval_pairs = eval_pairs.subset(keep)
            eval_pairs = type(eval_pairs)(remap[eval_pairs.idx_a], remap[eval_pairs.idx_b], eval_pairs.is_same,
                                          eval_pairs.fold)
        acc, _ = verification_accuracy({"fp32": fp32, "int8": i8}, af.faces, eval_pairs)
        drop = 100 * (acc["fp32"].accuracy_mean - acc["int8"].accuracy_mean)
        summary["accuracy"] = {**{k: {f: getattr(v, f) for f in ("accuracy_mean", "accuracy_std", "auc", "eer",
                                                                     "best_accuracy", "n_pairs", "tar_at_far")}
                                      for k, v in acc.items()},
                               "pairs": str(pairs), "n_pairs": len(eval_pairs), "drop_points": drop}
        log(f"verification on {len(eval_pairs)} pairs of {pairs.name}: fp32 "
            f"{100 * acc['fp32'].accuracy_mean:.2f}%  int8 {100 * acc['int8'].accuracy_mean:.2f}%  "
            f"(drop {drop:+.2f} points; AUC {acc['fp32'].auc:.4f} -> {acc['int8'].auc:.4f})")
    else:
        log("int8 accuracy not measured" + (" (no pairs file found: pass --pairs FILE)" if evaluate else ""))
    if latency:
        summary["latency"] = {"fp32": onnx_latency(res["path"], batch_sizes=latency_batches),
                              "int8": onnx_latency(qout, batch_sizes=latency_batches)}
        log("onnxruntime CPU latency (median):\n" + latency_table(list(summary["latency"].items())))
    return summary
