"""FAISS gallery: build from identity folders, search held-out LFW photos, model-fingerprint guard."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.deploy import (GalleryError, build_gallery, export_checkpoint, load_embedder, load_gallery,
                            register_cli, search_gallery)
from distill.deploy.decision import DecisionError, calibration_from_report, decide
from distill.deploy.export import set_batchnorm_statistics
from distill.deploy.faces import align_files, align_rel_paths
from distill.evaluation import ModelResult, PairIndex, evaluate_pairs, extract_embeddings, write_reports

PEOPLE, ENROL = 40, 2


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distill")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def small_checkpoint(path: Path, faces: np.ndarray, seed: int) -> Path:
    """A real mobilenet_v1_025 student at 64 px, BatchNorm statistics set from real faces."""
    from distill.models import StudentSpec, save_student
    from distill.preprocess import student_preprocessing
    from teachers import TEACHERS

    torch.manual_seed(seed)
    spec = StudentSpec("mobilenet_v1_025", {"input_size": 64, "embedding_dim": 64, "normalize": True})
    student = spec.build()
    pre = student_preprocessing(64, "dlib_150")
    set_batchnorm_statistics(student, pre(torch.from_numpy(np.array(faces))))
    return save_student(path, student.eval(), spec, pre, TEACHERS.build("dlib_resnet", weights=None))


@pytest.fixture(scope="module")
def subset(lfw_root) -> dict:
    """The first 40 LFW people (sorted) with >= 4 images: 2 enrolled each, the 3rd held out as a probe."""
    root = lfw_root / "lfw-deepfunneled"
    people = []
    for name in sorted(os.listdir(root)):
        files = sorted(f for f in os.listdir(root / name) if f.endswith(".jpg"))
        if len(files) >= ENROL + 1:
            people.append((name, files))
        if len(people) == PEOPLE:
            break
    enrol = [f"{n}/{f}" for n, files in people for f in files[:ENROL]]
    probes = [root / n / files[ENROL] for n, files in people]
    return {"root": root, "enrol": enrol, "probes": probes, "people": [n for n, _ in people]}


@pytest.fixture(scope="session")
def align_cache(lfw_align_cache) -> Path:
    return lfw_align_cache


@pytest.mark.slow
def test_teacher_gallery_identifies_held_out_photos(subset, align_cache, tmp_path, capsys):
    teacher = load_embedder("teacher:dlib_resnet")
    gdir = tmp_path / "gallery"
    res = build_gallery(teacher, "teacher:dlib_resnet", subset["root"], gdir, rel_paths=subset["enrol"],
                        align_backend="dlib", cache_dir=align_cache, progress=False)
    assert res["identities"] == PEOPLE and res["items"] == len(subset["enrol"]) - len(res["skipped"])
    gal = load_gallery(gdir)
    assert gal.metric == "l2" and gal.model["fingerprint"] == teacher.fingerprint()

    # probes in which dlib finds no face are never decided (test_real_world_inputs): use the others here
    faces, kept, skipped = align_files(subset["probes"], template="dlib_150", cache_dir=align_cache, no_face="skip")
    skipped = {k: v for k, v in skipped.items() if not v.startswith("no face found")}
    assert not skipped
    probe_emb = extract_embeddings(teacher, faces, progress=False)
    hits = search_gallery(gal, probe_emb, k=5)
    truth = [p.parent.name for p in kept]
    rank1 = np.mean([h["matches"][0]["identity"] == t for h, t in zip(hits, truth)])
    rank5 = np.mean([t in [m["identity"] for m in h["matches"]] for h, t in zip(hits, truth)])
    summary = (f"dlib teacher gallery: rank-1 {rank1:.3f}, rank-5 {rank5:.3f} over {len(truth)} held-out photos "
               f"of {PEOPLE} people (chance {1 / PEOPLE:.3f})")
    assert rank1 >= 0.85 > 10 / PEOPLE     # dlib's ResNet: ~99% LFW verification; chance is 2.5%
    assert all(len({m["identity"] for m in h["matches"]}) == 5 for h in hits)   # k distinct identities
    assert all(np.all(np.diff([m["score"] for m in h["matches"]]) <= 0) for h in hits)

    # a FAR threshold read from an evaluation report's ROC (pairs among the enrolled photos)
    n = len(gal.embeddings)
    a, b = np.triu_indices(n, 1)
    labels = np.array(gal.identities)
    pairs = PairIndex(a, b, labels[a] == labels[b], np.arange(len(a)) % 10)
    run = tmp_path / "run"
    write_reports(run, [ModelResult(teacher.name, "teacher", cost={},
                                    protocols={"enrolled": evaluate_pairs(gal.embeddings, pairs, False)})])
    rule, _ = decide(gal.score, calibration_from_report(run / "report.json", teacher.name), far=1e-2)
    assert rule.far <= 1e-2 and 0.3 < rule.value < 0.75 and rule.kind == "distance"  # dlib's rule: distance 0.6
    thr = rule.score
    decided = search_gallery(gal, probe_emb, k=1, threshold=thr)
    correct_same = np.mean([d["decision"] == "same" for d, t in zip(decided, truth)
                            if d["matches"][0]["identity"] == t])
    assert correct_same >= 0.8

    # the same through the command line, threshold from the report
    capsys.readouterr()
    rc = _cli(["gallery", "search", "--gallery", str(gdir), str(kept[0]), str(kept[1]), "--k", "3",
               "--far", "0.01", "--report", str(run / "report.json"), "--cache-dir", str(align_cache), "--json"])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    with capsys.disabled():
        print(summary)
    assert doc["threshold"]["score"] == pytest.approx(thr) and doc["threshold"]["value"] == pytest.approx(-thr)
    assert doc["threshold"]["far"] <= 1e-2 and doc["threshold"]["source"] == "--far 0.01" and len(doc["probes"]) == 2
    assert [p["matches"][0]["identity"] for p in doc["probes"]] == [hits[0]["matches"][0]["identity"],
                                                                    hits[1]["matches"][0]["identity"]]


@pytest.fixture(scope="module")
def student_setup(subset, align_cache, tmp_path_factory) -> dict:
    """Identity folders (links to 6 LFW people, their 2 enrolled photos), two students and an ONNX export of one."""
    tmp = tmp_path_factory.mktemp("student-gallery")
    people = subset["people"][:6]
    images = tmp / "known"
    for rel in [r for r in subset["enrol"] if r.split("/")[0] in people]:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        (images / rel).symlink_to(subset["root"] / rel)
    faces = np.array(align_rel_paths(subset["root"], subset["enrol"][:24], template="dlib_150",
                                     cache_dir=align_cache, progress=False).faces)
    a = small_checkpoint(tmp / "a" / "student.pt", faces, seed=0)
    b = small_checkpoint(tmp / "b" / "student.pt", faces, seed=1)
    onnx_a = export_checkpoint(a, tmp / "a.onnx", "onnx", faces[:8])["path"]
    return {"images": images, "a": a, "b": b, "onnx_a": onnx_a, "tmp": tmp, "people": people,
            "probes": [p for p in subset["probes"] if p.parent.name in people]}


def test_student_gallery_cli_and_model_guard(student_setup, align_cache, capsys):
    s = student_setup
    gdir = s["tmp"] / "gallery"
    base = ["--cache-dir", str(align_cache)]
    assert _cli(["gallery", "build", "--model", str(s["a"]), "--images", str(s["images"]), "-o", str(gdir),
                 "--overwrite", *base]) == 0
    out = capsys.readouterr().out
    assert "12 faces of 6 identities" in out
    doc = json.loads((gdir / "gallery.json").read_text())
    assert doc["models"][0]["fingerprint"] == load_embedder(s["a"]).fingerprint()
    assert {it["identity"] for it in doc["items"]} == set(s["people"])

    # same model again: nothing re-enrolled
    assert _cli(["gallery", "build", "--model", str(s["a"]), "--images", str(s["images"]), "-o", str(gdir),
                 *base]) == 0
    assert "0 added, 12 already enrolled" in capsys.readouterr().out

    # another model's embeddings live in another space: refused unless deliberate
    with pytest.raises(GalleryError, match="--allow-cross-model"):
        _cli(["gallery", "build", "--model", str(s["b"]), "--images", str(s["images"]), "-o", str(gdir), *base])
    with pytest.raises(GalleryError, match="different space"):
        _cli(["gallery", "search", "--gallery", str(gdir), "--model", str(s["b"]), str(s["probes"][0]), *base])

    # the exported ONNX file of the same student searches the gallery without any flag, with the same answer
    probes = [str(p) for p in s["probes"]]
    assert _cli(["gallery", "search", "--gallery", str(gdir), *probes, "--k", "2", "--threshold", "0.5", "--json",
                 *base]) == 0
    by_pt = json.loads(capsys.readouterr().out)
    assert _cli(["gallery", "search", "--gallery", str(gdir), "--model", str(s["onnx_a"]), *probes, "--k", "2",
                 "--threshold", "0.5", "--json", *base]) == 0
    by_onnx = json.loads(capsys.readouterr().out)
    assert len(by_pt["probes"]) == len(probes) and by_pt["metric"] == "ip"
    assert all(p["face_found"] or (p["decision"] is None and not p["matches"]) for p in by_pt["probes"])
    for p, q in ((p, q) for p, q in zip(by_pt["probes"], by_onnx["probes"]) if p["face_found"]):
        print([m["score"] for m in p["matches"]], [m["score"] for m in q["matches"]])
        assert [m["score"] for m in p["matches"]] == pytest.approx([m["score"] for m in q["matches"]], abs=1e-4)
        gap = p["matches"][0]["score"] - p["matches"][1]["score"]
        assert gap < 1e-4 or p["matches"][0]["identity"] == q["matches"][0]["identity"]   # ties may swap
        assert p["decision"] == ("same" if p["matches"][0]["score"] >= 0.5 else "different")

    # human-readable output names each probe and its ranked identities
    assert _cli(["gallery", "search", "--gallery", str(gdir), probes[0], "--k", "3", *base]) == 0
    text = capsys.readouterr().out
    assert probes[0] in text and " 3. " in text and "cosine" in text

    # deliberately mixing models is possible, and recorded
    assert _cli(["gallery", "build", "--model", str(s["b"]), "--images", str(s["images"]), "-o", str(gdir),
                 "--allow-cross-model", *base]) == 0
    capsys.readouterr()
    doc = json.loads((gdir / "gallery.json").read_text())
    assert len(doc["models"]) == 2 and {it["model"] for it in doc["items"]} == {0}   # same photos: not re-added


def test_gallery_files_are_checked(student_setup, align_cache, tmp_path):
    s = student_setup
    gdir = tmp_path / "g"
    build_gallery(load_embedder(s["a"]), str(s["a"]), s["images"], gdir, cache_dir=align_cache, progress=False)
    doc = json.loads((gdir / "gallery.json").read_text())
    doc["items"] = doc["items"][:-1]
    (gdir / "gallery.json").write_text(json.dumps(doc))
    with pytest.raises(GalleryError, match="inconsistent"):
        load_gallery(gdir)
    with pytest.raises(GalleryError, match="not a gallery"):
        load_gallery(tmp_path / "nothing")
    with pytest.raises(DecisionError, match="no model named 'missing'"):
        run = tmp_path / "run"
        emb = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
        pairs = PairIndex(np.arange(10), np.arange(10, 20), np.arange(10) % 2 == 0, np.arange(10) % 2)
        write_reports(run, [ModelResult("other", "teacher", cost={}, protocols={"p": evaluate_pairs(emb, pairs,
                                                                                                    True)})])
        calibration_from_report(run, "missing")
