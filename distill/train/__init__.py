"""Training: :func:`fit` (a short loop over :mod:`~distill.train.hooks`), checkpoints, the teacher-embedding
cache and DDP helpers.

Example::

    from distill.train import fit, OnlineTeacher, build_teacher_cache
    source = OnlineTeacher(teacher) if cfg.train.teacher_mode == "online" else \\
        build_teacher_cache(teacher, views, cfg.train.cache_views, cfg.data.cache_dir / "teacher")
    result = fit(student, student_pre, source, views, loss, cfg.train, cfg.out, resume=True, seed=cfg.seed)
"""
from __future__ import annotations

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .ddp import DistEnv, init_from_env
from .engine import NonFiniteLossError, Run, TrainState
from .hooks import Checkpointer, EMAHook, EvalHook, Hook, MetricsLog, ProgressBar, TimeBudget
from .schedule import build_optimizer, build_scheduler, lr_factor
from .sources import OnlineTeacher, TeacherSource
from .teacher_cache import CacheError, TeacherCache, build_lookup_cache, build_teacher_cache
from .trainer import TrainResult, fit, seed_everything

__all__ = ["fit", "TrainResult", "TrainState", "Run", "OnlineTeacher", "TeacherSource", "NonFiniteLossError",
           "seed_everything", "Hook", "ProgressBar", "TimeBudget", "MetricsLog", "EvalHook", "Checkpointer",
           "EMAHook", "build_teacher_cache", "build_lookup_cache", "TeacherCache", "CacheError", "save_checkpoint",
           "load_checkpoint", "CheckpointError", "build_optimizer", "build_scheduler", "lr_factor", "DistEnv",
           "init_from_env"]
