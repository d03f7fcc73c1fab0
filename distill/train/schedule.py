"""Optimizer and learning-rate schedule from TrainSettings: AdamW or SGD, linear warmup then cosine to 0.

Example::

    opt = build_optimizer(params, cfg.train)
    sched = build_scheduler(opt, cfg.train, total_steps=epochs * steps_per_epoch)
"""
from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from distill.config import TrainSettings


def build_optimizer(params: Iterable[torch.nn.Parameter], settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW or SGD (Nesterov momentum); weight decay on every trainable tensor except 1-d (BN, biases)."""
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": settings.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if settings.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=settings.lr)
    return torch.optim.SGD(groups, lr=settings.lr, momentum=settings.momentum, nesterov=settings.momentum > 0)


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Multiplier of the base lr at ``step``: linear warmup to 1, then half-cosine to 0 at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class WarmupCosine:
    """LambdaLR factor: linear warmup, then half-cosine to 0 at ``total_steps``.

    ``refit`` moves the end (a wall-time budget re-estimated mid-run) without a jump: the cosine
    continues from the progress it had reached. All state is plain attributes, so LambdaLR's
    state_dict saves it and a resumed run follows the same schedule.

    Example::

        h = WarmupCosine(warmup_steps=300, total_steps=10_000)
        h.refit(step=4_000, total_steps=8_000)   # the machine got slower: end sooner, smoothly
    """

    def __init__(self, warmup_steps: int, total_steps: int) -> None:
        self.warmup_steps, self.total_steps = warmup_steps, total_steps
        self.fitted = False  # True once total_steps was fitted to a wall-time budget
        self.anchor_step, self.anchor_progress = warmup_steps, 0.0  # the cosine runs from here to total_steps

    def progress(self, step: int) -> float:
        """Fraction of the cosine decay done at ``step`` (0 at the end of warmup, 1 at the end)."""
        span = max(1, self.total_steps - self.anchor_step)
        p = self.anchor_progress + (1.0 - self.anchor_progress) * (step - self.anchor_step) / span
        return min(1.0, max(0.0, p))

    def refit(self, step: int, total_steps: int) -> None:
        """End the decay at ``total_steps`` instead, continuing from the progress reached at ``step``.

        The first fit also caps the warmup at a tenth of the fitted run (but not below ``step``): a
        300-step warmup would otherwise be most of a 5-minute run.
        """
        if not self.fitted:
            self.warmup_steps = min(self.warmup_steps, max(step, total_steps // 10))
            self.anchor_step, self.anchor_progress = self.warmup_steps, 0.0
        at = max(step, self.warmup_steps)
        self.anchor_progress = self.progress(at)
        self.anchor_step, self.total_steps, self.fitted = at, max(total_steps, at + 1), True

    def __call__(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        return 0.5 * (1.0 + math.cos(math.pi * self.progress(step)))


def build_scheduler(optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int) -> LambdaLR:
    """Linear warmup then half-cosine to zero at ``total_steps`` (:class:`WarmupCosine`); a warmup longer than half the run is halved."""
    warmup = min(settings.warmup_steps, max(0, total_steps // 2))  # short runs: never warm up the whole run
    return LambdaLR(optimizer, WarmupCosine(warmup, total_steps))


def resolution_applies(schedule: Any, student: Any, input_size: int) -> None:
    """Refuse ``train.resolution`` where it cannot work, before any data work.

    Raises:
        ConfigError: the student takes one input size only (``student.pool: gdconv``), or the schedule's size
            is not below student.input_size.
    """
    if schedule is None:
        return
    from distill.config import ConfigError

    if getattr(student, "fixed_input", False):
        raise ConfigError(f"train.resolution trains at {schedule.size} px, but this student takes "
                          f"{input_size} px only (student.pool: gdconv sizes its filter for one input): use "
                          f"student.pool: avg with a resolution schedule, or drop train.resolution")
    if schedule.size >= input_size:
        raise ConfigError(f"train.resolution.size {schedule.size} is not below student.input_size {input_size}: "
                          f"the schedule trains early steps smaller; pick a smaller size or drop train.resolution")
