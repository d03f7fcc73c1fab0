"""Where registry names become objects: run configs are read here.

:mod:`distill.config` validates that names exist; this module builds the objects they name
(:class:`~distill.models.student.StudentSpec` does the same for the spec a student file records).
The rest of the library receives objects (teachers, students, loss terms) and never looks a name up.

Example::

    cfg = load_config("configs/quickstart.yaml")
    teacher = teacher_from_config(cfg)
    spec = student_spec_from_config(cfg, teacher)
    student = build_student(spec)
    loss = loss_from_config(cfg.train.loss, student_dim=128, teacher_dim=teacher.embedding_dim,
                            teacher_normalized=teacher.normalized)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.nn as nn

from distill.config import Config, ConfigError, LossSettings

if TYPE_CHECKING:
    from distill.losses import DistillLoss
    from distill.models.student import StudentSpec


def teacher_from_config(cfg: Config) -> Any:
    """The teacher ``cfg.teacher`` names, with its weights (``weights: null`` = its default real weights).

    Raises:
        ConfigError: the teacher rejects ``teacher.options``.
    """
    from teachers import build_teacher

    try:
        return build_teacher(cfg.teacher.name, cfg.teacher.weights, cfg.teacher.precision, **cfg.teacher.options)
    except TypeError as e:
        raise ConfigError(f"teacher '{cfg.teacher.name}' does not accept teacher.options "
                          f"{sorted(cfg.teacher.options)}: {e}") from None


def teacher_architecture(cfg: Config) -> Any:
    """The configured teacher with random weights: its contract and cost, without loading weights (a teacher
    that is only a file, such as ``onnx``, has no architecture without it: the file is read then)."""
    from teachers import TEACHERS

    try:
        return TEACHERS.build(cfg.teacher.name, weights=None, **cfg.teacher.options)
    except FileNotFoundError:
        if cfg.teacher.weights is None:
            raise
        return teacher_from_config(cfg)


def teacher_weight_problems(cfg: Config) -> list[str]:
    """What would stop the configured teacher from loading its weights ([] = fine); never downloads."""
    from teachers import check_teacher_weights

    return list(check_teacher_weights(cfg.teacher.name, cfg.teacher.weights))


def student_spec_from_config(cfg: Config, teacher: Any) -> "StudentSpec":
    """The student ``cfg.student`` names, as a spec; the embedding dim and normalisation default to the teacher's."""
    from distill.models.student import StudentSpec

    s = cfg.student
    kwargs: dict[str, Any] = dict(s.options)
    kwargs.update(input_size=s.input_size, embedding_dim=s.embedding_dim or teacher.embedding_dim,
                  normalize=teacher.normalized if s.normalize is None else s.normalize, head_bn=s.head_bn)
    if s.alpha is not None:
        kwargs["alpha"] = s.alpha
    if s.pool != "avg":  # recorded only when chosen: older student files and other students keep their kwargs
        kwargs["pool"] = s.pool
    return StudentSpec(s.name, kwargs)


def build_student(spec: "StudentSpec") -> nn.Module:
    """A fresh student from a spec (see :meth:`~distill.models.student.StudentSpec.build`)."""
    return spec.build()


def loss_from_config(settings: LossSettings, *, student_dim: int, teacher_dim: int,
                     teacher_normalized: bool) -> "DistillLoss":
    """The weighted sum of the terms ``train.loss`` names. ``normalize=None`` follows the teacher;
    ``projection=None`` adds one only when the dims differ.

    Raises:
        ConfigError: ``projection=false`` with differing dims, or every weight is 0.
    """
    from distill.losses import LOSS_TERMS, DistillLoss

    if settings.projection is False and student_dim != teacher_dim:
        raise ConfigError(f"train.loss.projection=false but the student embeds to {student_dim} dims and the "
                          f"teacher to {teacher_dim}; set student.embedding_dim={teacher_dim} or allow a projection")
    terms = settings.terms()
    if not terms:
        raise ConfigError("train.loss: every term weight is 0; set at least one term (e.g. train.loss.mse) > 0")
    normalize = teacher_normalized if settings.normalize is None else settings.normalize
    return DistillLoss({name: LOSS_TERMS.build(name, **options) for name, (_, options) in terms.items()},
                       {name: w for name, (w, _) in terms.items()}, normalize=normalize, student_dim=student_dim,
                       teacher_dim=teacher_dim, projection=settings.projection)
