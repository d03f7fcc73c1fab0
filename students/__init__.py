"""Student networks and their registry.

Example::

    from students import STUDENTS, MobileNet
    net = MobileNet(alpha=0.5, input_size=112)            # the library passes objects
    net = STUDENTS.build("mobilenet_v1_050", input_size=112)  # configs resolve names
"""
from __future__ import annotations

import torch.nn as nn

from distill.registry import Registry

from .heads import ClassifierHead, EmbeddingHead
from .mobilenet import DepthwiseSeparable, MobileNet, scale_channels
from .timm_backbone import TimmStudent

STUDENTS: Registry[nn.Module] = Registry("student")

for _alpha, _suffix in ((1.0, "100"), (0.75, "075"), (0.5, "050"), (0.25, "025")):
    STUDENTS.register(f"mobilenet_v1_{_suffix}", description=f"{_alpha} MobileNet v1 (paper Table 1 body)",
                      alpha=_alpha)(MobileNet)
STUDENTS.register("mobilenet_v1", description="MobileNet v1, any width multiplier alpha")(MobileNet)
STUDENTS.register("timm", description="any timm model (model_name=...) with the embedding head",
                  model_name="mobilenetv3_small_100")(TimmStudent)

__all__ = ["STUDENTS", "MobileNet", "DepthwiseSeparable", "TimmStudent", "EmbeddingHead", "ClassifierHead",
           "scale_channels"]
