"""The one loader: any model reference -> an :class:`~distill.embedder.Embedder`.

References:

* ``teacher:NAME``: a registered teacher with its default real weights, in fp32; ``teacher:NAME:WEIGHTS``
  with ``WEIGHTS`` as the config key ``teacher.weights`` takes it (``teacher:facenet:casia-webface``);
  ``teacher:CONFIG.yaml`` builds the ``teacher`` section of a run config (name, weights, options, precision):
  the way to name a teacher that needs options, such as an ONNX file (``teacher.name: onnx``);
* ``*.onnx``: :class:`~distill.models.exported.OnnxEmbedder`; a TorchScript export:
  :class:`~distill.models.exported.TorchScriptEmbedder`;
* a student file (``student.pt``): :class:`~distill.models.exported.StudentEmbedder`, whose
  fingerprint equals its fp32 exports' (galleries accept either).

Every embedder has ``name``, ``preprocessing``, ``normalized``, ``embedding_dim`` and
``fingerprint()``; student embedders also carry ``module`` (for cost measurement) and ONNX ones
``path``.

Example::

    emb = load_embedder("runs/r1/student.pt")
    vectors = emb.embed(torch.from_numpy(aligned_faces))     # (B, D) float32
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.errors import InputError, MissingInputError

from .exported import ExportError, OnnxEmbedder, TorchScriptEmbedder, _is_torchscript, student_embedder
from .student import load_student

#: prefix of a model reference that names a registered teacher
TEACHER_PREFIX = "teacher:"


def _config_teacher(path: Path) -> Any:
    """The teacher a run config declares (``teacher:CONFIG.yaml``), checked like ``distill run`` checks it.

    Raises:
        MissingInputError: no such file. ConfigError: the config is invalid (names the key)."""
    from distill.config import load_config
    from teachers import build_teacher

    if not path.is_file():
        raise MissingInputError(f"model teacher:{path}: the config file {path} does not exist (give the run "
                                "config whose teacher section names the model, or teacher:NAME)")
    t = load_config(path).teacher
    try:
        teacher = build_teacher(t.name, t.weights, t.precision, **t.options)
    except TypeError as e:
        raise InputError(f"{path}: teacher '{t.name}' does not accept teacher.options {sorted(t.options)}: {e}") from None
    if not getattr(teacher, "can_embed", True):
        raise ExportError(f"the teacher of {path} cannot embed images (it is a black box of precomputed embeddings)")
    return teacher


def load_embedder(ref: str | Path, *, with_projection: bool = False) -> Any:
    """An embedder for ``ref`` (see the module docs).

    Raises:
        MissingInputError: ``ref`` is neither ``teacher:NAME`` nor an existing file.
        ExportError / StudentFileError: the file is not a model facedistill can run.
    """
    s = str(ref)
    if s.startswith(TEACHER_PREFIX) and s.lower().endswith((".yaml", ".yml")):
        return _config_teacher(Path(s[len(TEACHER_PREFIX):]))
    if s.startswith(TEACHER_PREFIX):  # a model reference names a registered teacher: resolved here
        from teachers import build_teacher

        name, _, weights = s[len(TEACHER_PREFIX):].partition(":")
        try:
            teacher = build_teacher(name, weights or None, precision="fp32")
        except (InputError, OSError, ValueError) as e:  # a remedy naming the config key: say how the CLI spells it
            if "teacher.weights" not in str(e):
                raise
            msg = (f"{e} (on the command line the config key teacher.weights is the part after a second colon: "
                   f"{TEACHER_PREFIX}{name}:WEIGHTS, e.g. {TEACHER_PREFIX}facenet:casia-webface)")
            try:
                err = type(e)(msg)
            except TypeError:
                err = InputError(msg)
            raise err from None
        if not getattr(teacher, "can_embed", True):
            raise ExportError(f"teacher {s!r} cannot embed images (it is a black box of precomputed embeddings)")
        return teacher
    path = Path(s)
    if not path.is_file():
        raise MissingInputError(f"model {path} does not exist (give a student.pt checkpoint, an exported "
                                f".onnx / TorchScript file, or teacher:NAME)")
    if path.suffix.lower() == ".onnx":
        return OnnxEmbedder(path)
    if _is_torchscript(path):
        return TorchScriptEmbedder(path)
    return student_embedder(load_student(path), with_projection=with_projection, source=str(path))
