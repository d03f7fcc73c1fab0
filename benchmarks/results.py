"""``python -m benchmarks.results`` (``make results``): the LFW quality study, RESULTS.md and results/.

Usage::

    .venv/bin/python -m benchmarks.results                  # everything; finished runs are skipped
    .venv/bin/python -m benchmarks.results --report-only    # rewrite RESULTS.md from what is finished
    .venv/bin/python -m benchmarks.results --dry-run        # print the plan (commands) and stop

The plan is ``configs/studies/lfw.yaml``: the flagship run, the width x resolution sweep and the
ablations, each a ``distill run`` of the flagship config with ``--set`` overrides into
``runs/results/<name>`` (a finished run is skipped, an interrupted one resumes). Then one
``distill eval`` measures the teacher and every finished student on the same pairs and the same
quiet machine, and this module writes ``RESULTS.md``, ``results/<name>.json``,
``results/accuracy_vs_mult_adds.png`` and ``results/flagship_student.pt``.
"""
from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from distill.config import load_config
from distill.evaluation.results import ModelResult, jsonable, load_report
from distill.hardware import resolve_precision
from distill.io import atomic_write, atomic_write_bytes, atomic_write_json, atomic_write_text

PLAN = Path("configs/studies/lfw.yaml")
RUNS = Path("runs/results")
OUT = Path("results")
FLAGSHIP_CKPT = OUT / "flagship_student.pt"
PAGE = Path("RESULTS.md")
MAX_CHECKPOINT_BYTES = 5 * 1024 * 1024
MAIN_PROTOCOL, ALL_PAIRS, VIEW2 = "DevTest", "DevTest-all-pairs", "View2"
TARGET_FAR = "0.001"


# --------------------------------------------------------------------------- the plan
class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SweepStudent(_Strict):
    name: str
    input_size: int = Field(ge=32)


class Sweep(_Strict):
    set: dict[str, Any] = Field(default_factory=dict)
    students: list[SweepStudent] = Field(default_factory=list)


class Levers(_Strict):
    """Recipe arms at equal wall time: ``set`` for every arm, ``baseline`` overrides, one arm per variant."""

    set: dict[str, Any] = Field(default_factory=dict)
    baseline: dict[str, Any] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)


class FaceNetPairing(_Strict):
    """The paper's pairing: students of the FaceNet config, evaluated with the FaceNet teacher."""

    config: Path
    set: dict[str, Any] = Field(default_factory=dict)
    students: list[SweepStudent] = Field(default_factory=list)


class Study(_Strict):
    flagship: Path
    jobs: int = Field(1, ge=1, description="sweep/lever runs trained at once, the cores split between them")
    levers: Optional[Levers] = None
    sweep: Sweep = Field(default_factory=Sweep)
    facenet: Optional[FaceNetPairing] = None
    orl: Optional[Path] = Field(None, description="an identity-folder set the flagship is also evaluated on")


@dataclass(frozen=True)
class Run:
    """One ``distill run`` of the study: its name (= folder under runs/results), group and overrides."""

    name: str
    group: str  # "flagship" | "lever" | "sweep" | "facenet"
    config: Path
    overrides: tuple[str, ...]

    @property
    def dir(self) -> Path:
        return RUNS / self.name

    def command(self, mode: str = "show") -> list[str]:
        """The ``distill run`` command line; mode "resume" or "fresh" (replaces a stale folder) or "show"."""
        sets = [a for o in self.overrides for a in ("--set", o)]
        tail = {"resume": ["--resume"], "fresh": ["--overwrite"] if self.dir.exists() else [], "show": []}[mode]
        return ["distill", "run", str(self.config), *sets, "--out", str(self.dir), *tail]

    @property
    def finished(self) -> bool:
        return (self.dir / "student.pt").exists() and (self.dir / "report.json").exists()


def _sets(d: dict[str, Any]) -> tuple[str, ...]:
    """``{"train.lr": 0.001}`` -> ``("train.lr=0.001",)``, values written as YAML reads them back."""
    return tuple(f"{k}={json.dumps(v) if isinstance(v, (dict, list, bool)) or v is None else v}" for k, v in d.items())


def orl_folder(path: Path = PLAN) -> Path | None:
    """The extra evaluation set of the plan (ORL), resolved from the plan's folder."""
    study = _load_study(path)[0]
    return None if study.orl is None else Path(os.path.normpath(path.parent / study.orl))


def load_plan(path: Path = PLAN) -> list[Run]:
    """The study's runs, in order; every run's config is validated first (a typo fails here, not an hour in)."""
    return _load_study(path)[1]


def _load_study(path: Path) -> tuple[Study, list[Run]]:
    try:
        study = Study.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"cannot read the study plan {path}: {e}") from None
    except ValidationError as e:
        raise SystemExit(f"{path}: {e}") from None
    base = Path(os.path.normpath(path.parent / study.flagship))
    runs = [Run("flagship", "flagship", base, ())]
    for s in study.sweep.students:
        alpha = s.name.rsplit("_", 1)[-1]
        runs.append(Run(f"sweep_{alpha}_{s.input_size}", "sweep", base,
                        _sets(study.sweep.set) + (f"student.name={s.name}", f"student.input_size={s.input_size}")))
    if study.levers is not None:
        common = _sets(study.levers.set) + _sets(study.levers.baseline)
        runs.append(Run("lever_baseline", "lever", base, common))
        runs += [Run(f"lever_{k}", "lever", base, _sets(study.levers.set) + _sets({**study.levers.baseline, **v}))
                 for k, v in study.levers.variants.items()]
    if study.facenet is not None:
        fbase = Path(os.path.normpath(path.parent / study.facenet.config))
        for s in study.facenet.students:
            alpha = s.name.rsplit("_", 1)[-1]
            runs.append(Run(f"facenet_{alpha}_{s.input_size}", "facenet", fbase, _sets(study.facenet.set) + (
                f"student.name={s.name}", f"student.input_size={s.input_size}")))
    for r in runs:
        try:
            load_config(r.config, list(r.overrides))
        except Exception as e:  # noqa: BLE001 - config errors carry the key and the fix
            raise SystemExit(f"{path}, run {r.name}: {e}") from None
    return study, runs


# --------------------------------------------------------------------------- running
def _distill(args: list[str], log_path: Path, *, threads: int | None = None, echo: bool = True) -> None:
    """Run ``distill ...`` in a subprocess (one run's memory is freed before the next), logging its output."""
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    rc = run_logged([sys.executable, "-m", "distill.cli", *args[1:]], log_path, env=env, echo=echo,
                    title=shlex.join(args) + (f", OMP_NUM_THREADS={threads}" if threads else ""))
    if rc != 0:
        raise SystemExit(f"`{shlex.join(args)}` failed (exit {rc}); its output is in {log_path}. "
                         "Fix the cause and run `make results` again: finished runs are kept.")


def run_logged(cmd: list[str], log_path: Path, *, env: dict[str, str] | None = None, echo: bool = True,
               title: str = "") -> int:
    """Run ``cmd``, appending its output (stdout and stderr) to ``log_path`` line by line as it comes, so
    ``tail -f`` shows progress while it runs; returns the exit code."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {**(env or os.environ), "PYTHONUNBUFFERED": "1"}  # the child's prints reach the pipe at once
    with open(log_path, "a", buffering=1) as log:  # line-buffered: each line is in the file when written
        log.write(f"\n$ {title or shlex.join(cmd)}  # {dt.datetime.now().isoformat(timespec='seconds')}\n")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1, env=env)
        assert proc.stdout is not None
        for line in proc.stdout:
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
            log.write(line)
        return proc.wait()


def cache_command(run: Run) -> list[str]:
    """``distill cache-teacher`` of a run's config: its teacher cache, built before (and outside) training."""
    return ["distill", "cache-teacher", str(run.config), *[a for o in run.overrides for a in ("--set", o)]]


def build_caches(runs: Sequence[Run]) -> None:
    """Build the teacher caches the cached-mode runs need, one after another on every core, and log the time:
    runs trained in parallel must not build the same cache at once, and cache time is not training time."""
    seen: set[str] = set()
    for r in runs:
        cfg = load_config(r.config, list(r.overrides))
        if cfg.train.teacher_mode != "cached":
            continue
        key = json.dumps([str(r.config), cfg.train.cache_views, cfg.data.augment.model_dump()], sort_keys=True)
        if key in seen:
            continue
        seen.add(key)
        t0 = time.monotonic()
        _distill(cache_command(r), RUNS / "logs" / "caches.log", echo=False)
        print(f"teacher cache for {r.name} (K={cfg.train.cache_views}) ready in {(time.monotonic() - t0) / 60:.1f} min "
              f"(built once, outside the training budget; {RUNS / 'logs' / 'caches.log'})", flush=True)


def train_all(runs: Sequence[Run], jobs: int = 1) -> None:
    """Train the unfinished runs; ``jobs`` > 1 runs that many at once, the cores split between them."""
    todo = []
    for i, r in enumerate(runs, 1):
        if r.finished:
            print(f"[{i}/{len(runs)}] {r.name}: finished earlier, kept ({r.dir})", flush=True)
        else:
            todo.append(r)
    build_caches(todo)

    def one(r: Run) -> None:
        resume = (r.dir / "checkpoints").is_dir() and any((r.dir / "checkpoints").iterdir())
        log = RUNS / "logs" / f"{r.name}.log"
        print(f"{dt.datetime.now():%H:%M:%S} {r.name}: {'resuming' if resume else 'training'}"
              + (f" (progress: tail -f {log})" if jobs > 1 else ""), flush=True)
        _distill(r.command("resume" if resume else "fresh"), log,
                 threads=max(1, _cores() // jobs) if jobs > 1 else None, echo=jobs == 1)
        print(f"{dt.datetime.now():%H:%M:%S} {r.name}: done", flush=True)

    if jobs == 1:
        for r in todo:
            one(r)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(jobs) as pool:
        for f in [pool.submit(one, r) for r in todo]:
            f.result()


@dataclass(frozen=True)
class Entry:
    """One evaluated student file: a run's student.pt, or the flagship's deployed ONNX exports."""

    name: str
    group: str  # a run's group, or "deploy"
    path: Path
    run: Run


def eval_entries(runs: Sequence[Run], *, facenet: bool = False) -> list[Entry]:
    """The student files one evaluation measures: the dlib teacher's (default) or the FaceNet pairing's."""
    out = [Entry(r.name, r.group, r.dir / "student.pt", r) for r in runs
           if r.finished and (r.group == "facenet") == facenet]
    flag = next((r for r in runs if r.group == "flagship" and r.finished), None)
    if flag is not None and not facenet:
        out += [Entry(f"flagship_{kind}", "deploy", flag.dir / f, flag)
                for kind, f in (("onnx_fp32", "student.onnx"), ("onnx_int8", "student.int8.onnx"))
                if (flag.dir / f).exists()]
    return out


def export_command(flag: Run) -> list[str]:
    """fp32 ONNX + int8 (the recommended recipe, calibrated on the run's training images), evaluated like any
    student; the export's own int8 check (DevTest, every pair of its people, cosine to fp32) is recorded
    beside the file, and a miss is shown in RESULTS.md rather than stopping the study."""
    return ["distill", "export", str(flag.dir / "student.pt"), "-o", str(flag.dir / "student.onnx"), "--int8",
            "--allow-accuracy-loss", "--no-latency"]


def export_flagship(runs: Sequence[Run]) -> None:
    flag = next((r for r in runs if r.group == "flagship" and r.finished), None)
    if flag is None or (flag.dir / "student.int8.onnx").exists():
        return
    print("exporting the flagship to ONNX fp32 and int8", flush=True)
    _distill(export_command(flag), RUNS / "logs" / "export.log")


#: the evaluations of the study: name -> (report folder under RUNS, what it measures)
EVALS = {"eval": "the dlib teacher and its students on LFW", "eval_orl": "the teacher and the flagship on ORL",
         "eval_facenet": "the FaceNet teacher and its students on LFW"}


#: the row groups each evaluation writes, in the order its students are passed (teacher first)
EVAL_GROUPS = {"eval": ("teacher", "flagship", "sweep", "lever", "deploy"), "eval_orl": ("orl",),
               "eval_facenet": ("facenet_teacher", "facenet")}


def eval_command(runs: Sequence[Run], which: str = "eval", orl: Path | None = None,
                 files: Sequence[str] | None = None) -> list[str]:
    """The ``distill eval`` command of one of :data:`EVALS`: of the finished runs' students, or of ``files``."""
    if which == "eval_facenet":
        entries, config = eval_entries(runs, facenet=True), next(r.config for r in runs if r.group == "facenet")
        extra: list[str] = []
    elif which == "eval_orl":
        entries = [e for e in eval_entries(runs) if e.group == "flagship"]
        config = runs[0].config
        extra = ["--set", "data.exclude_identities_in=[]", "--set", f"data.root={orl}", "--set",
                 f"eval.pairs=[{orl}]", "--set", "eval.latency=false"]
    else:
        entries, config, extra = eval_entries(runs), runs[0].config, []
    ckpts = [a for f in (files if files is not None else [str(e.path) for e in entries]) for a in ("--checkpoint", f)]
    return ["distill", "eval", str(config), *ckpts, *extra, "--out", str(RUNS / which), "--overwrite"]


def _evaluations(runs: Sequence[Run], orl: Path | None) -> dict[str, list[Entry]]:
    """Which evaluations there is something to run for, and the entries each measures (teacher first)."""
    out = {"eval": eval_entries(runs)}
    if orl is not None and any(e.group == "flagship" for e in out["eval"]):
        out["eval_orl"] = [e for e in out["eval"] if e.group == "flagship"]
    if any(r.group == "facenet" for r in runs):
        out["eval_facenet"] = eval_entries(runs, facenet=True)
    return out


def evaluate_all(runs: Sequence[Run], orl: Path | None = None) -> None:
    """Each evaluation of :data:`EVALS` once: the teacher and its finished students (same pairs, same machine)."""
    for which, entries in _evaluations(runs, orl).items():
        report = RUNS / which / "report.json"
        # a teacher alone is measured once: with no student to add, the committed rows stand
        if not entries and (which != "eval" or (OUT / "teacher.json").exists()):
            continue
        if report.exists() and _eval_covers(report, entries):
            print(f"{which}: {report} is newer than every student, kept", flush=True)
            continue
        print(f"{which}: {EVALS[which]} ({len(entries)} students)", flush=True)
        _distill(eval_command(runs, which, orl), RUNS / "logs" / f"{which}.log")


def _eval_covers(report: Path, entries: Sequence[Entry]) -> bool:
    doc = load_report(report)
    return len(doc.models) == len(entries) + 1 and all(
        e.path.stat().st_mtime <= report.stat().st_mtime for e in entries)


# --------------------------------------------------------------------------- rows
def _tar(proto: dict, far: str = TARGET_FAR) -> float | None:
    return (proto.get("tar_at_far") or {}).get(far)


def model_row(model: ModelResult, entry: Entry | None) -> dict[str, Any]:
    """The numbers RESULTS.md shows for one model, from the evaluation report (and its run's training record)."""
    dev, allp, v2 = (model.protocols.get(n) for n in (MAIN_PROTOCOL, ALL_PAIRS, VIEW2))
    run = entry.run if entry else None
    c = model.cost
    row: dict[str, Any] = {
        "name": entry.name if entry else "teacher", "model": model.name, "role": model.role,
        "group": entry.group if entry else "teacher", "file": str(entry.path) if entry else None,
        "input_size": c.input_size, "params": c.params, "mult_adds": c.mult_adds,
        "images_per_s": c.images_per_s, "images_per_s_bf16": c.images_per_s_bf16, "file_bytes": c.file_bytes,
        "devtest": {} if dev is None else jsonable(
            {k: getattr(dev, k) for k in ("accuracy_mean", "accuracy_std", "auc", "eer", "n_pairs", "tar_at_far")}),
        "all_pairs": {} if allp is None else jsonable(
            {k: getattr(allp, k) for k in ("tar_at_far", "n_genuine", "n_impostor", "auc", "eer")}),
        "fidelity_mean": None if model.fidelity is None else model.fidelity.mean,
        "protocols": {n: jsonable({k: getattr(v, k) for k in ("accuracy_mean", "accuracy_std", "auc", "eer",
                                                             "tar_at_far", "n_genuine", "n_impostor", "reason")})
                      for n, v in model.protocols.items()},
    }
    if v2 is not None:
        row["view2"] = {k: getattr(v2, k) for k in ("accuracy_mean", "accuracy_std", "n_pairs")}
    if entry is not None and entry.group == "deploy" and entry.path.name.endswith(".int8.onnx"):
        record = entry.path.with_name("student.onnx.export.json")  # the export's own int8 check
        if record.exists():
            row["int8_check"] = json.loads(record.read_text()).get("accuracy")
    if run is not None:
        rep = load_report(run.dir)
        train_cfg = rep.config.get("train") or {}
        row["train"] = rep.extra.get("train")
        row["budget_minutes"] = train_cfg.get("max_minutes")
        row["loss"] = train_cfg.get("loss")
        row["teacher_mode"] = train_cfg.get("teacher_mode")
        row["command"] = shlex.join(run.command())
        row["curve"] = read_curve(run.dir / "eval.csv")
    return row


def read_curve(path: Path) -> list[dict[str, float]]:
    """A run's evaluations during training (``eval.csv``): minutes, step, accuracy, TAR@1e-3."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in r.items() if v not in ("", None)} for r in csv.DictReader(f)]


def collect(runs: Sequence[Run], orl: Path | None = None) -> list[dict[str, Any]]:
    """Rows of every evaluation: the dlib teacher first, its students, then ORL and FaceNet rows (group-tagged).

    Rows come from the evaluation reports under ``RUNS``; a row that no report on this machine holds (its run
    folder is gone: ``RUNS`` is not committed) is kept from ``OUT/<name>.json`` and marked ``kept``, so
    re-running part of the study never drops the rest of it from RESULTS.md."""
    rows = _fresh_rows(runs, orl)
    fresh = {r["name"] for r in rows}
    rows += [r | {"kept": True} for r in committed_rows(runs) if r["name"] not in fresh]
    rows.sort(key=_row_order(runs))
    if not rows or rows[0]["group"] != "teacher":
        raise SystemExit(f"no evaluation yet ({RUNS / 'eval' / 'report.json'}, {OUT / 'teacher.json'}); "
                         "run `make results` (or without --report-only)")
    return rows


def committed_rows(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """The rows in ``OUT/*.json`` that still belong to the plan (a teacher, a run, its ORL or deployed row)."""
    names = {r.name for r in runs}
    out = []
    for p in sorted(OUT.glob("*.json")):
        row = json.loads(p.read_text())
        if isinstance(row, dict) and row.get("group") and _base_name(row) in names | {"teacher"}:
            out.append(row)
    return out


def _base_name(row: dict[str, Any]) -> str:
    """The plan run a row belongs to ("teacher" for the teachers): orl_X -> X, flagship_onnx_* -> flagship."""
    if row["group"] in ("teacher", "facenet_teacher") or row["name"] == "orl_teacher":
        return "teacher"
    if row["group"] == "deploy":
        return "flagship"
    return row["name"].removeprefix("orl_")


def _row_order(runs: Sequence[Run]):
    """Sort key: evaluation groups in :data:`EVAL_GROUPS` order, teacher first, then plan order, then name."""
    groups = [g for gs in EVAL_GROUPS.values() for g in gs]
    plan = {r.name: i for i, r in enumerate(runs)}
    return lambda r: (groups.index(r["group"]), _base_name(r) != "teacher", plan.get(_base_name(r), -1), r["name"])


def _fresh_rows(runs: Sequence[Run], orl: Path | None) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for which, entries in _evaluations(runs, orl).items():
        report = RUNS / which / "report.json"
        if not report.exists():
            continue
        models = load_report(report).models
        if len(models) != len(entries) + 1:
            raise SystemExit(f"{report} holds {len(models) - 1} students but there are {len(entries)} to show; "
                             "run `make results` again to re-evaluate")
        tag = {"eval": "", "eval_orl": "orl_", "eval_facenet": ""}[which]
        measured = {"measured": dt.date.fromtimestamp(report.stat().st_mtime).isoformat()}
        teacher = model_row(models[0], None) | measured | (
            {"name": f"{tag}teacher" if tag else "teacher"} if which != "eval_facenet"
            else {"name": "facenet_teacher", "group": "facenet_teacher"})
        if which == "eval_orl":
            teacher["group"] = "orl"
        rows.append(teacher)
        for m, e in zip(models[1:], entries):
            row = model_row(m, e) | measured
            if which == "eval_orl":
                row.update(name=f"orl_{e.name}", group="orl")
            rows.append(row)
    return rows


# --------------------------------------------------------------------------- writing
def _pct(x: Any, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def _m(x: Any) -> str:
    return "" if x is None else f"{x / 1e6:.1f}M" if x >= 1e5 else f"{x / 1e3:.0f}k"


def _budget(r: dict[str, Any]) -> str:
    return f"{r.get('budget_minutes'):g} min" if r.get("budget_minutes") else "no time limit"


def _row_md(r: dict[str, Any]) -> str:
    d, tr = r["devtest"], r.get("train") or {}
    alpha = {"100": "1.0", "075": "0.75", "050": "0.5", "025": "0.25"}.get(r["model"].split("-")[0][-3:], "")
    label = f"**{r['name']}**" if r["group"] == "flagship" else r["name"]
    budget = "" if r["role"] == "teacher" else f"{tr.get('seconds', 0) / 60:.0f} min, {tr.get('steps', '')} steps"
    return "| " + " | ".join([
        label, r["model"].split(" (")[0], alpha, str(r["input_size"]), budget,
        f"{_pct(d['accuracy_mean'])} ± {_pct(d['accuracy_std'])}", f"{d['auc']:.4f}" if d["auc"] else "",
        _pct(d["eer"]), _pct(_tar(r["all_pairs"]), 1),
        "" if r["fidelity_mean"] is None else f"{r['fidelity_mean']:.3f}",
        _m(r["params"]), _m(r["mult_adds"]),
        "" if r["images_per_s"] is None else f"{r['images_per_s']:.0f}",
        "" if r.get("images_per_s_bf16") is None else f"{r['images_per_s_bf16']:.0f}"]) + " |"


TABLE_HEAD = ("| run | model | alpha | input | trained | DevTest acc % | AUC | EER % | TAR@FAR=1e-3 % (all pairs) "
              "| cos to teacher | params | mult-adds | img/s fp32 | img/s bf16 |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    from distill.evaluation.report import tradeoff_figure

    points = [{"name": r["name"].replace("sweep_", ""), "role": r["role"], "mult_adds": r["mult_adds"],
               "accuracy": r["devtest"]["accuracy_mean"], "std": r["devtest"]["accuracy_std"],
               "run": "" if r["role"] == "teacher" else f"{r['group']} ({_budget(r)})"}
              for r in rows if r["group"] in ("teacher", "flagship", "sweep")]
    png = tradeoff_figure(points, "LFW pairsDevTest: accuracy vs mult-adds (identity-disjoint)")
    if png:
        atomic_write_bytes(path, base64.b64decode(png))


def targets(teacher: dict, flag: dict) -> list[str]:
    acc_ratio = flag["devtest"]["accuracy_mean"] / teacher["devtest"]["accuracy_mean"]
    t_tar, s_tar = _tar(teacher["all_pairs"]), _tar(flag["all_pairs"])
    tar_ratio = None if not (t_tar and s_tar is not None) else s_tar / t_tar
    ma_ratio = flag["mult_adds"] / teacher["mult_adds"]
    v2 = (teacher.get("view2") or {}).get("accuracy_mean")

    def mark(ok: bool) -> str:
        return "met" if ok else "**missed**"

    lines = [
        f"- Teacher View 2 10-fold accuracy: {_pct(v2)}% (target >= 98.5%: {mark(v2 is not None and v2 >= 0.985)}; "
        "dlib publishes 99.38% with its own alignment of the original LFW).",
        f"- Flagship mult-adds: {ma_ratio:.3f} of the teacher's = 1/{1 / ma_ratio:.1f} "
        f"(target <= 1/5: {mark(ma_ratio <= 0.2)}).",
        f"- Flagship DevTest accuracy: {acc_ratio:.1%} of the teacher's (target >= 98%: {mark(acc_ratio >= 0.98)}"
        + ("" if acc_ratio >= 0.98 else f", short by {100 * (0.98 - acc_ratio):.1f} points of the ratio") + ").",
    ]
    if tar_ratio is None:
        lines.append("- Flagship TAR@FAR=1e-3 (all DevTest pairs): not estimable.")
    else:
        lines.append(f"- Flagship TAR@FAR=1e-3 (all pairs of DevTest people): {_pct(s_tar, 1)}% vs the teacher's "
                     f"{_pct(t_tar, 1)}% = {tar_ratio:.1%} of it (target >= 90%: {mark(tar_ratio >= 0.9)}"
                     + ("" if tar_ratio >= 0.9 else f", short by {100 * (0.9 - tar_ratio):.1f} points") + ").")
    return lines


def render(rows: list[dict[str, Any]], runs: Sequence[Run], notes: str, jobs: int = 1,
           orl: Path | None = None) -> str:
    teacher = rows[0]
    flag = next((r for r in rows if r["group"] == "flagship"), None)
    by_group = lambda g: [r for r in rows if r["group"] == g]  # noqa: E731
    allp = teacher["all_pairs"]
    out = [
        "# RESULTS: the dlib face ResNet distilled into MobileNets on LFW",
        "",
        f"Regenerate everything with `make results` (plan: `{PLAN}`; runs in `{RUNS}/`, resumable). "
        f"Rewritten {dt.date.today().isoformat()} on {platform.machine()} with {_cores()} CPU cores, no GPU. "
        "The tables come from the evaluation commands at the end of this page "
        f"(`{RUNS}/eval*/report.json`) and each run's `report.json` (curves: its `eval.csv`); the notes name "
        f"their own sources. `{RUNS}/` is not committed: `{OUT}/*.json` keeps each row's numbers and command.",
        "",
        *_kept_lines(rows),
        "## Protocol",
        "- Data: LFW deep-funneled (`../shared/data/lfw`), every face aligned the dlib way (5 landmarks, "
        "150 px chip); the student sees the same chip resized to its input size.",
        "- Training: the 10,492 images of the 4,786 people who are not in `pairsDevTest.txt`; no labels "
        f"(the teacher's 128-D descriptor is the target), {_flagship_views(runs)}.",
        "- Test: `pairsDevTest.txt` (500 + 500 pairs), accuracy by 10-fold cross-validation of the threshold, "
        "ROC AUC, EER; TAR at FAR=1e-3 on **all pairs of the DevTest people's images** "
        f"({allp.get('n_genuine'):,} genuine, {allp.get('n_impostor'):,} impostor): View 2 restricted to DevTest "
        "people has only 78 impostor pairs, too few for FAR=1e-3, so this is the nearest estimable protocol. "
        "The teacher is measured on exactly the same pairs and chips.",
        "- Speed: images/s at batch 32 on this CPU (torch, 2 threads; fp32 and bf16 autocast), "
        "measured for every model in the one evaluation run. They are lower and noisier than `make bench`'s "
        "isolated measurements on the same machine (a 2-core VM): compare within a column, and see "
        "BENCHMARKS.md for speed.",
        "",
    ]
    if flag:
        out += ["## Headline", "", *targets(teacher, flag), ""]
    out += ["## Teacher and students", "", TABLE_HEAD, _row_md(teacher)]
    out += [_row_md(r) for r in by_group("flagship") + by_group("sweep")]
    shown = {_base_name(r) for r in rows}
    missing = [r.name for r in runs if r.name not in shown]
    sweep = by_group("sweep")
    out += ["", "`trained`: wall time of training (the teacher cache is built once, before) and optimiser steps "
            "(batch 64). The flagship trained alone on every core"
            + (f"; each sweep row had {_budget(sweep[0])} with the cores split between {jobs} runs at once, "
               "so wider and larger students see fewer epochs" if sweep else "") + "."]
    if missing:
        out += ["", f"Not run yet: {', '.join(missing)}."]
    out += ["", f"![accuracy vs mult-adds]({OUT}/accuracy_vs_mult_adds.png)", ""]
    deploy = by_group("deploy")
    if deploy and flag:
        out += ["## The flagship deployed (onnxruntime)", "",
                "| file | DevTest acc % | TAR@1e-3 % (all pairs) | cos to teacher | img/s (b32) | size |",
                "|---|---|---|---|---|---|"]
        for r in [flag] + deploy:
            out.append(f"| {Path(r['file']).name} | {_pct(r['devtest']['accuracy_mean'])} ± "
                       f"{_pct(r['devtest']['accuracy_std'])} | {_pct(_tar(r['all_pairs']), 1)} | "
                       f"{r['fidelity_mean']:.3f} | {r['images_per_s'] or 0:.0f} | "
                       f"{(r.get('file_bytes') or 0) / 2**20:.1f} MiB |")
        flag_run = next(x for x in runs if x.group == "flagship")
        int8 = next((r for r in deploy if r.get("int8_check")), None)
        out += ["", f"Exported with `{shlex.join(export_command(flag_run))}` (int8: the recommended recipe of "
                "docs/int8.md, calibrated on training images)." + (_int8_check_line(int8["int8_check"]) if int8
                                                                   else ""), ""]
    out += levers_section(by_group("lever"), runs, jobs)
    out += orl_section(by_group("orl"))
    out += facenet_section([r for r in rows if r["group"] in ("facenet_teacher", "facenet")], runs)
    out += [notes.strip(), "", "## Commands", "", "Training (each run; `--resume` continues an interrupted one):",
            "```"] + [shlex.join(r.command()) for r in runs] + [
        "```", "", "Export of the flagship (the deployed rows; `make results` runs it before the evaluations):",
        "```", *([shlex.join(export_command(f)) for f in runs if f.group == "flagship"]), "```", "",
        "Evaluations (the numbers above; each measures a teacher and its students on the same pairs):",
        "```", *[shlex.join(eval_command(runs, w, orl, files=[r["file"] for r in rows if r["group"] in groups
                                                               and r["role"] != "teacher"]))
                 for w, groups in EVAL_GROUPS.items() if w != "eval_orl" or orl is not None], "```", "",
        "Re-evaluate the committed flagship checkpoint alone (a few minutes; prints the same DevTest and "
        "all-pairs numbers):", "```", REEVAL, "```", ""]
    return "\n".join(out)


def _kept_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Which rows were kept from an earlier run of the study (see :func:`collect`), as one paragraph."""
    kept = [r["name"] for r in rows if r.get("kept")]
    if not kept:
        return []
    fresh = sorted({r["measured"] for r in rows if not r.get("kept") and r.get("measured")})
    return [f"Kept from an earlier run of this study (their `{RUNS}/` folders are not on the machine that wrote "
            f"this page; numbers and commands from `{OUT}/NAME.json`): {', '.join(kept)}."
            + (f" The other rows were measured on {', '.join(fresh)}." if fresh else ""), ""]


def _int8_check_line(acc: dict[str, Any]) -> str:
    """The export's own int8 check (the ``accuracy`` record of ``student.onnx.export.json``), as one sentence."""
    a, t, tol = acc["accuracy"], acc["tar"], acc["tolerance"]
    misses = "; ".join(acc.get("misses") or [])
    return (f" Its int8 check on {acc['n_pairs']:,} DevTest pairs: accuracy {_pct(a['fp32'])} -> {_pct(a['int8'])}, "
            f"TAR@1e-3 on every pair of their people {_pct(t['fp32'], 1)} -> {_pct(t['int8'], 1)}, mean cosine to "
            f"fp32 {acc['mean_cosine']:.4f} (tolerance: -{tol['max_accuracy_drop']:g} / -{tol['max_tar_drop']:g} "
            f"points, cosine >= {tol['min_cosine']:g}): " + (f"**missed** ({misses})." if misses else "within."))


def _change(run: Run, skip: set[str], base: Run | None = None) -> str:
    """The run's overrides outside ``skip``, less those it shares with ``base`` (an arm shows its changes)."""
    same = set(base.overrides) if base is not None and base is not run else set()
    return ", ".join(f"`{o}`" for o in run.overrides if o.split("=")[0] not in skip and o not in same) or "none"


def lever_parents(arms: Sequence[Run]) -> dict[str, Run | None]:
    """Each arm's parent: the arm whose changes from ``lever_baseline`` are the largest proper subset of its own.

    The baseline's parent is None; an arm that shares no change with another arm has the baseline as parent.
    So ``ema`` (target scale + EMA) is compared with ``target_scale``, not with the baseline.
    """
    base = next((r for r in arms if r.name == "lever_baseline"), None)
    base_set = set(base.overrides) if base is not None else set()
    changes = {r.name: set(r.overrides) - base_set for r in arms}
    parents: dict[str, Run | None] = {}
    for r in arms:
        if r is base:
            parents[r.name] = None
            continue
        subsets = [p for p in arms if p is not r and changes[p.name] < changes[r.name]]
        parents[r.name] = max(subsets, key=lambda p: len(changes[p.name]), default=base)
    return parents


def _vs(r: dict[str, Any], parent: dict[str, Any] | None) -> tuple[str, str]:
    """Accuracy and TAR@1e-3 differences vs the parent row in points; "~" where inside the fold deviation."""
    if parent is None:
        return "", ""
    d, p = r["devtest"], parent["devtest"]
    delta = d["accuracy_mean"] - p["accuracy_mean"]
    noise = max(d["accuracy_std"], p["accuracy_std"])
    t, pt = _tar(r["all_pairs"]), _tar(parent["all_pairs"])
    return (f"{100 * delta:+.2f}" + (" ~" if abs(delta) < noise else ""),
            "" if t is None or pt is None else f"{100 * (t - pt):+.1f}")


def levers_section(levers: list[dict[str, Any]], runs: Sequence[Run], jobs: int) -> list[str]:
    """The recipe arms at equal wall time: final numbers, differences vs each arm's parent, learning curves."""
    if not levers:
        return []
    skip = {"train.max_minutes", "eval.latency", "eval.identification", "train.eval_every"}
    arms = [x for x in runs if x.group == "lever"]
    parents = lever_parents(arms)
    rows = {r["name"]: r for r in levers}
    out = [f"## Levers measured (0.5 MobileNet-112, {_budget(levers[0])} of training each, {jobs} runs at once)", "",
           "Each arm is its parent arm with the changes listed (the baseline row lists its own settings: the "
           "earlier flagship recipe; an arm's parent is the arm whose changes it extends, else the baseline). "
           "A difference smaller than the larger of the two runs' fold standard deviations is no difference "
           "(marked ~).", "",
           "| run | parent | changes | DevTest acc % | vs parent | TAR@1e-3 % (all pairs) | vs parent | "
           "cos to teacher | steps | samples/s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in levers:
        run = next(x for x in runs if x.name == r["name"])
        parent = parents.get(run.name)
        dacc, dtar = _vs(r, rows.get(parent.name) if parent is not None else None)
        shown = parent if parent is not None else next((x for x in arms if x.name == "lever_baseline"), None)
        tr = r.get("train") or {}
        out.append(f"| {r['name']} | {parent.name if parent is not None else ''} | {_change(run, skip, shown)} | "
                   f"{_pct(r['devtest']['accuracy_mean'])} ± {_pct(r['devtest']['accuracy_std'])} | "
                   f"{dacc} | {_pct(_tar(r['all_pairs']), 1)} | {dtar} | {r['fidelity_mean']:.3f} | "
                   f"{tr.get('steps', '')} | {tr.get('samples_per_s', '')} |")
    out += ["", f"![learning curves of the levers]({OUT}/levers_curves.png)", "",
            "Curves: the student evaluated during training (`train.eval_every`) on DevTest (accuracy) and on every "
            "pair of the DevTest people (TAR@FAR=1e-3), against training minutes; the flagship's curve (the chosen "
            "recipe, alone on both cores, 55 minutes) for comparison.", ""]
    return out


def plot_curves(levers: list[dict[str, Any]], path: Path) -> None:
    """DevTest accuracy and TAR@1e-3 over training minutes, one line per lever run (and the flagship)."""
    from distill.evaluation.render import _COLORS, _mpl, _png

    if not any(r.get("curve") for r in levers):
        return
    plt = _mpl()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for ax, key, label in zip(axes, ("accuracy", "tar@0.001"), ("DevTest accuracy (%)", "TAR@FAR=1e-3 (%)")):
        for i, r in enumerate(levers):
            pts = [c for c in r.get("curve") or [] if key in c]
            ax.plot([c["minutes"] for c in pts], [100 * c[key] for c in pts], "o-", ms=3, lw=1.6,
                    color=_COLORS[i % len(_COLORS)], label=r["name"].replace("lever_", ""))
        ax.set_xlabel("training minutes")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    atomic_write_bytes(path, base64.b64decode(_png(fig)))


def orl_section(rows: list[dict[str, Any]]) -> list[str]:
    """Teacher and flagship on ORL: a face set the student never saw (evaluation only)."""
    if not rows:
        return []
    out = ["## Beyond LFW: ORL (40 people x 10 greyscale images, every pair; evaluation only)", "",
           "| model | accuracy % | EER % | TAR@1e-3 % | TAR@1e-4 % | TAR@1e-3 ratio |", "|---|---|---|---|---|---|"]
    teacher = rows[0]["protocols"].get("orl", {})
    for r in rows:
        p = r["protocols"].get("orl", {})
        tars = p.get("tar_at_far") or {}
        t_tar = (teacher.get("tar_at_far") or {}).get(TARGET_FAR)
        ratio = "" if r is rows[0] or not t_tar or tars.get(TARGET_FAR) is None else \
            f"{tars[TARGET_FAR] / t_tar:.1%}"
        out.append(f"| {r['model']} | {_pct(p.get('accuracy_mean'))} | {_pct(p.get('eer'))} | "
                   f"{_pct(tars.get(TARGET_FAR), 1)} | {_pct(tars.get('0.0001'), 1)} | {ratio} |")
    n_g, n_i = teacher.get("n_genuine"), teacher.get("n_impostor")
    out += ["", f"{n_g:,} genuine and {n_i:,} impostor pairs; faces aligned like LFW (dlib, 150 px). Accuracy "
            "over >97% impostor pairs says little: read EER and TAR.", ""] if n_g else [""]
    return out


def facenet_section(rows: list[dict[str, Any]], runs: Sequence[Run]) -> list[str]:
    """The paper's pairing (FaceNet -> MobileNet) on the same LFW protocol, next to the paper's ratio."""
    if not rows:
        return []
    teacher = rows[0]
    out = ["## The paper's pairing: FaceNet (casia-webface) -> MobileNet", "",
           "The MobileNets paper (section 4.7, Table 14) distilled FaceNet into a 1.0 MobileNet-160 and kept 0.957 of "
           "its accuracy. Here on the same LFW identity-disjoint protocol as above, FaceNet's embedding (512-D, "
           f"normalised; MTCNN 160 px crops) cached in {_facenet_precision(runs)} (`teacher.precision: auto`: bf16 "
           f"only where the CPU has AMX, BENCHMARKS.md section 1), {_facenet_recipe(runs)}:", "",
           "| model | mult-adds | trained | DevTest acc % | acc ratio | TAR@1e-3 % (all pairs) | TAR ratio | "
           "cos to teacher |", "|---|---|---|---|---|---|---|---|"]
    t_acc, t_tar = teacher["devtest"].get("accuracy_mean"), _tar(teacher["all_pairs"])
    for r in rows:
        d, t = r["devtest"], _tar(r["all_pairs"])
        student = r is not teacher
        tr = r.get("train") or {}
        minutes = f"{tr.get('seconds', 0) / 60:.0f} min, {tr.get('steps', '?')} steps" if student else ""
        acc_ratio = f"{d['accuracy_mean'] / t_acc:.3f}" if student and t_acc else ""
        tar_ratio = f"{t / t_tar:.3f}" if student and t_tar and t is not None else ""
        fid = "" if r["fidelity_mean"] is None else f"{r['fidelity_mean']:.3f}"
        out.append(f"| {r['model']} | {_m(r['mult_adds'])} | {minutes} | {_pct(d.get('accuracy_mean'))} ± "
                   f"{_pct(d.get('accuracy_std'))} | {acc_ratio} | {_pct(t, 1)} | {tar_ratio} | {fid} |")
    out += ["", "Paper (Table 14): accuracy ratio 0.957 for 1.0 MobileNet-160 (79.4% vs FaceNet's 83% at its "
            "1e-4 accuracy measure).", ""]
    v2 = teacher.get("view2")
    if v2:
        out += [f"The FaceNet teacher through this pipeline (MTCNN alignment to `facenet_160`, the converted "
                f"casia-webface weights, fixed standardisation) on all of LFW View 2 ({v2['n_pairs']:,} pairs, "
                f"10-fold threshold CV): **{_pct(v2['accuracy_mean'])} ± {_pct(v2['accuracy_std'])}** (target 98.5; "
                "Sandberg and facenet-pytorch publish 99.05 for this model with their own alignment).", ""]
    return out


def _facenet_recipe(runs: Sequence[Run]) -> str:
    """How the FaceNet runs' students learn the unit-length embedding, read from their config."""
    fn = next((r for r in runs if r.group == "facenet"), None)
    if fn is None:
        return "learned as the config says"
    cfg = load_config(fn.config, list(fn.overrides))
    if cfg.student.normalize is False and cfg.train.loss.normalize is False:
        return ("learned as raw targets with `train.target_scale` (student and loss not normalised; the students "
                "are scored by Euclidean distance)")
    return "learned as unit vectors (student and loss L2-normalised; scored by cosine)"


def _facenet_precision(runs: Sequence[Run]) -> str:
    """The precision the FaceNet runs' teacher resolves to on this machine (the one that ran them)."""
    fn = next((r for r in runs if r.group == "facenet"), None)
    return "fp32" if fn is None else resolve_precision(load_config(fn.config, list(fn.overrides)).teacher.precision)


def _flagship_views(runs: Sequence[Run]) -> str:
    """How the flagship's teacher targets were made (cached views, two-face mixes), from its config."""
    flag = next((r for r in runs if r.group == "flagship"), None)
    if flag is None:
        return "teacher targets as each run's config says"
    t, aug = (cfg := load_config(flag.config, list(flag.overrides))).train, cfg.data.augment
    mix = aug.mixup + aug.cutmix
    return (f"{'cached' if t.teacher_mode == 'cached' else 'online'} teacher on "
            + (f"{t.cache_views} augmented views per image" if t.teacher_mode == "cached" else "every fresh view")
            + (f", {mix:.0%} of them two-face mixes (mixup {aug.mixup:g}, cutmix {aug.cutmix:g})" if mix else ""))


REEVAL = f"distill eval configs/lfw_devtest_eval.yaml --checkpoint {FLAGSHIP_CKPT} --no-teacher --overwrite"


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def write_outputs(runs: Sequence[Run], jobs: int = 1, orl: Path | None = None) -> Path:
    rows = collect(runs, orl)
    OUT.mkdir(exist_ok=True)
    for r in rows:
        if not r.get("kept"):
            atomic_write_json(OUT / f"{r['name']}.json", r)
    plot(rows, OUT / "accuracy_vs_mult_adds.png")
    plot_curves([r for r in rows if r["group"] in ("lever", "flagship")], OUT / "levers_curves.png")
    flag = next((r for r in runs if r.group == "flagship" and r.finished), None)
    if flag is not None:
        size = (flag.dir / "student.pt").stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            raise SystemExit(f"{flag.dir / 'student.pt'} is {size / 2**20:.1f} MiB; the committed flagship "
                             f"must be at most {MAX_CHECKPOINT_BYTES / 2**20:.0f} MiB")
        atomic_write(FLAGSHIP_CKPT, lambda f: f.write((flag.dir / "student.pt").read_bytes()))
    notes_path = OUT / "NOTES.md"
    notes = notes_path.read_text() if notes_path.exists() else ""
    return atomic_write_text(PAGE, render(rows, runs, notes, jobs, orl))


# --------------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.results", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--plan", type=Path, default=PLAN, help=f"study plan (default {PLAN})")
    p.add_argument("--only", metavar="NAME[,NAME]", help="train only these runs (e.g. flagship,sweep_050_128)")
    p.add_argument("--skip", metavar="NAME[,NAME]", help="do not train these runs (their rows read 'not run')")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="train N sweep/ablation runs at once, the CPU cores split between them "
                        "(default: the plan's `jobs`)")
    p.add_argument("--report-only", action="store_true", help="no training, no evaluation: rewrite the outputs")
    p.add_argument("--dry-run", action="store_true", help="print the plan's commands and stop")
    args = p.parse_args(argv)
    study, runs = _load_study(args.plan)
    orl = None if study.orl is None else Path(os.path.normpath(args.plan.parent / study.orl))
    names = {r.name for r in runs}
    for opt in (args.only, args.skip):
        unknown = sorted(set(filter(None, (opt or "").split(","))) - names)
        if unknown:
            raise SystemExit(f"unknown run(s) {', '.join(unknown)}; the plan has {', '.join(sorted(names))}")
    chosen = [r for r in runs if (not args.only or r.name in args.only.split(","))
              and not (args.skip and r.name in args.skip.split(","))]
    if args.dry_run:
        for r in runs:
            state = "finished" if r.finished else "to train" if r in chosen else "skipped"
            print(f"{r.name:28s} {state:9s} {shlex.join(r.command())}")
        for w in EVALS:
            if w != "eval_orl" or orl is not None:
                print(shlex.join(eval_command(runs, w, orl)))
        return 0
    t0 = time.monotonic()
    if not args.report_only:
        flagship = [r for r in chosen if r.group == "flagship"]
        train_all(flagship)  # alone, on every core: the headline number
        train_all([r for r in chosen if r.group != "flagship"], jobs=args.jobs or study.jobs)
        export_flagship(runs)
        evaluate_all(runs, orl)
    path = write_outputs(runs, args.jobs or study.jobs, orl)
    print(f"wrote {path}, {OUT}/*.json, {OUT}/accuracy_vs_mult_adds.png, {FLAGSHIP_CKPT} "
          f"({(time.monotonic() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
