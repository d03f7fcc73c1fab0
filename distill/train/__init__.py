"""Training: :func:`fit`, checkpoints, the teacher-embedding cache and DDP helpers.

Example::

    from distill.train import fit, OnlineTeacher, build_teacher_cache
    source = OnlineTeacher(teacher, "bf16") if cfg.train.teacher_mode == "online" else \\
        build_teacher_cache(teacher, views, cfg.train.cache_views, cfg.data.cache_dir / "teacher", precision="bf16")
    result = fit(student, student_pre, source, views, loss, cfg.train, cfg.out, resume=True, seed=cfg.seed)
"""
from __future__ import annotations

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .ddp import DistEnv, init_from_env
from .schedule import build_optimizer, build_scheduler, lr_factor
from .teacher_cache import CacheError, TeacherCache, build_lookup_cache, build_teacher_cache
from .trainer import NonFiniteLossError, OnlineTeacher, TrainResult, fit, seed_everything

__all__ = ["fit", "TrainResult", "OnlineTeacher", "NonFiniteLossError", "seed_everything", "build_teacher_cache",
           "build_lookup_cache", "TeacherCache", "CacheError", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "build_optimizer", "build_scheduler", "lr_factor", "DistEnv", "init_from_env"]
