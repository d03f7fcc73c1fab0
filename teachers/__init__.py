"""Teachers and their registry.

Every teacher follows the contract in :mod:`teachers.base`. Register a custom
one with ``@TEACHERS.register("name")`` on a factory, or pass a
:class:`~teachers.base.Teacher` object directly to the library.
"""
from __future__ import annotations

from typing import Any

from distill.registry import Entry, Registry

from .base import CallableTeacher, Teacher

TEACHERS: Registry[Teacher] = Registry("teacher")


def describe_teacher(entry: Entry[Teacher]) -> dict[str, Any]:
    """One `distill models` row for a registered teacher (architecture only: no weight download)."""
    from distill.profile import profile

    teacher = entry.build(weights=None)
    pre = teacher.preprocessing
    cost = profile(teacher, pre.input_size)
    return {"kind": "teacher", "name": entry.name, "params": cost.params, "mult_adds": cost.mult_adds,
            "input_size": pre.input_size, "output_dim": teacher.embedding_dim,
            "normalized": teacher.normalized,
            "preprocessing": f"{pre.alignment}, (x-{pre.mean[0]:g})/{pre.std[0]:g}",
            "description": entry.description}


__all__ = ["TEACHERS", "Teacher", "CallableTeacher", "describe_teacher"]
