"""Run reports: ``report.json`` (machine-readable), ``report.md`` and a self-contained ``report.html``.

The pipeline fills one :class:`~distill.evaluation.results.ModelResult` per evaluated model and
calls :func:`write_reports`; :func:`compare_runs` puts several runs on one page (accuracy versus
mult-adds, the paper's trade-off view). Rendering lives in :mod:`distill.evaluation.render`, the
result types and ``load_report`` in :mod:`distill.evaluation.results`.

Example::

    results = [ModelResult("dlib_resnet", "teacher", cost=t_cost, protocols={"lfw_view2": t_eval}),
               ModelResult("mobilenet_v1_050", "student", cost=s_cost, protocols={"lfw_view2": s_eval},
                           fidelity=fidelity(s_emb, t_emb), teacher="dlib_resnet")]
    paths = write_reports("runs/run1", results, config=cfg.model_dump(mode="json"), extra={"train_minutes": 30})
    compare_runs(["runs/run1", "runs/run2"], "runs/compare")
"""
from __future__ import annotations

import datetime as _dt
import platform
import sys
from pathlib import Path
from typing import Sequence

from distill.io import atomic_write_json, atomic_write_text

from .render import cell, fmt_acc, fmt_num, fmt_pct, md_table, render_html, render_markdown, render_page, \
    tradeoff_figure
from .results import SCHEMA_VERSION, ModelResult, Report, jsonable, load_report, tradeoff

HEADLINE_FAR = 1e-3


def versions() -> dict[str, str]:
    """Versions of python and the libraries that shape the numbers, and the CPU capability they ran on
    (:func:`distill.hardware.cpu_capability`: instruction sets change speed and int8 results)."""
    out = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine()}
    for mod in ("distill", "torch", "numpy", "faiss", "timm", "matplotlib"):
        try:
            out[mod] = str(__import__(mod).__version__)
        except Exception:  # noqa: BLE001 - a missing optional library is just absent
            continue
    try:
        import torch

        from distill.hardware import cpu_capability
        out["torch_threads"] = str(torch.get_num_threads())
        cap = cpu_capability()
        out["cpu_capability"], out["cpu_int8_kernels"] = cap.label(), cap.int8_kernels()
    except Exception:  # noqa: BLE001
        pass
    return out


def build_report(results: Sequence[ModelResult], config: dict, extra: dict | None = None) -> Report:
    """The report of a run (see the schema in the README): models, their trade-off, config and versions."""
    models = list(results)
    return Report(created_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                  run=(config or {}).get("name"), config=jsonable(config or {}), versions=versions(),
                  extra=jsonable(extra or {}), models=models, tradeoff=tradeoff(models))


def write_reports(run_dir: str | Path, results: Sequence[ModelResult], config: dict | None = None,
                  extra: dict | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``report.html`` into ``run_dir`` (each atomically)."""
    if not results:
        raise ValueError("write_reports needs at least one ModelResult")
    run_dir = Path(run_dir)
    doc = build_report(results, config or {}, extra)
    return {"json": atomic_write_json(run_dir / "report.json", doc.to_dict()),
            "md": atomic_write_text(run_dir / "report.md", render_markdown(doc)),
            "html": atomic_write_text(run_dir / "report.html", render_html(doc))}


def compare_runs(run_dirs: Sequence[str | Path], out: str | Path, protocol: str | None = None) -> dict[str, Path]:
    """One page comparing runs: ``comparison.json``/``.md``/``.html`` in ``out`` with accuracy vs mult-adds.

    ``protocol`` picks the verification protocol (default: the first one of the first run).
    Teachers that appear in several runs are shown once.
    """
    docs = [(Path(d), load_report(d)) for d in run_dirs]
    if not docs:
        raise ValueError("compare_runs needs at least one run directory")
    protocol = protocol or next((p for _, d in docs for m in d.models for p in m.protocols), None)
    points, seen_teachers = [], set()
    for path, d in docs:
        for m in d.models:
            p = m.protocols.get(protocol)
            if p is None or (m.role == "teacher" and m.name in seen_teachers):
                continue
            if m.role == "teacher":
                seen_teachers.add(m.name)
            points.append({"run": d.run or path.name, "dir": str(path), "name": m.name, "role": m.role,
                           "params": m.cost.params, "mult_adds": m.cost.mult_adds, "images_per_s": m.cost.images_per_s,
                           "accuracy": p.accuracy_mean, "std": p.accuracy_std, "auc": p.auc,
                           "eer": p.eer, "tar_at_far": p.tar_at_far,
                           "fidelity": None if m.fidelity is None else m.fidelity.mean})
    out = Path(out)
    doc = {"schema_version": SCHEMA_VERSION, "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(
        timespec="seconds"), "protocol": protocol, "runs": [str(p) for p, _ in docs], "points": points}
    header = ["run", "model", "role", "mult-adds", "params", "img/s", "accuracy %", f"TAR@FAR={HEADLINE_FAR:g}",
              "AUC", "fidelity"]
    rows = [{"cls": p["role"], "cells": [
        cell(p["run"]), cell(p["name"]), cell(p["role"]), cell(fmt_num(p["mult_adds"])), cell(fmt_num(p["params"])),
        cell(fmt_num(p["images_per_s"])), cell(fmt_acc(p["accuracy"], p["std"])),
        cell(fmt_pct(p["tar_at_far"].get(HEADLINE_FAR))), cell(None if p["auc"] is None else f"{p['auc']:.4f}"),
        cell(None if p["fidelity"] is None else f"{p['fidelity']:.3f}")]}
        for p in sorted(points, key=lambda q: -(q["mult_adds"] or 0))]
    table = {"header": header, "rows": rows}
    fig = tradeoff_figure(points, f"Accuracy versus mult-adds, {protocol}")
    md = "\n".join([f"# Comparison on {protocol}", "", md_table(table), ""])
    html = render_page({"title": f"facedistill comparison: {protocol}",
                        "subtitle": f"{len(docs)} runs: " + ", ".join(d.run or p.name for p, d in docs),
                        "sections": [{"title": "Accuracy versus mult-adds", "note": "The paper's trade-off view: "
                                      "each marker is a model (teachers as stars), error bars are the fold std.",
                                      "tables": [table], "figures": [{"png": fig, "caption": "accuracy vs mult-adds"}]
                                      if fig else [], "after": []}]})
    return {"json": atomic_write_json(out / "comparison.json", jsonable(doc)),
            "md": atomic_write_text(out / "comparison.md", md),
            "html": atomic_write_text(out / "comparison.html", html)}
