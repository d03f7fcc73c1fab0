"""Config fuzzing: random YAML documents and random ``--set`` overrides never end in a traceback.

Every input must give either a valid plan (``distill run --dry-run``, exit 0) or a
config error (exit 2) whose one-paragraph message names the offending key path.
``distill.cli.main`` runs in-process (a plan costs ~1-3 s: it profiles both models),
with a bounded number of hypothesis examples.
"""
from __future__ import annotations

import contextlib
import io
import string
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from distill.cli import main
from distill.config import Config

ROOT = Path(__file__).resolve().parents[1]
# tiny models keep each plan cheap; the fuzzed part is layered on top of this valid base
BASE = {"student": {"name": "mobilenet_v1_025", "input_size": 64}}


def schema_paths(model: type[BaseModel] = Config, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf key path of the settings model, e.g. ('train', 'loss', 'mse')."""
    out: list[tuple[str, ...]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += schema_paths(ann, prefix + (name,))
        else:
            out.append(prefix + (name,))
    return out


PATHS = schema_paths()
SECTIONS = sorted({p[:i] for p in PATHS for i in range(1, len(p))})
# keys a user might type: real ones, near misses, and junk
names = st.one_of(st.sampled_from(sorted({p[-1] for p in PATHS} | {s[-1] for s in SECTIONS})),
                  st.text(string.ascii_lowercase + "_", min_size=1, max_size=10))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                    st.floats(allow_nan=True, allow_infinity=True, width=32),
                    st.text(max_size=12), st.sampled_from(["fp32", "bf16", "online", "cached", "skip", "stop",
                                                           "adamw", "sgd", "dlib_resnet", "mobilenet_v1_025",
                                                           "synthetic", "folder", "null", "1e-3", "~", "[]"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(names, inner, max_size=3)), max_leaves=6)


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse usage errors
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()


def check_outcome(rc: int, out: str, err: str, must_name: list[str]) -> None:
    """Exit 0 with a plan, or exit 2 with one clear message naming one of ``must_name``."""
    assert "Traceback" not in err + out, err
    assert rc in (0, 2), f"exit {rc}: {err}"
    if rc == 0 or (rc == 2 and "cannot start; nothing was computed. Missing:" in err):
        assert out.startswith("plan for run"), out  # a plan; exit 2 when it lists inputs that are missing
        return
    assert err.startswith("distill: error:"), err
    assert any(name in err for name in must_name), f"none of {must_name} named in: {err}"


def blame(path: tuple[str, ...]) -> list[str]:
    """The key paths an error about ``path`` may name: the path, or the first prefix the schema lacks."""
    out = [".".join(path)]
    model: Any = Config
    for i, seg in enumerate(path):
        field = model.model_fields.get(seg) if model is not None else None
        if field is None:
            out.append(".".join(path[:i + 1]))
            break
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        out.append(".".join(path[:i + 1]))  # a value where a section is wanted, or a bad container
    return out


def merge(base: dict, path: tuple[str, ...], value: Any) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(base))
    node = doc
    for seg in path[:-1]:
        nxt = node.get(seg)
        if not isinstance(nxt, dict):
            nxt = node[seg] = {}
        node = nxt
    node[path[-1]] = value
    return doc


key_paths = st.one_of(st.sampled_from(PATHS), st.sampled_from(SECTIONS),
                      st.tuples(st.sampled_from(SECTIONS), names).map(lambda t: t[0] + (t[1],)),
                      st.lists(names, min_size=1, max_size=3).map(tuple))

FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(path=key_paths, value=values)
def test_random_yaml_documents_plan_or_name_the_key(tmp_path: Path, path: tuple[str, ...], value: Any) -> None:
    cfg = tmp_path / "fuzz.yaml"
    cfg.write_text(yaml.safe_dump(merge(BASE, path, value)))
    rc, out, err = run_cli(["run", str(cfg), "--dry-run", "--out", str(tmp_path / "run")])
    check_outcome(rc, out, err, blame(path))
    assert not (tmp_path / "run").exists()  # a plan writes nothing


@FUZZ
@given(path=key_paths, raw=st.one_of(values.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()
                                                .removesuffix("...").strip()),
                                      st.text(max_size=15)))
def test_random_set_overrides_plan_or_name_the_key(tmp_path: Path, path: tuple[str, ...], raw: str) -> None:
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    item = ".".join(path) + "=" + raw
    rc, out, err = run_cli(["run", str(cfg), "--dry-run", "--set", item, "--out", str(tmp_path / "run")])
    check_outcome(rc, out, err, blame(path) + [repr(item)])


def leaf_field(path: tuple[str, ...]) -> Any:
    model: Any = Config
    for seg in path[:-1]:
        model = model.model_fields[seg].annotation
    return model.model_fields[path[-1]]


def plausible(path: tuple[str, ...]) -> st.SearchStrategy:
    """Values near a leaf's default: mostly valid, sometimes just over a limit."""
    default = leaf_field(path).get_default(call_default_factory=True)
    if isinstance(default, bool):
        return st.booleans()
    if isinstance(default, int):
        return st.integers(-1, 2 * default + 2)
    if isinstance(default, float):
        return st.floats(-0.1, 2 * default + 1.0)
    if default is None:
        return st.one_of(st.none(), st.integers(0, 300), st.floats(0, 2), st.booleans())
    return st.just(default if not isinstance(default, Path) else str(default))


near_valid = st.lists(st.sampled_from(PATHS).flatmap(lambda p: st.tuples(st.just(p), plausible(p))),
                      min_size=1, max_size=4)


@FUZZ
@given(edits=near_valid)
def test_near_valid_documents_plan_or_name_the_key(tmp_path: Path, edits: list[tuple[tuple[str, ...], Any]]) -> None:
    """Mostly-valid edits reach the planner (models built and profiled): it must not crash either."""
    doc = BASE
    for path, value in edits:
        doc = merge(doc, path, value)
    cfg = tmp_path / "near.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    rc, out, err = run_cli(["run", str(cfg), "--dry-run", "--out", str(tmp_path / "run")])
    check_outcome(rc, out, err, [n for path, _ in edits for n in blame(path)] + ["data.root"])


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_random_text_as_config_is_a_clean_error(tmp_path: Path, text: str) -> None:
    """Arbitrary text (mostly not a mapping of sections): a plan or exit 2, never a traceback."""
    cfg = tmp_path / "junk.yaml"
    cfg.write_bytes(text.encode("utf-8", "surrogatepass"))
    rc, out, err = run_cli(["run", str(cfg), "--dry-run", "--out", str(tmp_path / "run")])
    assert "Traceback" not in err + out and rc in (0, 2), f"exit {rc}: {err}"
    if rc == 2:
        assert err.startswith("distill: error:") and str(cfg) in err, err  # names the file it read


@pytest.mark.parametrize("item,named", [
    ("train.epochs=-1", "'train.epochs'"),
    ("train.loss.mse=.nan", "train.loss.mse"),
    ("student.input_size=1e9", "'student.input_size'"),
    ("data.synthetic=3", "'data.synthetic'"),
    ("eval.pairs={file: [1, 2]}", "eval.pairs"),
    ("teacher.options=[1]", "'teacher.options'"),
    ("nope.deeper.still=1", "unknown key 'nope'"),
    ("=1", "empty key segment"),
    ("train.lr", "expected KEY=VALUE"),
    ("train.lr=[unclosed", "not valid YAML"),
])
def test_known_nasty_overrides(tmp_path: Path, item: str, named: str) -> None:
    """Cases the fuzzer found interesting, pinned so they stay fixed."""
    cfg = tmp_path / "base.yaml"
    cfg.write_text(yaml.safe_dump(BASE))
    rc, out, err = run_cli(["run", str(cfg), "--dry-run", "--set", item])
    assert rc == 2 and "Traceback" not in err and named in err, err
