"""The LFW study plan behind RESULTS.md (``make results``): validated up front, rows rendered honestly."""
from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import results

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the plan's paths are relative to the project, as `make results` runs it


def test_the_committed_plan_is_valid_and_covers_the_papers_grid():
    runs = results.load_plan()
    assert runs[0].name == "flagship" and runs[0].overrides == ()
    sweep = {r.name for r in runs if r.group == "sweep"}
    assert {r.name for r in runs if r.group == "lever"} >= {"lever_baseline", "lever_target_scale"}
    base, scaled = (next(r for r in runs if r.name == n) for n in ("lever_baseline", "lever_target_scale"))
    assert "train.target_scale=false" in base.overrides and "train.target_scale=true" in scaled.overrides
    assert "train.cache_views=16" in scaled.overrides  # an arm is the baseline plus its changes
    parents = results.lever_parents([r for r in runs if r.group == "lever"])
    assert parents["lever_cache64_mix_ema"].name == "lever_cache64_mix"  # the larger subset, not lever_ema
    assert sweep == {f"sweep_{a}_{s}" for a in ("100", "075", "050", "025") for s in (128, 96)}
    assert len({r.name for r in runs}) == len(runs)
    cmd = next(r for r in runs if r.name == "sweep_025_96").command()
    assert cmd[:3] == ["distill", "run", "configs/dlib_to_mobilenet_lfw.yaml"]
    assert "student.name=mobilenet_v1_025" in cmd and "student.input_size=96" in cmd
    assert "eval.latency=false" in cmd  # a bool written the way YAML reads it back


def _plan(tmp_path: Path, text: str) -> Path:
    (tmp_path / "base.yaml").write_text((ROOT / "configs" / "dlib_to_mobilenet_lfw.yaml").read_text())
    p = tmp_path / "plan.yaml"
    p.write_text(text)
    return p


def test_a_typo_in_the_plan_fails_before_any_training(tmp_path):
    with pytest.raises(SystemExit, match="studnets"):
        results.load_plan(_plan(tmp_path, "flagship: base.yaml\nsweep:\n  studnets: []\n"))
    with pytest.raises(SystemExit, match="sweep_050_96.*max_minuts"):
        results.load_plan(_plan(tmp_path, "flagship: base.yaml\nsweep:\n  set: {train.max_minuts: 5}\n"
                                          "  students: [{name: mobilenet_v1_050, input_size: 96}]\n"))


def _row(name, group, acc, tar, mult_adds, role="student"):
    return {"name": name, "group": group, "role": role, "model": "dlib_resnet" if role == "teacher" else
            "mobilenet_v1_050-112 (student.pt)", "input_size": 112, "params": 884384, "mult_adds": mult_adds,
            "images_per_s": 1200.0, "images_per_s_bf16": 1400.0, "fidelity_mean": None if role == "teacher" else 0.95,
            "devtest": {"accuracy_mean": acc, "accuracy_std": 0.02, "auc": 0.9, "eer": 0.1, "n_pairs": 1000},
            "all_pairs": {"tar_at_far": {"0.001": tar}, "n_genuine": 5000, "n_impostor": 3_700_000},
            "view2": {"accuracy_mean": 0.9873}, "train": {"seconds": 3300, "epochs": 60},
            "file": None if role == "teacher" else f"runs/results/{name}/student.pt"}


def test_run_logs_reach_the_file_while_the_command_runs(tmp_path):
    """`tail -f runs/results/logs/NAME.log` must show progress during a run, not when it ends."""
    import sys
    import threading
    import time

    log = tmp_path / "logs" / "x.log"
    # a child that prints without flushing, then works: only an unbuffered child and a line-buffered log show it
    child = [sys.executable, "-c", "import sys, time; print('step 1 of 2'); time.sleep(4); sys.exit(3)"]
    out: list[int] = []
    t = threading.Thread(target=lambda: out.append(results.run_logged(child, log, echo=False, title="child")))
    t.start()
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline and "step 1 of 2" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.05)
    seen_while_running = "step 1 of 2" in log.read_text() and t.is_alive()
    t.join()
    assert seen_while_running and out == [3]
    assert log.read_text().startswith("\n$ child  # ")


def test_targets_say_met_or_missed_and_by_how_much():
    teacher = _row("teacher", "teacher", 0.989, 0.80, 270_854_144, role="teacher")
    missed = results.targets(teacher, _row("flagship", "flagship", 0.90, 0.40, 38_812_288))
    assert "1/7.0" in missed[1] and "met" in missed[1]
    assert "91.0% of the teacher's" in missed[2] and "**missed**" in missed[2] and "short by 7.0 points" in missed[2]
    assert "50.0% of it" in missed[3] and "short by 40.0 points" in missed[3]
    met = results.targets(teacher, _row("flagship", "flagship", 0.975, 0.75, 38_812_288))
    assert all("missed" not in line for line in met)


def test_results_page_renders_every_section_from_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "RUNS", tmp_path / "runs")  # no run has finished there
    runs = results.load_plan()
    teacher = _row("teacher", "teacher", 0.989, 0.80, 270_854_144, role="teacher")
    flag = _row("flagship", "flagship", 0.90, 0.40, 38_812_288) | {"file": "runs/results/flagship/student.pt",
                                                                  "budget_minutes": 55, "file_bytes": 3_600_000}
    sweep = _row("sweep_025_96", "sweep", 0.80, 0.10, 3_000_000) | {"budget_minutes": 5}
    int8 = _row("flagship_onnx_int8", "deploy", 0.895, 0.39, 38_812_288) | {
        "file": "runs/results/flagship/student.int8.onnx", "file_bytes": 1_000_000}
    base = _row("lever_baseline", "lever", 0.85, 0.2, 38_812_288) | {"budget_minutes": 22}
    scaled = _row("lever_target_scale", "lever", 0.90, 0.3, 38_812_288) | {"budget_minutes": 22}
    ema = _row("lever_ema", "lever", 0.86, 0.25, 38_812_288) | {"budget_minutes": 22}
    sim = _row("lever_similarity", "lever", 0.89, 0.28, 38_812_288) | {"budget_minutes": 22}
    orl_t = _row("orl_teacher", "orl", 0.99, 0.97, 270_854_144, role="teacher") | {"protocols": {"orl": {
        "accuracy_mean": 0.998, "eer": 0.02, "tar_at_far": {"0.001": 0.965}, "n_genuine": 1800, "n_impostor": 78000}}}
    orl_s = _row("orl_flagship", "orl", 0.99, 0.6, 38_812_288) | {"protocols": {"orl": {
        "accuracy_mean": 0.99, "eer": 0.08, "tar_at_far": {"0.001": 0.618}}}}
    page = results.render([teacher, flag, sweep, int8, base, scaled, ema, sim, orl_t, orl_s], runs,
                          "## Notes\nhand-written", jobs=2)
    assert "| **flagship** |" in page and "| sweep_025_96 |" in page and "student.int8.onnx" in page
    assert "| lever_target_scale | lever_baseline | `train.target_scale=true` |" in page
    assert "| 90.00 ± 2.00 | +5.00 |" in page
    # an arm that extends another is compared with it, and shows only what it adds
    assert "| lever_ema | lever_target_scale | `train.ema=0.999` | 86.00 ± 2.00 | -4.00 |" in page
    assert "| lever_similarity | lever_target_scale | `train.loss=" in page
    assert "| -1.00 ~ |" in page  # within the fold std: marked as no difference
    assert "22 min of training each, 2 runs at once" in page and "hand-written" in page
    assert "| 64.0% |" in page  # ORL: student / teacher TAR@1e-3
    assert "Not run yet: sweep_100_128, sweep_100_96, sweep_075_128" in page  # a run with a row is shown
    assert results.REEVAL in page and "3,700,000 impostor" in page
    flag_cfg = results.load_config(runs[0].config)  # the protocol says how the flagship's targets were made
    assert f"cached teacher on {flag_cfg.train.cache_views} augmented views per image" in page


def test_rows_whose_run_folders_are_gone_are_kept_from_the_committed_json(tmp_path, monkeypatch):
    """A fresh machine re-running part of the study (runs/results/ is not committed) must not drop the rest."""
    import json

    monkeypatch.setattr(results, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(results, "OUT", tmp_path / "results")
    monkeypatch.setattr(results, "PAGE", tmp_path / "RESULTS.md")  # never the project's page
    runs = results.load_plan()
    with pytest.raises(SystemExit, match="no evaluation yet"):
        results.collect(runs)
    (tmp_path / "results").mkdir()
    flag = _row("flagship", "flagship", 0.90, 0.40, 38_812_288) | {
        "file": "runs/results/flagship/student.pt", "budget_minutes": 55, "file_bytes": 3_600_000}
    int8 = _row("flagship_onnx_int8", "deploy", 0.895, 0.39, 38_812_288) | {
        "file": "runs/results/flagship/student.int8.onnx", "file_bytes": 1_000_000, "int8_check": {
            "n_pairs": 1000, "accuracy": {"fp32": 0.9, "int8": 0.895}, "tar": {"fp32": 0.4, "int8": 0.39},
            "mean_cosine": 0.9991, "misses": [], "tolerance": {"max_accuracy_drop": 0.5, "max_tar_drop": 2,
                                                               "min_cosine": 0.99}}}
    rows = [int8, flag, _row("teacher", "teacher", 0.989, 0.80, 270_854_144, role="teacher"),
            _row("sweep_999_64", "sweep", 0.5, 0.0, 1)]  # a run the plan no longer has: dropped
    for r in rows:
        (tmp_path / "results" / f"{r['name']}.json").write_text(json.dumps(r))
    kept = results.collect(runs)
    assert [r["name"] for r in kept] == ["teacher", "flagship", "flagship_onnx_int8"]
    assert all(r["kept"] for r in kept)
    page = results.render(kept, runs, "", jobs=2)
    assert "Kept from an earlier run of this study" in page and "teacher, flagship, flagship_onnx_int8." in page
    assert "Not run yet: sweep_100_128" in page and "Not run yet: flagship" not in page
    assert "accuracy 90.00 -> 89.50" in page  # the int8 check travels with its row
    assert "--checkpoint runs/results/flagship/student.pt --checkpoint runs/results/flagship/student.int8.onnx" in page
    results.write_outputs(runs)  # kept rows are not rewritten: their files stay byte for byte
    assert json.loads((tmp_path / "results" / "flagship.json").read_text()) == flag


@pytest.mark.slow
def test_committed_flagship_reproduces_its_results_row(lfw_root, devtest_aligned, tmp_path):
    """The one-line re-evaluation of RESULTS.md: the committed checkpoint gives the committed numbers."""
    import json
    import os
    import subprocess
    import sys

    ckpt = ROOT / results.FLAGSHIP_CKPT
    assert ckpt.stat().st_size <= results.MAX_CHECKPOINT_BYTES
    row = json.loads((ROOT / "results" / "flagship.json").read_text())
    out = tmp_path / "ev"
    res = subprocess.run([sys.executable, "-m", "distill.cli", "eval", "configs/lfw_devtest_eval.yaml", "--checkpoint",
                          str(ckpt), "--no-teacher", "--set", "eval.latency=false",
                          "--set", f"data.cache_dir={devtest_aligned}",
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT,
                         env={**os.environ, "FACEDISTILL_LFW": str(lfw_root)})
    assert res.returncode == 0, res.stderr[-3000:]
    model = json.loads((out / "report.json").read_text())["models"][0]
    dev, allp = model["protocols"]["DevTest"], model["protocols"]["DevTest-all-pairs"]
    # tolerances in what they count: the same machine kind may round a few embeddings differently
    pairs = dev["n_pairs"]
    assert dev["accuracy_mean"] == pytest.approx(row["devtest"]["accuracy_mean"], abs=2 / pairs)  # 2 pairs
    assert dev["auc"] == pytest.approx(row["devtest"]["auc"], abs=1e-3)
    genuine = allp["n_genuine"]
    assert allp["tar_at_far"]["0.001"] == pytest.approx(row["all_pairs"]["tar_at_far"]["0.001"],
                                                        abs=2 / genuine)  # 2 genuine pairs of 23,524
    assert model["fidelity"]["mean"] == pytest.approx(row["fidelity_mean"], abs=1e-3)
    assert row["mult_adds"] * 5 <= json.loads((ROOT / "results" / "teacher.json").read_text())["mult_adds"]
