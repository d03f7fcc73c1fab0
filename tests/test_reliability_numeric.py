"""Numeric faults: NaN teacher outputs, a loss overflowing to inf, an all-identical batch.

Policy ``train.nonfinite``: ``stop`` raises, names the step and keeps the last good
checkpoint (loadable); ``skip`` drops the batch and counts it (reported in student.pt
and report.json). In cached teacher mode a NaN embedding is caught while the cache is
built, before training, and the cache is never marked complete.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distill.config import TrainSettings
from distill.data.views import FaceViews
from distill.losses import CosineLoss, DistillLoss, RelationalLoss, SquaredL2Loss
from distill.preprocess import Preprocessing
from distill.train import NonFiniteLossError, fit
from students import MobileNet
from teachers import TEACHERS
from test_reliability_helpers import (QUICKSTART, folder_overrides, orl_faces, run_cli_inprocess, set_args,
                                      standardizing_teacher, synthetic_tree, training_identities)

TEACHER = "reliability_standardizing"
QUIET = dict(progress=False, log=lambda m: None)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nan_teacher_registered():
    """A teacher that returns NaN for flat images (per-image standardisation without epsilon)."""
    TEACHERS.register(TEACHER, description="test teacher: NaN on flat images")(
        lambda weights=None, precision="fp32": standardizing_teacher(dim=16, size=48))
    yield TEACHER
    TEACHERS._entries.pop(TEACHER)  # leave the registry as other tests expect it


@pytest.fixture(scope="module")
def tree_with_flat_image(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root, pairs = synthetic_tree(tmp_path_factory.mktemp("numeric") / "faces")
    ident = training_identities(root, pairs)[0]
    # a blank frame replaces one photo (24 images = 3 full batches: no epoch drops it)
    (root / ident / f"{ident}_0004.jpg").unlink()
    Image.new("RGB", (96, 96), (128, 128, 128)).save(root / ident / f"{ident}_0099.jpg")
    return root, pairs


def nan_run(tmp_path: Path, tree: tuple[Path, Path], **extra: object) -> tuple[int, str, str, Path]:
    root, pairs = tree
    run = tmp_path / "run"
    sets = folder_overrides(tmp_path / "cache", root, pairs, **{
        "teacher.name": TEACHER, "train.teacher_mode": "online", "train.checkpoint_every": 1,
        "data.augment.shift_scale": 0, "data.augment.rotate": 0, **extra})
    rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(sets), "--out", str(run)])
    return rc, out, err, run


def test_nan_teacher_online_stop_keeps_last_good_checkpoint(tmp_path: Path, nan_teacher_registered: str,
                                                            tree_with_flat_image: tuple[Path, Path]) -> None:
    rc, out, err, run = nan_run(tmp_path, tree_with_flat_image, **{"train.nonfinite": "stop"})
    assert rc == 1 and "Traceback" not in err, err
    assert "non-finite loss/gradient at step" in err and "train.nonfinite=skip" in err, err
    step = int(err.split("at step ")[1].split()[0])
    last = run / "checkpoints" / "last.pt"
    if step > 0:  # checkpoint_every=1: the good step just before the bad batch is on disk
        assert f"the last good checkpoint {last} is kept" in err
        state = torch.load(last, weights_only=True)
        assert state["step"] == step
        assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    else:
        assert "no checkpoint had been written yet" in err
    assert not (run / "student.pt").exists() and not (run / "report.json").exists()


def test_nan_teacher_online_skip_counts_and_reports(tmp_path: Path, nan_teacher_registered: str,
                                                    tree_with_flat_image: tuple[Path, Path]) -> None:
    rc, out, err, run = nan_run(tmp_path, tree_with_flat_image, **{"train.nonfinite": "skip"})
    assert rc == 0, err
    info = torch.load(run / "student.pt", weights_only=True)["extra"]["train"]
    assert info["nonfinite_skipped"] == 2  # the one blank image, once in each of the 2 epochs
    assert "nonfinite_skipped" in (run / "report.json").read_text()
    rows = (run / "metrics.csv").read_text().splitlines()
    assert rows[-1].split(",")[rows[0].split(",").index("nonfinite_skipped")] == "2"


def test_nan_teacher_cached_mode_is_caught_before_training(tmp_path: Path, nan_teacher_registered: str,
                                                           tree_with_flat_image: tuple[Path, Path]) -> None:
    rc, out, err, run = nan_run(tmp_path, tree_with_flat_image, **{"train.teacher_mode": "cached"})
    assert rc == 1 and "teacher produced non-finite embeddings for positions" in err, err
    assert not (run / "checkpoints").exists()
    caches = list((tmp_path / "cache" / "teacher").glob("*"))
    assert caches and not any((c / "complete.json").exists() for c in caches)


def tiny_student(seed: int = 1) -> MobileNet:
    torch.manual_seed(seed)
    return MobileNet(alpha=0.25, input_size=48, embedding_dim=16, normalize=False)


def settings(**kw) -> TrainSettings:
    return TrainSettings(**{"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "checkpoint_every": 1,
                            "channels_last": False, **kw})


def test_loss_overflowing_to_inf_stop_and_skip(tmp_path: Path) -> None:
    views = FaceViews(orl_faces(4, 4), seed=0)
    pre = Preprocessing(48)
    student = tiny_student()
    fit(student, pre, standardizing_teacher(), views, DistillLoss(student_dim=16, teacher_dim=16), settings(),
        tmp_path, **QUIET)
    last = tmp_path / "checkpoints" / "last.pt"
    good = last.read_bytes()
    exploding = standardizing_teacher(scale=1e30)  # finite targets whose squared error overflows float32
    assert torch.isfinite(exploding.embed(torch.from_numpy(views.faces[:2]))).all()
    with pytest.raises(NonFiniteLossError, match=r"at step 2 .*last good checkpoint .*last.pt is kept"):
        fit(student, pre, exploding, views, DistillLoss(student_dim=16, teacher_dim=16), settings(epochs=2),
            tmp_path, resume=True, **QUIET)
    assert last.read_bytes() == good
    assert torch.load(last, weights_only=True)["step"] == 2

    fresh = tiny_student()
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    res = fit(fresh, pre, exploding, views, DistillLoss(student_dim=16, teacher_dim=16),
              settings(epochs=2, nonfinite="skip"), tmp_path / "skip", **QUIET)
    assert res.nonfinite_skipped == res.steps == 4
    for k, v in fresh.state_dict().items():
        if v.is_floating_point():  # weights and BatchNorm statistics: a skipped batch changes nothing
            assert torch.equal(v, before[k]) or "running" in k or "num_batches" in k, k
        assert torch.isfinite(v.float()).all(), k


@pytest.mark.parametrize("loss", [dict(terms={"mse": SquaredL2Loss()}),
                                  dict(terms={"cosine": CosineLoss()}, normalize=True),
                                  dict(terms={"mse": SquaredL2Loss(), "relational": RelationalLoss()})],
                         ids=["mse", "cosine", "relational"])
def test_all_identical_batch_stays_finite(tmp_path: Path, loss: dict) -> None:
    """Zero batch variance (BatchNorm), zero pairwise distances (relational sqrt), zero-norm rows (cosine)."""
    face = orl_faces(1, 1)
    views = FaceViews(np.repeat(face, 16, axis=0), seed=0)
    student = tiny_student()
    res = fit(student, Preprocessing(48), standardizing_teacher(), views,
              DistillLoss(student_dim=16, teacher_dim=16, **loss), settings(epochs=2, nonfinite="stop"),
              tmp_path, **QUIET)
    assert res.nonfinite_skipped == 0 and np.isfinite(res.final_loss)
    for k, v in student.state_dict().items():
        assert torch.isfinite(v.float()).all(), k
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert len(rows) > 1 and all("nan" not in r.lower() and "inf" not in r.lower() for r in rows[1:])
