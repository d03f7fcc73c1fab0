"""What a run would do, without data work or training (``distill run --dry-run``).

Example::

    p = plan(load_config("configs/quickstart.yaml"))
    print(p.format())
    p.mult_adds_ratio          # 7.0 for dlib_resnet -> 0.5 MobileNet-112
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distill.config import Config
from distill.models.student import STUDENT_FILE, output_contract
from distill.preflight import find_problems
from distill.preprocess import AlignmentMismatchError
from distill.profile import profile
from distill.resolve import build_student, student_spec_from_config, teacher_architecture


def data_alignment(cfg: Config, teacher_alignment: str) -> str:
    """The template data is aligned to: the teacher's; a config that says otherwise is an error.

    Raises:
        AlignmentMismatchError: ``data.alignment`` names another template.
    """
    if cfg.data.alignment is not None and cfg.data.alignment != teacher_alignment:
        raise AlignmentMismatchError(
            f"data.alignment is {cfg.data.alignment!r} but teacher '{cfg.teacher.name}' expects faces aligned "
            f"with {teacher_alignment!r}; remove data.alignment (it defaults to the teacher's) or set it to "
            f"{teacher_alignment!r}")
    return teacher_alignment


def eval_protocol_names(cfg: Config) -> list[str]:
    """The protocols a run evaluates on, as named in reports."""
    names = [p.label for p in cfg.eval.pairs]
    if not names and cfg.data.source == "synthetic":
        names = ["synthetic-test"]
    elif not names and cfg.data.holdout_fraction is not None:
        names = [f"held-out (every pair of the {cfg.data.holdout_fraction:.0%} of data.root's people held out)"]
    return names


def _relative_cost(ratio: float) -> str:
    """Teacher/student mult-adds ``ratio`` in words: ``7.0x fewer than the teacher`` or ``7.8x more than ...``."""
    if ratio >= 1:
        return f"{ratio:.1f}x fewer than the teacher"
    return f"{1 / ratio:.1f}x more than the teacher" if ratio > 0 else "the teacher's cost is unknown"


@dataclass
class RunPlan:
    """The models, data, training and evaluation a config describes, with costs and missing artifacts."""

    name: str
    out: str
    teacher: dict[str, Any]
    student: dict[str, Any]
    mult_adds_ratio: float
    data: dict[str, Any]
    train: dict[str, Any]
    eval: list[str]
    missing: list[str]
    outputs: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        """The plan as the terminal shows it."""
        t, s = self.teacher, self.student
        m = lambda n: f"{n / 1e6:.1f}M"  # noqa: E731
        loss = ", ".join(f"{k}={v}" for k, v in self.train["loss"].items() if v not in (None, 0.0))
        lines = [f"plan for run '{self.name}' -> {self.out}",
                 f"  teacher  {t['name']}: {t['input_size']}px {t['alignment']}, {t['embedding_dim']}-D "
                 f"{'normalised' if t['normalized'] else 'raw'}; {m(t['params'])} params, "
                 f"{m(t['mult_adds'])} mult-adds",
                 f"  student  {s['name']}: {s.get('input_size')}px, {s.get('embedding_dim')}-D; "
                 f"{m(s['params'])} params, {m(s['mult_adds'])} mult-adds "
                 f"({_relative_cost(self.mult_adds_ratio)})",
                 *_data_lines(self.data),
                 "  train    " + ", ".join(f"{k}={v}" for k, v in self.train.items() if k != "loss")
                 + f"; loss {loss}",
                 "  eval     " + (", ".join(self.eval) or "(no protocols: set eval.pairs or data.holdout_fraction)"),
                 "  outputs  " + ", ".join(f"{k}: {v}" for k, v in self.outputs.items())]
        return "\n".join(lines + [f"  MISSING  {x}" for x in self.missing])


def _data_lines(data: dict[str, Any]) -> list[str]:
    """The plan's data line, one line per source when there are several (``data.sources``)."""
    flat = lambda d: ", ".join(f"{k}={v}" for k, v in d.items())  # noqa: E731
    rest = {k: v for k, v in data.items() if k != "sources"}
    if "sources" not in data:
        return ["  data     " + flat(data)]
    lines = [f"  data     {len(data['sources'])} training sources" + (f"; {flat(rest)}" if rest else "")]
    return lines + [f"    - {s.get('name')}: " + flat({k: v for k, v in s.items() if k != "name"})
                    for s in data["sources"]]


def _check_target_scale(cfg: Config, teacher: Any, student: Any) -> None:
    """``train.target_scale`` against the loss and student the config builds (ConfigError before any work)."""
    from distill.resolve import loss_from_config
    from distill.train.target_scale import target_scale_applies

    dim, _ = output_contract(student, cfg.student.input_size)
    loss = loss_from_config(cfg.train.loss, student_dim=dim, teacher_dim=teacher.embedding_dim,
                            teacher_normalized=teacher.normalized)
    target_scale_applies(cfg.train.target_scale, student, loss)
    from distill.train.schedule import resolution_applies

    resolution_applies(cfg.train.resolution, student, cfg.student.input_size)


def plan(cfg: Config) -> RunPlan:
    """The :class:`RunPlan` of ``cfg`` (the teacher is built without weights: architecture and cost only)."""
    teacher = teacher_architecture(cfg)
    template = data_alignment(cfg, teacher.preprocessing.alignment)
    spec = student_spec_from_config(cfg, teacher)
    student = build_student(spec)
    _check_target_scale(cfg, teacher, student)
    t_cost, s_cost = profile(teacher, teacher.preprocessing.input_size), profile(student, cfg.student.input_size)
    missing = find_problems(cfg)
    from distill.data.prepare import source_kind  # every kind registered

    data = {**source_kind(cfg).describe(cfg, bool(missing)),
            "leak_guard": cfg.data.leak_guard.policy or ("exclude" if eval_protocol_names(cfg) else "off")}
    return RunPlan(
        name=cfg.name, out=str(cfg.out),
        teacher={"name": teacher.name, "input_size": teacher.preprocessing.input_size, "alignment": template,
                 "embedding_dim": teacher.embedding_dim, "normalized": teacher.normalized,
                 "params": t_cost.params, "mult_adds": t_cost.mult_adds},
        student={"name": spec.name, **spec.kwargs, "params": s_cost.params, "mult_adds": s_cost.mult_adds},
        mult_adds_ratio=t_cost.mult_adds / max(1, s_cost.mult_adds), data=data,
        train={"teacher_mode": cfg.train.teacher_mode, "epochs": cfg.train.epochs,
               "max_minutes": cfg.train.max_minutes, "batch_size": cfg.train.batch_size,
               **({"resolution": f"{r.size}px for {r.fraction:.0%} of the {'time' if cfg.train.max_minutes else 'steps'}"
                   f" then {cfg.student.input_size}px"} if (r := cfg.train.resolution) else {}),
               "loss": cfg.train.loss.model_dump()},
        eval=eval_protocol_names(cfg), missing=missing,
        outputs={k: str(cfg.out / v) for k, v in (("student", STUDENT_FILE), ("report", "report.html"),
                                                   ("checkpoints", "checkpoints/"), ("config", "config.yaml"))})
