"""The benchmark entry point cannot rot: ``python -m benchmarks --quick`` runs every section for real
(tiny settings) and writes a complete BENCHMARKS.md and a JSON that reproduces it. No timing asserts."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import parse_grid, parse_sections
from benchmarks.inference import MODE_PEAK, time_call
from benchmarks.report import SECTIONS, render_markdown

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, lfw_root):
    out = tmp_path_factory.mktemp("bench")
    md, js = out / "BENCH.md", out / "results.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(md), "--json", str(js),
                           "--no-progress"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"python -m benchmarks --quick failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return md.read_text(), json.loads(js.read_text()), proc.stdout


@pytest.mark.slow
def test_quick_run_writes_every_section(quick_run):
    text, doc, stdout = quick_run
    assert doc["errors"] == {}
    assert set(doc["sections"]) >= set(SECTIONS)
    for title in SECTIONS.values():
        assert f"## {title}" in text, f"section {title!r} missing from the markdown"
    meta = doc["meta"]
    assert meta["quick"] and meta["command"].startswith("python -m benchmarks --quick")
    assert meta["cpu_model"] and meta["cpu_model"] in text and f"{meta['cpu_count']} logical cores" in text
    assert f"torch {meta['versions']['torch']}" in text and f"faiss {meta['versions']['faiss']}" in text
    assert meta["date"] in text and "## Goals" in text
    # progress went to stdout, one line per section
    for i, name in enumerate(SECTIONS, 1):
        assert f"[{i}/{len(SECTIONS)}] {name} done" in stdout
    # the JSON alone reproduces the markdown
    assert render_markdown(doc) == text


@pytest.mark.slow
def test_quick_inference_rows_are_consistent(quick_run):
    _, doc, _ = quick_run
    inf = doc["sections"]["inference"]
    models = {r["model"] for r in inf["rows"]}
    assert "dlib_resnet" in models and any(m.startswith("mobilenet_") for m in models)
    batches = set(inf["settings"]["batches"])
    for m in models:   # every model in every mode at every batch
        assert {(r["mode"], r["batch"]) for r in inf["rows"] if r["model"] == m} == \
            {(mode, b) for mode in inf["modes"] for b in batches}
    for r in inf["rows"]:
        assert r["min_s"] <= r["p25_s"] <= r["median_s"] <= r["p75_s"] <= r["max_s"]
        assert r["mult_adds"] > 0 and math.isclose(r["images_per_s"], r["batch"] / r["median_s"])
        peak = inf["peak"][MODE_PEAK[r["mode"]]]["mult_adds_per_s"]
        assert math.isclose(r["fraction_of_peak"], r["batch"] * r["mult_adds"] / r["median_s"] / peak)
    # students have fewer mult-adds at lower alpha
    macs = {r["alpha"]: r["mult_adds"] for r in inf["rows"] if r["kind"] == "student"}
    assert macs[0.25] < macs[0.5]
    for b in inf["layer_breakdown"]:
        shares = [k["mult_add_share"] for k in b["kinds"].values()]
        assert math.isclose(sum(shares), 1.0, rel_tol=1e-6)


@pytest.mark.slow
def test_quick_speedup_is_recomputable_from_inference(quick_run):
    _, doc, _ = quick_run
    inf, sp = doc["sections"]["inference"], doc["sections"]["speedup"]
    by = {(r["model"], r["mode"], r["batch"]): r for r in inf["rows"]}
    rows = sp["teachers"]["dlib_resnet"]
    assert rows
    for s in rows:
        t, st = by[("dlib_resnet", s["mode"], s["batch"])], by[(s["student"], s["mode"], s["batch"])]
        assert math.isclose(s["speedup"], st["images_per_s"] / t["images_per_s"])
        assert math.isclose(s["mult_adds_ratio"], t["mult_adds"] / st["mult_adds"])
        assert (s["goal"] is not None) == (s["alpha"] >= 0.5)
        if s["goal"] is not None:
            assert s["goal_met"] == (s["fraction_of_ratio"] >= 0.8)


@pytest.mark.slow
def test_quick_other_sections_hold_real_measurements(quick_run):
    text, doc, _ = quick_run
    s = doc["sections"]
    assert s["dlib_port"]["dlib"]["images_per_s"] > 0 and s["dlib_port"]["min_cosine_fp32"] > 0.99
    modes = {r["mode"] for r in s["training"]["profile"]}
    assert modes == {"student_only", "cached", "online"}
    assert all(r["samples_per_s"] > 0 and r["ms_per_step"]["forward"] > 0 for r in s["training"]["profile"])
    assert s["training"]["profile"][2]["ms_per_step"]["teacher"] > s["training"]["profile"][0]["ms_per_step"][
        "teacher"]  # the online teacher's time is where the profile puts it
    ev = s["evaluation"]
    assert ev["verification"]["n_pairs"] > 1000 and ev["search"][0]["flat"]["recall_at_1"] == 1.0
    mem = s["memory"]["tasks"]
    assert set(mem) == {"baseline", "train", "eval"}
    assert mem["train"]["steps"] >= 1 and mem["eval"]["ids_valid"]
    assert all(t["max_rss_mib"] > 50 for t in mem.values())
    rec = s["recordio"]
    assert rec["records"] == 4000 and rec["sequential_records_per_s"] > 0 and rec["decode_per_s"] > 0
    assert rec["cache"]["cache_bytes"] == 4000 * 512 * 2 and "MS1MV2 projection" in text  # float16, 512-D, K=1
    # a missed goal says by how much
    ratio = s["training"]["cached_vs_student_only"]
    assert ("missed by" in text) or ratio >= 0.95


def test_parse_grid_and_sections():
    assert parse_grid("10k:128+512, 1M:128") == [(10_000, 128), (10_000, 512), (1_000_000, 128)]
    assert parse_grid("2500:64") == [(2500, 64)]
    with pytest.raises(argparse.ArgumentTypeError, match="SIZE:DIM"):
        parse_grid("10k")
    assert parse_sections("memory,inference") == ["inference", "memory"]   # report order
    with pytest.raises(argparse.ArgumentTypeError, match="choose from inference, speedup"):
        parse_sections("inference,gpu")


def test_time_call_counts_and_orders():
    calls = []
    t = time_call(lambda: calls.append(1), warmup=2, min_repeats=5, max_repeats=5, min_seconds=10.0)
    assert len(calls) == 7 and t.repeats == 5           # warm-up calls are not timed; max_repeats caps
    assert t.min <= t.p25 <= t.median <= t.p75 <= t.max
