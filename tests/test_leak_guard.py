"""The identity-leak guard: copies, names and people of the evaluation set are found among training images,
excluded and recorded, and a resumed run keeps the same exclusions."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.config import LeakGuardSettings, load_config
from distill.data.leak_guard import Cohort, GuardSide, check_leaks, hamming, same_person


def _people(n_people: int, per: int, dim: int, rng: np.random.Generator, spread: float = 0.35):
    centres = rng.normal(size=(n_people, dim))
    emb = np.repeat(centres, per, 0) + spread * rng.normal(size=(n_people * per, dim))
    return emb, np.repeat(np.arange(n_people), per), centres


def test_the_same_person_rule_catches_planted_photos_at_about_its_innocent_rate():
    """Embeddings where the truth is known: evaluation people, planted photos of them, innocent strangers."""
    rng = np.random.default_rng(0)
    dim = 32
    ev, people, centres = _people(200, 4, dim, rng)
    planted = np.repeat(centres[:40], 3, 0) + 0.35 * rng.normal(size=(120, dim))
    innocent = _people(1000, 2, dim, rng)[0]
    x = np.r_[planted, innocent]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ev /= np.linalg.norm(ev, axis=1, keepdims=True)
    cohort = Cohort.of(ev.astype(np.float32), people)
    flag, best, score, threshold = same_person(x.astype(np.float32), cohort, innocent_rate=0.01)
    assert flag[:120].mean() > 0.9                       # planted photos found ...
    assert people[best[:120][flag[:120]]].tolist() == np.repeat(np.arange(40), 3)[flag[:120]].tolist()  # ... as whom
    # innocents: within 2x the rate asked for (20 of 2,000); a calibration that leaves the evaluation images
    # inside their own cohorts reads low and flagged 76 here
    assert flag[120:].sum() <= 40
    strict = same_person(x.astype(np.float32), cohort, innocent_rate=0.001)[0]
    assert strict.sum() <= flag.sum()


def test_the_calibration_leaves_each_evaluation_person_out_of_the_cohorts():
    """innocent_best against a direct computation: each image's S-norm score against every other person's
    template, the template's cohort being its k best cosines to images of neither that person nor the image's."""
    rng = np.random.default_rng(3)
    ev, people, _ = _people(40, 3, 16, rng, spread=0.5)
    ev = (ev / np.linalg.norm(ev, axis=1, keepdims=True)).astype(np.float32)
    cohort = Cohort.of(ev, people, k=8)
    got = cohort.innocent_best()
    want = np.zeros(len(ev))
    for i in range(len(ev)):
        z = []
        sim_i = ev[i] @ cohort.templates.T
        own_top = np.sort(np.delete(sim_i, people[i]))[-cohort.k - 1:-1]
        for t in range(len(cohort.templates)):
            if t == people[i]:
                continue
            others = ev[(people != t) & (people != people[i])] @ cohort.templates[t]
            top = np.sort(others)[-cohort.k:]
            z.append(0.5 * ((sim_i[t] - own_top.mean()) / own_top.std() + (sim_i[t] - top.mean()) / top.std()))
        want[i] = max(z)
    assert np.abs(got - want).max() < 1e-4


def test_hamming_counts_differing_bits():
    a = np.array([0, 0xFFFF, 2**63], dtype=np.uint64)
    b = np.array([1, 0], dtype=np.uint64)
    assert hamming(a, b).tolist() == [[1, 0], [15, 16], [2, 1]]


def test_without_embeddings_copies_and_names_are_still_checked(tmp_path):
    faces = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    f = tmp_path / "e.jpg"
    f.write_bytes(b"same bytes")
    g = tmp_path / "t.jpg"
    g.write_bytes(b"same bytes")
    train = GuardSide(["t0", "t1", "t2"], [str(g), None, None], faces, None, np.array([0, 1, -1]), ["Ann", "Bob"])
    other = np.random.default_rng(2).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    evald = GuardSide(["e0", "e1"], [str(f), None], other, None, np.array([0, 1]), ["Zed", "Bob"])
    res = check_leaks(train, evald, LeakGuardSettings(), policy="exclude")
    kinds = {f.train: f.evidence for f in res.flagged}
    assert kinds[0] == "identical" and kinds[1] == "same_name"
    assert "not checked" in res.checked["same_person"] and res.excluded.tolist() == [0, 1]


@pytest.fixture(scope="module")
def leaky_tree(tmp_path_factory, lfw_root):
    """A training set built the way a new user would by accident: an identity tree holding two of the DevTest
    people under their names and a byte-identical copy of an evaluation image under an innocent name, beside
    an unlabelled nested folder holding a re-encoded, resized copy of another evaluation image."""
    from distill.data.pairs import read_pairs

    root = lfw_root / "lfw-deepfunneled"
    tree = tmp_path_factory.mktemp("leaky")
    dev = read_pairs(lfw_root / "pairsDevTest.txt", root)
    used = dev.image_rel_paths()
    innocent = ["Aaron_Eckhart", "Abba_Eban", "Adam_Sandler", "Adrien_Brody", "Al_Gore", "Ali_Abbas",
                "Amelia_Vega", "Andre_Agassi", "Andy_Roddick", "Angelina_Jolie"]
    assert not set(innocent) & dev.people()
    for person in innocent:
        for src in sorted((root / person).iterdir())[:3]:
            (tree / "labelled" / person).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, tree / "labelled" / person / src.name)
    leaked = [p for p in sorted({p.split("/")[0] for p in used}) if len(list((root / p).iterdir())) >= 3][:2]
    for person in leaked:
        (tree / "labelled" / person).mkdir(parents=True)
        for src in sorted((root / person).iterdir())[:2]:
            shutil.copy(src, tree / "labelled" / person / src.name)
    shutil.copy(root / used[10], tree / "labelled" / innocent[0] / "copy_of_eval.jpg")
    im = Image.open(root / used[20]).convert("RGB")
    (tree / "unlabelled" / "2019" / "trip").mkdir(parents=True)
    im.resize((200, 200)).save(tree / "unlabelled" / "2019" / "trip" / "recoded.jpg", quality=70)
    for k, src in enumerate(sorted((root / "Arnold_Schwarzenegger").iterdir())[:3]):
        shutil.copy(src, tree / "unlabelled" / f"arnold_{k}.jpg")
    return tree, leaked, used[10], used[20]


def _config(tree: Path, lfw: Path, cache: Path, out: Path, extra: list[str] = ()):
    return load_config(None, [
        f"data.sources=[{{kind: folder, root: {tree / 'labelled'}}}, {{kind: unlabelled, root: {tree / 'unlabelled'}}}]",
        "data.align_backend=dlib", f"data.cache_dir={cache}", "teacher.name=dlib_resnet",
        "student.name=mobilenet_v1_025", "student.input_size=64", "train.teacher_mode=cached", "train.cache_views=2",
        "train.epochs=1", "train.batch_size=8", f"eval.pairs=[{lfw / 'pairsDevTest.txt'}]",
        f"eval.images_root={lfw / 'lfw-deepfunneled'}", "eval.latency=false", "eval.bootstrap=0",
        "eval.train_fidelity_sample=0", f"out={out}", *extra])


def test_the_guard_excludes_and_records_evaluation_people_and_copies_and_a_resume_keeps_them(
        leaky_tree, lfw_root, devtest_aligned, tmp_path, one_torch_thread):
    from distill import pipeline

    tree, leaked, copied, recoded = leaky_tree
    cfg = _config(tree, lfw_root, devtest_aligned, tmp_path / "run", ["eval.train_fidelity_sample=1000"])
    logs: list[str] = []
    pipeline.run(cfg, log=logs.append)
    guard = json.loads((tmp_path / "run" / "leak_guard.json").read_text())
    # the training-face fidelity is measured on the faces it trained on, never on those the guard left out
    student = [m for m in json.loads((tmp_path / "run" / "report.json").read_text())["models"]
               if m["role"] == "student"][0]
    assert student["extra"]["fidelity_train"]["sample"] == guard["train_images"] - guard["excluded"]
    by_train = {r["train"]: r for r in guard["flagged"]}
    assert by_train[f"labelled:Aaron_Eckhart/copy_of_eval.jpg"]["evidence"] == "identical"
    assert by_train[f"labelled:Aaron_Eckhart/copy_of_eval.jpg"]["eval"] == copied
    assert by_train["unlabelled:2019/trip/recoded.jpg"]["evidence"] in ("near_identical", "same_person")
    named = [k for k in by_train if k.split(":")[1].split("/")[0] in leaked]
    # every photo of a DevTest person is an evaluation image (the held-out people are the identification
    # gallery too), so these are copies, found by their bytes before their names
    assert len(named) == 4 and all(by_train[k]["evidence"] == "identical" for k in named)
    innocent = [k for k in by_train if k.startswith("labelled:") and k.split(":")[1].split("/")[0] not in leaked
                and "copy_of_eval" not in k]
    assert len(innocent) <= 1, innocent                 # 30 innocent photos + 3 unlabelled: at most one false flag
    record = json.loads((tmp_path / "run" / "data_record.json").read_text())
    assert set(record["leak_guard"]["excluded_train"]) >= {*named, "labelled:Aaron_Eckhart/copy_of_eval.jpg",
                                                           "unlabelled:2019/trip/recoded.jpg"}
    assert record["train"]["leak_checked"] is True
    assert [s["name"] for s in record["train"]["sources"]] == ["labelled", "unlabelled"]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "Leak guard (exclude)" in report and "identical" in report and (tmp_path / "run" / "leak_guard.png").exists()
    assert any("leak guard:" in line and "excluded from training" in line for line in logs)
    # a resumed run reads its exclusions back rather than deciding again
    logs.clear()
    pipeline.run(cfg, resume=True, log=logs.append)
    assert any("resumed with the exclusions" in line for line in logs)
    again = json.loads((tmp_path / "run" / "data_record.json").read_text())
    assert again["leak_guard"]["excluded_train"] == record["leak_guard"]["excluded_train"]


def test_policy_off_says_nothing_was_checked(leaky_tree, lfw_root, devtest_aligned, tmp_path, one_torch_thread):
    from distill import pipeline

    tree, *_ = leaky_tree
    cfg = _config(tree, lfw_root, devtest_aligned, tmp_path / "off", ["data.leak_guard.policy=off"])
    pipeline.run(cfg, log=lambda _m: None)
    record = json.loads((tmp_path / "off" / "data_record.json").read_text())
    assert record["train"]["leak_checked"] is False and record["leak_guard"]["policy"] == "off"
    assert not (tmp_path / "off" / "leak_guard.json").exists()
    assert "Leak guard: off" in (tmp_path / "off" / "report.md").read_text()
