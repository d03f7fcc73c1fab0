"""Teacher-embedding cache: correct values, reuse, resumable build, stale/corrupt detection, K=1 lookup, fit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distill.data.views import FaceViews
from distill.losses import DistillLoss
from distill.preprocess import Preprocessing
from distill.train import build_lookup_cache, build_teacher_cache, fit
from distill.train.teacher_cache import CacheError
from teachers import CallableTeacher
from test_trainer import flip_jitter, orl_faces, settings, tiny_student, tiny_teacher  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

K = 3


class CountingTeacher(CallableTeacher):
    """The real tiny teacher, counting embed calls and optionally failing after ``fail_after`` of them."""

    def __init__(self, base: CallableTeacher, fail_after: int | None = None) -> None:
        super().__init__(base.fn, name=base.name, preprocessing=base.preprocessing,
                         embedding_dim=base.embedding_dim, normalized=base.normalized)
        self.calls, self.fail_after = 0, fail_after

    def embed(self, faces: torch.Tensor) -> torch.Tensor:
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return super().embed(faces)


@pytest.fixture(scope="module")
def views() -> FaceViews:
    return FaceViews(orl_faces(4, 4), augment=flip_jitter, seed=0)


def build(teacher, views, cache_dir, logs=None):
    return build_teacher_cache(teacher, views, K, cache_dir, batch_size=4,
                               log=(logs.append if logs is not None else lambda m: None))


def test_values_match_teacher_and_reuse(tmp_path: Path, views: FaceViews) -> None:
    teacher = CountingTeacher(tiny_teacher())
    cache = build(teacher, views, tmp_path)
    assert teacher.calls == (16 // 4) * K and cache.embeddings.shape == (16, K, 32)
    idx, vids = torch.tensor([5, 0, 11]), torch.tensor([2, 0, 1])
    expected = teacher.embed(torch.stack([views[(int(i), int(v))][0] for i, v in zip(idx, vids)]))
    torch.testing.assert_close(cache.get(idx, vids), expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(cache.get(idx, torch.tensor([0, 0, 0])), cache.get(idx, torch.tensor([1, 1, 1])))
    again = CountingTeacher(tiny_teacher())
    assert build(again, views, tmp_path).path == cache.path and again.calls == 0  # reused, not recomputed
    with pytest.raises(KeyError, match="view id"):
        cache.get(torch.tensor([0]), torch.tensor([K]))


def test_resumes_after_interruption(tmp_path: Path, views: FaceViews) -> None:
    with pytest.raises(KeyboardInterrupt):
        build(CountingTeacher(tiny_teacher(), fail_after=K * 2 + 1), views, tmp_path)  # 2 of 4 chunks done
    (path,) = tmp_path.iterdir()
    assert not (path / "complete.json").exists() and len(list((path / "chunks").iterdir())) == 2
    teacher = CountingTeacher(tiny_teacher())
    cache = build(teacher, views, tmp_path)
    assert teacher.calls == 2 * K  # only the missing chunks
    reference = build(tiny_teacher(), views, tmp_path / "ref")
    np.testing.assert_allclose(cache.embeddings, reference.embeddings, rtol=1e-5, atol=1e-6)


def test_stale_key_is_a_new_cache(tmp_path: Path, views: FaceViews) -> None:
    a = build(tiny_teacher(seed=0), views, tmp_path)
    b = build(tiny_teacher(seed=5), views, tmp_path)  # other weights -> other fingerprint
    assert a.path != b.path and not np.allclose(a.embeddings, b.embeddings)
    other_aug = FaceViews(views.faces, augment=flip_jitter, seed=1)
    assert build(tiny_teacher(), other_aug, tmp_path).path != a.path
    manifest = json.loads((a.path / "manifest.json").read_text())
    manifest["key"]["seed"] = 99  # a manifest that no longer matches its directory's key
    (a.path / "manifest.json").write_text(json.dumps(manifest))
    logs: list[str] = []
    teacher = CountingTeacher(tiny_teacher())
    build(teacher, views, tmp_path, logs)
    assert teacher.calls == 4 * K and "stale" in logs[0]


@pytest.mark.parametrize("damage", ["truncate", "no_marker", "nan_row", "flipped_byte", "nan_unfinished"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, views: FaceViews, damage: str) -> None:
    cache = build(tiny_teacher(), views, tmp_path)
    good = np.array(cache.embeddings)
    data = cache.path / "embeddings.f32"
    del cache
    if damage == "truncate":
        with open(data, "r+b") as f:
            f.truncate(data.stat().st_size - 100)
    elif damage == "no_marker":  # and no chunk markers: nothing may be trusted
        (data.parent / "complete.json").unlink()
        for f in (data.parent / "chunks").iterdir():
            f.unlink()
    else:
        arr = np.memmap(data, dtype=np.float32, mode="r+", shape=good.shape)
        arr[3, 1, 0] = np.nan if damage.startswith("nan") else arr[3, 1, 0] + 1.0
        arr.flush()
        del arr
        if damage == "nan_unfinished":  # an unfinished build whose done chunk went bad: that chunk is redone
            (data.parent / "complete.json").unlink()
        if damage == "nan_row":  # consistent checksum: only the NaN check can catch it
            import hashlib
            (data.parent / "complete.json").write_text(json.dumps({"sha256": hashlib.sha256(data.read_bytes()).hexdigest()}))
    logs: list[str] = []
    teacher = CountingTeacher(tiny_teacher())
    rebuilt = build(teacher, views, tmp_path, logs)
    assert teacher.calls == (K if damage == "nan_unfinished" else 4 * K)
    np.testing.assert_allclose(rebuilt.embeddings, good, rtol=1e-5, atol=1e-6)
    expected = {"truncate": "truncated", "nan_row": "non-finite", "flipped_byte": "checksum", "no_marker": None,
                "nan_unfinished": None}[damage]
    if expected:
        assert expected in logs[0], logs


def test_float16_cache_halves_the_file_keeps_the_targets_and_its_guarantees(tmp_path: Path, views: FaceViews) -> None:
    ref = build(tiny_teacher(), views, tmp_path)
    half = build_teacher_cache(tiny_teacher(), views, K, tmp_path, batch_size=4, log=lambda m: None, dtype="float16")
    assert half.path != ref.path and (half.path / "embeddings.f16").stat().st_size * 2 == \
        (ref.path / "embeddings.f32").stat().st_size
    idx, vids = torch.arange(16), torch.arange(16) % K
    a, b = ref.get(idx, vids), half.get(idx, vids)
    assert b.dtype == torch.float32
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1)
    assert cos.min() > 1 - 1e-6 and (a - b).abs().max() <= a.abs().max() * 2 ** -10
    # resumable and verified like float32: a flipped value is caught by the checksum and rebuilt
    data = half.path / "embeddings.f16"
    arr = np.memmap(data, dtype=np.float16, mode="r+", shape=(16, K, 32))
    arr[2, 0, 0] += 1
    arr.flush()
    del arr, half
    logs: list[str] = []
    again = build_teacher_cache(tiny_teacher(), views, K, tmp_path, batch_size=4, log=logs.append, dtype="float16")
    assert "checksum" in logs[0] and torch.equal(again.get(idx, vids), b)
    # embeddings float16 cannot hold are refused, not stored as inf
    big = CallableTeacher(lambda x: tiny_teacher().fn(x) * 1e6, name="big", preprocessing=tiny_teacher().preprocessing,
                          embedding_dim=32, normalized=False)
    with pytest.raises(CacheError, match="cache_dtype: float32"):
        build_teacher_cache(big, views, K, tmp_path / "big", batch_size=4, log=lambda m: None, dtype="float16")


def test_lookup_cache_k1(tmp_path: Path) -> None:
    faces = orl_faces(4, 4)
    teacher = tiny_teacher()
    precomputed = teacher.embed(torch.from_numpy(faces))  # e.g. what a precomputed teacher stored
    views = FaceViews(faces, augment=flip_jitter, seed=0, indices=np.arange(2, 16), clean_view0=True)
    cache = build_lookup_cache(lambda idx: precomputed[torch.as_tensor(idx)], "precomputed-abc", 32, views, tmp_path)
    assert cache.num_views == 1
    torch.testing.assert_close(cache.get(torch.tensor([2, 15]), torch.tensor([0, 0])), precomputed[[2, 15]])
    with pytest.raises(KeyError):
        cache.get(torch.tensor([0]), torch.tensor([0]))  # not in this split
    with pytest.raises(ValueError, match="clean_view0"):
        build_lookup_cache(lambda idx: precomputed[idx], "p", 32, FaceViews(faces, augment=flip_jitter), tmp_path)


def test_fit_in_cached_mode_uses_all_views(tmp_path: Path, views: FaceViews) -> None:
    cache = build(tiny_teacher(), views, tmp_path / "cache")
    seen: list[tuple[int, int]] = []
    original = cache.get

    def recording_get(indices, view_ids):
        seen.extend(zip(torch.as_tensor(indices).tolist(), torch.as_tensor(view_ids).tolist()))
        return original(indices, view_ids)

    cache.get = recording_get  # type: ignore[method-assign]
    res = fit(tiny_student(), Preprocessing(48), cache, views, DistillLoss(student_dim=16, teacher_dim=32),
              settings(epochs=K), tmp_path / "run", progress=False, log=lambda m: None)
    assert res.steps == 2 * K and np.isfinite(res.final_loss)
    per_image: dict[int, set[int]] = {}
    for i, v in seen:
        per_image.setdefault(i, set()).add(v)
    assert all(v == set(range(K)) for v in per_image.values())  # every image saw all K views in K epochs
    with pytest.raises(ValueError, match="different views"):
        fit(tiny_student(), Preprocessing(48), cache, FaceViews(views.faces, augment=flip_jitter, indices=range(8)),
            DistillLoss(student_dim=16, teacher_dim=32), settings(epochs=1), tmp_path / "run2", progress=False)


def test_dlib_teacher_cache(tmp_path: Path) -> None:
    """The real dlib ResNet teacher through the cache (a few ORL faces at its 150 px input)."""
    from teachers import TEACHERS

    try:
        teacher = TEACHERS.build("dlib_resnet")
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"dlib_resnet teacher unavailable: {e}")
    views = FaceViews(orl_faces(2, 2, size=150), augment=flip_jitter, seed=0)
    cache = build_teacher_cache(teacher, views, 2, tmp_path, batch_size=4, log=lambda m: None)
    assert cache.path.name.startswith("dlib_resnet-") and cache.embeddings.shape == (4, 2, 128)
    direct = teacher.embed(torch.stack([views[(i, 1)][0] for i in range(4)]))
    torch.testing.assert_close(cache.get(torch.arange(4), torch.ones(4, dtype=torch.long)), direct,
                               rtol=1e-4, atol=1e-5)
    norms = cache.embeddings.reshape(-1, 128)
    assert np.all(np.linalg.norm(norms, axis=1) > 0.1)  # real descriptors, not zeros
