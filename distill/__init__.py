"""facedistill: distil large face-embedding teachers into MobileNet students.

The public API (imported lazily, so ``import distill`` stays light)::

    import distill
    from teachers import build_teacher, CallableTeacher
    from students import MobileNet

    cfg = distill.load_config("configs/quickstart.yaml", ["out=runs/mine", "train.max_minutes=1"])
    print(distill.plan(cfg).format())                     # what would run
    summary = distill.run(cfg, overwrite=True)            # config -> run -> report.html

    # your own pair, passed as objects
    teacher = build_teacher("dlib_resnet")
    student = MobileNet(alpha=0.25, input_size=96, embedding_dim=teacher.embedding_dim, normalize=False)
    summary = distill.distill_pair(teacher, student, cfg.model_copy(update={"out": Path("runs/pair")}))
    saved = distill.load_student(summary.student)         # loads back: export, eval, gallery accept it

Building blocks for custom loops: :class:`Preprocessing`, :class:`ModuleEmbedder`,
:func:`distill.train.fit`, :class:`distill.losses.DistillLoss`, :mod:`distill.models` (student files,
exported models, the one loader), :mod:`distill.evaluation` (metrics, FAISS search, typed results,
reports), :mod:`distill.data`.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "Config": "distill.config", "load_config": "distill.config", "ConfigError": "distill.config",
    "Preprocessing": "distill.preprocess", "ModuleEmbedder": "distill.embedder", "Embedder": "distill.embedder",
    "Registry": "distill.registry",
    "InputError": "distill.errors", "UsageError": "distill.errors",
    "run": "distill.pipeline", "distill_pair": "distill.pipeline", "plan": "distill.plan",
    "evaluate": "distill.pipeline", "cache_teacher": "distill.pipeline", "compare": "distill.pipeline",
    "RunSummary": "distill.pipeline", "RunPlan": "distill.plan",
    "save_student": "distill.models", "load_student": "distill.models", "load_embedder": "distill.models",
    "StudentSpec": "distill.models",
}


def __getattr__(name: str) -> Any:
    """Import the public API lazily (``import distill`` stays light)."""
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


__all__ = sorted(_API)
