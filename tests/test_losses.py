"""Distillation losses: hand-computed golden values, zero at identity, gradients reach the student only."""
from __future__ import annotations

import math

import pytest
import torch

from distill.config import LossSettings
from distill.losses import (DistillLoss, build_loss, cosine_loss, pairwise_distances, relational_loss,
                            squared_l2_loss)


def test_squared_l2_golden() -> None:
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 0.0], [3.0, 2.0]])
    # sample 0: 1 + 4 = 5; sample 1: 0 + 4 = 4; batch mean 4.5 (summed over dims, not averaged)
    assert squared_l2_loss(s, t).item() == pytest.approx(4.5)


def test_cosine_golden() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    t = torch.tensor([[3.0, 0.0], [1.0, 0.0], [-1.0, -1.0]])
    # 1 - cos: parallel 0, orthogonal 1, opposite 2 -> mean 1
    assert cosine_loss(s, t).item() == pytest.approx(1.0)


def test_relational_golden() -> None:
    s = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    t = torch.tensor([[0.0, 0.0], [6.0, 8.0]])
    assert pairwise_distances(s)[0, 1].item() == pytest.approx(5.0)
    # both off-diagonal pairs: (5 - 10)^2 = 25
    assert relational_loss(s, t).item() == pytest.approx(25.0, rel=1e-6)
    # a pure translation keeps every distance: zero relational loss, non-zero squared L2
    assert relational_loss(s + 7.0, s).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("fn", [squared_l2_loss, cosine_loss, relational_loss])
def test_zero_for_identical_and_grad_to_student_only(fn) -> None:
    torch.manual_seed(0)
    x = torch.randn(6, 8)
    assert fn(x, x.clone()).item() == pytest.approx(0.0, abs=1e-5)
    s = torch.randn(6, 8, requires_grad=True)
    t = torch.randn(6, 8, requires_grad=True)
    fn(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None  # teacher targets are detached


def test_shape_mismatch_names_the_fix() -> None:
    with pytest.raises(ValueError, match="projection"):
        squared_l2_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_combined_weights_golden() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    crit = DistillLoss(mse=1.0, cosine=2.0, relational=0.5)
    total, parts = crit(s, t)
    mse = (1.0 + 0.0) / 2
    cos = ((1 - 1 / math.sqrt(2)) + 0.0) / 2
    d_s, d_t = math.sqrt(5.0), math.sqrt(2.0)  # distance between the two rows
    rel = (d_s - d_t) ** 2
    assert parts["mse"] == pytest.approx(mse)
    assert parts["cosine"] == pytest.approx(cos)
    assert parts["relational"] == pytest.approx(rel, rel=1e-5)
    assert total.item() == pytest.approx(mse + 2 * cos + 0.5 * rel, rel=1e-5)


def test_normalize_makes_scale_irrelevant() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(4, 8), torch.randn(4, 8)
    crit = DistillLoss(normalize=True)
    assert crit(3 * s, 5 * t)[0].item() == pytest.approx(crit(s, t)[0].item(), rel=1e-5)
    # normalised squared L2 = 2 - 2 cos, bounded by 4
    assert crit(s, -s)[0].item() == pytest.approx(4.0, rel=1e-5)


def test_projection_trains_and_teacher_stays_detached() -> None:
    torch.manual_seed(2)
    crit = DistillLoss(student_dim=4, teacher_dim=6)
    assert crit.projection is not None and crit.export_head() is crit.projection
    s = torch.randn(5, 4, requires_grad=True)
    t = torch.randn(5, 6, requires_grad=True)
    crit(s, t)[0].backward()
    assert crit.projection.weight.grad is not None and s.grad is not None and t.grad is None
    assert DistillLoss(student_dim=6, teacher_dim=6).projection is None


def test_build_loss_from_settings() -> None:
    assert build_loss(LossSettings(), student_dim=8, teacher_dim=8, teacher_normalized=True).normalize is True
    assert build_loss(LossSettings(normalize=False), student_dim=8, teacher_dim=8,
                      teacher_normalized=True).normalize is False
    assert build_loss(LossSettings(), student_dim=4, teacher_dim=8, teacher_normalized=False).projection is not None
    with pytest.raises(ValueError, match="embedding_dim=8"):
        build_loss(LossSettings(projection=False), student_dim=4, teacher_dim=8, teacher_normalized=False)
    with pytest.raises(ValueError, match="every term weight is 0"):
        build_loss(LossSettings(mse=0.0), student_dim=8, teacher_dim=8, teacher_normalized=False)
