"""MobileNet (Howard et al. 2017) built from depthwise-separable blocks.

The body is the paper's Table 1: a standard 3x3/2 convolution, then 13
depthwise-separable layers; the width multiplier ``alpha`` thins every layer,
and the resolution multiplier is the input size itself. The embedding is taken from
the last feature map by global average pooling (``pool="avg"``, the paper's) or by
MobileFaceNet's global depthwise convolution (``pool="gdconv"``, :class:`GDConv`).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.layers import make_divisible

from .heads import HeadContract, make_head

#: Table 1 body after the stem: (output channels, stride of the depthwise conv)
MOBILENET_V1_BODY: tuple[tuple[int, int], ...] = (
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
)
STEM_CHANNELS = 32


def scale_channels(channels: int, alpha: float) -> int:
    """Width multiplier; rounded to a multiple of 8 as timm and the reference TF code do."""
    return make_divisible(channels * alpha, 8)


class ConvBNReLU(nn.Sequential):
    """Standard convolution -> BN -> ReLU (Figure 3, left)."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class DepthwiseSeparable(nn.Module):
    """3x3 depthwise conv, BN, ReLU, then 1x1 pointwise conv, BN, ReLU (Figure 3, right).

    Example::

        block = DepthwiseSeparable(32, 64, stride=1)
        y = block(torch.randn(1, 32, 56, 56))     # (1, 64, 56, 56)
    """

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.depthwise = ConvBNReLU(cin, cin, 3, stride, groups=cin)
        self.pointwise = ConvBNReLU(cin, cout, 1, 1)
        self.in_channels, self.out_channels, self.stride = cin, cout, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def feature_side(input_size: int) -> int:
    """Side (px) of the last feature map for a square ``input_size`` input: the stem and every stride-2 block
    halve it, rounding up (3x3 kernels, padding 1)."""
    side = (input_size - 1) // 2 + 1
    for _, stride in MOBILENET_V1_BODY:
        if stride == 2:
            side = (side - 1) // 2 + 1
    return side


class GDConv(nn.Sequential):
    """Global depthwise convolution (MobileFaceNet, Chen et al. 2018, section 3.2): one ``side x side``
    depthwise filter per channel over the whole last feature map, then BatchNorm, instead of average pooling:
    each channel learns which positions of the face matter (the corners of a face crop are not its centre).
    ``(B, C, side, side)`` -> ``(B, C, 1, 1)``; ``side * side * C`` mult-adds."""

    def __init__(self, channels: int, side: int) -> None:
        super().__init__(nn.Conv2d(channels, channels, side, groups=channels, bias=False), nn.BatchNorm2d(channels))


#: how the last feature map becomes one vector
POOLS = ("avg", "gdconv")


class MobileNet(HeadContract, nn.Module):
    """MobileNet v1 with a face-embedding head (default) or the paper's classifier head.

    Args:
        alpha: width multiplier (1.0, 0.75, 0.5, 0.25 in the paper).
        input_size: input resolution; the paper's resolution multiplier rho is input_size/224.
        embedding_dim: output dimension of the embedding head.
        num_classes: build the 1000-way classifier head instead (cost checks against the paper).
        normalize: L2-normalise the embedding (match the teacher's convention).
        head_bn: BatchNorm1d after the embedding projection.
        pool: ``"avg"`` (global average pooling, the paper's) or ``"gdconv"`` (:class:`GDConv`, sized for
            ``input_size``: the network then takes that size only).

    Raises:
        ValueError: alpha outside (0, 4], input_size below 32 pixels, or an unknown pool.

    Example::

        net = MobileNet(alpha=0.5, input_size=112, embedding_dim=128)
        emb = net(torch.randn(2, 3, 112, 112))    # (2, 128)
    """

    def __init__(self, alpha: float = 1.0, input_size: int = 160, embedding_dim: int | None = 128,
                 num_classes: int | None = None, normalize: bool = True, head_bn: bool = True,
                 dropout: float = 0.0, pool: str = "avg") -> None:
        super().__init__()
        if pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {pool!r}")
        if not 0 < alpha <= 4:
            raise ValueError(f"alpha must be in (0, 4], got {alpha}")
        if input_size < 32:  # five stride-2 stages: a 32 px input ends at 1x1
            raise ValueError(f"input_size must be at least 32 pixels, got {input_size}")
        self.alpha, self.input_size = alpha, input_size
        cin = scale_channels(STEM_CHANNELS, alpha)
        self.stem = ConvBNReLU(3, cin, 3, 2)
        blocks = []
        for cout, stride in MOBILENET_V1_BODY:
            cout = scale_channels(cout, alpha)
            blocks.append(DepthwiseSeparable(cin, cout, stride))
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.num_features = cin
        self.pool = nn.AdaptiveAvgPool2d(1) if pool == "avg" else GDConv(cin, feature_side(input_size))
        #: True when the student takes one input size only (the trainer's resolution schedule checks it)
        self.fixed_input = pool == "gdconv"
        self.head = make_head(cin, embedding_dim=None if num_classes else embedding_dim,
                              num_classes=num_classes, normalize=normalize, head_bn=head_bn, dropout=dropout)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                # He init on the true fan-out. torch's kaiming "fan_out" ignores groups, which makes a
                # depthwise conv sqrt(C) times too small: pre-BN activations then shrink ~1e-10 over the
                # body and an eval-mode net (running stats still near their init) maps every face to one point.
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
