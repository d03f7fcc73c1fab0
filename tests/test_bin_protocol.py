"""``.bin`` validation sets through the product: ``eval.pairs: [{bin: ...}]`` scores the same pairs as the
LFW pairs-file protocol does on the same aligned crops, fold for fold; re-framing and refusals by template."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from distill.config import ConfigError, PairsSpec, load_config
from distill.data.align import align_images
from distill.data.bin_protocol import bin_faces
from distill.data.pairs import read_pairs

PER_FOLD = 5  # same and as many different pairs from each of View 2's 10 folds: 100 pairs


@pytest.fixture(scope="module")
def lfw_subset(lfw_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """100 View-2 pairs (10 folds x 5 same + 5 different) as a pairs file and as a .bin of the product's own
    arcface_112 crops (dlib landmarks, PNG: lossless), both in the field's order; the crops' cache is shared."""
    out = tmp_path_factory.mktemp("binset")
    root = lfw_root / "lfw-deepfunneled"
    view2 = read_pairs(lfw_root / "pairs.txt", root)
    rows, same, a, b = [f"10\t{PER_FOLD}"], [], [], []
    for f in range(10):
        for want in (True, False):
            idx = np.flatnonzero((view2.fold == f) & (view2.is_same == want))[:PER_FOLD]
            for i in idx:
                pa, pb = view2.rel_path_a[i], view2.rel_path_b[i]
                na, ia = Path(pa).parent.name, int(Path(pa).stem.rsplit("_", 1)[1])
                nb, ib = Path(pb).parent.name, int(Path(pb).stem.rsplit("_", 1)[1])
                rows.append(f"{na}\t{ia}\t{ib}" if want else f"{na}\t{ia}\t{nb}\t{ib}")
                same.append(bool(want))
                a.append(pa)
                b.append(pb)
    (out / "pairs.txt").write_text("\n".join(rows) + "\n")
    rels = sorted(set(a) | set(b))
    aligned = align_images(root, rels, template="arcface_112", backend="dlib", cache_dir=out / "cache" / "aligned",
                           progress=False)
    crop = dict(zip(aligned.rel_paths, aligned.faces))
    bins = [cv2.imencode(".png", np.ascontiguousarray(crop[p][:, :, ::-1]))[1].tobytes() for ab in zip(a, b)
            for p in ab]
    with open(out / "lfw.bin", "wb") as f:
        pickle.dump((bins, same), f, protocol=pickle.HIGHEST_PROTOCOL)
    return {"dir": out, "root": root, "same": np.array(same)}


def test_bin_protocol_scores_what_the_pairs_file_scores(lfw_subset: dict):
    from test_reliability_helpers import run_cli_inprocess

    d = lfw_subset["dir"]
    cfg = {"name": "bin_vs_file", "data": {"source": "folder", "root": str(lfw_subset["root"]), "align_backend": "dlib",
                                           "cache_dir": str(d / "cache")},
           "teacher": {"name": "sface"},
           "eval": {"identification": False, "latency": False,
                    "pairs": [{"file": str(d / "pairs.txt"), "name": "file", "teacher_only": True},
                              {"bin": str(d / "lfw.bin"), "name": "bin", "teacher_only": True}]}}
    (d / "cfg.yaml").write_text(json.dumps(cfg))
    rc, out, err = run_cli_inprocess(["eval", str(d / "cfg.yaml"), "--out", str(d / "run"), "--overwrite"])
    assert rc == 0, err[-3000:]
    protocols = json.loads((d / "run" / "report.json").read_text())["models"][0]["protocols"]
    file, binp = protocols["file"], protocols["bin"]
    assert binp["n_pairs"] == file["n_pairs"] == 100 and binp["n_folds"] == file["n_folds"] == 10
    # the same crops -> the same scores: fold accuracies, thresholds, AUC and EER agree
    np.testing.assert_allclose(binp["fold_accuracies"], file["fold_accuracies"], atol=1e-12)
    np.testing.assert_allclose(binp["fold_thresholds"], file["fold_thresholds"], atol=1e-6)
    assert binp["auc"] == pytest.approx(file["auc"], abs=1e-9) and binp["eer"] == pytest.approx(file["eer"], abs=1e-9)
    assert "not checked against the training set" in err + out
    assert "eval.flip_tta: false" in (d / "run" / "report.md").read_text()


def test_bin_crops_are_reframed_or_refused_by_template(lfw_subset: dict, tmp_path: Path):
    spec = PairsSpec(bin=lfw_subset["dir"] / "lfw.bin", name="lfw")
    logs: list[str] = []
    arc = bin_faces(spec, "arcface_112", tmp_path, logs.append)
    assert arc.faces.shape == (200, 112, 112, 3) and len(arc.pairs) == 100
    np.testing.assert_array_equal(arc.pairs.is_same, lfw_subset["same"])
    np.testing.assert_array_equal(arc.pairs.fold, np.repeat(np.arange(10), 10))
    assert [arc.names[i] == arc.names[i + 1] for i in range(0, 200, 2)] == lfw_subset["same"].tolist()
    dlib = bin_faces(spec, "dlib_150", tmp_path, logs.append)
    assert dlib.faces.shape == (200, 150, 150, 3) and "re-framed to dlib_150" in logs[-1]
    assert sorted(p.name for p in (tmp_path / "bin").iterdir())[0].endswith(".u8")   # decoded once, cached
    with pytest.raises(ConfigError, match=r"eval\.pairs\[\]\.aligned.*facenet_160"):
        bin_faces(spec, "facenet_160", tmp_path, logs.append)


def test_a_bin_spec_is_checked_like_the_others(tmp_path: Path):
    with pytest.raises(ConfigError, match="exactly one of file"):
        load_config(None, [f'eval.pairs=[{{"bin": "{tmp_path}/x.bin", "file": "{tmp_path}/p.txt"}}]'])
    with pytest.raises(ConfigError, match="need identities"):
        load_config(None, [f'eval.pairs=[{{"bin": "{tmp_path}/x.bin", "all_pairs": true}}]'])
    cfg = load_config(None, [f'eval.pairs=["{tmp_path}/agedb_30.bin"]'])
    assert cfg.eval.pairs[0].bin == tmp_path / "agedb_30.bin" and cfg.eval.pairs[0].label == "agedb_30"
