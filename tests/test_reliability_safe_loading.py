"""Safe loading: planted malicious pickles are refused, YAML tags are refused, earlier runs are never clobbered.

A "malicious pickle" here is a file whose unpickling would call ``os.system`` to create a
marker file; every test asserts the marker never appears.
"""
from __future__ import annotations

import ast
import hashlib
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from test_reliability_helpers import (QUICKSTART, ROOT, copy_cache, run_cli_inprocess, set_args, shared_tiny_cache,
                                      tiny_overrides)


class Payload:
    """Unpickling this runs a shell command (what a tampered checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant_torch_pickle(path: Path, marker: Path) -> Path:
    """A torch zip checkpoint with the payload inside an otherwise plausible state dict."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": "facedistill-student-v1", "state_dict": {"w": torch.zeros(2)}, "evil": Payload(marker)},
               path)
    return path


def plant_raw_pickle(path: Path, marker: Path) -> Path:
    """A legacy (non-zip) pickle with the payload at the top level."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(Payload(marker)))
    return path


PLANTERS = [plant_torch_pickle, plant_raw_pickle]


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("plant", PLANTERS)
def test_malicious_student_checkpoint_is_refused_by_eval(tmp_path: Path, plant) -> None:
    marker = tmp_path / "PWNED"
    evil = plant(tmp_path / "student.pt", marker)
    rc, out, err = run_cli_inprocess(["eval", str(QUICKSTART), "--checkpoint", str(evil), "--no-teacher",
                                      "--out", str(tmp_path / "eval"), *set_args(tiny_overrides(tmp_path / "c"))])
    assert not marker.exists()
    assert rc == 2 and "Traceback" not in err  # a file the user must replace
    assert str(evil) in err and "not a loadable facedistill student checkpoint" in err, err
    assert not (tmp_path / "eval").exists()  # refused before anything was written


@pytest.mark.parametrize("plant", PLANTERS)
def test_malicious_training_checkpoint_is_refused_on_resume(tmp_path: Path, plant,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    marker = tmp_path / "PWNED"
    cache = copy_cache(shared_tiny_cache(tmp_path_factory.getbasetemp()), tmp_path / "cache")
    run = tmp_path / "run"
    evil = plant(run / "checkpoints" / "last.pt", marker)
    evil_bytes = evil.read_bytes()
    rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(tiny_overrides(cache)), "--out", str(run),
                                      "--resume"])
    assert not marker.exists()
    assert rc == 1 and "Traceback" not in err, err
    assert f"{evil} could not be loaded: it is " in err and "weights_only" not in err, err
    assert ("pickled objects" if plant is plant_torch_pickle else "Python pickle") in err, err
    assert evil.read_bytes() == evil_bytes  # evidence kept, not silently replaced
    assert not (run / "student.pt").exists()


def test_tampered_teacher_cache_index_is_never_unpickled(tmp_path: Path,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    """index.npy replaced by a pickled object array: refused (allow_pickle=False), the cache is rebuilt."""
    marker = tmp_path / "PWNED"
    cache = copy_cache(shared_tiny_cache(tmp_path_factory.getbasetemp()), tmp_path / "cache")
    args = ["run", str(QUICKSTART), *set_args(tiny_overrides(cache, **{"train.epochs": 1}))]
    rc, _, err = run_cli_inprocess([*args, "--out", str(tmp_path / "run1")])
    assert rc == 0, err
    (index,) = (cache / "teacher").glob("*/index.npy")
    good = np.load(index)
    np.save(index, np.array([Payload(marker)] * len(good), dtype=object), allow_pickle=True)
    rc, out, err = run_cli_inprocess([*args, "--out", str(tmp_path / "run2")])
    assert not marker.exists()
    assert rc == 0, err
    assert "teacher cache unusable, rebuilding" in out and "index.npy" in out, out
    np.testing.assert_array_equal(np.load(index), good)


def test_yaml_python_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n")
    rc, _, err = run_cli_inprocess(["run", str(cfg), "--dry-run"])
    assert rc == 2 and "not valid YAML" in err and str(cfg) in err and not marker.exists(), err
    rc, _, err = run_cli_inprocess(["run", str(QUICKSTART), "--dry-run", "--set",
                                    f"name=!!python/object/apply:os.system ['touch {marker}']"])
    assert rc == 2 and "not valid YAML" in err and not marker.exists(), err
    cfg.write_text("name: !!python/name:os.system\n")
    rc, _, err = run_cli_inprocess(["run", str(cfg), "--dry-run"])
    assert rc == 2 and not marker.exists(), err


@pytest.mark.parametrize("command", ["run", "eval"])
def test_out_to_a_non_empty_directory_is_refused_and_untouched(tmp_path: Path, command: str) -> None:
    out = tmp_path / "earlier"
    (out / "checkpoints").mkdir(parents=True)
    (out / "report.json").write_text('{"accuracy": 0.99}\n')
    (out / "checkpoints" / "last.pt").write_bytes(b"earlier weights")
    before = snapshot(out)
    extra = ["--no-teacher", "--checkpoint", str(ROOT / "missing.pt")] if command == "eval" else []
    if command == "eval":  # a real checkpoint, so the refusal is about --out and nothing else
        from students import STUDENTS
        from distill.models import StudentSpec, save_student
        from distill.preprocess import student_preprocessing

        spec = StudentSpec("mobilenet_v1_025", {"input_size": 64, "embedding_dim": 128})

        class T:  # the teacher facts save_student records
            name, embedding_dim, normalized = "dlib_resnet", 128, False

            @staticmethod
            def fingerprint() -> str:
                return "t"

        ckpt = save_student(tmp_path / "s.pt", STUDENTS.build(spec.name, **spec.kwargs), spec,
                            student_preprocessing(64, "dlib_150"), T())
        extra = ["--no-teacher", "--checkpoint", str(ckpt)]
    rc, _, err = run_cli_inprocess([command, str(QUICKSTART), *set_args(tiny_overrides(tmp_path / "c")),
                                    "--out", str(out), *extra])
    assert rc == 2, err
    assert f"run directory {out} already holds a run" in err and "--overwrite" in err and "--resume" in err
    assert snapshot(out) == before


def test_resume_with_nothing_to_resume_is_a_usage_error(tmp_path: Path) -> None:
    rc, _, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(tiny_overrides(tmp_path / "c")),
                                    "--out", str(tmp_path / "never"), "--resume"])
    assert rc == 2 and "nothing to resume" in err, err
    assert not (tmp_path / "c").exists()  # refused before any data work


UNSAFE = {("yaml", "load"), ("yaml", "unsafe_load"), ("yaml", "full_load"), ("pickle", "load"), ("pickle", "loads"),
          ("dill", "load"), ("joblib", "load")}


def test_no_unsafe_loader_in_the_product_source() -> None:
    """Static guard: no yaml.load/pickle.load, torch.load always weights_only=True, np.load never allow_pickle."""
    problems = []
    for folder in ("distill", "teachers", "students"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                kw = {k.arg: k.value for k in node.keywords}
                if (owner, node.func.attr) in UNSAFE:
                    problems.append(f"{where}: {owner}.{node.func.attr}")
                if (owner, node.func.attr) == ("torch", "load"):
                    wo = kw.get("weights_only")
                    if not (isinstance(wo, ast.Constant) and wo.value is True):
                        problems.append(f"{where}: torch.load without weights_only=True")
                if (owner, node.func.attr) == ("np", "load"):
                    ap = kw.get("allow_pickle")
                    if isinstance(ap, ast.Constant) and ap.value is True:
                        problems.append(f"{where}: np.load(allow_pickle=True)")
    assert not problems, "\n".join(problems)
