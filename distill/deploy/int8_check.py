"""Is the int8 file good enough to ship? fp32 and int8 side by side on real pairs, against a tolerance.

Both exported files embed the same aligned faces: every image of the people of a pairs file. They
are scored on the file's pairs (10-fold accuracy) and on every pair of those images (TAR at
FAR=1e-3, which needs many impostors: LFW DevTest people give 3.7M), and compared embedding by
embedding (mean cosine of int8 to fp32). :class:`Int8Tolerance` says how much int8 may lose.

Example::

    check = compare_int8(OnnxEmbedder("s.onnx"), OnnxEmbedder("s.int8.onnx"), pairs, images_root,
                         template="dlib_150")
    check.misses            # [] when within tolerance
    print(check.verdict())
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from distill.data.folders import scan_identity_folder
from distill.hardware import cpu_capability
from distill.data.pairs import all_pairs, detect_image_ext, read_pairs
from distill.evaluation import PairIndex, evaluate_pairs, extract_embeddings

from .faces import align_rel_paths

#: the FAR at which TAR is compared
CHECK_FAR = 1e-3


@dataclass(frozen=True)
class Int8Tolerance:
    """How much the int8 file may lose against fp32: accuracy and TAR@1e-3 in points, the mean cosine floor."""

    max_accuracy_drop: float = 0.5
    max_tar_drop: float = 2.0
    min_cosine: float = 0.99


@dataclass
class Int8Check:
    """fp32 and int8 on the same faces: accuracy (fraction) on the pairs file, TAR@1e-3 on every pair of its
    people, the mean cosine of int8 to fp32 embeddings, and what missed the tolerance."""

    pairs: str
    n_pairs: int
    n_all_pairs: int
    accuracy: dict[str, float | None]
    accuracy_std: dict[str, float | None]
    tar: dict[str, float | None]
    mean_cosine: float
    tolerance: Int8Tolerance
    misses: list[str] = field(default_factory=list)
    #: the CPU capability the check ran on (:func:`distill.hardware.cpu_capability`): int8 results depend on it
    cpu: str = field(default_factory=lambda: cpu_capability().label())

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the export record."""
        return {**asdict(self), "far": CHECK_FAR}

    def verdict(self) -> str:
        """One paragraph: the numbers side by side and whether int8 is within the tolerance."""
        a, t = self.accuracy, self.tar
        pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}"  # noqa: E731
        head = (f"int8 against fp32 on {self.n_pairs} pairs of {Path(self.pairs).name}: accuracy {pct(a['fp32'])} -> "
                f"{pct(a['int8'])}; TAR@FAR={CHECK_FAR:g} on every pair of its people ({self.n_all_pairs:,}): "
                f"{pct(t['fp32'])} -> {pct(t['int8'])}; mean cosine to fp32 {self.mean_cosine:.4f}; "
                f"checked on {self.cpu}.")
        if not self.misses:
            return head + " Within tolerance."
        return (head + " NOT within tolerance: " + "; ".join(self.misses) + ". The file was written; ship the fp32 "
                "file, or try --calibrate percentile or a larger --calib-count, or accept it with --allow-accuracy-loss.")


def _drop(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else 100 * (before - after)


@dataclass
class CheckFaces:
    """What the check embeds: every aligned image of a pairs file's people ``faces`` (N, S, S, 3) uint8, the
    file's pairs (``file_pairs``) and every pair of those images (``every``), as indices into ``faces``."""

    pairs: str
    faces: np.ndarray
    file_pairs: PairIndex
    every: PairIndex


def check_faces(pairs: str | Path, images_root: str | Path, *, template: str, align_backend: str = "dlib",
                cache_dir: str | Path = ".cache/facedistill", max_pairs: int | None = None) -> CheckFaces:
    """Align every image of the people of ``pairs`` (LFW format, images under ``images_root``) to ``template``."""
    from .quantize import subset_pairs

    root = Path(images_root)
    proto = read_pairs(pairs, root, ext=detect_image_ext(root))
    images = scan_identity_folder(root).select_identities(proto.people())
    aligned = align_rel_paths(root, images.rel_paths, template=template, backend=align_backend, cache_dir=cache_dir)
    pos = {p: i for i, p in enumerate(aligned.rel_paths)}
    keep = subset_pairs(len(proto), proto.is_same, max_pairs)
    keep = [i for i in keep if proto.rel_path_a[i] in pos and proto.rel_path_b[i] in pos]
    file_pairs = PairIndex([pos[proto.rel_path_a[i]] for i in keep], [pos[proto.rel_path_b[i]] for i in keep],
                           proto.is_same[keep], proto.fold[keep])
    return CheckFaces(str(pairs), aligned.faces, file_pairs, PairIndex(*all_pairs(images.labels[aligned.indices])))


def score_int8(emb: dict[str, np.ndarray], faces: CheckFaces, normalized: bool,
               tolerance: Int8Tolerance = Int8Tolerance(), cpu: str | None = None) -> Int8Check:
    """:class:`Int8Check` of embeddings ``{"fp32": (N, D), "int8": (N, D)}`` of ``faces.faces``; ``cpu``: the
    capability the int8 embeddings were computed on (default: this CPU's label)."""
    res = {k: evaluate_pairs(v, faces.file_pairs, normalized) for k, v in emb.items()}
    tars = {k: evaluate_pairs(v, faces.every, normalized, fars=(CHECK_FAR,)).tar(CHECK_FAR) for k, v in emb.items()}
    a, b = emb["fp32"], emb["int8"]
    cos = float(((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)).mean())
    check = Int8Check(faces.pairs, len(faces.file_pairs), len(faces.every), {k: r.accuracy_mean for k, r in res.items()},
                      {k: r.accuracy_std for k, r in res.items()}, tars, cos, tolerance)
    if cpu is not None:
        check.cpu = cpu
    acc_drop, tar_drop = _drop(res["fp32"].accuracy_mean, res["int8"].accuracy_mean), _drop(tars["fp32"], tars["int8"])
    if acc_drop is not None and acc_drop > tolerance.max_accuracy_drop:
        check.misses.append(f"accuracy drops {acc_drop:.2f} points (tolerance {tolerance.max_accuracy_drop:g}; the "
                            f"fold std is {100 * (res['fp32'].accuracy_std or 0):.2f})")
    if tar_drop is not None and tar_drop > tolerance.max_tar_drop:
        check.misses.append(f"TAR@FAR={CHECK_FAR:g} drops {tar_drop:.2f} points (tolerance {tolerance.max_tar_drop:g})")
    if cos < tolerance.min_cosine:
        check.misses.append(f"mean cosine to fp32 {cos:.4f} (tolerance {tolerance.min_cosine:g})")
    return check


def compare_int8(fp32: Any, int8: Any, pairs: str | Path, images_root: str | Path, *, template: str,
                 align_backend: str = "dlib", cache_dir: str | Path = ".cache/facedistill", max_pairs: int | None = None,
                 tolerance: Int8Tolerance = Int8Tolerance(), log: Callable[[str], None] = print) -> Int8Check:
    """Score ``fp32`` and ``int8`` embedders on ``pairs`` and on every pair of its people (see the module docs)."""
    faces = check_faces(pairs, images_root, template=template, align_backend=align_backend, cache_dir=cache_dir,
                        max_pairs=max_pairs)
    emb = {k: extract_embeddings(e, faces.faces, batch_size=64, progress=False) for k, e in
           (("fp32", fp32), ("int8", int8))}
    return score_int8(emb, faces, fp32.normalized, tolerance)


def layer_report(fp32_path: str | Path, int8_path: str | Path, calib_faces: np.ndarray, recipe: str,
                 meta: dict[str, Any], n: int = 64) -> Any:
    """The layer-by-layer comparison (:func:`~distill.deploy.int8.compare_layers`) of an exported int8 file
    against the float graph it was quantised from (rebuilt from the same calibration faces, uint8
    ``(N, S, S, 3)``, so its rescalings match), on the first ``n`` of them."""
    from .int8 import RECOMMENDED, compare_layers, prepare_fp32
    from .quantize import model_inputs

    x = model_inputs(meta, calib_faces)
    reference = prepare_fp32(str(fp32_path), RECOMMENDED if recipe == "recommended" else None, x).model
    return compare_layers(reference, str(int8_path), x[:n])
