"""`distill` end to end, as a user runs it: CLI help, dry-run, fail-fast, a tiny real run, eval, report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.cli import build_parser
from distill.models import load_student

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--set", "data.synthetic.identities=8", "--set", "data.synthetic.images_per_identity=4",
        "--set", "student.name=mobilenet_v1_025", "--set", "student.input_size=64", "--set", "train.epochs=2",
        "--set", "train.batch_size=8", "--set", "train.max_minutes=null", "--set", "train.warmup_steps=2",
        "--set", "train.cache_views=2", "--set", "eval.latency=false", "--set", "data.workers=0"]


def distill_cli(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "distill.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def test_help_lists_every_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from distill.cli import main

    res = distill_cli("--help")  # the installed entry point, once; each subcommand's help in-process
    assert res.returncode == 0
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert name in res.stdout
        with pytest.raises(SystemExit) as info:
            main([name, "--help"])
        assert info.value.code == 0 and "usage: distill " + name in capsys.readouterr().out
    assert {"run", "eval", "cache-teacher", "report", "models", "profile"} <= set(commands)


def test_debug_shows_the_traceback_before_or_after_the_subcommand(tmp_path: Path) -> None:
    from distill.cli import main
    from distill.errors import UsageError

    missing = str(tmp_path / "nope.yaml")
    for argv in (["--debug", "run", missing, "--dry-run"], ["run", missing, "--dry-run", "--debug"],
                 ["gallery", "build", "--debug", "--model", missing, "--images", missing, "-o", missing]):
        with pytest.raises(Exception) as info:
            main(argv)
        assert not isinstance(info.value, SystemExit), argv
    assert main(["run", missing, "--dry-run"]) == 2  # without it: one paragraph, exit 2
    with pytest.raises(UsageError):
        main(["run", missing, "--debug"])


def test_dry_run_prints_the_plan(tmp_path: Path) -> None:
    res = distill_cli("run", "configs/quickstart.yaml", "--dry-run", "--out", str(tmp_path / "r"))
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "teacher  dlib_resnet: 150px dlib_150, 128-D raw" in out
    assert "student  mobilenet_v1_050: 112px" in out and "38.8M mult-adds" in out
    assert "7.0x fewer than the teacher" in out
    assert str(tmp_path / "r" / "report.html") in out
    assert not (tmp_path / "r").exists(), "a dry run must not create the run directory"


def test_dry_run_of_a_plan_with_missing_inputs_exits_2_naming_the_keys(tmp_path: Path) -> None:
    res = distill_cli("run", "configs/dlib_to_mobilenet_lfw.yaml", "--dry-run", "--out", str(tmp_path / "r"),
                      env={"FACEDISTILL_LFW": str(tmp_path / "nolfw")})
    assert res.returncode == 2 and res.stdout.startswith("plan for run")  # the plan, and why it cannot run
    assert res.stderr.startswith("distill: error: cannot start; nothing was computed. Missing:")
    assert f"{tmp_path / 'nolfw' / 'pairsDevTest.txt'} (eval.pairs[0].file) is missing" in res.stderr
    assert not (tmp_path / "r").exists()


def test_facenet_config_offline_fails_fast_naming_what_is_missing(tmp_path: Path) -> None:
    env = {"TORCH_HOME": str(tmp_path / "torch"), "FACEDISTILL_FACES": str(tmp_path / "nofaces"),
           "FACEDISTILL_LFW": str(tmp_path / "nolfw")}
    # vggface2 has no offline copy: the error says so and names the offline weights
    res = distill_cli("run", "configs/facenet_to_mobilenet.yaml", "--set", "teacher.weights=vggface2",
                      "--out", str(tmp_path / "r"), env=env)
    assert res.returncode == 2  # missing inputs the user must provide
    err = res.stderr
    assert "20180402-114759-vggface2.pt" in err and "teacher.weights" in err and "casia-webface" in err
    assert f"data.root {tmp_path / 'nofaces'}" in err
    assert "pairs.txt" in err
    assert "configs/quickstart.yaml" in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists(), "nothing may be computed or written before the artifacts exist"


def test_alignment_mismatch_is_a_config_error(tmp_path: Path) -> None:
    res = distill_cli("run", "configs/quickstart.yaml", "--set", "data.alignment=facenet_160", "--out",
                      str(tmp_path / "r"))
    assert res.returncode == 2
    assert "data.alignment is 'facenet_160' but teacher 'dlib_resnet' expects" in res.stderr


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("tiny")
    out = base / "run"
    res = distill_cli("run", "configs/quickstart.yaml", *TINY, "--set", f"data.cache_dir={base / 'cache'}",
                      "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "report:" in res.stdout and "teacher  dlib_resnet" in res.stdout
    return out


def test_run_writes_everything_a_user_reads(tiny_run: Path) -> None:
    for name in ("report.json", "report.md", "report.html", "student.pt", "config.yaml", "versions.json",
                 "data_record.json", "metrics.csv", "checkpoints/last.pt", "split/split.json"):
        assert (tiny_run / name).is_file(), name
    report = json.loads((tiny_run / "report.json").read_text())
    roles = {m["role"]: m for m in report["models"]}
    assert set(roles) == {"teacher", "student"}
    for m in roles.values():
        for key in ("name", "params", "mult_adds", "input_size", "protocols"):
            assert key in m
        proto = m["protocols"]["synthetic-test"]
        assert 0.0 <= proto["accuracy_mean"] <= 1.0 and "tar_at_far" in proto and "eer" in proto
    assert roles["teacher"]["protocols"]["synthetic-test"]["accuracy_mean"] > 0.75
    assert roles["student"]["fidelity"]["mean"] is not None
    split = json.loads((tiny_run / "split" / "split.json").read_text())
    assert split, "the identity-disjoint split is recorded"


def test_saved_student_reloads_and_matches(tiny_run: Path) -> None:
    student, spec, pre, state = load_student(tiny_run / "student.pt")
    assert spec.name == "mobilenet_v1_025" and pre.input_size == 64 and pre.alignment == "dlib_150"
    x = torch.randn(2, 3, 64, 64)
    ckpt = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    ref = spec.build()
    ref.load_state_dict(ckpt["student"])
    ref.eval()
    # the saved student emits teacher units: the training targets' standardisation is folded back into its head
    shift, scale = ckpt["loss"]["target_shift"], ckpt["loss"]["target_scale"]
    torch.testing.assert_close(student(x), ref(x) * scale + shift, rtol=1e-4, atol=1e-5)


def test_existing_run_dir_is_never_overwritten(tiny_run: Path) -> None:
    before = (tiny_run / "report.json").read_bytes()
    res = distill_cli("run", "configs/quickstart.yaml", *TINY, "--out", str(tiny_run))
    assert res.returncode == 2 and "--resume" in res.stderr and "--overwrite" in res.stderr
    assert (tiny_run / "report.json").read_bytes() == before


def test_eval_and_report_commands(tiny_run: Path, tmp_path: Path) -> None:
    cache = tiny_run.parent / "cache"
    res = distill_cli("eval", "configs/quickstart.yaml", *TINY, "--set", f"data.cache_dir={cache}",
                      "--checkpoint", str(tiny_run / "student.pt"), "--out", str(tmp_path / "ev"))
    assert res.returncode == 0, res.stderr[-3000:]
    ev = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert [m["role"] for m in ev["models"]] == ["teacher", "student"]
    run_student = next(m for m in json.loads((tiny_run / "report.json").read_text())["models"]
                       if m["role"] == "student")
    eval_student = ev["models"][1]
    assert eval_student["protocols"]["synthetic-test"]["accuracy_mean"] == pytest.approx(
        run_student["protocols"]["synthetic-test"]["accuracy_mean"], abs=1e-6)
    res = distill_cli("report", str(tiny_run), str(tmp_path / "ev"), "--out", str(tmp_path / "cmp"))
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "cmp").is_dir() and any((tmp_path / "cmp").glob("*.html"))


def test_eval_refuses_a_non_student_file(tmp_path: Path) -> None:
    bogus = tmp_path / "x.pt"
    torch.save({"hello": torch.zeros(1)}, bogus)
    res = distill_cli("eval", "configs/quickstart.yaml", "--checkpoint", str(bogus), "--out", str(tmp_path / "e"))
    assert res.returncode == 2 and "not a facedistill student checkpoint" in res.stderr


@pytest.mark.slow
def test_custom_pair_example_runs(tmp_path: Path) -> None:
    res = subprocess.run([sys.executable, "examples/custom_pair.py", "--out", str(tmp_path / "cp"),
                          "--minutes", "0.2"], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "student accuracy:" in res.stdout
    assert (tmp_path / "cp" / "report.html").is_file()


def test_eval_measures_an_exported_onnx_file(tiny_run: Path, tmp_path: Path) -> None:
    """The deployed file is the one measured: its accuracy equals the checkpoint's."""
    cache = tiny_run.parent / "cache"
    onnx_path = tmp_path / "student.onnx"
    res = distill_cli("export", str(tiny_run / "student.pt"), "--format", "onnx", "-o", str(onnx_path),
                      "--no-accuracy", "--no-latency", "--cache-dir", str(cache))
    assert res.returncode == 0, res.stderr[-3000:]
    res = distill_cli("eval", "configs/quickstart.yaml", *TINY, "--set", f"data.cache_dir={cache}", "--no-teacher",
                      "--checkpoint", str(onnx_path), "--out", str(tmp_path / "ev"))
    assert res.returncode == 0, res.stderr[-3000:]
    (student,) = json.loads((tmp_path / "ev" / "report.json").read_text())["models"]
    ref = next(m for m in json.loads((tiny_run / "report.json").read_text())["models"] if m["role"] == "student")
    assert student["file_bytes"] == onnx_path.stat().st_size
    assert student["protocols"]["synthetic-test"]["accuracy_mean"] == pytest.approx(
        ref["protocols"]["synthetic-test"]["accuracy_mean"], abs=0.02)


def test_cache_teacher_reuses_the_runs_cache(tiny_run: Path) -> None:
    """`distill cache-teacher` on the run's data finds the cache the run built (a sweep pays once)."""
    cache = tiny_run.parent / "cache"
    before = sorted(p.name for p in (cache / "teacher").iterdir())
    res = distill_cli("cache-teacher", "configs/quickstart.yaml", *TINY, "--set", f"data.cache_dir={cache}")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "teacher cache ready" in res.stdout
    assert sorted(p.name for p in (cache / "teacher").iterdir()) == before, "no second cache was built"


def test_training_folder_split_follows_where_the_evaluation_people_live(lfw_root: Path, tmp_path: Path) -> None:
    """Same root as the evaluation pairs: their people are excluded. Another root (train on one data set,
    test on LFW): nothing to exclude, and the record says why the split is still identity-disjoint."""
    from distill.config import validate
    from distill.data.prepare import prepare_train

    faces = tmp_path / "faces"
    faces.mkdir()
    devtest_person, other = "Abdullah_Gul", "Adam_Sandler"  # Abdullah_Gul is a pairsDevTest.txt person
    for person in (devtest_person, other):
        (faces / person).symlink_to(lfw_root / "lfw-deepfunneled" / person)
    base = {"data": {"source": "folder", "root": str(faces), "cache_dir": str(tmp_path / "cache")},
            "eval": {"pairs": [str(lfw_root / "pairsDevTest.txt")]}}
    same_root = prepare_train(validate(base), "dlib_150", lambda m: None)
    assert same_root.images.identities == [other]
    base["eval"]["images_root"] = str(lfw_root / "lfw-deepfunneled")
    other_root = prepare_train(validate(base), "dlib_150", lambda m: None)
    assert sorted(other_root.images.identities) == sorted([devtest_person, other])
    assert other_root.record["split"]["identity_disjoint"].startswith("by data set")


def test_lfw_recipe_trains_on_everyone_but_devtest_people(lfw_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from distill.config import load_config
    from distill.data.prepare import resolve_sources

    monkeypatch.setenv("FACEDISTILL_LFW", str(lfw_root))
    cfg = load_config(ROOT / "configs" / "dlib_to_mobilenet_lfw.yaml")
    sources = resolve_sources(cfg, lambda m: None)
    specs, exclude = sources.specs, sources.exclude
    assert [p.name for p in exclude] == ["pairsDevTest.txt"]  # View 2 restricted to DevTest people adds nobody
    assert [s.label for s in specs] == ["DevTest", "View2-DevTest-people", "View2", "DevTest-all-pairs"]
    assert [s.all_pairs for s in specs] == [False, False, False, True]


def test_prepare_eval_all_pairs_protocol(tmp_path: Path) -> None:
    """all_pairs: every pair of images of the file's people (after only_people_in), aligned images only;
    the file's own pairs protocol and identification data are unchanged."""
    import numpy as np
    from PIL import Image

    from distill.config import validate
    from distill.data.pairs import write_pairs
    from distill.data.protocols import prepare_eval

    faces = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for name, n in {"ann": 3, "bob": 2, "cy": 1, "dan": 4, "eve": 2}.items():  # eve: training only
        (faces / name).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(faces / name / f"{name}_{i:04d}.jpg")
    (faces / "dan" / "dan_0004.jpg").write_bytes(b"not a jpeg")  # skipped at alignment: its pairs are dropped
    test = write_pairs(tmp_path / "test.txt", [("ann", 1, 2), ("dan", 1, 2)],
                       [("ann", 1, "bob", 1), ("cy", 1, "dan", 3)])
    few = write_pairs(tmp_path / "few.txt", [("ann", 1, 3)], [("ann", 2, "bob", 2)])
    cfg = validate({"data": {"source": "folder", "root": str(faces), "cache_dir": str(tmp_path / "cache"),
                             "align_backend": "none"},
                    "eval": {"pairs": [str(test), {"file": str(test), "name": "all", "all_pairs": True},
                                       {"file": str(test), "name": "few-all", "all_pairs": True,
                                        "only_people_in": str(few)}]}})
    logs: list[str] = []
    ev = prepare_eval(cfg, "dlib_150", logs.append)
    protos = {p.name: p for p in ev.protocols}
    # ann 3 + bob 2 + cy 1 + dan 3 aligned = 9 images: C(9,2) = 36 pairs, 3 + 1 + 0 + 3 genuine
    assert (len(protos["test"].pairs), protos["all"].size) == (4, 36)
    assert int(protos["all"].pairs.is_same.sum()) == 7
    assert (protos["few-all"].size, int(protos["few-all"].pairs.is_same.sum())) == (10, 4)  # ann + bob: C(5,2)
    for p in protos.values():
        pairs = p.pairs
        people = [(ev.rel_paths[i].split("/")[0], ev.rel_paths[j].split("/")[0])
                  for i, j in zip(pairs.idx_a, pairs.idx_b)]
        assert pairs.is_same.tolist() == [x == y for x, y in people]
        assert len(set(zip(pairs.idx_a.tolist(), pairs.idx_b.tolist()))) == len(pairs)
    assert not any(p.startswith("eve/") for p in ev.rel_paths) and "dan/dan_0004.jpg" not in ev.rel_paths
    assert ev.held_out.all() and ev.record["protocols"]["all"] == 36
    assert "all: 9 pairs dropped" in "\n".join(logs)  # dan_0004 with each of the 9 aligned images


def test_readme_api_example_round_trips_through_export_and_gallery(tiny_run: Path, tmp_path: Path) -> None:
    """The README's library example, as written except the data size (the tiny config of these tests), ends with
    a student file every command accepts: load, export, gallery build."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Library API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    cache = tiny_run.parent / "cache"
    tiny = [a for a in TINY if a != "--set" and not a.startswith("student.")]
    code = block.replace('["train.max_minutes=1", "out=runs/mine"]',
                         repr([*tiny, f"data.cache_dir={cache}", f"out={tmp_path / 'mine'}", "train.max_minutes=0.2"]))
    assert code != block, "the README example no longer has the config line this test resizes"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "mobilenet_v1_025-112 128" in res.stdout
    student = tmp_path / "mine" / "student.pt"
    faces = next((cache / "synthetic").iterdir())
    res = distill_cli("export", str(student), "-o", str(tmp_path / "s.onnx"), "--parity-images", str(faces),
                      "--parity-count", "4", "--no-latency", "--cache-dir", str(cache))
    assert res.returncode == 0, res.stderr[-3000:]
    res = distill_cli("gallery", "build", "--model", str(student), "--images", str(faces), "-o",
                      str(tmp_path / "gallery"), "--cache-dir", str(cache))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "mobilenet_v1_025-112" in res.stdout
    # the run's own report calibrates the gallery: searches can decide by false-accept rate
    assert f"calibrated on {tmp_path / 'mine' / 'report.json'}" in res.stdout, res.stdout
