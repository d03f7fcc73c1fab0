"""The teacher contract, checked on every registered teacher (architecture only: weights=None)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from distill.preprocess import ALIGNMENTS, Preprocessing
from teachers.precomputed import PrecomputedFileError
from teachers import (TEACHERS, CallableTeacher, PrecomputedTeacher, Teacher, build_teacher, check_teacher_weights,
                      describe_teacher)

EMBEDDING_TEACHERS = [e.name for e in TEACHERS if e.name != "precomputed"]
#: teachers whose network runs in torch (ONNX ones run onnxruntime on plain NCHW arrays: no channels_last)
TORCH_TEACHERS = [n for n in EMBEDDING_TEACHERS if n not in ("onnx", "sface")]


@pytest.fixture(scope="module")
def faces() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (3, 150, 150, 3), generator=g, dtype=torch.uint8)  # NHWC, any size is fine


def _architecture(name: str, tmp: Path) -> Teacher:
    """``weights=None`` (architecture only), except the ``onnx`` teacher, which is only a file: a tiny one."""
    if name != "onnx":
        return TEACHERS.build(name, weights=None)
    from test_onnx_teacher import OPTIONS, Tiny, export

    return TEACHERS.build(name, weights=str(export(Tiny(), tmp / "tiny.onnx")), **OPTIONS)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Teacher]:
    torch.manual_seed(0)
    tmp = tmp_path_factory.mktemp("teachers")
    return {name: _architecture(name, tmp) for name in TEACHERS.names()}


def test_all_expected_teachers_registered() -> None:
    assert {"dlib_resnet", "facenet", "timm", "precomputed"} <= set(TEACHERS.names())


@pytest.mark.parametrize("name", TEACHERS.names())
def test_preprocessing_declared(built: dict[str, Teacher], name: str) -> None:
    t = built[name]
    assert isinstance(t, Teacher)
    assert isinstance(t.preprocessing, Preprocessing)
    assert t.preprocessing.alignment in ALIGNMENTS
    assert t.embedding_dim > 0 and isinstance(t.normalized, bool)
    assert t.precision == "fp32"


@pytest.mark.parametrize("name", EMBEDDING_TEACHERS)
def test_embed_contract(built: dict[str, Teacher], faces: torch.Tensor, name: str) -> None:
    t = built[name]
    emb = t.embed(faces)
    assert emb.shape == (3, t.embedding_dim)
    assert emb.dtype == torch.float32
    assert torch.isfinite(emb).all()
    assert not emb.requires_grad
    if t.normalized:
        assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-4)
    # NCHW input of another size gives the same kind of output
    emb2 = t.embed(faces.permute(0, 3, 1, 2)[:, :, :120, :120])
    assert emb2.shape == (3, t.embedding_dim)


@pytest.mark.parametrize("name", EMBEDDING_TEACHERS)
def test_stays_in_eval_inside_a_training_parent(built: dict[str, Teacher], faces: torch.Tensor, name: str) -> None:
    t = built[name]
    parent = nn.ModuleDict({"teacher": t, "student": nn.Linear(2, 2)})
    parent.train()
    assert parent["student"].training
    assert not any(m.training for m in t.modules()), "a teacher submodule switched to training mode"
    # eval-mode outputs are deterministic (no dropout) and batch-independent (no batch-stat BN)
    a = t.embed(faces)
    parent.train()
    b = t.embed(faces[:1])
    assert torch.allclose(a[:1], b, atol=1e-5)


# the precision switch lives in the Teacher base; two different networks are enough (FaceNet's many
# conv shapes make the first bf16 call slow on CPU)
@pytest.mark.parametrize("name,options", [("dlib_resnet", {}), ("timm", {"model_name": "resnet18"})])
def test_bf16_close_to_fp32(faces: torch.Tensor, name: str, options: dict) -> None:
    torch.manual_seed(1)
    t32 = TEACHERS.build(name, weights=None, **options)
    t16 = TEACHERS.build(name, weights=None, precision="bf16", **options)
    t16.load_state_dict(t32.state_dict())
    a, b = t32.embed(faces), t16.embed(faces)
    assert b.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cos.min() > 0.99, cos  # random weights; the real dlib weights are checked to > 0.999
    assert t16.fingerprint() != t32.fingerprint() and t16.weights_fingerprint() == t32.weights_fingerprint()


@pytest.mark.parametrize("name", TORCH_TEACHERS)
def test_fp32_embed_runs_channels_last_with_nchw_outputs(faces: torch.Tensor, name: str) -> None:
    """embed() runs channels_last for speed (BENCHMARKS section 1); its fp32 outputs are the NCHW network's."""
    torch.manual_seed(2)
    ref_teacher = TEACHERS.build(name, weights=None)
    t = TEACHERS.build(name, weights=None)
    t.load_state_dict(ref_teacher.state_dict())
    with torch.no_grad():
        ref = ref_teacher(ref_teacher.preprocessing(faces).contiguous())  # plain NCHW tensors and weights
    out = t.embed(faces)
    conv = next(m for m in t.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max())), (out - ref).abs().max()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_custom_callable_teacher_gets_plain_nchw_input(faces: torch.Tensor, precision: str) -> None:
    """A user's callable may ``view`` its input: CallableTeacher never hands it a channels_last tensor."""
    pre = Preprocessing(16, mean=(127.5,) * 3, std=(127.5,) * 3, alignment="arcface_112")
    t = CallableTeacher(lambda x: x.view(x.shape[0], -1)[:, :4], name="viewer", preprocessing=pre,
                        embedding_dim=4, normalized=False, precision=precision)
    assert t.embed(faces).shape == (3, 4)


def test_bad_precision_rejected() -> None:
    with pytest.raises(ValueError, match="bf16"):
        TEACHERS.build("dlib_resnet", weights=None, precision="fp16")


def test_describe_a_teacher_that_is_only_a_file() -> None:
    """`distill models` lists the onnx teacher without a file: no cost to count, and it says what it needs."""
    row = describe_teacher(TEACHERS.get("onnx"))
    assert row["params"] is None and row["mult_adds"] is None and "needs teacher.weights" in row["description"]


@pytest.mark.parametrize("name", [n for n in TEACHERS.names() if n != "onnx"])
def test_describe_teacher(name: str) -> None:
    row = describe_teacher(TEACHERS.get(name))
    assert row["name"] == name and row["kind"] == "teacher"
    assert row["output_dim"] > 0 and row["input_size"] >= 16
    if name != "precomputed":
        assert row["params"] > 1_000_000 and row["mult_adds"] > 10_000_000
    assert "(x-" in row["preprocessing"]


def test_describe_dlib_matches_reference_size() -> None:
    row = describe_teacher(TEACHERS.get("dlib_resnet"))
    assert row["params"] == pytest.approx(5.6e6, rel=0.01)  # reference: about 5.6M parameters
    assert (row["input_size"], row["output_dim"], row["normalized"]) == (150, 128, False)


# ------------------------------------------------------------------------------------------ custom teachers
def test_custom_teacher_registered_by_decorator(faces: torch.Tensor) -> None:
    pre = Preprocessing(112, mean=(127.5,) * 3, std=(127.5,) * 3, alignment="arcface_112")

    @TEACHERS.register("test_tiny", description="a tiny test teacher")
    def tiny(weights: str | None = "default", precision: str = "fp32") -> Teacher:
        torch.manual_seed(0 if weights is None else 1)
        net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.Dropout(0.5), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        return CallableTeacher(net, name="test_tiny", preprocessing=pre, embedding_dim=8, normalized=False,
                               precision=precision)

    try:
        assert "test_tiny" in TEACHERS
        t = build_teacher("test_tiny", precision="bf16")
        out = t.embed(faces)
        assert out.shape == (3, 8) and out.dtype == torch.float32
        assert torch.equal(out, t.embed(faces))  # dropout is off
        row = describe_teacher(TEACHERS.get("test_tiny"))
        assert row["input_size"] == 112 and row["output_dim"] == 8 and row["params"] == 8 * 3 * 9 + 8
        assert check_teacher_weights("test_tiny") == []
    finally:
        TEACHERS._entries.pop("test_tiny", None)


def test_build_teacher_none_means_default_weights() -> None:
    real = build_teacher("dlib_resnet")           # config weights: null -> the real file
    random = TEACHERS.build("dlib_resnet", weights=None)
    assert real.weights_fingerprint() != random.weights_fingerprint()
    assert build_teacher("dlib_resnet").weights_fingerprint() == real.weights_fingerprint()


def test_check_teacher_weights(tmp_path) -> None:
    assert check_teacher_weights("dlib_resnet") == []
    (problem,) = check_teacher_weights("dlib_resnet", tmp_path / "nope.dat")
    assert "nope.dat" in problem and "teacher.weights" in problem
    assert check_teacher_weights("precomputed")  # needs a file
    assert check_teacher_weights("timm", tmp_path / "missing.pt")


# ------------------------------------------------------------------------------------------ timm
def test_timm_checkpoint_round_trip(tmp_path, faces: torch.Tensor) -> None:
    from distill.io import atomic_torch_save

    kwargs = dict(model_name="resnet18", embedding_dim=64, input_size=112)
    torch.manual_seed(3)
    src = TEACHERS.build("timm", weights=None, **kwargs)
    atomic_torch_save(src.state_dict(), tmp_path / "t.pt")
    loaded = TEACHERS.build("timm", weights=str(tmp_path / "t.pt"), **kwargs)
    assert torch.equal(src.embed(faces), loaded.embed(faces))
    assert loaded.preprocessing.alignment == "arcface_112" and loaded.embedding_dim == 64

    # a bare backbone state dict cannot fill the embedding head
    atomic_torch_save(src.backbone.state_dict(), tmp_path / "backbone.pt")
    with pytest.raises(ValueError, match="head"):
        TEACHERS.build("timm", weights=str(tmp_path / "backbone.pt"), **kwargs)
    # ... but is fine with no head (pooled features)
    bare = TEACHERS.build("timm", weights=str(tmp_path / "backbone.pt"), model_name="resnet18", embedding_dim=None)
    assert bare.embedding_dim == 512 and bare.normalized
    with pytest.raises(ValueError, match="does not fit"):
        TEACHERS.build("timm", weights=str(tmp_path / "t.pt"), model_name="resnet34", embedding_dim=64)


def test_timm_options() -> None:
    t = TEACHERS.build("timm", weights=None, model_name="resnet18", input_size=128, mean=(0, 0, 0),
                       std=(255, 255, 255), alignment="facenet_160", embedding_dim=32, normalize=False)
    assert t.preprocessing == Preprocessing(128, (0, 0, 0), (255, 255, 255), "facenet_160")
    assert (t.embedding_dim, t.normalized) == (32, False)
    with pytest.raises(ValueError, match="no model"):
        TEACHERS.build("timm", weights=None, model_name="resnet_does_not_exist")
    with pytest.raises(ValueError, match="embedding_dim=None"):
        TEACHERS.build("timm", weights="pretrained", model_name="resnet18", embedding_dim=128)


# ------------------------------------------------------------------------------------------ precomputed
def test_precomputed_npz_lookup(tmp_path, faces: torch.Tensor) -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(5, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    keys = [f"Person_{i}/Person_{i}_0001.jpg" for i in range(5)]
    np.savez(tmp_path / "emb.npz", keys=np.array(keys), embeddings=emb, alignment=np.array("facenet_160"))
    t = TEACHERS.build("precomputed", weights=str(tmp_path / "emb.npz"))
    assert isinstance(t, PrecomputedTeacher) and not t.can_embed
    assert (t.embedding_dim, t.normalized, t.preprocessing.alignment) == (16, True, "facenet_160")
    got = t.lookup([keys[3], keys[0]])
    assert got.dtype == torch.float32 and np.allclose(got.numpy(), emb[[3, 0]])
    with pytest.raises(PrecomputedFileError, match="no precomputed embedding"):
        t.lookup(["Nobody/Nobody_0001.jpg"])
    with pytest.raises(RuntimeError, match="teacher_mode=cached"):
        t.embed(faces)
    # the cache key follows the table
    emb2 = emb.copy()
    emb2[0, 0] += 1
    np.savez(tmp_path / "emb2.npz", keys=np.array(keys), embeddings=emb2)
    assert TEACHERS.build("precomputed", weights=str(tmp_path / "emb2.npz")).fingerprint() != t.fingerprint()


def test_precomputed_npy_with_keys_file(tmp_path) -> None:
    emb = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "e.npy", emb)
    with pytest.raises(FileNotFoundError, match="e.keys.txt"):
        TEACHERS.build("precomputed", weights=str(tmp_path / "e.npy"))
    (tmp_path / "e.keys.txt").write_text("a.jpg\nb.jpg\nc.jpg\n")
    t = TEACHERS.build("precomputed", weights=str(tmp_path / "e.npy"))
    assert not t.normalized and np.array_equal(t.lookup(["c.jpg"]).numpy(), emb[[2]])
    (tmp_path / "e.keys.txt").write_text("a.jpg\nb.jpg\n")
    with pytest.raises(ValueError, match="keys"):
        TEACHERS.build("precomputed", weights=str(tmp_path / "e.npy"))
