"""Export (ONNX, TorchScript) with parity on real aligned LFW faces, metadata round trip, int8."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from distill.deploy import (ExportError, OnnxEmbedder, TorchScriptEmbedder, export_checkpoint, export_model,
                            load_embedder, read_metadata, register_cli)
from distill.deploy.export import set_batchnorm_statistics
from distill.deploy.faces import align_rel_paths, sample_identity_images
from distill.losses.distill_loss import DistillLoss
from distill.preprocess import AlignmentMismatchError
from distill.models import StudentSpec, load_student, save_student
from distill.preprocess import student_preprocessing

SIZE = 64


def small_checkpoint(path: Path, faces: np.ndarray, seed: int = 0) -> Path:
    """A real mobilenet_v1_025 student at 64 px (64-D, unit norm) with a 64->128 projection into dlib's
    space; BatchNorm statistics are set from real faces so activations have realistic ranges."""
    from teachers import TEACHERS

    torch.manual_seed(seed)
    spec = StudentSpec("mobilenet_v1_025", {"input_size": SIZE, "embedding_dim": 64, "normalize": True})
    student = spec.build()
    pre = student_preprocessing(SIZE, "dlib_150")
    set_batchnorm_statistics(student, pre(torch.from_numpy(np.array(faces))))
    loss = DistillLoss(student_dim=64, teacher_dim=128, projection=True)
    teacher = TEACHERS.build("dlib_resnet", weights=None)  # recorded only (name, dim, normalisation)
    return save_student(path, student, spec, pre, teacher, loss)


@pytest.fixture(scope="session")
def align_cache(lfw_align_cache) -> Path:
    return lfw_align_cache


@pytest.fixture(scope="module")
def lfw_faces(lfw_root, align_cache) -> np.ndarray:
    root = lfw_root / "lfw-deepfunneled"
    rel = sample_identity_images(root, 12, seed=3)
    af = align_rel_paths(root, rel, template="dlib_150", cache_dir=align_cache, progress=False)
    assert len(af) == 12
    return np.array(af.faces)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, lfw_faces) -> Path:
    return small_checkpoint(tmp_path_factory.mktemp("ckpt") / "student.pt", lfw_faces)


@pytest.fixture(scope="module")
def onnx_export(ckpt, lfw_faces, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("onnx") / "s.onnx"
    return export_checkpoint(ckpt, out, "onnx", lfw_faces, faces_alignment="dlib_150")


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="distill")
    register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_onnx_export_matches_pytorch_and_records_preprocessing(ckpt, lfw_faces, onnx_export):
    res = onnx_export
    out = res["path"]
    assert res["parity"]["max_abs_diff"] <= 1e-4 and res["parity"]["faces"] == len(lfw_faces)

    # onnxruntime vs PyTorch, measured here independently of the command's own check
    onnx_emb, torch_emb = OnnxEmbedder(out), load_embedder(ckpt)
    faces = torch.from_numpy(lfw_faces)
    got, ref = onnx_emb.embed(faces).numpy(), torch_emb.embed(faces).numpy()
    assert got.shape == (len(lfw_faces), 64)
    np.testing.assert_allclose(got, ref, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)   # normalisation is in the graph
    assert onnx_emb.embed(faces[:1]).shape == (1, 64)                        # dynamic batch
    assert onnx_emb.session.get_inputs()[0].shape[0] == "batch"

    # metadata round trip: what a phone app needs to feed the model
    _, _, pre, _ = load_student(ckpt)
    meta = read_metadata(out)
    assert onnx_emb.preprocessing == pre
    assert (meta["embedding_dim"], meta["normalized"], meta["distance"], meta["precision"]) == (64, True, "cosine",
                                                                                               "fp32")
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["input_size"] == str(SIZE) and props["alignment"] == "dlib_150"
    assert props["mean"] == "127.5,127.5,127.5" and props["std"] == "128,128,128"
    assert onnx_emb.fingerprint() == torch_emb.fingerprint()   # same weights: galleries accept both


def test_torchscript_export_round_trip(ckpt, lfw_faces, tmp_path):
    out = tmp_path / "s.ts"
    res = export_checkpoint(ckpt, out, "torchscript", lfw_faces)
    assert res["parity"]["max_abs_diff"] <= 1e-4
    emb = load_embedder(out)                    # recognised as TorchScript by its contents
    assert isinstance(emb, TorchScriptEmbedder)
    with torch.no_grad():
        ref = res["model"](emb.preprocessing(torch.from_numpy(lfw_faces))).numpy()
    np.testing.assert_allclose(emb.embed(torch.from_numpy(lfw_faces)).numpy(), ref, atol=1e-4)
    assert emb.embed(torch.from_numpy(lfw_faces[:3])).shape == (3, 64)
    meta = read_metadata(out)
    assert meta == res["metadata"]
    assert meta["preprocessing"] == {"input_size": SIZE, "mean": [127.5] * 3, "std": [128.0] * 3,
                                     "alignment": "dlib_150"}


def test_projection_export_lands_in_teacher_space(ckpt, lfw_faces, onnx_export, tmp_path):
    res = export_checkpoint(ckpt, tmp_path / "p.onnx", "onnx", lfw_faces, with_projection=True)
    meta = res["metadata"]
    assert (meta["embedding_dim"], meta["normalized"], meta["distance"]) == (128, False, "euclidean")
    assert meta["space"] == "teacher:dlib_resnet" and res["parity"]["max_abs_diff"] <= 1e-4
    assert read_metadata(onnx_export["path"])["fingerprint"] != meta["fingerprint"]


def test_failed_parity_writes_nothing(onnx_export, lfw_faces, tmp_path):
    out = tmp_path / "never.onnx"
    model, meta = onnx_export["model"], {k: v for k, v in onnx_export["metadata"].items() if k != "file_format"}
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_model(model, meta, out, "onnx", lfw_faces, tol=-1.0)   # no difference passes a negative tolerance
    assert not out.exists()
    with pytest.raises(AlignmentMismatchError, match="dlib_150"):
        export_model(model, meta, out, "onnx", lfw_faces, faces_alignment="facenet_160")


def test_cli_rejects_bad_requests(ckpt, tmp_path):
    from distill.cli import UsageError

    with pytest.raises(UsageError, match="--format onnx"):
        _cli(["export", str(ckpt), "--format", "torchscript", "--int8", "-o", str(tmp_path / "x.ts")])
    with pytest.raises(UsageError, match="does not exist"):
        _cli(["export", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x.onnx")])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a loadable facedistill student checkpoint"):
        _cli(["export", str(bad), "-o", str(tmp_path / "x.onnx")])
    with pytest.raises(ExportError, match="facedistill-export-v1|metadata"):
        torch.onnx.export(torch.nn.Linear(3, 2), (torch.zeros(1, 3),), tmp_path / "plain.onnx", dynamo=False)
        OnnxEmbedder(tmp_path / "plain.onnx")


@pytest.mark.slow
def test_cli_int8_reports_accuracy_and_latency(ckpt, lfw_root, lfw_faces, align_cache, devtest_aligned, tmp_path,
                                               capsys):
    out = tmp_path / "s.onnx"
    summary_path = tmp_path / "summary.json"
    rc = _cli(["export", str(ckpt), "--format", "onnx", "--int8", "-o", str(out),
               "--parity-images", str(lfw_root / "lfw-deepfunneled"), "--parity-count", "8",
               "--calib-count", "32", "--pairs", str(lfw_root / "pairsDevTest.txt"), "--max-pairs", "40",
               "--latency-batches", "1,8", "--cache-dir", str(align_cache), "--layers",
               "--json", str(summary_path)])
    captured = capsys.readouterr()
    text = captured.out
    # an untrained student misses the int8 tolerance: the file is written, the command says so and fails
    assert rc == 1 and "NOT within tolerance" in text and "--allow-accuracy-loss" in captured.err
    assert "parity vs PyTorch" in text and "int8 against fp32 on 40 pairs of pairsDevTest.txt" in text
    assert "layer by layer" in text
    s = json.loads(summary_path.read_text())
    q = Path(s["int8"]["path"])
    assert q == tmp_path / "s.int8.onnx" and q.is_file()
    # really quantised: QDQ nodes around int8 weights, and a much smaller file
    graph = onnx.load(str(q)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert any(t.data_type == onnx.TensorProto.INT8 for t in graph.initializer)
    assert s["int8"]["bytes"] < 0.8 * s["bytes"]  # the recipe keeps the head, stem and last block in fp32
    assert s["int8"]["within_tolerance"] is False and s["int8"]["layers"]
    assert read_metadata(q)["precision"] == "int8" and read_metadata(q)["calibration"]["faces"] == 32
    # the calibration never used the evaluation people
    assert "pairsDevTest" not in s["int8"]["calibration"]["source"]
    acc = s["accuracy"]
    assert acc["n_pairs"] == 40 and acc["n_all_pairs"] > 3_000_000  # every pair of the DevTest people
    for k in ("fp32", "int8"):
        assert 0.0 <= acc["accuracy"][k] <= 1.0 and acc["tar"][k] is not None
        assert set(s["latency"][k]) == {"1", "8"} and s["latency"][k]["8"]["images_per_s"] > 0
    agree = s["int8"]["agreement_with_fp32"]
    assert agree["spread"] > 0.1 and np.isfinite(agree["relative_error"])    # BN statistics: not collapsed
    # the int8 embedding of a face is nearest to the fp32 embedding of that same face (an untrained random
    # network amplifies int8 noise, so only trained students meet the 0.5-point target; this checks the graph)
    a = OnnxEmbedder(out).embed(torch.from_numpy(lfw_faces)).numpy()
    b = OnnxEmbedder(q).embed(torch.from_numpy(lfw_faces)).numpy()
    hits = np.mean(np.argmax(a @ b.T, axis=1) == np.arange(len(a)))
    assert hits >= 0.5, f"int8 embeddings match their fp32 face for {hits:.0%} (chance {1 / len(a):.0%})"
    print(f"int8 on 40 DevTest pairs (untrained student): fp32 {acc['accuracy']['fp32']:.3f} "
          f"int8 {acc['accuracy']['int8']:.3f}")


def test_evaluation_measures_the_exported_file(ckpt, onnx_export, lfw_faces, tmp_path):
    from distill.deploy import onnx_cost
    from distill.evaluation import cache_path, extract_embeddings
    from distill.profile import profile

    emb = OnnxEmbedder(onnx_export["path"])
    vectors = extract_embeddings(emb, lfw_faces, batch_size=5, cache_dir=tmp_path, progress=False)
    assert vectors.shape == (len(lfw_faces), 64)
    # its cache entry is its own: onnxruntime outputs never stand in for PyTorch's
    assert cache_path(tmp_path, emb, lfw_faces, False) != cache_path(tmp_path, load_embedder(ckpt), lfw_faces, False)
    cost = onnx_cost(onnx_export["path"], batch_sizes=(1, 4))
    student = load_student(ckpt)[0]
    assert cost.mult_adds == profile(student, SIZE).mult_adds and cost.params > 0
    assert cost.file_bytes == onnx_export["path"].stat().st_size and cost.images_per_s > 0


def test_two_files_of_one_student_never_share_cached_embeddings(ckpt, lfw_faces, tmp_path):
    """Two int8 files of the same student (another calibration) carry the same source fingerprint; the
    embedding cache must still tell them apart, or an evaluation re-measures the old file."""
    from distill.evaluation import extract_embeddings

    a = export_checkpoint(ckpt, tmp_path / "a.onnx", "onnx", lfw_faces, faces_alignment="dlib_150")["path"]
    b = tmp_path / "b.onnx"
    model = onnx.load(str(a))
    w = next(t for t in model.graph.initializer if len(onnx.numpy_helper.to_array(t).shape) == 4)
    arr = onnx.numpy_helper.to_array(w).copy() * 1.5  # other weights, same metadata (as a recalibration gives)
    w.CopyFrom(onnx.numpy_helper.from_array(arr, w.name))
    onnx.save(model, str(b))
    ea, eb = OnnxEmbedder(a), OnnxEmbedder(b)
    assert ea.fingerprint() == eb.fingerprint()
    cache = tmp_path / "emb"
    va = extract_embeddings(ea, lfw_faces, batch_size=6, cache_dir=cache, progress=False)
    vb = extract_embeddings(eb, lfw_faces, batch_size=6, cache_dir=cache, progress=False)
    np.testing.assert_allclose(vb, eb.embed(torch.from_numpy(lfw_faces)).numpy(), atol=1e-5)
    assert not np.allclose(va, vb, atol=1e-3)
    assert len(list(cache.glob("*.npy"))) == 2
