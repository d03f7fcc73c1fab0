"""Every registered student: shape, finite output, gradients everywhere, unit norm when normalised."""
from __future__ import annotations

import pytest
import timm
import torch

from distill.profile import count_mult_adds, count_params, mobilenet_body_mult_adds, profile
from students import STUDENTS, DepthwiseSeparable, MobileNet


@pytest.mark.parametrize("name", STUDENTS.names())
@pytest.mark.parametrize("normalize", [True, False])
def test_every_registered_student(name: str, normalize: bool) -> None:
    torch.manual_seed(0)
    net = STUDENTS.build(name, input_size=64, embedding_dim=32, normalize=normalize)
    x = torch.randn(3, 3, 64, 64)
    out = net(x)
    assert out.shape == (3, 32)
    assert torch.isfinite(out).all()
    norms = out.norm(dim=1)
    if normalize:
        torch.testing.assert_close(norms, torch.ones(3))
    else:
        assert not torch.allclose(norms, torch.ones(3))
    (out * torch.randn_like(out)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no gradient reaches {missing[:5]}"


def test_forward_features_and_head_compose() -> None:
    net = MobileNet(alpha=0.25, input_size=96, embedding_dim=16).eval()
    x = torch.randn(2, 3, 96, 96)
    feats = net.forward_features(x)
    assert feats.shape == (2, net.num_features, 3, 3)
    torch.testing.assert_close(net.forward_head(feats), net(x))


def test_depthwise_separable_is_figure_3() -> None:
    block = DepthwiseSeparable(32, 64, stride=2)
    layers = [type(m).__name__ for m in block.modules() if not isinstance(m, (DepthwiseSeparable,))
              and not list(m.children())]
    assert layers == ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU"]
    dw, pw = block.depthwise[0], block.pointwise[0]
    assert dw.groups == 32 and dw.kernel_size == (3, 3) and dw.stride == (2, 2)
    assert pw.kernel_size == (1, 1) and pw.out_channels == 64
    assert block(torch.randn(1, 32, 16, 16)).shape == (1, 64, 8, 8)


def test_thirteen_depthwise_separable_layers() -> None:
    net = MobileNet()
    assert len(net.blocks) == 13 and all(isinstance(b, DepthwiseSeparable) for b in net.blocks)


# Paper Table 6 (224x224, 1000 classes): million mult-adds and million params
@pytest.mark.parametrize("alpha,mult_adds,params", [(1.0, 569, 4.2), (0.75, 325, 2.6), (0.5, 149, 1.3),
                                                    (0.25, 41, 0.5)])
def test_paper_table6(alpha: float, mult_adds: float, params: float) -> None:
    cost = profile(MobileNet(alpha=alpha, input_size=224, num_classes=1000), 224)
    assert cost.mult_adds / 1e6 == pytest.approx(mult_adds, rel=0.01)
    assert cost.params / 1e6 == pytest.approx(params, abs=0.05)


# Paper Table 7 (alpha = 1.0): million mult-adds per resolution
@pytest.mark.parametrize("size,mult_adds", [(224, 569), (192, 418), (160, 290), (128, 186)])
def test_paper_table7(size: int, mult_adds: float) -> None:
    cost = profile(MobileNet(alpha=1.0, input_size=size, num_classes=1000), size)
    assert cost.mult_adds / 1e6 == pytest.approx(mult_adds, rel=0.01)


def test_counts_match_timm_mobilenetv1() -> None:
    ours = MobileNet(alpha=1.0, input_size=224, num_classes=1000)
    ref = timm.create_model("mobilenetv1_100", pretrained=False, num_classes=1000)
    assert count_params(ours) == count_params(ref)
    assert count_mult_adds(ours, 224) == count_mult_adds(ref, 224)


@pytest.mark.parametrize("alpha", [1.0, 0.75, 0.5, 0.25])
@pytest.mark.parametrize("size", [224, 160, 112, 96])
def test_paper_formula_equals_counted_body(alpha: float, size: int) -> None:
    """Eq. 7 summed over the body (plus the stem conv) equals torch's count of the same layers."""
    net = MobileNet(alpha=alpha, input_size=size)
    counted = count_mult_adds(torch.nn.Sequential(net.stem, net.blocks), size)
    assert mobilenet_body_mult_adds(net, size) == counted


def test_timm_student_uses_forward_features() -> None:
    net = STUDENTS.build("timm", model_name="mobilenetv3_small_100", input_size=96, embedding_dim=64)
    feats = net.forward_features(torch.randn(2, 3, 96, 96))
    assert feats.ndim == 4
    assert net.forward_head(feats).shape == (2, 64)


def test_timm_unknown_model_is_clear() -> None:
    with pytest.raises(ValueError, match="timm has no model 'mobilenetv9'"):
        STUDENTS.build("timm", model_name="mobilenetv9")


def test_unknown_student_suggests_close_name() -> None:
    with pytest.raises(KeyError, match="did you mean .*'mobilenet_v1_050'"):
        STUDENTS.get("mobilenet_v1_05")


def test_briefly_trained_mobilenet_does_not_collapse_in_eval_mode() -> None:
    """A few train-mode batches move the BN running stats only part way; with a correct init the
    eval-mode net still separates inputs (with torch's group-blind kaiming fan_out it maps every
    input to one point: relative spread ~1e-8)."""
    torch.manual_seed(0)
    net = MobileNet(alpha=0.5, input_size=112, embedding_dim=128, normalize=False).train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, 112, 112))
        emb = net.eval()(torch.randn(8, 3, 112, 112))
    spread = (emb - emb.mean(0)).norm(dim=1).mean() / emb.norm(dim=1).mean()
    assert spread > 1e-3, f"eval-mode embeddings collapsed (relative spread {spread:.2e})"

