"""A run's teacher and students as one markdown table, read from its ``report.json``: what RESULTS.md quotes
for a single run (cost, training budget, accuracy and TAR with their ratios to the teacher, fidelity).

Usage::

    .venv/bin/python -m benchmarks.run_table runs/results/sface_050_112 \\
        --accuracy DevTest --tar DevTest-all-pairs

Prints the table on stdout; reads the report, writes nothing.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _pct(x: Any, digits: int = 1) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f}"


def _ratio(a: Any, b: Any) -> str:
    return "" if a is None or not b else f"{a / b:.3f}"


def table(report: dict[str, Any], accuracy: str, tar: str) -> str:
    """Markdown rows: teacher first, then each student with its ratios to the teacher."""
    models = report["models"]
    teacher = next(m for m in models if m["role"] == "teacher")

    def acc(m: dict) -> Any:
        return (m["protocols"].get(accuracy) or {}).get("accuracy_mean")

    def tar_at(m: dict, far: str) -> Any:
        return ((m["protocols"].get(tar) or {}).get("tar_at_far") or {}).get(far)

    rows = ["| model | mult-adds | training | " + accuracy + " acc % | acc ratio | TAR@1e-3 % | TAR ratio | "
            "TAR@1e-4 % | cosine to teacher |", "|---|---|---|---|---|---|---|---|---|"]
    for m in [teacher] + [m for m in models if m["role"] == "student"]:
        p = m["protocols"].get(accuracy) or {}
        train = (m.get("extra") or {}).get("train") or {}
        budget = f"{train['seconds'] / 60:.0f} min, {train['steps']} steps" if train else ""
        fid = (m.get("fidelity") or {}).get("mean")
        is_t = m is teacher
        rows.append(f"| {m['name']} | {m['mult_adds'] / 1e6:.1f}M | {budget} | {_pct(acc(m), 2)} ± "
                    f"{_pct(p.get('accuracy_std'), 2)} | {'' if is_t else _ratio(acc(m), acc(teacher))} | "
                    f"{_pct(tar_at(m, '0.001'))} | {'' if is_t else _ratio(tar_at(m, '0.001'), tar_at(teacher, '0.001'))}"
                    f" | {_pct(tar_at(m, '0.0001'))} | {'' if fid is None else f'{fid:.4f}'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run_table", description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path, help="a run folder holding report.json")
    ap.add_argument("--accuracy", default="DevTest", help="protocol for the 10-fold accuracy (default DevTest)")
    ap.add_argument("--tar", default="DevTest-all-pairs", help="protocol for TAR at FAR (default DevTest-all-pairs)")
    args = ap.parse_args(argv)
    path = args.run / "report.json"
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: give a finished run's folder")
    print(table(json.loads(path.read_text()), args.accuracy, args.tar))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
