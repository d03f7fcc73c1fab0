"""Real-world inputs, one regression test per fault kind: each test builds its own small input.

Faces come from ../shared/data (ORL's 92x112 greyscale .pgm, LFW) where real faces matter; the CLI
runs in-process, its exit code and message asserted.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import SHARED
from test_reliability_helpers import QUICKSTART, run_cli_inprocess, set_args

ORL = SHARED / "data" / "orl"
LFW = SHARED / "data" / "lfw"


def _orl_set(folder: Path, people: int = 5, per_person: int = 3) -> Path:
    """An ORL-style identity-folder set (sN/M.pgm), linked from the shared copy."""
    if not (ORL / "s1" / "1.pgm").exists():
        pytest.skip(f"ORL faces not found at {ORL} (set FACEDISTILL_SHARED)")
    for p in range(1, people + 1):
        (folder / f"s{p}").mkdir(parents=True)
        for i in range(1, per_person + 1):
            (folder / f"s{p}" / f"{i}.pgm").symlink_to(ORL / f"s{p}" / f"{i}.pgm")
    return folder


def _lfw_people(root: Path, people: tuple[str, ...] = ("Aaron_Eckhart", "Abdullah_Gul")) -> Path:
    """An identity-folder set of one real LFW photo per person (linked from the shared copy)."""
    if not (LFW / "lfw-deepfunneled").is_dir():
        pytest.skip(f"LFW not found at {LFW}")
    for person in people:
        (root / person).mkdir(parents=True)
        (root / person / "a.jpg").symlink_to(LFW / "lfw-deepfunneled" / person / f"{person}_0001.jpg")
    return root


def _eval_only(cache: Path, **extra: object) -> list[str]:
    """``--set`` items: the quickstart teacher on a folder, pre-aligned crops, no latency measurement."""
    sets = {"data.source": "folder", "data.align_backend": "none", "data.cache_dir": str(cache),
            "eval.latency": "false", "teacher.precision": "fp32", **extra}
    return [f"{k}={v}" for k, v in sets.items()]


# --------------------------------------------------------------------------- 1. a face set of one's own
def test_an_identity_folder_set_is_an_evaluation_protocol(tmp_path: Path) -> None:
    faces = _orl_set(tmp_path / "orl")
    rc, out, err = run_cli_inprocess(["eval", str(QUICKSTART), *set_args(_eval_only(
        tmp_path / "cache", **{"data.root": str(faces), "eval.pairs": f"[{faces}]"})), "--out", str(tmp_path / "ev")])
    assert rc == 0, err
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    proto = report["models"][0]["protocols"]["orl"]
    # 15 images of 5 people: every pair, C(15, 2) = 105, of which 5 * C(3, 2) = 15 genuine
    assert (proto["n_pairs"], proto["n_genuine"]) == (105, 15) and proto["accuracy_mean"] > 0.5
    sampled = {"folder": str(faces), "name": "orl-sample", "sample_pairs": 10, "folds": 5}
    rc, out, err = run_cli_inprocess(["eval", str(QUICKSTART), *set_args(_eval_only(
        tmp_path / "cache", **{"data.root": str(faces), "eval.pairs": json.dumps([sampled])})),
        "--out", str(tmp_path / "ev2")])
    assert rc == 0, err
    proto = json.loads((tmp_path / "ev2" / "report.json").read_text())["models"][0]["protocols"]["orl-sample"]
    assert (proto["n_genuine"], proto["n_impostor"], proto["n_folds"]) == (10, 10, 5)


def test_held_out_people_are_evaluated_without_pairs_files(tmp_path: Path) -> None:
    from distill.config import validate
    from distill.data.protocols import prepare_eval
    from distill.plan import plan

    faces = _orl_set(tmp_path / "orl", people=8)
    cfg = validate({"data": {"source": "folder", "root": str(faces), "holdout_fraction": 0.25,
                             "align_backend": "none", "cache_dir": str(tmp_path / "cache")}})
    shown = plan(cfg).format()  # --dry-run says what will be trained and evaluated
    assert "held-out" in shown and "train_images=18, train_identities=6, held_out_identities=2" in shown
    ev = prepare_eval(cfg, "dlib_150", lambda m: None)
    (held,) = ev.protocols
    assert held.name == "held-out" and held.size == 15 and int(held.pairs.is_same.sum()) == 6  # 2 people x 3
    assert ev.held_out.sum() == 6 and len(set(ev.labels[ev.held_out])) == 2  # identification: the same people


def test_a_protocol_without_genuine_pairs_says_na_not_crash(tmp_path: Path) -> None:
    faces = _orl_set(tmp_path / "orl", people=6, per_person=1)  # one image per person
    rc, out, err = run_cli_inprocess(["eval", str(QUICKSTART), *set_args(_eval_only(
        tmp_path / "cache", **{"data.root": str(faces), "eval.pairs": f"[{faces}]"})), "--out", str(tmp_path / "ev")])
    assert rc == 0, err
    assert "n/a: no genuine pairs" in out
    proto = json.loads((tmp_path / "ev" / "report.json").read_text())["models"][0]["protocols"]["orl"]
    assert proto["accuracy_mean"] is None and proto["reason"] == "no genuine pairs"


def test_lfw_format_pairs_resolve_any_image_extension(tmp_path: Path) -> None:
    from distill.data.pairs import detect_image_ext, read_pairs, write_pairs

    root = tmp_path / "faces"
    for name in ("ann", "bob"):
        (root / name).mkdir(parents=True)
        for i in (1, 2):
            Image.new("L", (20, 20), 80 * i).save(root / name / f"{name}_{i:04d}.pgm")
    pairs = write_pairs(tmp_path / "pairs.txt", [("ann", 1, 2)], [("ann", 1, "bob", 2)])
    assert detect_image_ext(root) == ".pgm"
    assert read_pairs(pairs, root, ext=detect_image_ext(root)).rel_path_b == ["ann/ann_0002.pgm", "bob/bob_0002.pgm"]


# --------------------------------------------------------------------------- 2. one bad folder, real remedies
def test_bad_and_litter_folders_never_stop_a_gallery_build(tmp_path: Path) -> None:
    root = _lfw_people(tmp_path / "people")
    (root / "Tiff_Person").mkdir()
    Image.open(LFW / "lfw-deepfunneled" / "Adam_Sandler" / "Adam_Sandler_0001.jpg").save(
        root / "Tiff_Person" / "only.tiff")
    (root / "Broken").mkdir()
    (root / "Broken" / "x.jpg").write_bytes(b"")
    (root / "__MACOSX" / "Aaron_Eckhart").mkdir(parents=True)
    (root / "__MACOSX" / "Aaron_Eckhart" / "._a.jpg").write_bytes(b"\x00\x05")
    (root / "Thumbs.db").write_bytes(b"litter")
    from distill.data.folders import SkippedFilesWarning

    with pytest.warns(SkippedFilesWarning, match="Broken/x.jpg: empty file"):
        rc, out, err = run_cli_inprocess(["gallery", "build", "--model", "teacher:dlib_resnet", "--images", str(root),
                                          "-o", str(tmp_path / "g"), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0, err
    assert "3 faces of 3 identities" in out and "1 identity folders skipped (no usable image): Broken" in out
    assert "MACOSX" not in out + err and "Thumbs" not in out + err


def _error_texts() -> str:
    """The literal text of every exception the package raises (f-string parts included)."""
    import ast

    texts = []
    for f in (Path(__file__).parents[1] / "distill").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Raise):
                texts += [c.value for c in ast.walk(node) if isinstance(c, ast.Constant) and isinstance(c.value, str)]
    return "\n".join(texts)


def test_every_remedy_an_error_suggests_exists() -> None:
    """Error messages may only advise command-line flags and config keys that exist (no Python arguments)."""
    import re

    from distill.cli import build_parser
    from distill.config import Config
    from distill.data.recordio import build_parser as recordio_parser

    text = _error_texts()
    assert "exclude_identities=" not in text and "raise max_pixels" not in text
    helps, todo = [], [build_parser(), recordio_parser()]  # the commands errors point to
    while todo:  # every (sub)command's help
        p = todo.pop()
        helps.append(p.format_help())
        for a in p._actions:
            choices = getattr(a, "choices", None)
            todo += [c for c in choices.values() if hasattr(c, "format_help")] if isinstance(choices, dict) else []
    flags = set(re.findall(r"--[a-z][a-z0-9-]+", "\n".join(helps)))
    unknown = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]+)", text)) - flags - {"--no-deps"}
    assert not unknown, f"errors advise flags that do not exist: {sorted(unknown)}"
    keys = {f"{sec}.{k}" for sec, field in Config.model_fields.items()
            if hasattr(field.annotation, "model_fields") for k in field.annotation.model_fields}
    quoted = set(re.findall(r"\b((?:data|teacher|student|train|eval)\.[a-z_]+)\b", text))
    quoted -= {"student.pt", "train.rec"}  # files, not keys
    assert quoted <= keys | {"train.loss"}, f"errors name config keys that do not exist: {sorted(quoted - keys)}"


# --------------------------------------------------------------------------- 3. no face, no decision
def test_no_face_is_not_enrolled_and_never_decided(tmp_path: Path) -> None:
    root = _lfw_people(tmp_path / "people")
    Image.new("RGB", (250, 250), (128, 128, 128)).save(root / "Abdullah_Gul" / "grey.png")
    args = ["--cache-dir", str(tmp_path / "cache")]
    rc, out, err = run_cli_inprocess(["gallery", "build", "--model", "teacher:dlib_resnet", "--images", str(root),
                                      "-o", str(tmp_path / "g"), *args])
    assert rc == 0, err
    assert "2 faces of 2 identities" in out and "1 of them with no face found" in out and "grey.png" in out
    probes = tmp_path / "probes"
    probes.mkdir()
    Image.new("RGB", (250, 250), (128, 128, 128)).save(probes / "grey.png")
    Image.new("RGB", (1, 1), (10, 200, 30)).save(probes / "pixel.png")
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((300, 400, 3)) * 60 + np.linspace(60, 200, 400)[None, :, None]).astype(np.uint8)
                    ).save(probes / "landscape.jpg")
    (probes / "face.jpg").symlink_to(LFW / "lfw-deepfunneled" / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg")
    rc, out, err = run_cli_inprocess(["gallery", "search", str(probes), "--gallery", str(tmp_path / "g"),
                                      "--threshold", "0.6", "--json", *args])
    assert rc == 0, err
    result = {Path(p["image"]).name: p for p in json.loads(out)["probes"]}
    assert result["face.jpg"]["face_found"] and result["face.jpg"]["decision"] == "same"
    for name in ("grey.png", "pixel.png", "landscape.jpg"):
        assert result[name]["face_found"] is False and result[name]["decision"] is None, result[name]
    rc, out, err = run_cli_inprocess(["gallery", "build", "--model", "teacher:dlib_resnet", "--images", str(root),
                                      "-o", str(tmp_path / "g2"), "--no-face", "center", *args])
    assert rc == 0 and "3 faces of 2 identities" in out, out + err


# --------------------------------------------------------------------------- 4. pairs files in other encodings
def test_pairs_files_with_a_bom_load_and_other_encodings_name_file_and_line(tmp_path: Path) -> None:
    from distill.data.pairs import PairsFormatError, read_pairs

    root = tmp_path / "faces"
    for name in ("José", "Ann"):
        (root / name).mkdir(parents=True)
        for i in (1, 2):
            Image.new("L", (20, 20), 90).save(root / name / f"{name}_{i:04d}.jpg")
    text = "1\nAnn\t1\t2\nAnn\t1\tJosé\t2\n"
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert len(read_pairs(tmp_path / "bom.txt", root)) == 2
    (tmp_path / "latin1.txt").write_bytes(text.encode("latin-1"))
    with pytest.raises(PairsFormatError, match=r"latin1.txt:3: not UTF-8 text.*iconv"):
        read_pairs(tmp_path / "latin1.txt", root)
    rc, out, err = run_cli_inprocess(["eval", str(QUICKSTART), *set_args(_eval_only(
        tmp_path / "cache", **{"data.root": str(root), "eval.pairs": f"[{tmp_path / 'latin1.txt'}]"})),
        "--out", str(tmp_path / "ev")])
    assert rc == 2 and "latin1.txt:3: not UTF-8" in err and "Traceback" not in err


# --------------------------------------------------------------------------- 5. relative paths
def test_relative_paths_are_read_from_the_config_files_folder(tmp_path: Path, monkeypatch) -> None:
    from distill.config import load_config

    project = tmp_path / "sub" / "dir"
    faces = _orl_set(project / "faces", people=4, per_person=2)
    cfg_file = project / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({"data": {"source": "folder", "root": "faces", "holdout_fraction": 0.5,
                                                 "align_backend": "none"}, "eval": {"pairs": ["faces"]}}))
    monkeypatch.chdir(tmp_path)
    cfg = load_config("sub/dir/config.yaml")
    assert cfg.data.root == faces and cfg.eval.pairs[0].folder == faces  # a folder path: an identity-folder set
    cfg_file.write_text(yaml.safe_dump({"data": {"source": "folder", "root": "missing"}}))
    rc, out, err = run_cli_inprocess(["run", "sub/dir/config.yaml", "--out", str(tmp_path / "r")])
    assert rc == 2 and f"data.root {project / 'missing'} does not exist" in err
    assert "read from the config file's folder" in err


# --------------------------------------------------------------------------- 6. exit codes
@pytest.mark.parametrize("fault", ["empty_folder", "missing_pair_image", "malformed_pairs", "precomputed_nan",
                                   "precomputed_keys"])
def test_input_the_user_must_fix_exits_2_with_one_paragraph(tmp_path: Path, fault: str) -> None:
    from distill.data.pairs import write_pairs

    root = tmp_path / "faces"
    for name in ("ann", "bob", "cy"):
        (root / name).mkdir(parents=True)
        for i in (1, 2):
            Image.new("RGB", (64, 64), (40 * i, 90, 120)).save(root / name / f"{name}_{i:04d}.png")
    pairs = write_pairs(tmp_path / "pairs.txt", [("ann", 1, 2)], [("ann", 1, "bob", 2)])
    sets = {"data.root": str(root), "eval.pairs": f"[{pairs}]", "data.exclude_identities_in": "[]",
            "eval.images_root": str(root), "train.epochs": 1, "train.batch_size": 2, "student.input_size": 32,
            "student.name": "mobilenet_v1_025", "train.max_minutes": "null"}
    if fault == "empty_folder":
        sets["data.root"] = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
        expect = "no usable images under"
    elif fault == "missing_pair_image":
        write_pairs(pairs, [("ann", 1, 7)], [("ann", 1, "bob", 2)])
        expect = "references 1 image(s) not found"
    elif fault == "malformed_pairs":
        pairs.write_text("1\nann\t1\n")
        expect = "pairs.txt: header '1' promises 2 pairs"
    else:
        keys = [f"{n}/{n}_{i:04d}.png" for n in ("cy",) for i in (1, 2)]
        emb = np.ones((2, 8), np.float32)
        if fault == "precomputed_nan":
            emb[1, 3] = np.nan
            expect = "1 embedding rows contain NaN"
        else:
            keys = ["other/x.png", "other/y.png"]
            expect = "no precomputed embedding for"
        np.savez(tmp_path / "emb.npz", keys=np.array(keys), embeddings=emb)
        sets.update({"teacher.name": "precomputed", "teacher.weights": str(tmp_path / "emb.npz"),
                     "train.teacher_mode": "cached"})
    rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(_eval_only(tmp_path / "cache", **sets)),
                                      "--out", str(tmp_path / "run")])
    assert rc == 2, err
    assert expect in err and "Traceback" not in err and err.count("distill: error:") == 1


# --------------------------------------------------------------------------- 7. log noise
def test_progress_in_a_file_is_throttled(tmp_path: Path, monkeypatch) -> None:
    import io
    import sys
    import time

    from distill.progress import progress_bar

    log = io.StringIO()  # not a terminal
    monkeypatch.setattr(sys, "stderr", log)
    with progress_bar(total=1000, desc="work", unit="it", file=log) as bar:
        for _ in range(1000):
            bar.update(1)
            time.sleep(0.0005)
    lines = [x for x in log.getvalue().replace("\r", "\n").splitlines() if x.strip()]
    assert len(lines) <= 3, lines  # the first, the last: no line per update
