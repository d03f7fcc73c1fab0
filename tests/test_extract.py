"""Embedding extraction (batching, flip TTA, cache) and verification/fidelity on real ORL faces."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from distill.embedder import ModuleEmbedder
from distill.evaluation.extract import cache_path, extract_embeddings
from distill.evaluation.verify import PairIndex, evaluate_pairs, fidelity
from distill.preprocess import Preprocessing
from students import MobileNet
from tests.conftest import SHARED

ORL = SHARED / "data" / "orl"


def load_orl(size: int = 64, people: int = 40, per_person: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """ORL faces as uint8 (N, size, size, 3): centre square crop of the 92x112 grey image, resized."""
    if not (ORL / "s1" / "1.pgm").exists():
        pytest.skip(f"ORL faces not found at {ORL} (set FACEDISTILL_SHARED to the shared/ folder)")
    faces, labels = [], []
    for p in range(1, people + 1):
        for i in range(1, per_person + 1):
            im = Image.open(ORL / f"s{p}" / f"{i}.pgm").convert("L")
            w, h = im.size
            im = im.crop((0, (h - w) // 2, w, (h - w) // 2 + w)).resize((size, size), Image.BILINEAR)
            faces.append(np.repeat(np.asarray(im)[:, :, None], 3, axis=2))
            labels.append(p)
    return np.stack(faces), np.asarray(labels)


def orl_pairs(labels: np.ndarray, n: int = 300, seed: int = 0) -> PairIndex:
    """``n`` genuine and ``n`` impostor pairs, spread over 10 folds."""
    rng = np.random.default_rng(seed)
    a, b, same = [], [], []
    while len(a) < 2 * n:
        i, j = rng.integers(0, len(labels), 2)
        want_same = len(a) % 2 == 0
        if i != j and (labels[i] == labels[j]) == want_same:
            a.append(i), b.append(j), same.append(want_same)
    # genuine and impostor pairs alternate, so consecutive couples share a fold: every fold holds both
    return PairIndex(a, b, same, (np.arange(2 * n) // 2) % 10)


class CountingEmbedder(ModuleEmbedder):
    """The real student embedder, counting how many batches it was asked to embed."""

    calls = 0

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return super().embed(faces)


def make_student(alpha: float = 0.25, normalize: bool = True, seed: int = 0,
                 calibrate: np.ndarray | None = None, embedding_dim: int = 64) -> CountingEmbedder:
    """A randomly initialised MobileNet whose BatchNorm statistics are estimated on ``calibrate`` faces.

    (Untrained running statistics make a deep random net's eval-mode output vanish to ~1e-15.)
    """
    torch.manual_seed(seed)
    net = MobileNet(alpha=alpha, input_size=64, embedding_dim=embedding_dim, normalize=normalize)
    pre = Preprocessing(64)
    if calibrate is not None:
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None                       # exact average over the calibration batches
        net.train()
        with torch.no_grad():
            for i in range(0, len(calibrate), 100):
                net(pre(torch.from_numpy(np.ascontiguousarray(calibrate[i:i + 100]))))
        net.eval()
    return CountingEmbedder(net, pre, name=f"mobilenet_{alpha}", normalized=normalize)


@pytest.fixture(scope="module")
def orl():
    return load_orl()


@pytest.fixture(scope="module")
def student(orl):
    return make_student(calibrate=orl[0][::2])


def test_batches_match_and_cache_hit(orl, student, tmp_path):
    faces, _ = orl
    emb = student
    full = extract_embeddings(emb, faces[:100], batch_size=100, progress=False)
    assert full.shape == (100, 64) and full.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(full, axis=1), 1.0, atol=1e-5)
    emb.calls = 0
    cached = extract_embeddings(emb, faces[:100], batch_size=32, cache_dir=tmp_path, progress=False)
    assert emb.calls == 4                                   # ceil(100 / 32) batches
    np.testing.assert_allclose(cached, full, atol=1e-5)     # batch size does not change results (eval mode)
    again = extract_embeddings(emb, faces[:100], batch_size=32, cache_dir=tmp_path, progress=False)
    assert emb.calls == 4                                   # second call: served from disk, model not called
    np.testing.assert_array_equal(again, cached)
    files = list(tmp_path.glob("*.npy"))
    assert len(files) == 1 and not list(tmp_path.glob(".*tmp"))
    # the cache is a plain array, readable without pickle
    np.testing.assert_array_equal(np.load(files[0], allow_pickle=False), cached)


def test_cache_key_covers_model_data_and_flip(orl, student, tmp_path):
    faces, _ = orl
    emb = student
    p = cache_path(tmp_path, emb, faces[:20], flip_tta=False)
    assert cache_path(tmp_path, emb, faces[:20], flip_tta=True) != p
    assert cache_path(tmp_path, emb, faces[20:40], flip_tta=False) != p
    assert cache_path(tmp_path, emb, faces[:20], flip_tta=False, cache_key="aligned-v1") != p
    other = make_student(seed=1)
    assert cache_path(tmp_path, other, faces[:20], flip_tta=False) != p   # other weights, other file


def test_corrupt_cache_is_recomputed(orl, student, tmp_path):
    faces, _ = orl
    emb = student
    first = extract_embeddings(emb, faces[:10], cache_dir=tmp_path, progress=False)
    path = next(tmp_path.glob("*.npy"))
    path.write_bytes(path.read_bytes()[:50])                # truncated by a crash elsewhere
    emb.calls = 0
    again = extract_embeddings(emb, faces[:10], cache_dir=tmp_path, progress=False)
    assert emb.calls == 1
    np.testing.assert_allclose(again, first, atol=1e-6)


@pytest.mark.parametrize("normalize", [True, False])
def test_flip_tta(orl, normalize):
    faces = orl[0][:16]
    emb = make_student(normalize=normalize, calibrate=orl[0][::8])
    plain = extract_embeddings(emb, faces, progress=False)
    mirrored = extract_embeddings(emb, np.ascontiguousarray(faces[:, :, ::-1]), progress=False)
    tta = extract_embeddings(emb, faces, flip_tta=True, progress=False)
    if normalize:   # sum then L2-normalise
        expect = (plain + mirrored) / np.linalg.norm(plain + mirrored, axis=1, keepdims=True)
    else:           # raw descriptors: average, keeping the model's distance units
        expect = (plain + mirrored) / 2
    def rel(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.linalg.norm(x - y) / np.linalg.norm(y))
    assert rel(tta, expect) < 1e-5
    assert rel(tta, plain) > 1e-3
    # a TTA embedding does not depend on which way the face looks
    tta_of_mirror = extract_embeddings(emb, np.ascontiguousarray(faces[:, :, ::-1]), flip_tta=True, progress=False)
    assert rel(tta_of_mirror, tta) < 1e-5


def test_rejects_bad_faces():
    with pytest.raises(ValueError, match="uint8 faces"):
        extract_embeddings(make_student(), np.zeros((2, 64, 64, 3), np.float32), progress=False)


def test_evaluate_pairs_and_fidelity_on_orl(orl, student):
    faces, labels = orl
    pairs = orl_pairs(labels)
    emb = extract_embeddings(student, faces, progress=False)
    res = evaluate_pairs(emb, pairs, normalized=True)
    assert res.n_pairs == 600 and res.n_genuine == 300 and res.n_folds == 10
    assert 0 <= res.accuracy_mean <= 1 and len(res.fold_thresholds) == 10 and not res.warnings
    assert res.tar(1e-2) is not None and res.tar("0.01") == res.tar(1e-2)    # FAR keys normalised once
    assert res.tar(1e-3) is None and "300 impostor pairs" in res.tar_reasons[1e-3]
    assert res.roc.far[0] == 0 and res.roc.tar[-1] == 1.0
    assert sum(res.genuine.hist) == 300 and sum(res.impostor.hist) == 300
    # raw pixels already beat chance on ORL: a sanity check that the pair indexing is right
    pix = faces.reshape(len(faces), -1).astype(np.float32)
    pix_res = evaluate_pairs(pix - pix.mean(0), pairs, normalized=True)
    assert pix_res.accuracy_mean > 0.75 and pix_res.auc > 0.8
    # folds holding a single class are flagged: their threshold cross-validation is meaningless
    lopsided = PairIndex(pairs.idx_a, pairs.idx_b, pairs.is_same, np.arange(600) % 10)
    assert any("only genuine" in w for w in evaluate_pairs(pix, lopsided, normalized=True).warnings)
    # fidelity: identical -> 1; another random student is far from this one
    same = fidelity(emb, emb)
    assert same.mean == pytest.approx(1.0) and sum(same.hist) == 400
    other = fidelity(extract_embeddings(make_student(seed=1, calibrate=faces[::4]), faces, progress=False), emb)
    assert other.mean < 0.99 and other.percentiles["5"] <= other.mean
    with pytest.raises(ValueError, match="same shape"):
        fidelity(emb[:, :32], emb)
