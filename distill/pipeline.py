"""The one module that wires a :class:`~distill.config.Config` into a run; it only wires.

config -> preflight (weights, data: fail fast, before heavy work) -> data (generate or scan,
identity-disjoint split, align once with a cache) -> teacher + student -> distillation (online or
cached teacher) -> evaluation of both on the same aligned faces -> report.json / .md / .html.
Each step lives in its own module; this one passes objects between them.

Example::

    from distill.config import load_config
    from distill import pipeline

    cfg = load_config("configs/quickstart.yaml", ["train.max_minutes=1"])
    print(pipeline.plan(cfg).format())
    summary = pipeline.run(cfg, overwrite=True)
    summary.report["html"]          # path of report.html
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from distill.config import Config, ConfigError, to_yaml
from distill.data.augment import build_augmentation, build_mix
from distill.data.prepare import TrainData, prepare_train, resolve_sources
from distill.data.protocols import EvalData, prepare_eval
from distill.data.views import FaceViews
from distill.embedder import ModuleEmbedder
from distill.evaluation import (DEFAULT_FARS, ModelResult, compare_runs, evaluate_pairs, extract_embeddings,
                                measure_cost, summary_table, write_reports)
from distill.evaluation.evaluate import evaluate_model, train_fidelity
from distill.io import atomic_write_json
from distill.data.leak_guard import Rows
from distill.leakcheck import annotate_split, guard_summary, guard_training_set, needs_guard_first
from distill.models import STUDENT_FILE, StudentSpec, display_name, load_embedder, onnx_cost, output_contract, \
    save_student, warm_start
from distill.plan import RunPlan, data_alignment, plan
from distill.preflight import preflight
from distill.preprocess import check_alignment, student_preprocessing
from distill.resolve import build_student, loss_from_config, student_spec_from_config, teacher_from_config
from distill.rundir import prepare_run_dir, record_provenance
from distill.train import OnlineTeacher, build_lookup_cache, build_teacher_cache, fit, init_from_env, seed_everything
from distill.train import ddp
from distill.train.schedule import resolution_applies
from distill.train.target_scale import fold_target_scale, target_scale_applies, target_scale_for

Log = Callable[[str], None]

__all__ = ["run", "distill_pair", "cache_teacher", "evaluate", "compare", "plan", "RunPlan", "RunSummary"]


@dataclass
class RunSummary:
    """What a run produced: its directory, the student file, training record, report paths and results."""

    run_dir: Path
    train: dict[str, Any]
    student: Path | None = None
    report: dict[str, Path] = field(default_factory=dict)
    results: list[ModelResult] = field(default_factory=list)
    rank: int = 0


def run(cfg: Config, *, resume: bool = False, overwrite: bool = False, log: Log = print) -> RunSummary:
    """The whole pipeline from a config: builds what it names, then :func:`distill_pair`.

    Under ``torchrun --nproc_per_node=N`` the same call trains with DistributedDataParallel;
    rank 0 alone writes the run directory, evaluates and reports.
    """
    preflight(cfg)
    teacher = teacher_from_config(cfg)
    spec = student_spec_from_config(cfg, teacher)
    seed_everything(cfg.seed)  # identical initial student on every rank
    return distill_pair(teacher, build_student(spec), cfg, spec=spec, resume=resume, overwrite=overwrite, log=log)


def _teacher_source(teacher: Any, views: FaceViews, train: TrainData, cfg: Config, log: Log) -> Any:
    if not getattr(teacher, "can_embed", True):  # precomputed embeddings of the clean faces
        if cfg.train.teacher_mode != "cached":
            raise ConfigError(f"teacher '{teacher.name}' only looks embeddings up by image key: "
                              f"set train.teacher_mode=cached")
        keys = train.rel_paths
        return build_lookup_cache(lambda idx: teacher.lookup([keys[i] for i in idx]), teacher.fingerprint(),
                                  teacher.embedding_dim, views, cfg.data.cache_dir / "teacher", log=log,
                                  dtype=cfg.train.cache_dtype)
    if cfg.train.teacher_mode == "cached":
        return build_teacher_cache(teacher, views, cfg.train.cache_views, cfg.data.cache_dir / "teacher",
                                   batch_size=cfg.teacher.batch_size, workers=cfg.data.workers, log=log,
                                   dtype=cfg.train.cache_dtype, per_rank=cfg.train.cache_shards == "per_rank")
    return OnlineTeacher(teacher)


def _views(train: TrainData, cfg: Config, clean: bool = False) -> FaceViews:
    """The training views: seeded augmentation (view 0 the clean face with ``clean`` or
    ``data.augment.clean_view0``), two-face mixes when the config asks for them, and each source's share of an
    epoch (``data.sources``)."""
    return FaceViews(train.faces, build_augmentation(cfg.data.augment), seed=cfg.seed,
                     clean_view0=clean or cfg.data.augment.clean_view0,
                     mix=build_mix(cfg.data.augment), groups=train.groups, shares=train.shares)


def _guarded(teacher: Any, train: TrainData, evald: EvalData, cfg: Config, run_dir: Path | None, resume: bool,
             log: Log) -> tuple[FaceViews, Any, dict[str, Any]]:
    """The training views and teacher source after the leak guard, and the data record (written to
    ``run_dir/data_record.json`` with every flagged file)."""
    views = _views(train, cfg, clean=not getattr(teacher, "can_embed", True))
    first = needs_guard_first(cfg, evald, views)  # views that mix faces: exclusions before views and cache
    guard = guard_training_set(cfg, teacher, train, evald, views,
                               None if first else _teacher_source(teacher, views, train, cfg, log),
                               run_dir, resume=resume, log=log)
    source = guard.source if guard.source is not None else _teacher_source(teacher, guard.views, train, cfg, log)
    record = {"train": annotate_split(train.record, guard.record), "eval": evald.record,
              "leak_guard": guard_summary(guard.record)}
    if run_dir is not None:
        atomic_write_json(run_dir / "data_record.json", {**record, "leak_guard": guard.record})
    return guard.views, source, record


def _curve_fn(evald: EvalData, embedder: ModuleEmbedder, cfg: Config) -> Callable[[nn.Module], dict[str, float]] | None:
    """Evaluation during training: accuracy on the first student protocol, TAR@1e-3 where it is estimable."""
    main = [p for p in evald.protocols if not p.teacher_only]
    if not cfg.train.eval_every or not main:
        return None
    used = np.unique(np.concatenate([np.r_[p.pairs.idx_a, p.pairs.idx_b] for p in main]))
    remap = np.full(len(evald.faces), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    faces = np.asarray(evald.faces[used])

    def eval_fn(model: nn.Module) -> dict[str, float]:
        embedder.module = model
        emb = extract_embeddings(embedder, faces, batch_size=cfg.eval.batch_size, progress=False)
        out: dict[str, float] = {}
        for p in main:
            pairs = type(p.pairs)(remap[p.pairs.idx_a], remap[p.pairs.idx_b], p.pairs.is_same, p.pairs.fold)
            res = evaluate_pairs(emb, pairs, embedder.normalized, fars=DEFAULT_FARS[1:2])
            if "accuracy" not in out and res.accuracy_mean is not None and res.n_genuine * 100 > res.n_pairs:
                out["accuracy"] = res.accuracy_mean
            if "tar@0.001" not in out and res.tar(1e-3) is not None:
                out["tar@0.001"] = res.tar(1e-3)
        return out
    return eval_fn


def distill_pair(teacher: Any, student: nn.Module, cfg: Config, *, spec: StudentSpec | None = None,
                 resume: bool = False, overwrite: bool = False, log: Log = print) -> RunSummary:
    """Distil ``teacher`` into ``student`` (any objects) on the data ``cfg`` describes; evaluate; report.

    The teacher follows :class:`teachers.Teacher` (or wrap any module/callable in
    :class:`teachers.CallableTeacher`); the student is any module mapping ``(B, 3, S, S)`` with
    ``S = cfg.student.input_size`` to ``(B, D)``. A student of a registered class (e.g.
    ``MobileNet(alpha=0.25, ...)``) is saved so that every command can load it.

    Example::

        cfg = load_config("configs/quickstart.yaml", ["out=runs/mine"])
        summary = distill_pair(my_teacher, my_student, cfg)
    """
    t_start = time.monotonic()
    env = init_from_env()
    run_dir, provenance, ready = Path(cfg.out), {}, None
    if env.is_main:  # other ranks wait, so a refused --out stops every rank with the same message
        try:
            run_dir = prepare_run_dir(cfg.out, resume=resume, overwrite=overwrite)
            provenance = record_provenance(run_dir, to_yaml(cfg))
        except Exception as e:  # noqa: BLE001 - re-raised below on every rank
            ready = e
    ready = ddp.broadcast_object(ready) if env.distributed else ready
    if isinstance(ready, Exception):
        raise ready
    if not env.is_main:
        log = lambda _msg: None  # noqa: E731 - rank 0 alone talks
    template = data_alignment(cfg, teacher.preprocessing.alignment)
    built_for = getattr(student, "input_size", cfg.student.input_size)
    if built_for != cfg.student.input_size:
        raise ConfigError(f"student.input_size is {cfg.student.input_size} but the student object was built for "
                          f"{built_for} px; set student.input_size={built_for} or build the student for "
                          f"{cfg.student.input_size} px")
    pre = student_preprocessing(cfg.student.input_size, template)
    if cfg.student.init is not None and not resume:
        warm_start(student, cfg.student.init, log)
    spec = spec or StudentSpec.of(student)
    name = display_name(spec, student, cfg.student.input_size)
    student_dim, normalized = output_contract(student, cfg.student.input_size)
    loss = loss_from_config(cfg.train.loss, student_dim=student_dim, teacher_dim=teacher.embedding_dim,
                            teacher_normalized=teacher.normalized)
    target_scale_applies(cfg.train.target_scale, student, loss)  # a contradiction fails here, before any data work
    resolution_applies(cfg.train.resolution, student, cfg.student.input_size)

    if not env.is_main:
        ddp.barrier()  # rank 0 generates/aligns first; the others then read its caches
    sources = resolve_sources(cfg, log)  # generate/download once for both sets
    train = prepare_train(cfg, template, log, run_dir=run_dir if env.is_main else None, sources=sources)
    evald = prepare_eval(cfg, template, log, sources=sources)
    if env.is_main:
        atomic_write_json(run_dir / "data_record.json", {"train": train.record, "eval": evald.record})
        ddp.barrier()

    views, source, data_record = _guarded(teacher, train, evald, cfg, run_dir if env.is_main else None, resume, log)
    scale = target_scale_for(cfg.train.target_scale, student, loss, source, views, seed=cfg.seed)
    if scale is not None:
        loss.set_target_scale(scale.shift, scale.scale)
        log(f"target scale: the student learns (teacher - mean) / {scale.scale:.4g}, folded back after training")
    embedder = ModuleEmbedder(student, pre, name=name, normalized=normalized)
    result = fit(student, pre, source, views, loss, cfg.train, run_dir, eval_fn=_curve_fn(evald, embedder, cfg),
                 resume=resume, log=log, seed=cfg.seed, workers=cfg.data.workers, config=cfg.model_dump(mode="json"))
    train_info = {"steps": result.steps, "epochs": result.epochs_completed, "seconds": round(result.seconds, 1),
                  "samples_per_s": round(result.samples_per_s, 1), "stopped": result.stopped,
                  "final_loss": result.final_loss, "nonfinite_skipped": result.nonfinite_skipped,
                  "target_scale": None if scale is None else scale.to_dict(), "ema": cfg.train.ema}
    log(f"training {result.stopped}: {result.steps} steps, {result.epochs_completed} epochs in "
        f"{result.seconds / 60:.1f} min ({result.samples_per_s:.0f} samples/s)")
    if not env.is_main:
        return RunSummary(run_dir, train_info, rank=env.rank)
    trained = result.model if result.model is not None else student
    if scale is not None:  # back to the teacher's units: what is saved, evaluated and exported
        fold_target_scale(trained, scale)
    student_path = save_student(run_dir / STUDENT_FILE, trained, spec, pre, teacher, loss, extra={"train": train_info})

    results, t_emb = [], None
    if getattr(teacher, "can_embed", True):
        teacher.precision = "fp32"  # reported numbers come from the teacher in full precision
        t_res, t_emb = _evaluate(teacher.name, "teacher", teacher, measure_cost(teacher, teacher.preprocessing.input_size,
                                 latency=cfg.eval.latency), evald, cfg)
        results.append(t_res)
    head = loss.export_head()
    trained_emb = ModuleEmbedder(trained, pre, name=name, normalized=normalized)
    # the faces it trained on: not those the leak guard left out (evaluation people's photos)
    fid_train = train_fidelity(trained_emb, teacher, Rows(train.faces, views.indices),
                               sample=cfg.eval.train_fidelity_sample,
                               seed=cfg.seed, project=_projector(head), batch_size=cfg.eval.batch_size)
    s_res, _ = _evaluate(name, "student", trained_emb,
                         measure_cost(trained, cfg.student.input_size, latency=cfg.eval.latency), evald, cfg,
                         teacher_emb=t_emb, teacher_name=teacher.name, project=_projector(head),
                         extra={"train": train_info, "curve": result.evals, "fidelity_train": fid_train})
    results.append(s_res)
    report = write_reports(run_dir, results, cfg.model_dump(mode="json"),
                           {"train": train_info, "data": data_record,
                            "provenance": provenance, "wall_minutes": round((time.monotonic() - t_start) / 60, 2)})
    log(summary_table(results, report["html"]))
    return RunSummary(run_dir, train_info, student_path, report, results)


def _evaluate(name: str, role: str, embedder: Any, cost: Any, evald: EvalData, cfg: Config,
              **kw: Any) -> tuple[ModelResult, np.ndarray]:
    return evaluate_model(name, role, embedder, evald, cfg.eval, cost=cost, cache_dir=cfg.data.cache_dir / "embeddings",
                          seed=cfg.seed, **kw)


def _projector(head: nn.Module | None) -> Callable[[np.ndarray], np.ndarray] | None:
    """The trained student->teacher projection as a numpy function (fidelity in the teacher's space)."""
    if head is None:
        return None

    def project(emb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(np.ascontiguousarray(emb))).numpy()
    return project


def cache_teacher(cfg: Config, log: Log = print) -> Any:
    """``distill cache-teacher``: build (or validate and reuse) the cached teacher embeddings."""
    preflight(cfg)
    teacher = teacher_from_config(cfg)
    template = data_alignment(cfg, teacher.preprocessing.alignment)
    train = prepare_train(cfg, template, log)
    views = _views(train, cfg)
    cache = build_teacher_cache(teacher, views, cfg.train.cache_views, cfg.data.cache_dir / "teacher",
                                batch_size=cfg.teacher.batch_size, workers=cfg.data.workers, log=log,
                                dtype=cfg.train.cache_dtype, per_rank=cfg.train.cache_shards == "per_rank")
    log(f"teacher cache ready: {len(views)} images x {cfg.train.cache_views} views x {teacher.embedding_dim}-D")
    return cache


def evaluate(cfg: Config, *, checkpoints: list[Path], include_teacher: bool = True, overwrite: bool = False,
             log: Log = print) -> RunSummary:
    """``distill eval``: the teacher and saved students (student.pt, .onnx, TorchScript) on the config's data.

    Exported files are measured as deployed (onnxruntime: its own latency).
    """
    if not checkpoints and not include_teacher:
        raise ConfigError("nothing to evaluate: give --checkpoint FILE and/or drop --no-teacher")
    models = [load_embedder(Path(c)) for c in checkpoints]  # a bad file fails before any data work
    preflight(cfg)
    out = prepare_run_dir(cfg.out, resume=False, overwrite=overwrite)
    teacher = teacher_from_config(cfg)
    template = data_alignment(cfg, teacher.preprocessing.alignment)
    for path, embedder in zip(checkpoints, models):
        check_alignment(template, embedder.preprocessing, f"student {path}")
    evald = prepare_eval(cfg, template, log)
    teacher.precision = "fp32"
    t_cost = measure_cost(teacher, teacher.preprocessing.input_size, latency=cfg.eval.latency)
    t_res, t_emb = _evaluate(teacher.name, "teacher", teacher, t_cost, evald, cfg)
    results = [t_res] if include_teacher else []
    for path, embedder in zip(checkpoints, models):
        size = embedder.preprocessing.input_size
        cost = onnx_cost(path, latency=cfg.eval.latency) if getattr(embedder, "path", None) is not None \
            and Path(path).suffix.lower() == ".onnx" else measure_cost(embedder.module, size, latency=cfg.eval.latency)
        # the file's folder too: several runs' student.pt files must stay apart in one report
        label = Path(Path(path).parent.name) / Path(path).name
        res, _ = _evaluate(f"{embedder.name} ({label.as_posix()})", "student", embedder, cost, evald, cfg,
                           teacher_emb=t_emb, teacher_name=teacher.name)
        results.append(res)
    paths = write_reports(out, results, cfg.model_dump(mode="json"), {"data": {"eval": evald.record}})
    log(summary_table(results, paths["html"]))
    return RunSummary(out, {}, None, paths, results)


def compare(run_dirs: list[Path], out: Path, log: Log = print) -> dict[str, Path]:
    """``distill report``: one comparison page over finished runs."""
    paths = compare_runs(run_dirs, out)
    log(f"comparison of {len(run_dirs)} runs: {paths.get('html')}")
    return paths
