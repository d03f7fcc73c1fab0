"""``python -m benchmarks`` (``make bench``): every benchmark section, one BENCHMARKS.md and one JSON.

Usage::

    .venv/bin/python -m benchmarks                                   # full run (< 30 min on 2 cores)
    .venv/bin/python -m benchmarks --quick --out /tmp/B.md --json /tmp/b.json   # smoke test, tiny settings
    .venv/bin/python -m benchmarks --sections inference,speedup
    .venv/bin/python -m benchmarks --eval-grid 10k:128+512,100k:128+512,1M:128+512   # the whole search grid

Sections: inference, speedup, dlib_port, training, evaluation, memory, export, deployed, alignment, recordio,
leak_guard. Each runs in turn with
progress on stdout; the JSON (and the markdown) are rewritten atomically after every section, so
a long run that is stopped keeps what it measured. A section that fails is reported in both
files and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Sequence

from benchmarks.report import SECTIONS, machine_info, machine_label, write_results

#: default 1:N search grid: 1M only at dim 128 keeps the full run within 30 minutes on 2 cores
#: (IVF k-means and the HNSW build at 1M x 512 take longer than the rest of the run together)
DEFAULT_EVAL_GRID = "10k:128+512,100k:128+512,1M:128"
QUICK_EVAL_GRID = "10k:128"


def parse_grid(spec: str) -> list[tuple[int, int]]:
    """``"10k:128+512,1M:128"`` -> ``[(10000, 128), (10000, 512), (1000000, 128)]``."""
    mult = {"k": 1_000, "m": 1_000_000}
    out = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        try:
            size, dims = part.split(":")
            n = int(float(size[:-1]) * mult[size[-1].lower()]) if size[-1].lower() in mult else int(size)
            out += [(n, int(d)) for d in dims.split("+")]
        except (ValueError, KeyError):
            raise argparse.ArgumentTypeError(f"bad --eval-grid entry {part!r}: expected SIZE:DIM[+DIM...], "
                                             "e.g. 100k:128+512 or 1M:128") from None
    if not out:
        raise argparse.ArgumentTypeError("--eval-grid is empty")
    return out


def parse_sections(spec: str) -> list[str]:
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in names]      # report order


# --------------------------------------------------------------------------- sections
def run_inference(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.inference import bench_inference

    return bench_inference(quick=args.quick, log=log, progress=not args.no_progress)


def run_speedup(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.inference import bench_inference, settings, speedup_rows

    inf = doc["sections"].get("inference")
    if inf is None:   # speed-up alone: time only what it needs (the largest batch)
        log("speedup: no inference section in this run; timing the largest batch only")
        inf = bench_inference(quick=args.quick, log=log, progress=not args.no_progress,
                              batches=[max(settings(args.quick)["batches"])])
        doc["sections"]["inference_for_speedup"] = inf
    batch = max(r["batch"] for r in inf["rows"])
    teachers = list(dict.fromkeys(r["model"] for r in inf["rows"] if r["kind"] == "teacher"))
    return {"batch": batch, "headline_teacher": "dlib_resnet" if "dlib_resnet" in teachers else teachers[0],
            "teachers": {t: speedup_rows(inf, teacher=t, batch=batch) for t in teachers}}


def run_dlib_port(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.dlib_port import bench_dlib_port

    return bench_dlib_port(n_chips=8, batch=4, repeats=1) if args.quick else bench_dlib_port(64, 32, 3)


def run_training(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.training import benchmark_training

    return benchmark_training(quick=True, log=log) if args.quick else benchmark_training(log=log)


def run_evaluation(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    import faiss
    from tqdm.auto import tqdm

    from benchmarks.evaluation import bench_search, bench_verification

    grid = args.eval_grid or parse_grid(QUICK_EVAL_GRID if args.quick else DEFAULT_EVAL_GRID)
    queries = 200 if args.quick else 1000
    out: dict[str, Any] = {"faiss_threads": faiss.omp_get_max_threads(), "grid": grid,
                           "verification": bench_verification(2000 if args.quick else 6000), "search": []}
    log(f"evaluation: 10-fold verification on {out['verification']['n_pairs']} pairs: "
        f"{out['verification']['seconds_total'] * 1e3:.0f} ms")
    for n, dim in tqdm(grid, desc="search", unit="gallery", disable=args.no_progress):
        t0 = time.perf_counter()
        r = bench_search(n, dim, queries)
        out["search"].append(r)
        log(f"evaluation: {n:,} x {dim}: numpy {r['numpy']['queries_per_s']:,.0f} q/s, flat "
            f"{r['flat']['queries_per_s']:,.0f} q/s ({time.perf_counter() - t0:.0f} s)")
    return out


def run_memory(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.memory import bench_memory

    return bench_memory(quick=args.quick, log=log)


def run_export(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.export import bench_export

    trained = [p for p in args.export_checkpoint if p.is_file()]
    return bench_export(trained, alphas=(0.25,) if args.quick else (1.0, 0.5, 0.25), input_size=112,
                        quick=args.quick)


def run_deployed(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.export import bench_deployed

    return bench_deployed(alphas=(0.5,), rounds=3) if args.quick else bench_deployed()


def run_alignment(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.alignment import bench_large

    if args.quick:
        return bench_large(n=4, n_mtcnn=2, repeats=1, lfw_n=8, log=log, progress=not args.no_progress)
    return bench_large(log=log, progress=not args.no_progress)


def run_recordio(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.recordio_scale import bench_recordio

    return bench_recordio(quick=args.quick, log=log)


def run_leak_guard(args: argparse.Namespace, doc: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    from benchmarks.leak_guard import bench_leak_guard

    return bench_leak_guard(quick=args.quick, log=log)


RUNNERS: dict[str, Callable[[argparse.Namespace, dict[str, Any], Callable[[str], None]], dict[str, Any]]] = {
    "inference": run_inference, "speedup": run_speedup, "dlib_port": run_dlib_port, "training": run_training,
    "evaluation": run_evaluation, "memory": run_memory, "export": run_export, "deployed": run_deployed,
    "alignment": run_alignment, "recordio": run_recordio, "leak_guard": run_leak_guard}


# --------------------------------------------------------------------------- main
def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n")[0],
                                 epilog=f"sections: {', '.join(SECTIONS)}")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test, well under a minute of work)")
    ap.add_argument("--sections", type=parse_sections, default=list(SECTIONS),
                    help="comma-separated subset, e.g. inference,speedup (default: all)")
    ap.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"), help="markdown report")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/results.json"), help="raw numbers")
    ap.add_argument("--eval-grid", type=parse_grid, default=None,
                    help=f"1:N search galleries SIZE:DIM[+DIM],... (default {DEFAULT_EVAL_GRID}; quick "
                         f"{QUICK_EVAL_GRID})")
    ap.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    ap.add_argument("--export-checkpoint", type=Path, action="append", default=[], metavar="STUDENT_PT",
                    help="trained student.pt to export and measure (fp32 vs int8 accuracy on LFW DevTest)")
    ap.add_argument("--update", action="store_true",
                    help="keep the other sections of the existing --json and re-run only --sections")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    """Run the selected sections and write the report; returns the exit status (1 if a section failed)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    command = shlex.join(["python", "-m", "benchmarks", *argv])
    doc: dict[str, Any] = {"meta": machine_info(command, args.quick), "sections": {}, "errors": {}}
    doc["meta"]["sections"] = args.sections
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    if args.update and args.json.is_file():  # re-run some sections, keep the rest as measured
        old = json.loads(args.json.read_text())
        doc["sections"] = {k: v for k, v in old.get("sections", {}).items() if k not in args.sections}
        doc["errors"] = {k: v for k, v in old.get("errors", {}).items() if k not in args.sections}
        seconds = {k: v for k, v in old["meta"].get("section_seconds", {}).items() if k not in args.sections}
        cpu = {k: v for k, v in old["meta"].get("section_cpu_seconds", {}).items() if k not in args.sections}
        doc["meta"]["command"] = f"{old['meta']['command']}, then {command}"
        kept_on = old["meta"].get("section_machine") or {}
        doc["meta"]["section_machine"] = {
            k: kept_on.get(k, f"{old['meta'].get('cpu_model', '?')}, CPU capability not recorded")
            for k in doc["sections"]}
        doc["meta"]["sections"] = [s for s in SECTIONS if s in doc["sections"] or s in args.sections]
    start = time.perf_counter()
    for i, name in enumerate(args.sections, 1):
        log(f"[{i}/{len(args.sections)}] {name} ...")
        t0, c0 = time.perf_counter(), cpu_seconds()
        try:
            doc["sections"][name] = RUNNERS[name](args, doc, log)
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others
            doc["errors"][name] = f"{type(e).__name__}: {e}"
            log(f"[{i}/{len(args.sections)}] {name} FAILED: {type(e).__name__}: {e}")
            traceback.print_exc()
        seconds[name], cpu[name] = time.perf_counter() - t0, cpu_seconds() - c0
        doc["meta"].setdefault("section_machine", {})[name] = machine_label(doc["meta"])
        log(f"[{i}/{len(args.sections)}] {name} done in {seconds[name]:.1f} s ({cpu[name]:.1f} CPU s)")
        doc["meta"].update(section_seconds=seconds, section_cpu_seconds=cpu,
                           seconds=sum(seconds.values()) if args.update else time.perf_counter() - start)
        write_results(doc, args.out, args.json)
    log(f"wrote {args.out} and {args.json} in {time.perf_counter() - start:.0f} s"
        + (f"; failed sections: {', '.join(doc['errors'])}" if doc["errors"] else ""))
    return 1 if doc["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
