"""Cost of a network: parameters and mult-adds, counted and analytic (paper eq. 7).

Example::

    from distill.profile import profile
    from students import MobileNet
    cost = profile(MobileNet(alpha=1.0, input_size=224, num_classes=1000), 224)
    cost.mult_adds / 1e6    # ~569 (paper Table 6)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


@dataclass(frozen=True)
class Cost:
    """Parameters and mult-adds of a network at one input size."""
    params: int
    mult_adds: int
    input_size: int

    def to_dict(self) -> dict:
        """Plain-JSON form."""
        return asdict(self)


def count_params(module: nn.Module) -> int:
    """Number of parameters (trainable or not) of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_mult_adds(module: nn.Module, input_size: int, in_chans: int = 3) -> int:
    """Mult-adds of one forward pass on a single ``input_size`` x ``input_size`` image.

    torch's FlopCounterMode counts 2 FLOPs per multiply-add in convolutions and
    matrix products (depthwise groups included); mult-adds = FLOPs / 2.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(torch.zeros(1, in_chans, input_size, input_size))
    finally:
        module.train(was_training)
    return counter.get_total_flops() // 2


def profile(module: nn.Module, input_size: int) -> Cost:
    """Parameters and counted mult-adds of ``module`` at ``input_size``; a module that runs outside torch
    (an ONNX teacher) counts itself with ``counted_cost(input_size) -> (params, mult_adds)``."""
    own = getattr(module, "counted_cost", None)
    if callable(own):
        params, mult_adds = own(input_size)
        return Cost(params=params, mult_adds=mult_adds, input_size=input_size)
    return Cost(params=count_params(module), mult_adds=count_mult_adds(module, input_size), input_size=input_size)


def conv_output_size(size: int, stride: int, kernel: int = 3) -> int:
    """Spatial size after a conv with 'same'-style padding k//2 (what MobileNet uses)."""
    return (size + 2 * (kernel // 2) - kernel) // stride + 1


def depthwise_separable_mult_adds(d_k: int, m: int, n: int, d_f: int, alpha: float = 1.0, rho: float = 1.0) -> float:
    """Paper eq. 7: D_K*D_K*aM*pD_F*pD_F + aM*aN*pD_F*pD_F, with D_F the *output* feature map side.

    ``m``/``n`` are the un-thinned channel counts; pass ``alpha=1`` with already
    scaled channels to evaluate a built network exactly.
    """
    am, an, df = alpha * m, alpha * n, rho * d_f
    return d_k * d_k * am * df * df + am * an * df * df


def mobilenet_body_mult_adds(net: nn.Module, input_size: int) -> int:
    """Analytic mult-adds of a built :class:`students.MobileNet` body (stem + 13 depthwise-separable layers)."""
    stem_conv = net.stem[0]
    size = conv_output_size(input_size, stem_conv.stride[0])
    total = 3 * 3 * stem_conv.in_channels * stem_conv.out_channels * size * size
    for block in net.blocks:
        size = conv_output_size(size, block.stride)
        total += depthwise_separable_mult_adds(3, block.in_channels, block.out_channels, size)
    return int(total)
