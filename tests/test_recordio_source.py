"""RecordIO as a training source: ``distill run`` from an insightface-layout ``train.rec`` (written by the test's
own writer in tests/test_recordio.py), evaluated on a ``.bin``; faces read lazily, keyed without decoding."""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from distill.config import ConfigError, load_config
from distill.data.recordio import RecordIOFaces
from distill.data.recordio_source import RecordFaces, prepare_recordio
from distill.data.templates import reframe_crop
from test_recordio import crops, rgb, write_insightface  # noqa: F401 - the fixture and the format's writer


@pytest.fixture()
def rec_set(tmp_path: Path, crops) -> Path:  # noqa: F811 - the imported fixture
    write_insightface(tmp_path / "faces", crops)
    return tmp_path / "faces"


def _bin_from(crops_, path: Path) -> Path:
    """A .bin of 20 pairs of the same crops (10 same, 10 different, alternating), in the field's layout."""
    by_person: dict[int, list[bytes]] = {}
    for label, jpeg in crops_:
        by_person.setdefault(label, []).append(jpeg)
    people = sorted(by_person)
    bins, same = [], []
    for i in range(20):
        p = people[i % len(people)]
        if i % 2 == 0:
            bins += [by_person[p][i % 3], by_person[p][(i + 1) % 3]]
        else:
            bins += [by_person[p][0], by_person[people[(i + 1) % len(people)]][1]]
        same.append(i % 2 == 0)
    with open(path, "wb") as f:
        pickle.dump((bins, same), f, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def test_a_run_distils_from_a_rec_set_and_evaluates_on_a_bin(rec_set: Path, crops, tmp_path: Path):  # noqa: F811
    from test_reliability_helpers import QUICKSTART, run_cli_inprocess, set_args, tiny_overrides

    binp = _bin_from(crops, tmp_path / "pairs.bin")
    sets = tiny_overrides(tmp_path / "cache", **{
        "data.source": "recordio", "data.root": str(rec_set), "teacher.name": "sface", "data.augment.hflip": 0.5,
        "eval.pairs": json.dumps([{"bin": str(binp), "name": "tiny-bin"}]), "eval.identification": "false",
        "eval.flip_tta": "true"})
    rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(sets), "--out", str(tmp_path / "run")])
    assert rc == 0, err[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    student = next(m for m in report["models"] if m["role"] == "student")
    assert student["protocols"]["tiny-bin"]["n_pairs"] == 20
    # diagnostics: cosine to the teacher on its own training faces beside the held-out one; TAR intervals
    assert student["extra"]["fidelity_train"]["sample"] == 12 and -1 <= student["extra"]["fidelity_train"]["mean"] <= 1
    record = json.loads((tmp_path / "run" / "data_record.json").read_text())["train"]
    assert record["source"] == "recordio" and record["train_images"] == 12 and record["train_identities"] == 4
    assert "not checked" in record["split"]["identity_disjoint"]
    assert "flip TTA (eval.flip_tta: true)" in (tmp_path / "run" / "report.md").read_text()


def test_faces_are_read_lazily_reframed_and_keyed_without_decoding(rec_set: Path, crops, monkeypatch):  # noqa: F811
    data = RecordIOFaces(rec_set)
    faces = RecordFaces(data, np.arange(len(data)), "arcface_112", "arcface_112")
    assert faces.shape == (12, 112, 112, 3) and faces.dtype == np.uint8 and faces.ndim == 4
    np.testing.assert_array_equal(faces[3], rgb(crops[3][1]))
    assert faces[[0, 5]].shape == (2, 112, 112, 3)
    dlib = RecordFaces(data, np.arange(4), "arcface_112", "dlib_150")
    np.testing.assert_array_equal(dlib[1], reframe_crop(rgb(crops[1][1]), "arcface_112", "dlib_150"))
    before = faces.fingerprint()
    monkeypatch.setattr(RecordIOFaces, "image", lambda *a: pytest.fail("the fingerprint decoded an image"))
    assert faces.fingerprint() == before != RecordFaces(data, np.arange(6), "arcface_112", "arcface_112").fingerprint()


def test_what_a_rec_source_cannot_honour_is_refused_by_key(rec_set: Path, tmp_path: Path):
    base = ["data.source=recordio", f"data.root={rec_set}", f"data.cache_dir={tmp_path}"]
    with pytest.raises(ConfigError, match="data.exclude_identities_in and data.holdout_fraction"):
        prepare_recordio(load_config(None, base + ["data.holdout_fraction=0.2"]), "arcface_112", print)
    with pytest.raises(ConfigError, match=r"data\.aligned.*facenet_160"):
        prepare_recordio(load_config(None, base), "facenet_160", print)
    faces, names, labels, _ = prepare_recordio(load_config(None, base + ["data.max_train_images=5"]), "arcface_112",
                                               lambda m: None)
    assert len(faces) == 5 == len(labels) and names[0].startswith("train.rec#")


def test_dry_run_plans_a_rec_source(rec_set: Path, tmp_path: Path):
    from test_reliability_helpers import QUICKSTART, run_cli_inprocess

    rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), "--set", "data.source=recordio", "--set",
                                      f"data.root={rec_set}", "--set", "teacher.name=sface", "--dry-run"])
    assert rc == 0, err[-2000:]
    assert "source=recordio" in out and "train_images=12" in out
