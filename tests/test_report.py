"""Reports from real models on real faces: json schema, markdown, self-contained HTML rendered in Chromium."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.evaluation import (ModelResult, compare_runs, evaluate_pairs, extract_embeddings, fidelity, identify,
                                identify_cross, measure_cost, write_reports)
from tests.test_extract import load_orl, make_student, orl_pairs

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _results(faces, labels, teacher, student, teacher_cost, student_cost, protocols):
    t_emb = extract_embeddings(teacher, faces, progress=False)
    s_emb = extract_embeddings(student, faces, progress=False)
    t = ModelResult(teacher.name, "teacher", cost=teacher_cost,
                    protocols={n: evaluate_pairs(t_emb, p, teacher.normalized) for n, p in protocols.items()},
                    identification={"orl": identify(t_emb, labels, teacher.normalized)})
    s = ModelResult(student.name, "student", cost=student_cost, teacher=teacher.name,
                    protocols={n: evaluate_pairs(s_emb, p, student.normalized) for n, p in protocols.items()},
                    fidelity=fidelity(s_emb, t_emb) if s_emb.shape == t_emb.shape else None,
                    identification={"orl": identify(s_emb, labels, student.normalized),
                                    "orl, student probes vs teacher gallery":
                                        identify_cross(s_emb, t_emb, labels, teacher.normalized)})
    return [t, s]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    faces, labels = load_orl(people=20)
    teacher = make_student(alpha=0.5, calibrate=faces[::2])
    teacher.name = "mobilenet_0.5 (random)"
    student = make_student(alpha=0.25, calibrate=faces[::2])
    costs = [measure_cost(e.module, 64, fast=True, warmup=1, repeats=2) for e in (teacher, student)]
    results = _results(faces, labels, teacher, student, *costs,
                       protocols={"orl_pairs": orl_pairs(labels, n=150), "orl_pairs_b": orl_pairs(labels, n=100, seed=1)})
    out = tmp_path_factory.mktemp("run")
    write_reports(out, results, config={"name": "orl-smoke", "student": {"name": "mobilenet_v1_025"}},
                  extra={"note": "random students on ORL"})
    return out


def test_report_json_schema(run_dir):
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["schema_version"] == 1 and doc["run"] == "orl-smoke" and "torch" in doc["versions"]
    assert [m["role"] for m in doc["models"]] == ["teacher", "student"]
    for m in doc["models"]:
        assert m["params"] > 0 and m["mult_adds"] > 0 and m["input_size"] == 64 and m["images_per_s"] > 0
        p = m["protocols"]["orl_pairs"]
        assert 0 <= p["accuracy_mean"] <= 1 and p["accuracy_std"] >= 0 and 0 <= p["auc"] <= 1
        assert set(p["tar_at_far"]) == {"0.01", "0.001", "0.0001"}
        assert p["tar_at_far"]["0.0001"] is None and "150 impostor pairs" in p["tar_reasons"]["0.0001"]
    teacher, student = doc["models"]
    assert teacher["fidelity"] is None and -1 < student["fidelity"]["mean"] < 1 and student["fidelity"]["n"] == 200
    assert student["mult_adds"] < teacher["mult_adds"]
    tr = {(r["student"], r["protocol"]): r for r in doc["tradeoff"]}
    r = tr[(student["name"], "orl_pairs")]
    assert r["mult_adds_ratio"] == pytest.approx(student["mult_adds"] / teacher["mult_adds"])
    assert r["accuracy_ratio"] == pytest.approx(student["protocols"]["orl_pairs"]["accuracy_mean"]
                                               / teacher["protocols"]["orl_pairs"]["accuracy_mean"])
    assert student["identification"]["orl"]["n_probes"] == 180
    assert not list(run_dir.glob(".*.tmp"))          # atomic writes leave no temp files behind


def test_report_markdown(run_dir):
    md = (run_dir / "report.md").read_text()
    assert "## Accuracy versus cost" in md and "## Verification: orl_pairs" in md and "## Cost" in md
    assert "mobilenet_0.25" in md and "n/a" in md and "needs at least 10000" in md


def test_report_html_is_self_contained(run_dir):
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5       # 2 protocols x (ROC, histograms) + fidelity
    assert not re.search(r'(src|href)="(https?:)?//', html)  # no external assets
    assert "How much accuracy was given up" in html


def _screenshot(html: Path, tmp: Path) -> tuple[np.ndarray, str]:
    png = tmp / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--enable-logging=stderr", "--v=0", f"--user-data-dir={tmp / 'profile'}",
           f"--screenshot={png}", "--window-size=1200,3000", "--hide-scrollbars", html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and png.exists(), f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}"
    return np.asarray(Image.open(png).convert("RGB")), proc.stderr


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_report_renders_in_chromium(run_dir, tmp_path):
    pixels, log = _screenshot(run_dir / "report.html", tmp_path)
    assert pixels.shape[:2] == (3000, 1200)
    # not blank: many distinct colours, and ink (dark pixels) on a substantial part of the page
    assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200
    assert (pixels.min(axis=2) < 128).mean() > 0.01
    assert "Uncaught" not in log and "ERROR:CONSOLE" not in log and "Failed to load resource" not in log
    shutil.copy(tmp_path / "shot.png", run_dir / "screenshot.png")


def test_compare_runs(run_dir, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(run_dir, second)
    doc = json.loads((second / "report.json").read_text())
    doc["run"] = "orl-smoke-2"
    (second / "report.json").write_text(json.dumps(doc))
    paths = compare_runs([run_dir, second], tmp_path / "cmp")
    cmp = json.loads(paths["json"].read_text())
    # the shared teacher appears once, each run's student once
    assert [p["role"] for p in cmp["points"]] == ["teacher", "student", "student"]
    assert cmp["protocol"] == "orl_pairs"
    assert "data:image/png;base64," in paths["html"].read_text()
    assert "orl-smoke-2" in paths["md"].read_text()
    with pytest.raises(FileNotFoundError, match="report.json"):
        compare_runs([tmp_path / "nowhere"], tmp_path / "cmp2")


@pytest.mark.slow
def test_dlib_teacher_report_on_lfw(lfw_root, tmp_path):
    """A real teacher: dlib's ResNet on a fifth of LFW pairsDevTest (centre crops of the deep-funneled
    images instead of dlib chips, so a loose bar) against a random 128-d student."""
    from distill.data.pairs import read_pairs
    from distill.evaluation import PairIndex
    from teachers import TEACHERS
    try:
        teacher = TEACHERS.build("dlib_resnet")
    except Exception as e:  # noqa: BLE001 - weights missing offline: say so
        pytest.skip(f"dlib_resnet teacher unavailable: {e}")
    proto = read_pairs(lfw_root / "pairsDevTest.txt", lfw_root / "lfw-deepfunneled")
    keep = np.arange(len(proto)) % 5 == 0                     # 200 pairs, all 10 folds, half genuine
    all_paths = proto.image_rel_paths()
    a, b = proto.index_into(all_paths)
    used = np.unique(np.r_[a[keep], b[keep]])                  # load only the images those pairs use
    pairs = PairIndex(np.searchsorted(used, a), np.searchsorted(used, b), proto.is_same, proto.fold).subset(keep)
    paths = [all_paths[i] for i in used]
    faces = np.stack([np.asarray(Image.open(lfw_root / "lfw-deepfunneled" / p).convert("RGB")
                                 .crop((68, 68, 182, 182)).resize((150, 150), Image.BILINEAR)) for p in paths])
    labels = np.array([p.split("/")[0] for p in paths])
    student = make_student(alpha=0.25, normalize=False, calibrate=faces[::3], embedding_dim=128)
    t_cost = measure_cost(teacher, teacher.preprocessing.input_size, fast=False, warmup=1, repeats=2)
    s_cost = measure_cost(student.module, 64, fast=False, warmup=1, repeats=2)
    results = _results(faces, labels, teacher, student, t_cost, s_cost, {"lfw_devtest_fifth": pairs})
    t = results[0].protocols["lfw_devtest_fifth"]
    assert t.accuracy_mean > 0.88 and t.auc > 0.95 and t.score == "negative Euclidean distance"
    assert results[1].fidelity is not None and results[1].fidelity.mean < 0.9    # an untrained student
    write_reports(tmp_path, results, config={"name": "dlib-lfw"})
    if CHROMIUM:
        pixels, log = _screenshot(tmp_path / "report.html", tmp_path)
        assert len(np.unique(pixels.reshape(-1, 3)[::7], axis=0)) > 200 and "Uncaught" not in log
