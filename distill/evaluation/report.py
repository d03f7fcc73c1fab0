"""Run reports: ``report.json`` (machine-readable), ``report.md`` and a self-contained ``report.html``.

The pipeline fills one :class:`ModelResult` per evaluated model and calls
:func:`write_reports`; :func:`compare_runs` puts several runs on one page
(accuracy versus mult-adds, the paper's trade-off view).

Example::

    results = [ModelResult("dlib_resnet", "teacher", cost=t_cost, protocols={"lfw_view2": t_eval}),
               ModelResult("mobilenet_v1_050", "student", cost=s_cost, protocols={"lfw_view2": s_eval},
                           fidelity=fidelity(s_emb, t_emb), teacher="dlib_resnet")]
    paths = write_reports("runs/run1", results, config=cfg.model_dump(mode="json"), extra={"train_minutes": 30})
    compare_runs(["runs/run1", "runs/run2"], "runs/compare")
"""
from __future__ import annotations

import base64
import datetime as _dt
import io
import json
import math
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np

from distill.io import atomic_write_json, atomic_write_text

SCHEMA_VERSION = 1
HEADLINE_FAR = 1e-3
_TEMPLATE_DIR = Path(__file__).with_name("templates")


@dataclass
class ModelResult:
    """Everything measured for one model in a run.

    ``cost``: :func:`distill.evaluation.cost.measure_cost` output; ``protocols``: name ->
    :func:`distill.evaluation.verify.evaluate_pairs` output; ``fidelity``: students only,
    :func:`~distill.evaluation.verify.fidelity` against ``teacher``; ``identification``: name ->
    :func:`~distill.evaluation.identify.identify` output.
    """

    name: str
    role: Literal["teacher", "student"]
    cost: dict
    protocols: dict[str, dict]
    fidelity: dict | None = None
    identification: dict[str, dict] | None = None
    teacher: str | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.role not in ("teacher", "student"):
            raise ValueError(f"ModelResult {self.name!r}: role must be 'teacher' or 'student', got {self.role!r}")


# --------------------------------------------------------------------------- json
def _far_key(far: Any) -> str:
    return f"{float(far):g}"


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays -> python; float dict keys (FARs) -> '0.001'; NaN/inf -> None."""
    if isinstance(obj, dict):
        return {(_far_key(k) if isinstance(k, float) else str(k)): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def versions() -> dict[str, str]:
    """Versions of python and the libraries that shape the numbers."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
    for mod in ("distill", "torch", "numpy", "faiss", "timm", "matplotlib"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - a missing optional library is just absent
            continue
    try:
        import torch
        out["torch_threads"] = str(torch.get_num_threads())
    except Exception:  # noqa: BLE001
        pass
    return out


def model_entry(r: ModelResult) -> dict:
    c = r.cost or {}
    return _jsonable({
        "name": r.name, "role": r.role, "teacher": r.teacher,
        "params": c.get("params"), "mult_adds": c.get("mult_adds"), "input_size": c.get("input_size"),
        "images_per_s": c.get("images_per_s"), "images_per_s_bf16": c.get("images_per_s_bf16"),
        "file_bytes": c.get("file_bytes"), "cost": c,
        "protocols": r.protocols, "fidelity": r.fidelity, "identification": r.identification, "extra": r.extra,
    })


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or not b:
        return None
    return float(a) / float(b)


def tradeoff(models: list[dict]) -> list[dict]:
    """Student vs its teacher per protocol: what accuracy was given up for how much speed."""
    teachers = {m["name"]: m for m in models if m["role"] == "teacher"}
    rows = []
    for s in (m for m in models if m["role"] == "student"):
        t = teachers.get(s.get("teacher") or "") or next(iter(teachers.values()), None)
        if t is None:
            continue
        for proto, sp in s["protocols"].items():
            tp = t["protocols"].get(proto)
            if tp is None:
                continue
            tar_ratio = {k: _ratio(v, tp["tar_at_far"].get(k)) for k, v in sp["tar_at_far"].items()}
            rows.append({
                "student": s["name"], "teacher": t["name"], "protocol": proto,
                "student_accuracy": sp["accuracy_mean"], "teacher_accuracy": tp["accuracy_mean"],
                "accuracy_ratio": _ratio(sp["accuracy_mean"], tp["accuracy_mean"]),
                "accuracy_drop_points": 100 * (tp["accuracy_mean"] - sp["accuracy_mean"]),
                "tar_ratio": tar_ratio,
                "speedup": _ratio(s.get("images_per_s"), t.get("images_per_s")),
                "speedup_bf16": _ratio(s.get("images_per_s_bf16"), t.get("images_per_s_bf16")),
                "mult_adds_ratio": _ratio(s.get("mult_adds"), t.get("mult_adds")),
                "params_ratio": _ratio(s.get("params"), t.get("params")),
                "fidelity_mean": (s.get("fidelity") or {}).get("mean"),
            })
    return rows


def build_report(results: Sequence[ModelResult], config: dict, extra: dict | None = None) -> dict:
    """The ``report.json`` document (see the schema in the module docs / README)."""
    models = [model_entry(r) for r in results]
    return {
        "schema_version": SCHEMA_VERSION,
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": (config or {}).get("name"),
        "config": _jsonable(config or {}),
        "versions": versions(),
        "extra": _jsonable(extra or {}),
        "models": models,
        "tradeoff": _jsonable(tradeoff(models)),
    }


# --------------------------------------------------------------------------- formatting
def fmt_num(x: Any) -> str:
    """1234567 -> '1.23M'."""
    if x is None:
        return "–"
    x = float(x)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def fmt_acc(mean: Any, std: Any = None) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"


def fmt_pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.2f}%"


def fmt_ratio(x: Any, digits: int = 2) -> str:
    return "–" if x is None else f"{float(x):.{digits}f}×"


def _fars(models: list[dict]) -> list[str]:
    keys: list[str] = []
    for m in models:
        for p in m["protocols"].values():
            keys += [k for k in p["tar_at_far"] if k not in keys]
    return sorted(keys, key=float, reverse=True)


# --------------------------------------------------------------------------- figures
def _mpl():
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    plt.rcParams.update({"figure.dpi": 100, "font.size": 10, "axes.grid": True, "grid.alpha": 0.3,
                         "axes.spines.top": False, "axes.spines.right": False})
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _mpl().close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


_COLORS = ["#1f3b99", "#d1495b", "#00798c", "#edae49", "#66a182", "#8d6cab", "#2e4057", "#c06c84"]


def _style(models: list[dict]) -> dict[str, dict]:
    return {m["name"]: {"color": _COLORS[i % len(_COLORS)], "ls": "-" if m["role"] == "teacher" else "--",
                        "lw": 2.2 if m["role"] == "teacher" else 1.8} for i, m in enumerate(models)}


def roc_figure(models: list[dict], proto: str) -> str:
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    style = _style(models)
    lo = 1.0
    for m in models:
        p = m["protocols"].get(proto)
        if not p:
            continue
        far, tar = np.asarray(p["roc"]["far"], float), np.asarray(p["roc"]["tar"], float)
        keep = far > 0
        if keep.any():
            lo = min(lo, far[keep].min())
        ax.step(far[keep], tar[keep], where="post", label=f"{m['name']} ({m['role']}), AUC {p['auc']:.4f}",
                **style[m["name"]])
    ax.set_xscale("log")
    ax.set_xlim(max(lo, 1e-5), 1.0)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (log)")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC, {proto}")
    ax.legend(loc="lower right", fontsize=9)
    return _png(fig)


def hist_figure(models: list[dict], proto: str) -> str:
    plt = _mpl()
    ms = [m for m in models if proto in m["protocols"]]
    fig, axes = plt.subplots(1, len(ms), figsize=(4.2 * len(ms) + 0.5, 3.4), squeeze=False)
    for ax, m in zip(axes[0], ms):
        p = m["protocols"][proto]
        edges = np.asarray(p["hist_edges"], float)
        for key, color in (("impostor", "#d1495b"), ("genuine", "#1f3b99")):
            h = p[key].get("hist")
            if h:
                ax.stairs(np.asarray(h) / max(sum(h), 1), edges, fill=True, alpha=0.45, color=color,
                          label=f"{key} ({p[key]['n']})")
        ax.axvline(p["best_threshold"], color="k", lw=1, ls=":", label=f"best thr {p['best_threshold']:.3f}")
        ax.set_title(f"{m['name']} ({m['role']})", fontsize=10)
        ax.set_xlabel(p.get("score", "score"))
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("fraction of pairs")
    fig.suptitle(f"Genuine and impostor scores, {proto}", fontsize=11)
    return _png(fig)


def fidelity_figure(models: list[dict]) -> str | None:
    ms = [m for m in models if m.get("fidelity")]
    if not ms:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    style = _style(models)
    lo = 1.0
    for m in ms:
        f = m["fidelity"]
        edges, h = np.asarray(f["hist_edges"], float), np.asarray(f["hist"], float)
        nz = np.nonzero(h)[0]
        if nz.size:
            lo = min(lo, edges[nz[0]])
        ax.stairs(h / max(h.sum(), 1), edges, color=style[m["name"]]["color"], lw=1.8,
                  label=f"{m['name']} → {m.get('teacher') or 'teacher'}: mean {f['mean']:.3f}")
    ax.set_xlim(max(-1.0, lo - 0.05), 1.0)
    ax.set_xlabel("cosine(student embedding, teacher embedding) per image")
    ax.set_ylabel("fraction of images")
    ax.set_title("Fidelity to the teacher")
    ax.legend(fontsize=9, loc="best")
    return _png(fig)


def tradeoff_figure(points: list[dict], title: str) -> str | None:
    """Accuracy (y) against mult-adds (log x), one marker per model; points: name/role/mult_adds/accuracy/run."""
    pts = [p for p in points if p.get("mult_adds") and p.get("accuracy") is not None]
    if not pts:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    runs = sorted({p.get("run") or "" for p in pts})
    for i, run in enumerate(runs):
        for role, marker in (("teacher", "*"), ("student", "o")):
            sel = [p for p in pts if (p.get("run") or "") == run and p["role"] == role]
            if not sel:
                continue
            ax.errorbar([p["mult_adds"] for p in sel], [100 * p["accuracy"] for p in sel],
                        yerr=[100 * (p.get("std") or 0) for p in sel], fmt=marker, ms=11 if role == "teacher" else 7,
                        color=_COLORS[i % len(_COLORS)], capsize=3,
                        label=f"{run} {role}s" if run else f"{role}s")
    for p in pts:
        ax.annotate(p["name"], (p["mult_adds"], 100 * p["accuracy"]), textcoords="offset points", xytext=(6, 4),
                    fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("mult-adds per image (log)")
    ax.set_ylabel("verification accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


# --------------------------------------------------------------------------- html / md
def _cell(text: Any, cls: str = "", title: str = "") -> dict:
    text = "–" if text is None else str(text)
    return {"text": text, "cls": cls or ("null" if text == "–" else ""), "title": title}


def _tar_cell(p: dict, far: str) -> dict:
    v = p["tar_at_far"].get(far)
    if v is None:
        reason = p.get("tar_reasons", {}).get(far, "not estimated")
        return _cell("n/a", "null", reason)
    return _cell(fmt_pct(v))


def _tar_ratio_cell(ratios: dict) -> dict:
    """Student/teacher TAR at the strictest FAR where both were estimable."""
    for far in sorted(ratios, key=float):
        if ratios[far] is not None:
            return _cell(f"{ratios[far]:.3f}× @{far}")
    return _cell(None)


def _tables(doc: dict) -> dict[str, Any]:
    """Tables shared by the markdown and HTML renderers: header + rows of (text, class, tooltip)."""
    models = doc["models"]
    fars = _fars(models)
    protos = list(dict.fromkeys(p for m in models for p in m["protocols"]))
    out: dict[str, Any] = {"protocols": {}, "fars": fars}
    for proto in protos:
        header = ["model", "role", "accuracy %", "AUC", "EER", *[f"TAR@FAR={f}" for f in fars], "best thr", "pairs"]
        rows = []
        for m in models:
            p = m["protocols"].get(proto)
            if not p:
                continue
            rows.append({"cls": m["role"], "cells": [
                _cell(m["name"]), _cell(m["role"]), _cell(fmt_acc(p["accuracy_mean"], p["accuracy_std"])),
                _cell(f"{p['auc']:.4f}"), _cell(fmt_pct(p["eer"])), *[_tar_cell(p, f) for f in fars],
                _cell(f"{p['best_threshold']:.3f}"), _cell(p["n_pairs"])]})
        out["protocols"][proto] = {"header": header, "rows": rows}
    out["cost"] = {"header": ["model", "role", "params", "mult-adds", "input", "img/s fp32 (b32)",
                              "img/s bf16 (b32)", "img/s fp32 (b1)", "weights"], "rows": [
        {"cls": m["role"], "cells": [
            _cell(m["name"]), _cell(m["role"]), _cell(fmt_num(m["params"])), _cell(fmt_num(m["mult_adds"])),
            _cell(m["input_size"]), _cell(fmt_num(m["images_per_s"])), _cell(fmt_num(m.get("images_per_s_bf16"))),
            _cell(fmt_num(((m["cost"].get("latency") or {}).get("fp32") or {}).get("1", {}).get("images_per_s"))),
            _cell(fmt_num(m["file_bytes"]) + "B" if m["file_bytes"] else None)]} for m in models]}
    trade = doc.get("tradeoff") or []
    out["tradeoff"] = {"header": ["student", "teacher", "protocol", "accuracy % (s / t)", "given up",
                                  "acc ratio", "TAR ratio @ lowest FAR", "speed-up fp32", "speed-up bf16",
                                  "mult-adds ratio", "fidelity"], "rows": [
        {"cls": "", "cells": [
            _cell(r["student"]), _cell(r["teacher"]), _cell(r["protocol"]),
            _cell(f"{fmt_acc(r['student_accuracy'])} / {fmt_acc(r['teacher_accuracy'])}"),
            _cell(f"{r['accuracy_drop_points']:.2f} pts", "neg" if r["accuracy_drop_points"] > 0 else "pos",
                  "accuracy points the student gave up (negative: it gained)"),
            _cell(fmt_ratio(r["accuracy_ratio"], 3)), _tar_ratio_cell(r["tar_ratio"]),
            _cell(fmt_ratio(r["speedup"], 1)), _cell(fmt_ratio(r["speedup_bf16"], 1)),
            _cell(fmt_ratio(r["mult_adds_ratio"], 3), title=f"params ratio {fmt_ratio(r['params_ratio'], 3)}"),
            _cell(None if r["fidelity_mean"] is None else f"{r['fidelity_mean']:.3f}")]} for r in trade]}
    ident_rows = []
    for m in models:
        for name, res in (m.get("identification") or {}).items():
            ident_rows.append({"cls": m["role"], "cells": [
                _cell(m["name"]), _cell(name), _cell(fmt_pct(res.get("rank1"))), _cell(fmt_pct(res.get("rank5"))),
                _cell(res.get("n_gallery")), _cell(res.get("n_probes")), _cell(res.get("n_distractors")),
                _cell(res.get("reason", ""))]})
    out["identification"] = {"header": ["model", "setting", "rank-1", "rank-5", "gallery", "probes",
                                        "distractors", "note"], "rows": ident_rows}
    return out


def _reason_lines(models: list[dict], proto: str) -> list[str]:
    """Why some TAR@FAR are n/a, once per distinct reason (usually shared by every model)."""
    by_reason: dict[str, list[str]] = {}
    for m in models:
        for far, why in (m["protocols"].get(proto, {}).get("tar_reasons") or {}).items():
            key = f"TAR@FAR={far} n/a: {why}"
            by_reason.setdefault(key, []).append(m["name"])
    n = sum(1 for m in models if proto in m["protocols"])
    lines = [k if len(v) == n else f"{k} ({', '.join(v)})" for k, v in by_reason.items()]
    warned = dict.fromkeys(w for m in models for w in m["protocols"].get(proto, {}).get("warnings") or [])
    return lines + [f"Warning: {w}" for w in warned]


def _md_table(t: dict) -> str:
    lines = ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
    for row in t["rows"]:
        lines.append("| " + " | ".join(c["text"].replace("|", "\\|") for c in row["cells"]) + " |")
    return "\n".join(lines)


def render_markdown(doc: dict) -> str:
    tabs = _tables(doc)
    out = [f"# Report: {doc.get('run') or 'run'}", "", f"Created {doc['created_at']}.", ""]
    if tabs["tradeoff"]["rows"]:
        out += ["## Accuracy versus cost (student / teacher)", "", _md_table(tabs["tradeoff"]), ""]
    for proto, t in tabs["protocols"].items():
        out += [f"## Verification: {proto}", "", _md_table(t), ""]
        reasons = _reason_lines(doc["models"], proto)
        out += [f"- {line}" for line in reasons] + ([""] if reasons else [])
    out += ["## Cost", "", _md_table(tabs["cost"]), ""]
    fid = [m for m in doc["models"] if m.get("fidelity")]
    if fid:
        out += ["## Fidelity to the teacher (cosine per image)", "", "| student | mean | p5 | median | p95 |",
                "|---|---|---|---|---|"]
        out += [f"| {m['name']} | {m['fidelity']['mean']:.4f} | {m['fidelity']['percentiles']['5']:.4f} | "
                f"{m['fidelity']['percentiles']['50']:.4f} | {m['fidelity']['percentiles']['95']:.4f} |" for m in fid]
        out.append("")
    if tabs["identification"]["rows"]:
        out += ["## 1:N identification", "", _md_table(tabs["identification"]), ""]
    out += ["Full numbers: `report.json`; figures: `report.html`.", ""]
    return "\n".join(out)


def _render_html(context: dict) -> str:
    import jinja2
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    import distill
    base = {"cards": [], "config_text": "", "versions_text": "", "version": distill.__version__,
            "created": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}
    return env.get_template("report.html.j2").render(**{**base, **context})


def render_html(doc: dict) -> str:
    models = doc["models"]
    tabs = _tables(doc)
    cards = []
    for r in doc.get("tradeoff") or []:
        fewer = f"{1 / r['mult_adds_ratio']:.1f}× fewer mult-adds" if r["mult_adds_ratio"] else ""
        faster = f"{fmt_ratio(r['speedup'], 1)} the teacher's speed" if r["speedup"] else ""
        cards.append({"k": f"{r['student']} on {r['protocol']}", "v": f"{100 * r['student_accuracy']:.2f}%",
                      "s": f"teacher {100 * r['teacher_accuracy']:.2f}% ({-r['accuracy_drop_points']:+.2f} pts); "
                           + ", ".join(x for x in (faster, fewer) if x)})
    if not cards:
        for m in models:
            for proto, p in m["protocols"].items():
                cards.append({"k": f"{m['name']} on {proto}", "v": f"{100 * p['accuracy_mean']:.2f}%",
                              "s": f"AUC {p['auc']:.4f}, EER {fmt_pct(p['eer'])}"})
    sections = []
    if tabs["tradeoff"]["rows"]:
        sections.append({"title": "How much accuracy was given up for how much speed",
                         "note": "Ratios are student / teacher. Speed is measured CPU images/s at batch 32; "
                                 "accuracy is 10-fold verification accuracy.",
                         "tables": [tabs["tradeoff"]], "figures": [], "after": []})
    for proto, t in tabs["protocols"].items():
        p0 = next(m["protocols"][proto] for m in models if proto in m["protocols"])
        after = _reason_lines(models, proto)
        sections.append({"title": f"Verification: {proto}",
                         "note": f"{p0['n_pairs']} pairs ({p0['n_genuine']} genuine, {p0['n_impostor']} impostor), "
                                 f"{p0['n_folds']}-fold accuracy with the threshold chosen on the other folds. "
                                 "n/a: too few impostor pairs to resolve that FAR (hover for details).",
                         "tables": [t],
                         "figures": [{"png": roc_figure(models, proto),
                                      "caption": "ROC on a log-FAR axis (teachers solid, students dashed)"},
                                     {"png": hist_figure(models, proto),
                                      "caption": "Score distributions: separation of genuine and impostor pairs"}],
                         "after": after})
    fig = fidelity_figure(models)
    if fig:
        sections.append({"title": "Fidelity to the teacher", "note": "Cosine similarity between the student's and "
                         "the teacher's embedding of the same image (1 = identical direction).",
                         "tables": [], "figures": [{"png": fig, "caption": "Per-image cosine to the teacher"}],
                         "after": []})
    sections.append({"title": "Cost", "note": f"Measured on this machine's CPU "
                     f"({doc['versions'].get('torch_threads', '?')} torch threads); median of repeats after warm-up.",
                     "tables": [tabs["cost"]], "figures": [], "after": []})
    if tabs["identification"]["rows"]:
        sections.append({"title": "1:N identification (FAISS)", "note": "One gallery image per identity, the other "
                         "images are probes; single-image identities are gallery distractors.",
                         "tables": [tabs["identification"]], "figures": [], "after": []})
    return _render_html({
        "title": f"facedistill report: {doc.get('run') or 'run'}",
        "subtitle": ", ".join(f"{m['name']} ({m['role']})" for m in models),
        "cards": cards, "sections": sections,
        "config_text": json.dumps(doc.get("config"), indent=2),
        "versions_text": json.dumps(doc.get("versions"), indent=2),
    })


def write_reports(run_dir: str | Path, results: Sequence[ModelResult], config: dict | None = None,
                  extra: dict | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``run_dir`` (each atomically)."""
    if not results:
        raise ValueError("write_reports needs at least one ModelResult")
    run_dir = Path(run_dir)
    doc = build_report(results, config or {}, extra)
    return {"json": atomic_write_json(run_dir / "report.json", doc),
            "md": atomic_write_text(run_dir / "report.md", render_markdown(doc)),
            "html": atomic_write_text(run_dir / "report.html", render_html(doc))}


def load_report(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "report.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a finished run directory?") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {doc.get('schema_version')!r}, this version reads {SCHEMA_VERSION}")
    return doc


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path, protocol: str | None = None) -> dict[str, Path]:
    """One page comparing runs: ``comparison.json``/``.md``/``.html`` in ``out`` with accuracy vs mult-adds.

    ``protocol`` picks the verification protocol (default: the first one of the first run).
    Teachers that appear in several runs are shown once.
    """
    docs = [(Path(d), load_report(d)) for d in run_dirs]
    if not docs:
        raise ValueError("compare_runs needs at least one run directory")
    protocol = protocol or next((p for _, d in docs for m in d["models"] for p in m["protocols"]), None)
    points, seen_teachers = [], set()
    for path, d in docs:
        for m in d["models"]:
            p = m["protocols"].get(protocol)
            if p is None or (m["role"] == "teacher" and m["name"] in seen_teachers):
                continue
            if m["role"] == "teacher":
                seen_teachers.add(m["name"])
            points.append({"run": d.get("run") or path.name, "dir": str(path), "name": m["name"], "role": m["role"],
                           "params": m["params"], "mult_adds": m["mult_adds"], "images_per_s": m["images_per_s"],
                           "accuracy": p["accuracy_mean"], "std": p["accuracy_std"], "auc": p["auc"],
                           "eer": p["eer"], "tar_at_far": p["tar_at_far"],
                           "fidelity": (m.get("fidelity") or {}).get("mean")})
    out = Path(out)
    doc = {"schema_version": SCHEMA_VERSION, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(
        timespec="seconds"), "protocol": protocol, "runs": [str(p) for p, _ in docs], "points": points}
    far = _far_key(HEADLINE_FAR)
    header = ["run", "model", "role", "mult-adds", "params", "img/s", "accuracy %", f"TAR@FAR={far}", "AUC",
              "fidelity"]
    rows = [{"cls": p["role"], "cells": [
        _cell(p["run"]), _cell(p["name"]), _cell(p["role"]), _cell(fmt_num(p["mult_adds"])), _cell(fmt_num(p["params"])),
        _cell(fmt_num(p["images_per_s"])), _cell(fmt_acc(p["accuracy"], p["std"])),
        _cell(fmt_pct(p["tar_at_far"].get(far))), _cell(f"{p['auc']:.4f}"),
        _cell(None if p["fidelity"] is None else f"{p['fidelity']:.3f}")]}
        for p in sorted(points, key=lambda q: -(q["mult_adds"] or 0))]
    table = {"header": header, "rows": rows}
    fig = tradeoff_figure(points, f"Accuracy versus mult-adds, {protocol}")
    md = "\n".join([f"# Comparison on {protocol}", "", _md_table(table), ""])
    html = _render_html({"title": f"facedistill comparison: {protocol}",
                         "subtitle": f"{len(docs)} runs: " + ", ".join(d.get("run") or p.name for p, d in docs),
                         "sections": [{"title": "Accuracy versus mult-adds", "note": "The paper's trade-off view: "
                                       "each marker is a model (teachers as stars), error bars are the fold std.",
                                       "tables": [table], "figures": [{"png": fig, "caption": "accuracy vs mult-adds"}]
                                       if fig else [], "after": []}]})
    return {"json": atomic_write_json(out / "comparison.json", _jsonable(doc)),
            "md": atomic_write_text(out / "comparison.md", md),
            "html": atomic_write_text(out / "comparison.html", html)}
