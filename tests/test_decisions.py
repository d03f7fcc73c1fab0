"""Decisions users can trust (gallery): thresholds in the model's own units, one known face per enrolment and
per answer, and model files that fail with a paragraph a user can act on. Each test builds its inputs from
real LFW photos or bytes it writes itself (faults of the kinds in ageitgey/face_recognition#758 and #76,
timesler/facenet-pytorch#96)."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from distill.deploy.decision import Calibration, DecisionError, Score, calibration_from_scores, decide
from test_reliability_helpers import run_cli_inprocess

ROOT = Path(__file__).resolve().parents[1]
KNOWN = ("Colin_Powell", "Tony_Blair", "Jennifer_Aniston")
#: people with many photos, none of them enrolled: the calibration set (genuine and impostor pairs)
CALIBRATION = ("Ariel_Sharon", "Donald_Rumsfeld", "Gerhard_Schroeder", "Hugo_Chavez", "Jacques_Chirac",
               "Jean_Chretien", "John_Ashcroft", "Junichiro_Koizumi", "Serena_Williams", "Vladimir_Putin")


def _link(root: Path, person: str, lfw: Path, numbers: range) -> None:
    (root / person).mkdir(parents=True, exist_ok=True)
    for i in numbers:
        (root / person / f"{person}_{i:04d}.jpg").symlink_to(lfw / person / f"{person}_{i:04d}.jpg")


def two_faces(lfw: Path, large: str, small: str, small_side: int) -> Image.Image:
    """``large``'s photo at full size beside ``small``'s shrunk to ``small_side`` px: a photo with two faces."""
    canvas = Image.new("RGB", (500, 250), (90, 90, 90))
    canvas.paste(Image.open(lfw / large / f"{large}_0001.jpg").convert("RGB"), (0, 0))
    canvas.paste(Image.open(lfw / small / f"{small}_0001.jpg").convert("RGB").resize((small_side,) * 2), (330, 60))
    return canvas


@pytest.fixture(scope="module")
def galleries(lfw_root: Path, lfw_align_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A dlib gallery of three people (one group photo filed under Tony_Blair), calibrated on ten others."""
    lfw = lfw_root / "lfw-deepfunneled"
    tmp = tmp_path_factory.mktemp("decisions")
    known, calib = tmp / "known", tmp / "calibration"
    for p in KNOWN:
        _link(known, p, lfw, range(2, 5))
    for p in CALIBRATION:
        _link(calib, p, lfw, range(1, 9))
    two_faces(lfw, "Colin_Powell", "Tony_Blair", 125).save(known / "Tony_Blair" / "group.jpg")
    base = ["--model", "teacher:dlib_resnet", "--images", str(known), "--cache-dir", str(lfw_align_cache)]
    out = {"known": known, "lfw": lfw, "tmp": tmp, "calibrated": tmp / "g_cal", "plain": tmp / "g_plain"}
    rc, text, err = run_cli_inprocess(["gallery", "build", *base, "-o", str(out["calibrated"]),
                                       "--calibration-images", str(calib)])
    assert rc == 0, err
    out["build_text"] = text
    rc, _, err = run_cli_inprocess(["gallery", "build", *base, "-o", str(out["plain"])])
    assert rc == 0, err
    return out


def _search(g: Path, cache: Path, *args: str) -> tuple[int, dict | str, str]:
    rc, out, err = run_cli_inprocess(["gallery", "search", "--gallery", str(g), "--cache-dir", str(cache), *args])
    return rc, (json.loads(out) if rc == 0 and "--json" in args else out), err


# --------------------------------------------------------------------------- thresholds in the model's units
def test_thresholds_are_checked_against_the_scores_range_and_calibration(galleries, lfw_align_cache):
    g, probe = galleries["calibrated"], str(galleries["lfw"] / "Colin_Powell" / "Colin_Powell_0010.jpg")
    doc = json.loads((g / "gallery.json").read_text())
    assert doc["score"] == {"kind": "distance", "accept": "<="} and doc["calibration"]["n_impostor"] > 2000
    # impossible for a distance: refused, exit 2, the unit named
    rc, _, err = _search(g, lfw_align_cache, probe, "--threshold", "-1")
    assert rc == 2 and "negative" in err and "Euclidean distances" in err
    # a number that accepts strangers (cosine-like 0.9 on a distance gallery): refused with the FAR it means
    rc, _, err = _search(g, lfw_align_cache, probe, "--threshold", "0.9")
    assert rc == 2 and "of impostors" in err and "--far" in err and "--force-threshold" in err
    rc, res, _ = _search(g, lfw_align_cache, probe, "--threshold", "0.9", "--force-threshold", "--json")
    assert rc == 0 and res["threshold"]["far"] > 0.01 and res["threshold"]["source"] == "--threshold"
    # dlib's own 0.6: applied, and the FAR it means is said on stderr and in the JSON
    rc, res, err = _search(g, lfw_align_cache, probe, "--threshold", "0.6", "--json")
    assert rc == 0 and "distance <= 0.600 means FAR" in err
    t = res["threshold"]
    assert (t["kind"], t["accept"], t["value"]) == ("distance", "<=", 0.6) and 0 <= t["far"] <= 0.01
    assert res["probes"][0]["matches"][0]["identity"] == "Colin_Powell" and res["probes"][0]["decision"] == "same"
    # by rate: the threshold comes from the gallery's own calibration
    rc, res, _ = _search(g, lfw_align_cache, probe, "--far", "1e-3", "--json")
    assert rc == 0 and res["threshold"]["far"] <= 1e-3 and res["threshold"]["source"] == "--far 0.001"
    assert "calibration" in res["threshold"]["calibration"]


def test_an_uncalibrated_gallery_says_the_far_is_unknown(galleries, lfw_align_cache):
    g, probe = galleries["plain"], str(galleries["lfw"] / "Colin_Powell" / "Colin_Powell_0010.jpg")
    rc, _, err = _search(g, lfw_align_cache, probe, "--far", "1e-3")
    assert rc == 2 and "calibrated gallery" in err and "--calibration-images" in err
    rc, res, err = _search(g, lfw_align_cache, probe, "--threshold", "0.6", "--json")
    assert rc == 0 and "false-accept rate of distance <= 0.600 is unknown" in err and res["threshold"]["far"] is None


def test_cosine_scores_refuse_a_distance_threshold():
    cos = Score("cosine")
    with pytest.raises(DecisionError, match=r"outside the range of a cosine similarity \[-1, 1\]"):
        decide(cos, None, threshold=1.1)
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(200, bool), np.zeros(20_000, bool)]
    scores = np.r_[rng.normal(0.7, 0.1, 200), rng.normal(0.0, 0.15, 20_000)]
    cal = calibration_from_scores(scores, same, "synthetic scores")
    assert Calibration.from_dict(json.loads(json.dumps(cal.to_dict()))) == cal
    with pytest.raises(DecisionError, match="of impostors"):   # cosine 0.1 accepts ~25% of these impostors
        decide(cos, cal, threshold=0.1)
    rule, warnings = decide(cos, cal, threshold=0.6)
    assert rule.far <= 1e-3 and warnings and "cosine >= 0.600 means FAR" in warnings[0]
    rule, _ = decide(cos, cal, far=1e-3)
    assert rule.far <= 1e-3 and rule.value == pytest.approx(rule.score)
    with pytest.raises(DecisionError, match="below what"):
        decide(cos, cal, far=1e-7)


# --------------------------------------------------------------------------- one known face per enrolment
def test_a_photo_with_several_faces_is_never_enrolled_silently(galleries, lfw_align_cache):
    doc = json.loads((galleries["calibrated"] / "gallery.json").read_text())
    group = str((galleries["known"] / "Tony_Blair" / "group.jpg").resolve())
    assert "1 with several faces" in galleries["build_text"]
    assert group not in {it["path"] for it in doc["items"]}
    assert doc["several_faces"][group]["faces"] == 2 and doc["several_faces"][group]["enrolled"] is False
    # --multi-face dominant enrols the face taken only when it is 2x every other; it records the box
    g = galleries["tmp"] / "g_dominant"
    rc, _, err = run_cli_inprocess(["gallery", "build", "--model", "teacher:dlib_resnet", "--images",
                                    str(galleries["known"]), "-o", str(g), "--cache-dir", str(lfw_align_cache),
                                    "--multi-face", "dominant"])
    assert rc == 0, err
    item = next(it for it in json.loads((g / "gallery.json").read_text())["items"] if it["path"] == group)
    assert item["faces_in_image"] == 2 and len(item["box"]) == 4
    # two faces of similar size: not enrolled even with dominant
    even = galleries["tmp"] / "even"
    _link(even, "Tony_Blair", galleries["lfw"], range(2, 4))
    two_faces(galleries["lfw"], "Colin_Powell", "Tony_Blair", 230).save(even / "Tony_Blair" / "pair.jpg")
    rc, out, err = run_cli_inprocess(["gallery", "build", "--model", "teacher:dlib_resnet", "--images", str(even),
                                      "-o", str(galleries["tmp"] / "g_even"), "--cache-dir", str(lfw_align_cache),
                                      "--multi-face", "dominant"])
    assert rc == 0 and "2 faces of 1 identities" in out and "none is 2x the area" in out, out + err


def test_search_answers_for_every_face_and_names_it(galleries, lfw_align_cache):
    photo = galleries["tmp"] / "probe_group.jpg"
    two_faces(galleries["lfw"], "Jennifer_Aniston", "Colin_Powell", 150).save(photo)
    rc, res, _ = _search(galleries["calibrated"], lfw_align_cache, str(photo), "--far", "1e-3", "--json")
    assert rc == 0 and len(res["probes"]) == 2
    a, b = res["probes"]
    assert (a["face"], b["face"], a["faces_in_image"]) == (0, 1, 2) and a["box"][0] < 250 < b["box"][0]
    assert a["matches"][0]["identity"] == "Jennifer_Aniston" and b["matches"][0]["identity"] == "Colin_Powell"
    rc, res, _ = _search(galleries["calibrated"], lfw_align_cache, str(photo), "--faces", "largest", "--json")
    assert rc == 0 and [p["face"] for p in res["probes"]] == [0]
    rc, text, _ = _search(galleries["calibrated"], lfw_align_cache, str(photo))
    assert rc == 0 and "face 1 of 2 at box" in text and "face 2 of 2 at box" in text


# --------------------------------------------------------------------------- errors a user can act on
@pytest.mark.parametrize("kind,expect", [
    ("html", "an HTML page"), ("empty", "empty (0 bytes)"), ("truncated", "zip archive cut short"),
    ("pickle", "Python pickle (protocol 4)"), ("text", "a text file starting 'version: 1 layers: 12'")])
def test_unreadable_model_files_name_what_they_are(tmp_path, kind, expect):
    data = (ROOT / "results" / "flagship_student.pt").read_bytes()
    content = {"html": b"<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>...</body></html>",
               "empty": b"", "truncated": data[: len(data) // 3], "pickle": pickle.dumps({"coef": [1.0, 2.0]}, 4),
               "text": b"version: 1\nlayers: 12\n"}[kind]
    bad = tmp_path / "student.pt"
    bad.write_bytes(content)
    rc, _, err = run_cli_inprocess(["gallery", "build", "--model", str(bad), "--images", str(tmp_path), "-o",
                                    str(tmp_path / "g")])
    assert rc == 2 and str(bad) in err and expect in err, err
    assert "weights_only" not in err and "RUN/student.pt" in err


def test_onnx_metadata_that_contradicts_its_graph_is_refused_at_load(tmp_path):
    import onnx

    from distill.deploy import export_checkpoint

    out = export_checkpoint(ROOT / "results" / "flagship_student.pt", tmp_path / "s.onnx", "onnx",
                            np.zeros((2, 150, 150, 3), np.uint8), faces_alignment="dlib_150")["path"]
    m = onnx.load(str(out))
    prop = next(p for p in m.metadata_props if p.key == "facedistill.json")
    meta = json.loads(prop.value)
    meta["embedding_dim"] = 512
    prop.value = json.dumps(meta)
    onnx.save(m, str(tmp_path / "bad.onnx"))
    rc, _, err = run_cli_inprocess(["gallery", "build", "--model", str(tmp_path / "bad.onnx"), "--images",
                                    str(tmp_path), "-o", str(tmp_path / "g")])
    assert rc == 2 and "bad.onnx" in err and "512-D embeddings but the graph outputs" in err, err


def test_remedies_name_only_what_the_command_has(galleries, tmp_path):
    empty = tmp_path / "probes"
    empty.mkdir()
    (empty / "notes.txt").write_text("x")
    rc, _, err = run_cli_inprocess(["gallery", "search", str(empty), "--gallery", str(galleries["plain"])])
    assert rc == 2 and f"no probe images found in {empty}" in err, err
    # a teacher:NAME model takes its weights after a second colon; the offline error says so
    from distill.models import load_embedder
    from distill.models.load import TEACHER_PREFIX

    with pytest.raises(Exception) as info:
        load_embedder(f"{TEACHER_PREFIX}dlib_resnet:{tmp_path / 'missing.dat'}")
    assert "teacher:dlib_resnet:WEIGHTS" in str(info.value) and "missing.dat" in str(info.value)


def test_plan_says_when_a_student_costs_more_than_its_teacher():
    rc, out, err = run_cli_inprocess(["run", str(ROOT / "configs" / "quickstart.yaml"), "--dry-run", "--set",
                                      "student.name=mobilenet_v1_100", "--set", "student.input_size=224"])
    assert rc == 0, err
    assert "x more than the teacher" in out and "fewer than the teacher" not in out


def test_every_model_loader_describes_a_bad_file_as_an_input_error(tmp_path):
    """The same faults through the other loaders: a training checkpoint or teacher weights that are a web page
    are an input to fix (exit 2), described, with no torch advice."""
    from distill.errors import InputError
    from teachers import build_teacher

    page = tmp_path / "weights.pt"
    page.write_bytes(b"<html><head><title>404</title></head><body>Not Found</body></html>")
    with pytest.raises(InputError, match="an HTML page") as info:
        build_teacher("timm", page, model_name="resnet18")
    assert str(page) in str(info.value) and "weights_only" not in str(info.value)
