"""The deployable student file (``student.pt``): how to rebuild, feed and name a trained student.

A student file holds the weights and everything needed to use them, and loads with
``torch.load(weights_only=True)`` (no pickled code runs):

* ``spec``: the registered student name and its constructor arguments. Any student whose class is
  registered (``students.STUDENTS``) records them itself, however it was built (by a config, by
  ``STUDENTS.build`` or as ``MobileNet(alpha=0.25, ...)``). A module of an unregistered class is
  saved with no spec: load it with ``load_student(path, module=YourModule(...))``, or register a
  factory for it (``@STUDENTS.register("my_student")``) so every command can rebuild it.
* ``preprocessing``: the input contract (size, mean/std, alignment template).
* ``name`` (display name, e.g. ``mobilenet_v1_025-112``), ``embedding_dim`` and ``normalized``:
  written once at save time, never probed at load time.
* ``teacher``: name, embedding dim, normalisation and fingerprint of the teacher it learned from;
  ``projection``: the trained student->teacher projection (or None).

Example::

    save_student(run_dir / "student.pt", student, preprocessing=pre, teacher=teacher, loss=loss)
    saved = load_student(run_dir / "student.pt")
    saved.module, saved.name, saved.normalized, saved.fingerprint
    student, spec, pre, record = saved                  # also unpacks as a 4-tuple
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple

import torch
import torch.nn as nn

from distill.errors import InputError, MissingInputError
from distill.fingerprint import state_digest
from distill.io import ModelFileError, atomic_torch_save, safe_torch_load
from distill.preprocess import Preprocessing

STUDENT_FILE = "student.pt"
STUDENT_FORMAT = "facedistill-student-v2"
#: older files (name, kwargs, state_dict, preprocessing, teacher, projection, extra) still load
LEGACY_FORMATS = ("facedistill-student-v1",)


class StudentFileError(InputError, ValueError):
    """A file is not a usable student checkpoint; the message names it and says what to do."""


@dataclass(frozen=True)
class StudentSpec:
    """How to rebuild a student: a registered name and its constructor keyword arguments.

    Example::

        spec = StudentSpec("mobilenet_v1_050", {"input_size": 112, "embedding_dim": 128})
        net = spec.build()
    """

    name: str
    kwargs: dict[str, Any]

    def build(self) -> nn.Module:
        """A fresh (untrained) student of the registered name (a spec is a stored config: names resolve here).

        Raises:
            StudentFileError: the student does not accept these options.
        """
        from students import STUDENTS

        try:
            return STUDENTS.build(self.name, **self.kwargs)
        except TypeError as e:
            raise StudentFileError(f"student '{self.name}' does not accept these options {sorted(self.kwargs)}: "
                                   f"{e}. Check student.alpha / student.options.") from None

    @classmethod
    def of(cls, module: nn.Module) -> "StudentSpec | None":
        """The spec that rebuilds ``module`` (its class must be registered), else None."""
        from students import STUDENTS

        found = STUDENTS.name_of(module)
        return None if found is None else cls(found[0], found[1])


def output_contract(module: nn.Module, input_size: int) -> tuple[int, bool]:
    """``(embedding_dim, normalized)`` of a student.

    Registered students declare both (``module.embedding_dim``, ``module.normalized``); any other
    module is probed once, in eval mode, on two different inputs of ``(2, 3, S, S)``.

    Raises:
        ValueError: the module does not map ``(B, 3, S, S)`` to ``(B, D)``.
    """
    dim, normalized = getattr(module, "embedding_dim", None), getattr(module, "normalized", None)
    if isinstance(dim, int) and isinstance(normalized, bool):
        return dim, normalized
    was = module.training
    module.eval()
    with torch.no_grad():
        out = module(torch.zeros(2, 3, input_size, input_size) + torch.tensor([0.0, 0.5]).view(2, 1, 1, 1))
    module.train(was)
    if out.ndim != 2:
        raise ValueError(f"the student must map (B,3,{input_size},{input_size}) to (B,D); it returned "
                         f"shape {tuple(out.shape)}")
    norms = out.norm(dim=1)
    return int(out.shape[1]), bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-4))


def display_name(spec: StudentSpec | None, module: nn.Module, input_size: int) -> str:
    """``<registered name>-<input size>`` (``mobilenet_v1_025-112``), or the class name for custom modules."""
    return f"{spec.name if spec is not None else type(module).__name__}-{input_size}"


class SavedStudent(NamedTuple):
    """A loaded student file. Unpacks as ``(module, spec, preprocessing, record)``.

    ``module`` is in eval mode; ``record`` is the file's dict (weights, teacher, extra, ...).
    """

    module: nn.Module
    spec: StudentSpec | None
    preprocessing: Preprocessing
    record: dict[str, Any]

    @property
    def name(self) -> str:
        """Display name, e.g. ``mobilenet_v1_050-112``."""
        return self.record["name"]

    @property
    def normalized(self) -> bool:
        """Whether the student's own output is L2-normalised (cosine scores) or raw (Euclidean)."""
        return bool(self.record["normalized"])

    @property
    def embedding_dim(self) -> int:
        """Dimension D of the student's own output ``(B, D)``."""
        return int(self.record["embedding_dim"])

    @property
    def teacher(self) -> dict[str, Any]:
        """What the file records of the teacher: name, embedding_dim, normalized, fingerprint."""
        return dict(self.record.get("teacher") or {})

    @property
    def projection(self) -> dict[str, torch.Tensor] | None:
        """State dict of the trained student->teacher ``nn.Linear`` projection, or None."""
        return self.record.get("projection")

    def fingerprint(self, with_projection: bool = False) -> str:
        """``<name>-<digest of the weights>``: equal for this file and its fp32 exports."""
        proj = self.projection if with_projection else None
        return f"{self.name}-{state_digest(self.record['state_dict'], proj)}"


def save_student(path: str | Path, student: nn.Module, spec: StudentSpec | None, preprocessing: Preprocessing,
                 teacher: Any, loss: nn.Module | None = None, extra: dict | None = None) -> Path:
    """Write the deployable student file atomically (see the module docs for its fields).

    ``spec=None`` records the spec of a registered class (:meth:`StudentSpec.of`); a module of an
    unregistered class is saved without one. ``teacher``: anything with ``name``,
    ``embedding_dim``, ``normalized`` and ``fingerprint()``; ``loss``: its ``export_head()`` (the
    trained projection) is kept when present.
    """
    spec = spec if spec is not None else StudentSpec.of(student)
    dim, normalized = output_contract(student, preprocessing.input_size)
    head = getattr(loss, "export_head", lambda: None)() if loss is not None else None
    return atomic_torch_save({
        "format": STUDENT_FORMAT, "name": display_name(spec, student, preprocessing.input_size),
        "spec": None if spec is None else {"name": spec.name, "kwargs": dict(spec.kwargs)},
        "embedding_dim": dim, "normalized": normalized,
        "state_dict": student.state_dict(), "preprocessing": preprocessing.to_dict(),
        "teacher": {"name": teacher.name, "embedding_dim": teacher.embedding_dim,
                    "normalized": teacher.normalized, "fingerprint": teacher.fingerprint()},
        "projection": head.state_dict() if head is not None else None,
        "extra": extra or {},
    }, path)


def _upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """A v1 record in v2 form (v1 had no display name/dim and derived normalisation from the kwargs)."""
    if record.get("format") == STUDENT_FORMAT:
        return record
    kwargs = dict(record.get("kwargs") or {})
    name = record.get("name")
    out = dict(record, format=STUDENT_FORMAT, spec=None if name is None else {"name": name, "kwargs": kwargs},
               normalized=bool(kwargs.get("normalize", True)))
    out["name"] = f"{name}-{record['preprocessing']['input_size']}" if name else None
    out["embedding_dim"] = kwargs.get("embedding_dim")
    return out


def read_student_record(path: str | Path) -> dict[str, Any]:
    """The verified dict of a student file (v1 files upgraded), without building the module.

    Raises:
        MissingInputError: ``path`` does not exist.
        StudentFileError: not a (readable) facedistill student file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"student checkpoint {path} does not exist (the deployable student of a run "
                                f"is RUN/{STUDENT_FILE})")
    try:
        record = safe_torch_load(path)
    except ModelFileError as e:  # one paragraph: what the file is, and what to give instead
        raise StudentFileError(f"{path} is not a loadable facedistill student checkpoint: it is {e.what}."
                               f" Give the student.pt a run wrote (RUN/{STUDENT_FILE}), an exported .onnx file or "
                               f"teacher:NAME; if this is that file, copy or download it again") from None
    fmt = record.get("format") if isinstance(record, dict) else None
    if fmt not in (STUDENT_FORMAT, *LEGACY_FORMATS):
        raise StudentFileError(f"{path} is not a facedistill student checkpoint (expected format "
                               f"{STUDENT_FORMAT}; training checkpoints live in RUN/checkpoints, the deployable "
                               f"student is RUN/{STUDENT_FILE})")
    return _upgrade(record)


def load_student(path: str | Path, module: nn.Module | None = None) -> SavedStudent:
    """Rebuild the student saved by :func:`save_student` (eval mode).

    ``module``: an instance to load the weights into; required for a student of an unregistered
    class (the file records no spec), optional otherwise.

    Raises:
        FileNotFoundError, StudentFileError: see :func:`read_student_record`; also when the weights do
            not fit ``module`` or the file needs ``module`` and none was given.
    """
    record = read_student_record(path)
    spec = StudentSpec(record["spec"]["name"], dict(record["spec"]["kwargs"])) if record.get("spec") else None
    if module is None:
        if spec is None:
            raise StudentFileError(
                f"{path} holds a student of an unregistered class (saved from an object): pass the module to "
                f"load it into, load_student({str(path)!r}, module=YourStudent(...)), or register a factory "
                f"for the class with @students.STUDENTS.register(...) before saving")
        module = spec.build()
    try:
        module.load_state_dict(record["state_dict"])
    except RuntimeError as e:
        raise StudentFileError(f"{path}: the weights do not fit {type(module).__name__} ({e})") from None
    module.eval()
    pre = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in record["preprocessing"].items()})
    if record.get("name") is None:
        record = dict(record, name=display_name(spec, module, pre.input_size))
    if record.get("embedding_dim") is None:
        dim, normalized = output_contract(module, pre.input_size)
        record = dict(record, embedding_dim=dim, normalized=record.get("normalized", normalized))
    return SavedStudent(module, spec, pre, record)


def warm_start(student: nn.Module, path: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start ``student`` from the weights in ``path`` (``student.init``): a student file of ours (student.pt) or
    a plain state dict (``.pt``, optionally under ``"state_dict"``). Every parameter and buffer whose name and
    shape match is copied; the rest (a head of another dimension, another width) keeps its fresh
    initialisation, and the log says which groups those were. Returns ``{"loaded": n, "fresh": [names]}``.

    Raises:
        MissingInputError: no such file. StudentFileError: not a checkpoint, or nothing in it fits ``student``
            (another architecture): the message names both.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"student.init: {path} does not exist (a student.pt a run wrote, or a state dict)")
    try:
        record = safe_torch_load(path)
    except ModelFileError as e:
        raise StudentFileError(f"student.init: {path} is not a loadable checkpoint: it is {e.what}") from None
    if isinstance(record, dict) and record.get("format") in (STUDENT_FORMAT, *LEGACY_FORMATS):
        theirs = _upgrade(record)["state_dict"]
    else:
        theirs = record.get("state_dict", record) if isinstance(record, dict) else None
    if not isinstance(theirs, dict) or not all(isinstance(v, torch.Tensor) for v in theirs.values()):
        raise StudentFileError(f"student.init: {path} holds no state dict of tensors (give a student.pt or a .pt "
                               "saved from model.state_dict())")
    mine = student.state_dict()
    fits = {k: v for k, v in theirs.items() if k in mine and tuple(v.shape) == tuple(mine[k].shape)}
    if not fits:
        raise StudentFileError(f"student.init: no weight of {path} fits {type(student).__name__} (different "
                               "architecture or width); start from a student of the same kind")
    student.load_state_dict(fits, strict=False)
    fresh = sorted({k.split(".")[0] for k in mine if k not in fits})
    log(f"student.init: {len(fits)} of {len(mine)} tensors from {path}"
        + (f"; fresh (no match in the file): {', '.join(fresh)}" if fresh else ""))
    return {"loaded": len(fits), "fresh": fresh}
