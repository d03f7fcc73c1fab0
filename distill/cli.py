"""The ``distill`` command line.

Exit codes (:mod:`distill.errors`): 0 ok; 2 an input the user must fix (arguments, config keys,
data folders, pairs files, weights files: one paragraph naming it and a remedy that exists);
1 a runtime failure; 130 interrupted. ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable, Sequence


from distill.errors import EXIT_INPUT, EXIT_RUNTIME, InputError, UsageError

__all__ = ["main", "build_parser", "UsageError"]


def _fmt_millions(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 1e6:.2f}M"


def print_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> None:
    """Print ``rows`` as an aligned text table; ``columns`` is (key, header)."""
    from distill.evaluation.tables import text_table

    print("\n".join(text_table([h for _, h in columns], [[str(r.get(k, "")) for k, _ in columns] for r in rows])))


# --------------------------------------------------------------------------- models / profile
def _student_row(name: str, **kwargs: Any) -> dict[str, Any]:
    from students import STUDENTS
    from distill.profile import profile

    entry = STUDENTS.get(name)
    net = entry.build(**kwargs)
    size = int(getattr(net, "input_size", 224))
    cost = profile(net, size)
    head = getattr(net, "head", None)
    out = getattr(head, "embedding_dim", None) or getattr(head, "num_classes", None)
    return {"kind": "student", "name": name, "params": cost.params, "mult_adds": cost.mult_adds,
            "input_size": size, "output_dim": out, "description": entry.description}


def _teacher_rows() -> list[dict[str, Any]]:
    try:
        from teachers import TEACHERS, describe_teacher
    except ImportError:  # teachers package not populated yet
        return []
    return [describe_teacher(entry) for entry in TEACHERS]


def cmd_models(args: argparse.Namespace) -> int:
    """``distill models``: every registered student and teacher with params and mult-adds."""
    from students import STUDENTS

    rows = [_student_row(e.name) for e in STUDENTS] + _teacher_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        r["params_h"], r["mult_adds_h"] = _fmt_millions(r["params"]), _fmt_millions(r["mult_adds"])
    shown = [{**r, **{k: "n/a" for k in ("input_size", "output_dim") if r.get(k) is None}} for r in rows]
    print_table(shown, [("kind", "kind"), ("name", "name"), ("params_h", "params"), ("mult_adds_h", "mult-adds"),
                        ("input_size", "input"), ("output_dim", "dim"), ("preprocessing", "preprocessing"),
                        ("description", "description")])
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    """``distill profile NAME``: params and mult-adds of one student configuration (the paper's cost planning)."""
    from students import STUDENTS

    if args.name not in STUDENTS:
        raise UsageError(_unknown(STUDENTS, args.name))
    kwargs: dict[str, Any] = {}
    if args.alpha is not None:
        kwargs["alpha"] = args.alpha
    if args.input_size is not None:
        kwargs["input_size"] = args.input_size
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    if args.embedding_dim is not None:
        kwargs["embedding_dim"] = args.embedding_dim
    try:
        row = _student_row(args.name, **kwargs)
    except TypeError as e:
        raise UsageError(f"{args.name} does not take one of the options given: {e}") from None
    except ValueError as e:  # an out-of-range option (alpha, input size): the model's own message names it
        raise UsageError(f"distill profile {args.name}: {e}") from None
    row["alpha"] = args.alpha
    # a name like mobilenet_v1_050 fixes alpha only by default: say which width was profiled
    shown = row["name"] if args.alpha is None else f"{row['name']} at alpha {args.alpha:g}"
    if args.json:
        print(json.dumps([row], indent=2))
    else:
        print(f"{shown}: {row['params']:,} params ({_fmt_millions(row['params'])}), "
              f"{row['mult_adds']:,} mult-adds ({_fmt_millions(row['mult_adds'])}) at {row['input_size']}x"
              f"{row['input_size']}, output dim {row['output_dim']}")
    return 0


def _unknown(registry: Any, name: str) -> str:
    try:
        registry.get(name)
    except KeyError as e:
        return str(e)
    return ""


# --------------------------------------------------------------------------- run / eval / cache / report
def _load(args: argparse.Namespace):
    from distill.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.set or [])
        if getattr(args, "out", None):
            cfg.out = args.out
    except ConfigError as e:
        raise UsageError(str(e)) from None
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    """``distill run CONFIG``: the whole pipeline, or with ``--dry-run`` only its plan."""
    from distill import pipeline

    cfg = _load(args)
    if args.dry_run:
        plan = pipeline.plan(cfg)
        print(plan.format())
        if plan.missing:  # a plan that cannot run is an input to fix: the error `distill run` would give
            from distill.preflight import missing_artifacts_error

            raise missing_artifacts_error(plan.missing)
        return 0
    pipeline.run(cfg, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_cache_teacher(args: argparse.Namespace) -> int:
    """``distill cache-teacher CONFIG``: build the cached teacher embeddings on their own."""
    from distill import pipeline

    pipeline.cache_teacher(_load(args))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``distill eval CONFIG --checkpoint FILE``: evaluate the teacher and saved or exported students."""
    from distill import pipeline

    cfg = _load(args)
    pipeline.evaluate(cfg, checkpoints=args.checkpoint or [], include_teacher=not args.no_teacher,
                      overwrite=args.overwrite)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``distill report RUN...``: one comparison page over finished runs."""
    from distill import pipeline

    pipeline.compare(args.run_dirs, args.out)
    return 0


# --------------------------------------------------------------------------- parser
def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML config (see configs/ and the README's config reference)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=3 (repeatable; validated like the file)")
    p.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: the config's `out`)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every ``distill`` command (``--help`` text included)."""
    parser = argparse.ArgumentParser(
        prog="distill",
        description="Distil a large face-embedding teacher into a MobileNet student, "
                    "evaluate both, and report accuracy against cost.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("models", help="list registered students and teachers with params and mult-adds",
                       description="List every registered student and teacher with its parameter count and "
                                   "mult-adds at its default input size.")
    p.add_argument("--json", action="store_true", help="machine-readable output (a list of objects)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("profile", help="params and mult-adds of one student configuration",
                       description="Parameters and mult-adds of one student configuration: the paper's "
                                   "cost planning (width multiplier alpha, resolution = input size).")
    p.add_argument("name", help="registered student name (see `distill models`)")
    p.add_argument("--alpha", type=float, help="width multiplier (MobileNet students)")
    p.add_argument("--input-size", type=int, help="input resolution in pixels")
    head = p.add_mutually_exclusive_group()
    head.add_argument("--embedding-dim", type=int, help="embedding head output dimension")
    head.add_argument("--num-classes", type=int, help="classifier head (e.g. 1000 for the paper's tables)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("run", help="distil a teacher into a student end to end (data, train, eval, report)",
                       description="Run the whole pipeline a config describes: prepare data (generate or scan, "
                                   "split identity-disjoint, align with a cache), build teacher and student, "
                                   "distil, evaluate both, and write report.json/.md/.html into the run directory.")
    _add_config_args(p)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument("--dry-run", action="store_true",
                   help="print the plan (teacher, student, data sizes, costs, outputs) and exit without training")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("eval", help="evaluate the teacher and student checkpoints on the config's data",
                       description="Evaluate the config's teacher and any student checkpoints (student.pt files "
                                   "written by `distill run`, or files from `distill export`) on the config's evaluation "
                                   "pairs; writes reports.")
    _add_config_args(p)
    p.add_argument("--checkpoint", action="append", type=Path, metavar="FILE",
                   help="student to evaluate: RUN/student.pt or an exported .onnx (repeatable)")
    p.add_argument("--no-teacher", action="store_true", help="skip the teacher")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("cache-teacher", help="build the cached teacher embeddings on their own (resumable)",
                       description="Compute the teacher's embeddings of K augmented views per training image "
                                   "once (train.cache_views), so runs with train.teacher_mode=cached and "
                                   "width/resolution sweeps pay for the teacher once. Resumable.")
    _add_config_args(p)
    p.set_defaults(func=cmd_cache_teacher)

    p = sub.add_parser("report", help="compare finished runs in one page (accuracy vs mult-adds)",
                       description="Read report.json of each run directory and write a comparison "
                                   "(comparison.json/.md/.html with the accuracy-versus-mult-adds plot).")
    p.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="output folder (default runs/compare)")
    p.set_defaults(func=cmd_report)

    from distill.deploy.cli import register_cli  # export, gallery build|search

    register_cli(sub)
    _debug_everywhere(parser)
    return parser


def _debug_everywhere(parser: argparse.ArgumentParser) -> None:
    """Accept ``--debug`` after the subcommand too (``distill run X --debug``), not only before it."""
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        for child in getattr(action, "choices", {}).values():
            if "--debug" not in child._option_string_actions:
                child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                   help="show full tracebacks on errors")
            _debug_everywhere(child)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``distill`` command line; returns the exit code (see the module docs)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except InputError as e:
        if args.debug:
            raise
        print(f"distill: error: {e}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("distill: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear paragraph instead of a traceback
        if args.debug:
            raise
        # our own errors carry a full message; name the type only for unexpected ones
        ours = type(e).__module__.split(".")[0] in ("distill", "teachers", "students")
        text = str(e) if ours else f"{type(e).__name__}: {e}"
        print(f"distill: error: {text}\n(run with --debug for the traceback)", file=sys.stderr)
        return EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())
