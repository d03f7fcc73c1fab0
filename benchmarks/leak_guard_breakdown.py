"""Who the leak guard's same-person rule flags on LFW-train + UTKFace (RESULTS.md, "The leak guard on
LFW-train + UTKFace"): per source, UTKFace's ages, and the evaluation images matched most often.

Clean teacher embeddings (dlib, the alignment and embedding caches of ``python -m benchmarks --sections
leak_guard``), evaluation side every image of the DevTest people, ``innocent_rate`` the default::

    .venv/bin/python -m benchmarks.leak_guard_breakdown
"""
from __future__ import annotations

import os
from collections import Counter

import numpy as np


def main() -> None:
    """Print the breakdown (see the module docs)."""
    from benchmarks.leak_guard import CONFIG, RECIPE, _split
    from distill.config import LeakGuardSettings, load_config
    from distill.data.align import align_images
    from distill.data.leak_guard import Cohort, _unit, same_person
    from distill.evaluation import extract_embeddings
    from distill.resolve import teacher_from_config

    cfg = load_config(CONFIG, RECIPE)
    teacher = teacher_from_config(cfg)
    teacher.precision = "fp32"
    split = _split(cfg.data.exclude_identities_in[0].parent)
    images, kind = split["images"], split["kind"]
    utk = CONFIG.parents[1].parent / "shared" / "data" / "utkface"
    utk = type(utk)(os.environ.get("FACEDISTILL_UTKFACE", utk))

    def embed(root, rel):
        af = align_images(root, rel, template="dlib_150", backend="dlib", cache_dir=cfg.data.cache_dir / "aligned",
                          no_face="center", progress=False, workers=2)
        return extract_embeddings(teacher, af.faces, batch_size=128, cache_dir=cfg.data.cache_dir / "embeddings")

    lfw, rel_u = embed(split["root"], images.rel_paths), sorted(os.listdir(utk))
    emb_u = embed(utk, rel_u)
    tr, ev = np.flatnonzero(kind == "innocent"), np.flatnonzero(kind != "innocent")
    names = [images.rel_paths[i] for i in tr] + rel_u
    rate = LeakGuardSettings().innocent_rate
    flag, img, _, _ = same_person(_unit(np.r_[lfw[tr], emb_u]), Cohort.of(_unit(lfw[ev]), images.labels[ev]), rate)
    hit, n_lfw = np.flatnonzero(flag), len(tr)
    matched = [images.rel_paths[ev[img[i]]] for i in hit]
    ages = [int(names[i].split("_")[0]) for i in hit if i >= n_lfw]
    print(f"same-person rule at innocent_rate {rate:g}: {len(hit)} flagged, {int((hit < n_lfw).sum())} of {n_lfw} "
          f"LFW images, {len(ages)} of {len(rel_u)} UTKFace images")
    print(f"UTKFace flagged under 16: {sum(a < 16 for a in ages)}, median age {np.median(ages) if ages else 'n/a'}")
    print("UTKFace's most matched evaluation images:",
          Counter(m for i, m in zip(hit, matched) if i >= n_lfw).most_common(3))
    print("LFW flags (training person, evaluation person):",
          Counter((names[i].split("/")[0], m.split("/")[0]) for i, m in zip(hit, matched) if i < n_lfw).most_common(8))


if __name__ == "__main__":
    main()
