"""The distillation loop: :func:`fit`, a short loop over :class:`~distill.train.engine.Run` and hooks.

Per step (:meth:`Run.step <distill.train.engine.Run.step>`): a uint8 batch of augmented views
(DataLoader workers augment) -> teacher targets (online: the teacher embeds the same uint8 batch;
cached: a memmap lookup) -> the student's Preprocessing -> student forward -> loss -> AdamW/SGD step
with warmup + cosine and gradient clipping. The hooks (:mod:`distill.train.hooks`) own everything
else: progress, the wall-time budget, ``metrics.csv``/TensorBoard, evaluation and ``best.pt``,
checkpoints (``resume=True`` continues at the exact step, mid-epoch included), weight averaging.

Example::

    from distill.resolve import loss_from_config
    from distill.train import fit, OnlineTeacher

    crit = loss_from_config(cfg.train.loss, student_dim=128, teacher_dim=128, teacher_normalized=False)
    result = fit(student, student_pre, OnlineTeacher(teacher), views, crit, cfg.train, run_dir,
                 eval_fn=lambda s: {"acc": evaluate(s)}, resume=True, seed=cfg.seed,
                 workers=cfg.data.workers, config=cfg.model_dump(mode="json"))
    result.samples_per_s, result.last_checkpoint
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from distill.config import TrainSettings
from distill.data.views import FaceViews
from distill.preprocess import Preprocessing

from .engine import NonFiniteLossError, Run, TrainState
from .hooks import Checkpointer, EMAHook, EvalHook, Hook, MetricsLog, ProgressBar, TimeBudget
from .sources import OnlineTeacher, TeacherSource

__all__ = ["fit", "TrainResult", "seed_everything", "NonFiniteLossError", "OnlineTeacher", "TeacherSource",
           "TrainState"]


@dataclass
class TrainResult:
    """What :func:`fit` did: steps, epochs, speed, why it stopped, where the checkpoints are."""

    steps: int
    epochs_completed: int
    final_loss: float
    samples_per_s: float
    seconds: float
    stopped: str  # "finished" | "time_budget"
    last_checkpoint: Path
    #: the module to evaluate and deploy: the student, or its weight average with ``train.ema``
    model: nn.Module | None = None
    best_checkpoint: Path | None = None
    best_metric: str | None = None
    best_value: float | None = None
    nonfinite_skipped: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (call before building the student for reproducible initialisation)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _call(hooks: Sequence[Hook], phase: str, run: Run) -> None:
    for h in hooks:
        getattr(h, phase)(run)


def fit(student: nn.Module, student_preprocessing: Preprocessing, teacher_source: Any, views: FaceViews,
        loss: nn.Module, settings: TrainSettings, run_dir: str | Path, *,
        eval_fn: Callable[[nn.Module], dict[str, float]] | None = None, best_metric: str | None = None,
        best_mode: str = "max", resume: bool = False, log: Callable[[str], None] = print, seed: int = 0,
        workers: int = 0, micro_batches: int = 1, device: torch.device | str | None = None,
        config: dict[str, Any] | None = None, log_every: int = 10, progress: bool = True,
        hooks: Sequence[Hook] = ()) -> TrainResult:
    """Distil ``teacher_source`` into ``student`` on ``views``; see the module docstring.

    Args:
        teacher_source: an :class:`OnlineTeacher` (or a bare teacher: online) or a
            :class:`~distill.train.teacher_cache.TeacherCache` built on the same ``views``.
        loss: a :class:`~distill.losses.DistillLoss` (``loss(student_emb, targets) -> (total, parts)``).
        eval_fn: ``eval_fn(model) -> {metric: value}``, run on rank 0 every ``settings.eval_every``
            epochs (and at the end); ``best_metric`` (default: the first key) picks ``best.pt``.
        micro_batches: split each batch into this many interleaved micro-batches (gradients
            accumulated; BatchNorm statistics per micro-batch). Single process only; with
            ``micro_batches=N`` a run reproduces an N-rank DDP run with the same global batch.
        config: the run's config dict (plain JSON types), stored in every checkpoint.
        hooks: extra :class:`~distill.train.hooks.Hook` objects, run after the built-in ones.

    Raises:
        NonFiniteLossError: non-finite loss with ``settings.nonfinite == "stop"``.
        ValueError: see :class:`~distill.train.engine.Run`.
    """
    run = Run(student, student_preprocessing, teacher_source, views, loss, settings, Path(run_dir), seed=seed,
              workers=workers, micro_batches=micro_batches, device=device, config=config)
    checkpointer = Checkpointer(settings.checkpoint_every, log)
    evaluator = EvalHook(eval_fn, run.run_dir, settings.eval_every, settings.epochs, best_metric, best_mode, log)
    run.hooks = [ProgressBar(progress), TimeBudget(settings.max_minutes, log), MetricsLog(run.run_dir, log_every),
                 *([EMAHook(settings.ema)] if settings.ema else []), evaluator, checkpointer, *hooks]
    seed_everything(seed + run.env.rank)
    if resume:
        checkpointer.restore(run)
    s = run.state
    start_step, s.t0 = s.step, time.monotonic()
    try:
        _call(run.hooks, "before_train", run)
        run.model.train()
        while s.epoch < settings.epochs and s.stop is None:
            batches = run.batches()
            while (batch := run.next_batch(batches)) is not None:
                run.step(*batch)
                with run.phase("hooks"):
                    _call(run.hooks, "after_step", run)
                if s.stop is not None or s.epoch_done:
                    break
        _call(run.hooks, "after_train", run)
    finally:
        _call(run.hooks, "close", run)
    run_s = time.monotonic() - s.t0
    return TrainResult(steps=s.step, epochs_completed=s.epoch, final_loss=run.last_loss,
                       samples_per_s=(s.step - start_step) * settings.batch_size / max(run_s, 1e-9),
                       seconds=s.elapsed(), stopped=s.stop or "finished", last_checkpoint=run.last_path,
                       model=run.eval_model, best_checkpoint=evaluator.best_path if evaluator.best_path.exists()
                       else None, best_metric=evaluator.chosen, best_value=s.best_value,
                       nonfinite_skipped=s.skipped, evals=s.evals)
