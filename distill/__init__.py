"""facedistill: distil large face-embedding teachers into MobileNet students.

The public API (imported lazily, so ``import distill`` stays light)::

    import distill
    from teachers import build_teacher, CallableTeacher
    from students import MobileNet

    cfg = distill.load_config("configs/quickstart.yaml", ["out=runs/mine", "train.max_minutes=1"])
    print(distill.format_plan(distill.plan(cfg)))          # what would run
    summary = distill.run(cfg, overwrite=True)            # config -> run -> report.html

    # your own pair, passed as objects
    teacher = build_teacher("dlib_resnet")
    student = MobileNet(alpha=0.25, input_size=96, embedding_dim=teacher.embedding_dim, normalize=False)
    summary = distill.distill_pair(teacher, student, cfg.model_copy(update={"out": Path("runs/pair")}))

Building blocks for custom loops: :class:`Preprocessing`, :class:`ModuleEmbedder`,
:func:`distill.train.fit`, :func:`distill.losses.build_loss`,
:mod:`distill.evaluation` (metrics, FAISS search, reports), :mod:`distill.data`.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Config": "distill.config", "load_config": "distill.config", "ConfigError": "distill.config",
    "Preprocessing": "distill.preprocess", "ModuleEmbedder": "distill.embedder", "Embedder": "distill.embedder",
    "Registry": "distill.registry",
    "run": "distill.pipeline", "distill_pair": "distill.pipeline", "plan": "distill.pipeline",
    "format_plan": "distill.pipeline", "evaluate": "distill.pipeline", "cache_teacher": "distill.pipeline",
    "compare": "distill.pipeline", "save_student": "distill.pipeline", "load_student": "distill.pipeline",
}


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


__all__ = sorted(_API)
