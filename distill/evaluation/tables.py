"""Plain-text tables for the terminal: the one table printer, and the run summary built on it.

Example::

    print("\n".join(text_table(["model", "img/s"], [["student", "1,162"]])))
    print(summary_table(results, "runs/r1/report.html"))
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .results import ModelResult
from .verify import DEFAULT_FARS


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Left-aligned columns separated by two spaces, a dashed rule under the header; one string per line."""
    widths = [max([len(h), *(len(str(row[i])) for row in rows)]) for i, h in enumerate(head)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
    return [fmt(head), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def _pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def summary_table(results: Sequence[ModelResult], report_html: str | Path) -> str:
    """The numbers a user looks for first: every protocol's accuracy/AUC/EER/TAR, then cost and fidelity."""
    rows = []
    for r in results:
        for name, p in r.protocols.items():
            acc = f"{_pct(p.accuracy_mean)} ± {_pct(p.accuracy_std)}" if p.reason is None else f"n/a: {p.reason}"
            rows.append([r.role, r.name, name, f"{p.n_pairs:,}", acc, "n/a" if p.auc is None else f"{p.auc:.4f}",
                         _pct(p.eer), *(_pct(p.tar(far), 1) for far in DEFAULT_FARS)])
    verify = text_table(["role", "model", "protocol", "pairs", "acc % (10-fold)", "AUC", "EER %",
                         *(f"TAR@{far:g} %" for far in DEFAULT_FARS)], rows)
    cost = text_table(["role", "model", "cos to teacher", "params", "mult-adds", "img/s (b32)"], [
        [r.role, r.name, "" if r.fidelity is None else f"{r.fidelity.mean:.3f}",
         "" if r.cost.params is None else f"{r.cost.params / 1e6:.2f}M",
         "" if r.cost.mult_adds is None else f"{r.cost.mult_adds / 1e6:.1f}M",
         "" if r.cost.images_per_s is None else f"{r.cost.images_per_s:.0f}"]
        for r in results])
    return "\n".join(["verification (n/a: too few impostor pairs for that FAR):", *verify, "", *cost,
                      f"report: {report_html}"])
