"""Distillation losses: hand-computed golden values, zero at identity, gradients reach the student only."""
from __future__ import annotations

import math

import pytest
import torch

from distill.config import ConfigError, LossSettings
from distill.losses import (LOSS_TERMS, CosineLoss, DistillLoss, RelationalLoss, SquaredL2Loss, cosine_loss,
                            pairwise_distances, relational_loss, squared_l2_loss)
from distill.resolve import loss_from_config


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
    crit = DistillLoss({"mse": SquaredL2Loss(), "cosine": CosineLoss(), "relational": RelationalLoss()},
                       {"mse": 1.0, "cosine": 2.0, "relational": 0.5})
    total, parts = crit(s, t)
    mse = (1.0 + 0.0) / 2
    cos = ((1 - 1 / math.sqrt(2)) + 0.0) / 2
    d_s, d_t = math.sqrt(5.0), math.sqrt(2.0)  # distance between the two rows
    rel = (d_s - d_t) ** 2
    assert float(parts["mse"]) == pytest.approx(mse)
    assert float(parts["cosine"]) == pytest.approx(cos)
    assert float(parts["relational"]) == pytest.approx(rel, rel=1e-5)
    assert total.item() == pytest.approx(mse + 2 * cos + 0.5 * rel, rel=1e-5)


def test_normalize_makes_scale_irrelevant() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(4, 8), torch.randn(4, 8)
    crit = DistillLoss(normalize=True)  # the paper's mse term by default
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


def test_loss_from_settings() -> None:
    build = lambda settings, **kw: loss_from_config(settings, **{"student_dim": 8, "teacher_dim": 8,  # noqa: E731
                                                                 "teacher_normalized": False, **kw})
    assert build(LossSettings(), teacher_normalized=True).normalize is True
    assert build(LossSettings(normalize=False), teacher_normalized=True).normalize is False
    assert build(LossSettings(), student_dim=4).projection is not None
    with pytest.raises(ConfigError, match="embedding_dim=8"):
        build(LossSettings(projection=False), student_dim=4)
    with pytest.raises(ConfigError, match="every term weight is 0"):
        build(LossSettings(mse=0.0))
    crit = build(LossSettings(**{"cosine": 0.5, "relational": {"weight": 2.0}}))
    assert crit.weights == {"mse": 1.0, "cosine": 0.5, "relational": 2.0}
    assert isinstance(crit.terms["relational"], RelationalLoss)


def test_every_registered_term_is_zero_at_identity_and_detaches_the_teacher() -> None:
    """A new term file registers itself; this holds it to the contract of the others."""
    torch.manual_seed(3)
    for name in LOSS_TERMS.names():
        term = LOSS_TERMS.build(name)
        x = torch.randn(8, 16)
        assert float(term(x, x.clone())) == pytest.approx(0.0, abs=1e-4), name
        s, t = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
        term(s, t).backward()
        assert s.grad is not None and t.grad is None, name


def test_a_typo_in_a_loss_term_names_the_registered_ones() -> None:
    from distill.config import load_config

    with pytest.raises(ConfigError, match="unknown key 'train.loss.cosin'. Did you mean 'train.loss.cosine'"):
        load_config(None, ["train.loss.cosin=1"])
    with pytest.raises(ConfigError, match="unknown option"):
        load_config(None, ["train.loss.cosine={weight: 1, temperature: 2}"])


def test_similarity_golden_and_queue() -> None:
    from distill.losses import SimilarityLoss, similarity_loss

    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    bank = torch.zeros(0, 2)
    # keys = normalised t rows; teacher logits for row 0: [1, 1/sqrt2]/tau, student [1, 1/sqrt2]/tau -> KL 0
    tau = 0.5
    k = torch.nn.functional.normalize(t, dim=1)
    lt = torch.nn.functional.normalize(t, dim=1) @ k.T / tau
    ls = torch.nn.functional.normalize(s, dim=1) @ k.T / tau
    pt = lt.softmax(1)
    golden = (pt * (lt.log_softmax(1) - ls.log_softmax(1))).sum(1).mean()
    assert float(similarity_loss(s, t, bank, tau)) == pytest.approx(float(golden), rel=1e-6)
    assert float(golden) > 0  # row 1 differs
    term = SimilarityLoss(temperature=tau, queue=3)
    term(s, t)
    term(s, t)  # 4 rows through a queue of 3: the oldest dropped
    assert term.bank.shape == (3, 2) and int(term.filled) == 3
    state = term.state_dict()
    again = SimilarityLoss(temperature=tau, queue=3)
    again.load_state_dict(state)  # a resumed run continues with the same bank
    assert torch.equal(again.bank, term.bank) and float(again(s, t)) == pytest.approx(float(term(s, t)))


def test_target_scale_standardises_and_folds_back_exactly() -> None:
    from distill.train.target_scale import TargetScale, _from_samples, fold_target_scale
    from students import MobileNet

    torch.manual_seed(4)
    t = torch.randn(256, 8) * 0.05 + 0.3
    ts = _from_samples(t.numpy())
    standard = (t - ts.shift) / ts.scale
    assert standard.mean().abs() < 1e-5 and standard.pow(2).mean() == pytest.approx(1.0, rel=1e-4)
    crit = DistillLoss(student_dim=8, teacher_dim=8)
    crit.set_target_scale(ts.shift, ts.scale)
    s = torch.randn(256, 8)
    assert float(crit(s, t)[0]) == pytest.approx(float(squared_l2_loss(s, standard)), rel=1e-5)
    net = MobileNet(alpha=0.25, input_size=32, embedding_dim=8, normalize=False).eval()
    x = torch.randn(3, 3, 32, 32)
    before = net(x)
    fold_target_scale(net, TargetScale(ts.shift, ts.scale))
    torch.testing.assert_close(net(x), before * ts.scale + ts.shift, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="no raw embedding head"):
        fold_target_scale(MobileNet(alpha=0.25, input_size=32, embedding_dim=8, normalize=True), ts)
