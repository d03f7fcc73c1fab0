"""A :class:`~distill.evaluation.results.Report` as ``report.md`` and a self-contained ``report.html``.

The HTML page embeds its figures (ROC on a log-FAR axis, genuine/impostor score histograms,
fidelity to the teacher); both renderers share the tables built by :func:`report_tables`.

Example::

    doc = load_report("runs/r1")
    Path("r1.md").write_text(render_markdown(doc))
    Path("r1.html").write_text(render_html(doc))
"""
from __future__ import annotations

import base64
import datetime as _dt
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from .results import ModelResult, Report, VerificationResult, far_key, far_text

_TEMPLATE_DIR = Path(__file__).with_name("templates")
_COLORS = ["#1f3b99", "#d1495b", "#00798c", "#edae49", "#66a182", "#8d6cab", "#2e4057", "#c06c84"]


# --------------------------------------------------------------------------- formatting
def fmt_num(x: Any) -> str:
    """1234567 -> '1.23M'; None -> '–'."""
    if x is None:
        return "–"
    x = float(x)
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def fmt_acc(mean: Any, std: Any = None) -> str:
    """An accuracy fraction as percent, with its fold std when given: '98.90 ± 1.22'."""
    if mean is None:
        return "–"
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f}"


def fmt_pct(x: Any) -> str:
    """A fraction as a percentage with two decimals ('–' for None)."""
    return "–" if x is None else f"{100 * float(x):.2f}%"


def fmt_ratio(x: Any, digits: int = 2) -> str:
    """A ratio as '2.70×' ('–' for None)."""
    return "–" if x is None else f"{float(x):.{digits}f}×"


def _fars(models: list[ModelResult]) -> list[float]:
    fars: list[float] = []
    for m in models:
        for p in m.protocols.values():
            fars += [f for f in p.tar_at_far if f not in fars]
    return sorted(fars, reverse=True)


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


def _style(models: list[ModelResult]) -> dict[str, dict]:
    return {m.name: {"color": _COLORS[i % len(_COLORS)], "ls": "-" if m.role == "teacher" else "--",
                     "lw": 2.2 if m.role == "teacher" else 1.8} for i, m in enumerate(models)}


def roc_figure(models: list[ModelResult], proto: str) -> str:
    """Base64 PNG: every model's ROC on ``proto`` with a log FAR axis."""
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    style = _style(models)
    lo = 1e-3  # the axis spans at least the FAR range the report quotes
    for m in models:
        p = m.protocols.get(proto)
        if not p or not p.roc.far:
            continue
        far, tar = np.asarray(p.roc.far, float), np.asarray(p.roc.tar, float)
        keep = far > 0
        if keep.any():
            lo = min(lo, far[keep].min())
        ax.step(far[keep], tar[keep], where="post", label=f"{m.name} ({m.role}), AUC {p.auc:.4f}", **style[m.name])
    ax.set_xscale("log")
    ax.set_xlim(max(lo, 1e-5), 1.0)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (log)")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"ROC, {proto}")
    if ax.get_legend_handles_labels()[0]:  # no genuine pairs: no curve to label
        ax.legend(loc="lower right", fontsize=9)
    return _png(fig)


def hist_figure(models: list[ModelResult], proto: str) -> str:
    """Base64 PNG: genuine and impostor score histograms of every model on ``proto``."""
    plt = _mpl()
    ms = [m for m in models if proto in m.protocols]
    fig, axes = plt.subplots(1, len(ms), figsize=(4.2 * len(ms) + 0.5, 3.4), squeeze=False)
    for ax, m in zip(axes[0], ms):
        p = m.protocols[proto]
        edges = np.asarray(p.hist_edges, float)
        for summary, key, color in ((p.impostor, "impostor", "#d1495b"), (p.genuine, "genuine", "#1f3b99")):
            if summary.hist:
                h = np.asarray(summary.hist)
                ax.stairs(h / max(h.sum(), 1), edges, fill=True, alpha=0.45, color=color,
                          label=f"{key} ({summary.n})")
        if p.best_threshold is not None:
            ax.axvline(p.best_threshold, color="k", lw=1, ls=":", label=f"best thr {p.best_threshold:.3f}")
        ax.set_title(f"{m.name} ({m.role})", fontsize=10)
        ax.set_xlabel(p.score)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("fraction of pairs")
    fig.suptitle(f"Genuine and impostor scores, {proto}", fontsize=11)
    return _png(fig)


def fidelity_figure(models: list[ModelResult]) -> str | None:
    """Base64 PNG of each student's per-image cosine to its teacher, or None without students."""
    ms = [m for m in models if m.fidelity is not None]
    if not ms:
        return None
    plt = _mpl()
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    style = _style(models)
    lo = 1.0
    for m in ms:
        f = m.fidelity
        edges, h = np.asarray(f.hist_edges, float), np.asarray(f.hist, float)
        nz = np.nonzero(h)[0]
        if nz.size:
            lo = min(lo, edges[nz[0]])
        ax.stairs(h / max(h.sum(), 1), edges, color=style[m.name]["color"], lw=1.8,
                  label=f"{m.name} → {m.teacher or 'teacher'}: mean {f.mean:.3f}")
    ax.set_xlim(max(-1.0, lo - 0.05), 1.0)
    ax.set_xlabel("cosine(student embedding, teacher embedding) per image")
    ax.set_ylabel("fraction of images")
    ax.set_title("Fidelity to the teacher")
    ax.legend(fontsize=9, loc="best")
    return _png(fig)


def curve_figure(models: list[ModelResult]) -> str | None:
    """Base64 PNG of each student's learning curves (``extra["curve"]``: evaluation during training), or None."""
    ms = [m for m in models if (m.extra.get("curve") or [])]
    if not ms:
        return None
    plt = _mpl()
    keys = [k for k in ("accuracy", "tar@0.001") if any(k in row for m in ms for row in m.extra["curve"])]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys) + 0.5, 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, m in enumerate(ms):
            rows = [r for r in m.extra["curve"] if r.get(key) is not None]
            ax.plot([r["minutes"] for r in rows], [100 * r[key] for r in rows], "o-", ms=3,
                    color=_COLORS[i % len(_COLORS)], label=m.name)
        ax.set_xlabel("training minutes")
        ax.set_ylabel(f"{key} (%)")
        ax.legend(fontsize=8)
    fig.suptitle("Learning curves (evaluation during training)", fontsize=11)
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
    ax.legend(fontsize=8, loc="best")  # the points can sit anywhere
    return _png(fig)


# --------------------------------------------------------------------------- tables
def cell(text: Any, cls: str = "", title: str = "") -> dict:
    """One table cell: text ('–' for None), CSS class and tooltip."""
    text = "–" if text is None else str(text)
    return {"text": text, "cls": cls or ("null" if text == "–" else ""), "title": title}


def _tar_cell(p: VerificationResult, far: float) -> dict:
    v = p.tar(far)
    if v is None:
        return cell("n/a", "null", p.tar_reasons.get(far, "not estimated"))
    ci = p.tar_interval.get(far_key(far)) if p.tar_interval else None
    if ci is None:
        return cell(fmt_pct(v))
    return cell(f"{fmt_pct(v)} [{fmt_pct(ci[0])}, {fmt_pct(ci[1])}]", "",
                "95% interval from a bootstrap over identities: overlapping intervals are no difference")


def _tar_ratio_cell(ratios: dict[float, float | None]) -> dict:
    """Student/teacher TAR at the strictest FAR where both were estimable."""
    for far in sorted(ratios):
        if ratios[far] is not None:
            return cell(f"{ratios[far]:.3f}× @{far_text(far)}")
    return cell(None)


def report_tables(doc: Report) -> dict[str, Any]:
    """Tables shared by the markdown and HTML renderers: header + rows of (text, class, tooltip)."""
    models = doc.models
    fars = _fars(models)
    protos = list(dict.fromkeys(p for m in models for p in m.protocols))
    out: dict[str, Any] = {"protocols": {}, "fars": fars}
    for proto in protos:
        header = ["model", "role", "accuracy %", "AUC", "EER", *[f"TAR@FAR={far_text(f)}" for f in fars],
                  "best thr", "pairs"]
        rows = []
        for m in models:
            p = m.protocols.get(proto)
            if not p:
                continue
            rows.append({"cls": m.role, "cells": [
                cell(m.name), cell(m.role), cell(fmt_acc(p.accuracy_mean, p.accuracy_std) if p.reason is None
                                                 else f"n/a: {p.reason}"),
                cell(None if p.auc is None else f"{p.auc:.4f}"), cell(fmt_pct(p.eer)), *[_tar_cell(p, f) for f in fars],
                cell(None if p.best_threshold is None else f"{p.best_threshold:.3f}"), cell(p.n_pairs)]})
        out["protocols"][proto] = {"header": header, "rows": rows}
    out["cost"] = {"header": ["model", "role", "params", "mult-adds", "input", "img/s fp32 (b32)",
                              "img/s bf16 (b32)", "img/s fp32 (b1)", "weights"], "rows": [
        {"cls": m.role, "cells": [
            cell(m.name), cell(m.role), cell(fmt_num(m.cost.params)), cell(fmt_num(m.cost.mult_adds)),
            cell(m.cost.input_size), cell(fmt_num(m.cost.images_per_s)), cell(fmt_num(m.cost.images_per_s_bf16)),
            cell(fmt_num(m.cost.images_per_s_at("fp32", 1))),
            cell(fmt_num(m.cost.file_bytes) + "B" if m.cost.file_bytes else None)]} for m in models]}
    out["tradeoff"] = {"header": ["student", "teacher", "protocol", "accuracy % (s / t)", "given up",
                                  "acc ratio", "TAR ratio @ lowest FAR", "speed-up fp32", "speed-up bf16",
                                  "mult-adds ratio", "fidelity"], "rows": [
        {"cls": "", "cells": [
            cell(r.student), cell(r.teacher), cell(r.protocol),
            cell(f"{fmt_acc(r.student_accuracy)} / {fmt_acc(r.teacher_accuracy)}"),
            cell(None if r.accuracy_drop_points is None else f"{r.accuracy_drop_points:.2f} pts",
                 "neg" if (r.accuracy_drop_points or 0) > 0 else "pos",
                 "accuracy points the student gave up (negative: it gained)"),
            cell(fmt_ratio(r.accuracy_ratio, 3)), _tar_ratio_cell(r.tar_ratio),
            cell(fmt_ratio(r.speedup, 1)), cell(fmt_ratio(r.speedup_bf16, 1)),
            cell(fmt_ratio(r.mult_adds_ratio, 3), title=f"params ratio {fmt_ratio(r.params_ratio, 3)}"),
            cell(None if r.fidelity_mean is None else f"{r.fidelity_mean:.3f}")]} for r in doc.tradeoff]}
    ident_rows = []
    for m in models:
        for name, res in (m.identification or {}).items():
            ident_rows.append({"cls": m.role, "cells": [
                cell(m.name), cell(name), cell(fmt_pct(res.rank1)), cell(fmt_pct(res.rank5)),
                cell(res.n_gallery), cell(res.n_probes), cell(res.n_distractors), cell(res.reason or "")]})
    out["identification"] = {"header": ["model", "setting", "rank-1", "rank-5", "gallery", "probes",
                                        "distractors", "note"], "rows": ident_rows}
    return out


def _reason_lines(models: list[ModelResult], proto: str) -> list[str]:
    """Why some TAR@FAR are n/a, once per distinct reason (usually shared by every model), then warnings."""
    by_reason: dict[str, list[str]] = {}
    for m in models:
        p = m.protocols.get(proto)
        for far, why in (p.tar_reasons if p else {}).items():
            by_reason.setdefault(f"TAR@FAR={far_text(far)} n/a: {why}", []).append(m.name)
    n = sum(1 for m in models if proto in m.protocols)
    lines = [k if len(v) == n else f"{k} ({', '.join(v)})" for k, v in by_reason.items()]
    warned = dict.fromkeys(w for m in models if proto in m.protocols for w in m.protocols[proto].warnings)
    return lines + [f"Warning: {w}" for w in warned]


def md_table(t: dict) -> str:
    """A table of :func:`report_tables` as GitHub Markdown."""
    lines = ["| " + " | ".join(t["header"]) + " |", "|" + "---|" * len(t["header"])]
    for row in t["rows"]:
        lines.append("| " + " | ".join(c["text"].replace("|", "\\|") for c in row["cells"]) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- pages
def embedding_line(doc: Report) -> str:
    """How the evaluated embeddings were made: one sentence naming ``eval.flip_tta``."""
    if (doc.config.get("eval") or {}).get("flip_tta"):
        return ("Embeddings with flip TTA (eval.flip_tta: true): each face and its mirror embedded, summed and "
                "L2-normalised (raw embeddings: averaged), as insightface's verification.py reports.")
    return "Embeddings of each face alone (eval.flip_tta: false; published .bin tables often use flip TTA)."


def _fit_word(train: float, held_out: float) -> str:
    """What the gap between training and held-out fidelity says (1 - cosine: the residual)."""
    gap = (1 - held_out) / max(1 - train, 1e-9)
    if gap > 1.5:
        return f"the held-out residual is {gap:.1f}x the training one: it fits its training faces better (overfitting)"
    return f"residuals within {gap:.2f}x: it cannot fit its own training faces either (underfitting, if both are low)"


def data_lines(doc: Report) -> list[str]:
    """What the student trained on (each source's counts) and what the leak guard checked and found."""
    data = doc.extra.get("data") or {}
    train, guard = data.get("train") or {}, data.get("leak_guard")
    out = []
    for src in train.get("sources") or []:
        al = src.get("alignment") or {}
        out.append(f"Source {src.get('name')} ({src.get('kind')}): {src.get('train_images')} images found, "
                   f"{al.get('aligned', src.get('aligned_train_faces'))} aligned, {al.get('center_fallback', 0)} "
                   f"centre fallback, {len(al.get('skipped') or {})} skipped"
                   + (f", share {src['share']:.0%} of each epoch" if src.get("share") else "") + ".")
    if not guard:
        return out
    if guard.get("policy") == "off" or guard.get("checked") is False:
        return out + [f"Leak guard: {guard.get('reason') or 'off'}. Nothing checked whether training images show "
                      f"evaluation people or copies of evaluation images."]
    counts = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in (guard.get("counts") or {}).items() if n) \
        or "nothing flagged"
    out.append(f"Leak guard ({guard.get('policy')}): {guard.get('train_images')} training x "
               f"{guard.get('eval_images')} evaluation images, {guard.get('comparisons', 0) / 1e6:.1f}M comparisons: "
               f"{counts}; {guard.get('excluded', 0)} excluded from training. Training embeddings: "
               f"{guard.get('train_embeddings')}.")
    out += [f"{k.replace('_', ' ').capitalize()}: {v}." for k, v in (guard.get("checked") or {}).items()]
    out += [f"Flagged: {e['train']} ~ {e['eval']} ({e['evidence'].replace('_', ' ')}, score {e['score']})"
            for e in guard.get("examples") or []]
    if guard.get("examples_png"):
        out.append(f"Thumbnails: {guard['examples_png']} (every flagged image: leak_guard.json).")
    return out


def render_markdown(doc: Report) -> str:
    """``report.md``: trade-off, every protocol, cost, fidelity, learning curve, identification."""
    tabs = report_tables(doc)
    out = [f"# Report: {doc.run or 'run'}", "", f"Created {doc.created_at}. {embedding_line(doc)}", ""]
    if tabs["tradeoff"]["rows"]:
        out += ["## Accuracy versus cost (student / teacher)", "", md_table(tabs["tradeoff"]), ""]
    for proto, t in tabs["protocols"].items():
        out += [f"## Verification: {proto}", "", md_table(t), ""]
        reasons = _reason_lines(doc.models, proto)
        out += [f"- {line}" for line in reasons] + ([""] if reasons else [])
    out += ["## Cost", "", md_table(tabs["cost"]), ""]
    fid = [m for m in doc.models if m.fidelity is not None]
    if fid:
        out += ["## Fidelity to the teacher (cosine per image)", "", "| student | mean | p5 | median | p95 |",
                "|---|---|---|---|---|"]
        out += [f"| {m.name} | {m.fidelity.mean:.4f} | {m.fidelity.percentiles['5']:.4f} | "
                f"{m.fidelity.percentiles['50']:.4f} | {m.fidelity.percentiles['95']:.4f} |" for m in fid]
        out += [f"\nOn {m.extra['fidelity_train']['sample']} of its own training faces (clean): mean "
                f"{m.extra['fidelity_train']['mean']:.4f} against {m.fidelity.mean:.4f} on the held-out people "
                f"({_fit_word(m.extra['fidelity_train']['mean'], m.fidelity.mean)})." for m in fid
                if m.extra.get("fidelity_train")]
        out.append("")
    lines = data_lines(doc)
    if lines:
        out += ["## Training data and the leak check", ""] + [f"- {x}" for x in lines] + [""]
    curves = [m for m in doc.models if m.extra.get("curve")]
    for m in curves:
        keys = [k for k in m.extra["curve"][0] if k not in ("step", "epoch", "minutes")]
        out += [f"## Learning curve: {m.name}", "", "| minutes | step | " + " | ".join(keys) + " |",
                "|---|---|" + "---|" * len(keys)]
        out += [f"| {r['minutes']:.1f} | {r['step']} | " + " | ".join(
            "–" if r.get(k) is None else f"{100 * r[k]:.2f}" for k in keys) + " |" for r in m.extra["curve"]]
        out.append("")
    if tabs["identification"]["rows"]:
        out += ["## 1:N identification", "", md_table(tabs["identification"]), ""]
    out += ["Full numbers: `report.json`; figures: `report.html`.", ""]
    return "\n".join(out)


def render_page(context: dict) -> str:
    """Fill the HTML template (``templates/report.html.j2``) with ``context`` (title, cards, sections)."""
    import jinja2

    import distill
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(_TEMPLATE_DIR), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    base = {"cards": [], "config_text": "", "versions_text": "", "version": distill.__version__,
            "created": _dt.datetime.now().strftime("%Y-%m-%d %H:%M")}
    return env.get_template("report.html.j2").render(**{**base, **context})


def _cards(doc: Report) -> list[dict]:
    cards = []
    for r in doc.tradeoff:
        if r.student_accuracy is None or r.teacher_accuracy is None:
            continue
        fewer = f"{1 / r.mult_adds_ratio:.1f}× fewer mult-adds" if r.mult_adds_ratio else ""
        faster = f"{fmt_ratio(r.speedup, 1)} the teacher's speed" if r.speedup else ""
        cards.append({"k": f"{r.student} on {r.protocol}", "v": f"{100 * r.student_accuracy:.2f}%",
                      "s": f"teacher {100 * r.teacher_accuracy:.2f}% ({-r.accuracy_drop_points:+.2f} pts); "
                           + ", ".join(x for x in (faster, fewer) if x)})
    if not cards:
        for m in doc.models:
            for proto, p in m.protocols.items():
                if p.accuracy_mean is not None:
                    cards.append({"k": f"{m.name} on {proto}", "v": f"{100 * p.accuracy_mean:.2f}%",
                                  "s": f"AUC {p.auc:.4f}, EER {fmt_pct(p.eer)}"})
    return cards


def render_html(doc: Report) -> str:
    """``report.html``: self-contained (figures embedded as PNG)."""
    models = doc.models
    tabs = report_tables(doc)
    sections = []
    if tabs["tradeoff"]["rows"]:
        sections.append({"title": "How much accuracy was given up for how much speed",
                         "note": "Ratios are student / teacher. Speed is measured CPU images/s at batch 32; "
                                 "accuracy is 10-fold verification accuracy.",
                         "tables": [tabs["tradeoff"]], "figures": [], "after": []})
    for proto, t in tabs["protocols"].items():
        p0 = next(m.protocols[proto] for m in models if proto in m.protocols)
        sections.append({"title": f"Verification: {proto}",
                         "note": f"{p0.n_pairs} pairs ({p0.n_genuine} genuine, {p0.n_impostor} impostor), "
                                 f"{p0.n_folds}-fold accuracy with the threshold chosen on the other folds. "
                                 "n/a: too few impostor pairs to resolve that FAR (hover for details). "
                                 + embedding_line(doc),
                         "tables": [t],
                         "figures": [{"png": roc_figure(models, proto),
                                      "caption": "ROC on a log-FAR axis (teachers solid, students dashed)"},
                                     {"png": hist_figure(models, proto),
                                      "caption": "Score distributions: separation of genuine and impostor pairs"}],
                         "after": _reason_lines(models, proto)})
    for fig, title, note, caption in (
            (fidelity_figure(models), "Fidelity to the teacher", "Cosine similarity between the student's and the "
             "teacher's embedding of the same image (1 = identical direction).", "Per-image cosine to the teacher"),
            (curve_figure(models), "Learning curves", "The student evaluated during training on the first "
             "protocol (train.eval_every): is the curve still rising at the end?", "Accuracy and TAR over time")):
        if fig:
            sections.append({"title": title, "note": note, "tables": [],
                             "figures": [{"png": fig, "caption": caption}], "after": []})
    lines = data_lines(doc)
    if lines:
        sections.append({"title": "Training data and the leak check", "note": "What the student trained on, and "
                         "whether any training image shows an evaluation person or copies an evaluation image.",
                         "tables": [], "figures": [], "after": lines})
    sections.append({"title": "Cost", "note": f"Measured on this machine's CPU "
                     f"({doc.versions.get('torch_threads', '?')} torch threads); median of repeats after warm-up.",
                     "tables": [tabs["cost"]], "figures": [], "after": []})
    if tabs["identification"]["rows"]:
        sections.append({"title": "1:N identification (FAISS)", "note": "One gallery image per identity, the other "
                         "images are probes; single-image identities are gallery distractors.",
                         "tables": [tabs["identification"]], "figures": [], "after": []})
    return render_page({
        "title": f"facedistill report: {doc.run or 'run'}",
        "subtitle": ", ".join(f"{m.name} ({m.role})" for m in models),
        "cards": _cards(doc), "sections": sections,
        "config_text": json.dumps(doc.config, indent=2),
        "versions_text": json.dumps(doc.versions, indent=2),
    })
