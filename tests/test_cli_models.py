"""`distill models` and `distill profile`, run as a user would."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True, timeout=300)


def test_models_json_lists_students_with_costs() -> None:
    res = run_cli("models", "--json")
    assert res.returncode == 0, res.stderr
    rows = {r["name"]: r for r in json.loads(res.stdout)}
    assert {"mobilenet_v1_100", "mobilenet_v1_050", "timm"} <= set(rows)
    for r in rows.values():
        assert {"name", "params", "mult_adds", "input_size"} <= set(r)
    assert rows["mobilenet_v1_100"]["mult_adds"] > rows["mobilenet_v1_050"]["mult_adds"]


def test_profile_paper_configuration() -> None:
    res = run_cli("profile", "mobilenet_v1", "--alpha", "1.0", "--input-size", "224", "--num-classes", "1000",
                  "--json")
    assert res.returncode == 0, res.stderr
    (row,) = json.loads(res.stdout)
    assert row["mult_adds"] / 1e6 == pytest.approx(569, rel=0.01)
    assert row["input_size"] == 224


def test_profile_text_output() -> None:
    res = run_cli("profile", "mobilenet_v1_050", "--input-size", "112")
    assert res.returncode == 0, res.stderr
    assert "38.81M" in res.stdout and "0.88M" in res.stdout


def test_profile_unknown_name_is_usage_error() -> None:
    res = run_cli("profile", "mobilenet_v1_05")
    assert res.returncode == 2
    assert "did you mean" in res.stderr and "'mobilenet_v1_050'" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize("option,value,named", [("--alpha", "0", "alpha"), ("--input-size", "16", "input_size")])
def test_profile_out_of_range_option_is_usage_error(option: str, value: str, named: str) -> None:
    res = run_cli("profile", "mobilenet_v1", option, value)
    assert res.returncode == 2 and named in res.stderr and "Traceback" not in res.stderr


def test_profile_says_which_width_it_measured() -> None:
    res = run_cli("profile", "mobilenet_v1_050", "--alpha", "0.75")
    assert res.returncode == 0 and res.stdout.startswith("mobilenet_v1_050 at alpha 0.75:")


def test_head_options_are_exclusive() -> None:
    res = run_cli("profile", "mobilenet_v1", "--num-classes", "10", "--embedding-dim", "64")
    assert res.returncode == 2


def test_models_text_says_n_a_for_what_a_file_only_teacher_cannot_know() -> None:
    res = run_cli("models")
    assert res.returncode == 0, res.stderr
    onnx = next(line for line in res.stdout.splitlines() if line.split()[:2] == ["teacher", "onnx"])
    assert "None" not in onnx and "declared in teacher.options" in onnx
