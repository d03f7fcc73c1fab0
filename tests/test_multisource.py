"""Several training sources in one config (data.sources): validation, the unlabelled scan, the lazy
concatenation and each source's share of an epoch."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from distill.config import ConfigError, load_config
from distill.data.folders import DatasetError
from distill.data.multisource import ConcatFaces
from distill.data.prepare import source_kind
from distill.data.unlabelled import scan_unlabelled
from distill.data.views import EpochViewSampler, share_counts, share_order


def _jpg(path, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)


def test_a_list_of_sources_validates_each_entry_and_refuses_a_second_way_to_name_them(tmp_path):
    cfg = load_config(None, [f"data.sources=[{{kind: folder, root: {tmp_path}}}, {{kind: unlabelled, root: "
                             f"{tmp_path / 'photos'}, share: 0.25, max_images: 10}}]"])
    assert [s.kind for s in cfg.data.source_list()] == ["folder", "unlabelled"]
    assert cfg.data.source_name(cfg.data.sources[1]) == "photos"
    with pytest.raises(ConfigError, match="data.root would name another") as err:
        load_config(None, ["data.root=/x", f"data.sources=[{{kind: folder, root: {tmp_path}}}]"])
    assert "align_backend" not in str(err.value)  # the rule's sentence, not a dump of the whole data section
    with pytest.raises(ConfigError, match="Did you mean 'data.sources.0.root'"):
        load_config(None, [f"data.sources=[{{kind: folder, roots: {tmp_path}}}]"])
    with pytest.raises(ConfigError, match="add up to more than 1"):
        load_config(None, [f"data.sources=[{{kind: folder, root: {tmp_path}, share: 0.7}}, "
                           f"{{kind: unlabelled, root: {tmp_path}/b, share: 0.6}}]"])
    with pytest.raises(ConfigError, match="distinct name"):
        load_config(None, [f"data.sources=[{{kind: folder, root: {tmp_path}/a}}, {{kind: unlabelled, root: {tmp_path}/b/a}}]"])
    with pytest.raises(ConfigError, match="needs root"):
        load_config(None, ["data.sources=[{kind: unlabelled}]"])
    # a config without a list is one source, as before
    old = load_config(None, ["data.source=folder", f"data.root={tmp_path}"])
    assert [(s.kind, s.root) for s in old.data.source_list()] == [("folder", tmp_path)]


def test_relative_source_roots_are_read_from_the_config_files_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "run.yaml").write_text("data:\n  sources:\n    - {kind: unlabelled, root: ../photos}\n")
    cfg = load_config(tmp_path / "cfg" / "run.yaml")
    assert cfg.data.sources[0].root == tmp_path / "photos"


def test_every_entry_reports_its_own_problem_naming_the_entry(tmp_path):
    cfg = load_config(None, [f"data.sources=[{{kind: folder, root: {tmp_path}/absent}}, {{kind: unlabelled, root: "
                             f"{tmp_path}/gone, name: cams}}]"])
    problems = source_kind(cfg).problems(cfg)
    assert len(problems) == 2 and problems[0].startswith("data.sources[0] (absent)") and "data.sources[1] (cams)" in problems[1]
    assert "data.root" not in " ".join(problems) and "data.sources[1].root" in problems[1]  # the entry's own key
    (tmp_path / "a.jpg").write_bytes(b"x")
    cfg = load_config(None, [f"data.sources=[{{kind: unlabelled, root: {tmp_path}/a.jpg}}]"])
    assert "is a file, not a folder" in source_kind(cfg).problems(cfg)[0]


def test_an_unlabelled_folder_is_scanned_at_any_depth_and_ignores_litter(tmp_path):
    root = tmp_path / "photos"
    _jpg(root / "a.jpg")
    _jpg(root / "2024" / "01" / "b.png", 1)
    _jpg(root / "2024" / "02" / "deep" / "c.jpeg", 2)
    _jpg(root / ".thumbs" / "hidden.jpg", 3)
    _jpg(root / "__MACOSX" / "x.jpg", 4)
    (root / "notes.txt").write_text("not an image")
    (root / "empty.jpg").write_bytes(b"")
    os.symlink(root, root / "2024" / "loop")  # a link back up: never followed
    images = scan_unlabelled(root)
    assert images.rel_paths == ["2024/01/b.png", "2024/02/deep/c.jpeg", "a.jpg"]
    assert [p for p, _ in images.skipped] == ["empty.jpg"]
    with pytest.raises(DatasetError, match="not a folder"):
        scan_unlabelled(tmp_path / "absent")
    (tmp_path / "none").mkdir()
    with pytest.raises(DatasetError, match="no usable images"):
        scan_unlabelled(tmp_path / "none")


def test_concatenated_faces_read_each_part_in_place():
    a = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    b = 200 + np.arange(3 * 4 * 4 * 3, dtype=np.uint8).reshape(3, 4, 4, 3) % 50
    faces = ConcatFaces([a, b])
    whole = np.concatenate([a, b])
    assert faces.shape == (5, 4, 4, 3) and len(faces) == 5
    for i in range(-5, 5):
        assert np.array_equal(faces[i], whole[i])
    assert np.array_equal(faces[np.array([4, 0, 2])], whole[[4, 0, 2]])
    assert np.array_equal(faces[1:4], whole[1:4]) and np.array_equal(np.asarray(faces), whole)
    with pytest.raises(IndexError):
        faces[5]
    before = faces.fingerprint()
    b[2, 0, 0, 0] ^= 1
    assert ConcatFaces([a, b]).fingerprint() != before
    with pytest.raises(ValueError, match="different sizes"):
        ConcatFaces([a, np.zeros((1, 5, 5, 3), np.uint8)])


def test_shares_fill_the_epoch_and_the_rest_is_proportional():
    assert share_counts([100, 900], [0.5, None], 1000).tolist() == [500, 500]
    assert share_counts([100, 900], [None, None], 1000).tolist() == [100, 900]
    assert share_counts([10, 30, 60], [0.2, None, None], 101).sum() == 101
    assert share_counts([100, 900], [0.1, 0.1], 1000).tolist() == [500, 500]  # all given: scaled to the epoch


def test_a_small_source_with_a_large_share_cycles_through_its_cached_views():
    groups = np.r_[np.zeros(50, int), np.ones(950, int)]
    pos, rep = share_order(groups, [0.4, None], np.random.default_rng(0))
    assert len(pos) == 1000 and abs((groups[pos] == 0).sum() - 400) == 0
    assert rep[groups[pos] == 0].max() == 7 and rep[groups[pos] == 1].max() == 0  # 400 draws of 50 faces: 8 passes
    sampler = EpochViewSampler(1000, seed=0, num_views=8, groups=groups, shares=[0.4, None])
    sampler.set_epoch(3)
    keys = list(sampler)
    small = [(p, v) for p, v in keys if groups[p] == 0]
    assert len(small) == 400 and len(set(small)) == 400  # every (face, view) of the small source once
    plain = EpochViewSampler(1000, seed=0, num_views=8)
    plain.set_epoch(3)
    assert len(list(plain)) == 1000
    with pytest.raises(ValueError, match="per-rank"):
        EpochViewSampler(1000, groups=groups, shares=[0.4, None], local=True, num_replicas=2)


def test_views_and_their_teacher_cache_narrow_to_the_faces_a_guard_kept(tmp_path):
    import torch

    from distill.data.views import FaceViews, Mix
    from distill.preprocess import Preprocessing
    from distill.train import build_teacher_cache
    from teachers import CallableTeacher

    faces = np.random.default_rng(0).integers(0, 255, (12, 16, 16, 3), dtype=np.uint8)
    jitter = lambda f, s: np.clip(f.astype(int) + s % 7, 0, 255).astype(np.uint8)  # noqa: E731
    views = FaceViews(faces, jitter, seed=3)
    teacher = CallableTeacher(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()), name="pool",
                              preprocessing=Preprocessing(16), embedding_dim=12, normalized=False)
    cache = build_teacher_cache(teacher, views, 3, tmp_path, log=lambda _m: None)
    kept = np.array([0, 2, 3, 7, 11])
    sub, narrowed = views.subset(kept), cache.only(kept)
    assert narrowed.matches(sub) and not cache.matches(sub) and not narrowed.matches(views)
    for p in range(len(sub)):
        face, index, v = sub[(p, 2)]
        assert index == kept[p] and np.array_equal(face.numpy(), views.view(int(kept[p]), 2))  # the same pixels
    assert torch.equal(narrowed.get(kept, np.full(5, 1)), cache.get(kept, np.full(5, 1)))
    means = cache.mean_embeddings()
    assert means.shape == (12, 12) and np.allclose(means[4], np.asarray(cache.embeddings[4]).mean(0))
    with pytest.raises(ValueError, match="mixes"):
        FaceViews(faces, jitter, mix=Mix(mixup=0.5)).subset(kept)


def test_a_clean_view0_cache_gives_the_guard_the_clean_faces_embeddings(tmp_path):
    """data.augment.clean_view0: view 0 is the face itself, so the cache's view 0 is the teacher's embedding of
    the clean face, which the leak guard reads instead of the mean over the augmented views."""
    import torch

    from distill.data.sources import TrainData
    from distill.data.views import FaceViews
    from distill.leakcheck import _train_embeddings
    from distill.preprocess import Preprocessing
    from distill.train import build_teacher_cache
    from teachers import CallableTeacher

    faces = np.random.default_rng(1).integers(0, 255, (6, 16, 16, 3), dtype=np.uint8)
    jitter = lambda f, s: np.clip(f.astype(int) + 5 + s % 7, 0, 255).astype(np.uint8)  # noqa: E731
    teacher = CallableTeacher(torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten()), name="pool",
                              preprocessing=Preprocessing(16), embedding_dim=12, normalized=False)
    clean = teacher.embed(torch.from_numpy(faces)).numpy()
    cfg = load_config(None, [])
    train = TrainData(images=None, faces=faces, labels=np.zeros(6, np.int64), rel_paths=[f"f{i}.jpg" for i in range(6)])
    for flag, want_clean in ((True, True), (False, False)):
        views = FaceViews(faces, jitter, seed=3, clean_view0=flag)
        cache = build_teacher_cache(teacher, views, 3, tmp_path / str(flag), log=lambda _m: None)
        emb, how = _train_embeddings(cfg, teacher, train, cache, views.clean_view0)
        assert np.allclose(emb, clean, atol=1e-2) == want_clean, how
        assert ("clean view 0" in how) == want_clean
    with pytest.raises(IndexError, match="not cached"):
        cache.view_embeddings(3)

    # the key of a cache made before the option existed stays valid: the augmentation's description ignores it
    from distill.config import AugmentSettings
    from distill.data.augment import build_augmentation

    plain, clean0 = build_augmentation(AugmentSettings()), build_augmentation(AugmentSettings(clean_view0=True))
    assert plain.description == clean0.description and "clean_view0" not in plain.description


def test_a_run_that_adds_a_source_reuses_the_first_sources_teacher_cache(tmp_path):
    import torch

    from distill.data.views import FaceViews
    from distill.preprocess import Preprocessing
    from distill.train import build_teacher_cache
    from teachers import CallableTeacher

    rng = np.random.default_rng(0)
    first, second = (rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8) for n in (70, 30))
    jitter = lambda f, s: np.clip(f.astype(int) + s % 7, 0, 255).astype(np.uint8)  # noqa: E731
    calls: list[int] = []
    net = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten())
    teacher = CallableTeacher(lambda x: (calls.append(len(x)), net(x))[1], name="pool",
                              preprocessing=Preprocessing(16), embedding_dim=12, normalized=False)
    alone = build_teacher_cache(teacher, FaceViews(first, jitter, seed=3), 2, tmp_path, batch_size=16, log=print)
    calls.clear()
    logs: list[str] = []
    both = build_teacher_cache(teacher, FaceViews(ConcatFaces([first, second]), jitter, seed=3), 2, tmp_path,
                               batch_size=16, log=logs.append)
    assert any("copied, not recomputed" in m for m in logs)
    assert sum(calls) == 2 * (100 - 64)              # only the chunks past the first source's 64 full rows
    fresh = build_teacher_cache(teacher, FaceViews(np.concatenate([first, second]), jitter, seed=3), 2,
                                tmp_path / "fresh", batch_size=16, log=lambda _m: None)
    assert np.allclose(np.asarray(both.embeddings), np.asarray(fresh.embeddings), atol=1e-6)
    assert np.array_equal(np.asarray(both.embeddings[:70]), np.asarray(alone.embeddings))
