"""The registry of distillation loss terms: ``train.loss.<name>: weight`` in a config names one.

A term is an ``nn.Module`` mapping ``(student (B, D), teacher (B, D)) -> scalar`` with the teacher
side detached; its constructor's keyword arguments are its options
(``train.loss.<name>: {weight: 1.0, <option>: value}``). Add one with a file in this package that
defines the pure function and the module, decorated ``@LOSS_TERMS.register("name")``, imported in
``distill/losses/__init__.py``, plus a golden-value test.

Example::

    from distill.losses import LOSS_TERMS
    term = LOSS_TERMS.build("cosine")
    value = term(student_emb, teacher_emb)
"""
from __future__ import annotations

import torch.nn as nn

from distill.registry import Registry

LOSS_TERMS: Registry[nn.Module] = Registry("loss term")
