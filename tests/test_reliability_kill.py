"""Kill-and-resume through the real CLI: SIGKILL at every phase, ``--resume``, same student as uninterrupted.

One tiny run (see test_reliability_helpers) is killed four times in a row, each
time at a seeded random moment inside a different phase, and resumed with
``distill run --resume``:

1. while the teacher cache is being built (some chunks done, no ``complete.json``);
2. during training (a mid-training ``checkpoints/last.pt`` exists, no ``student.pt``);
3. in the middle of writing ``checkpoints/last.pt`` (the child kills itself after writing
   half of the bytes into the atomic-write temp file);
4. during evaluation (``student.pt`` written, no ``report.json`` yet).

After every kill: each ``.json`` in the run directory parses and each ``.pt`` loads with
``weights_only=True``; the teacher cache is either complete (checksum verified) or
resumed/rebuilt. At the end the student equals an uninterrupted run's.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from test_reliability_helpers import (QUICKSTART, assert_same_student, check_run_dir_intact, cli_env, copy_cache,
                                      run_cli_subprocess, set_args, shared_tiny_cache, tiny_overrides)

# A CLI child that SIGKILLs itself in the middle of the N-th atomic write of a file named NAME.
KILL_MID_WRITE = textwrap.dedent("""
    import os, signal, sys
    import distill.io as dio
    name, nth = sys.argv[1], int(sys.argv[2])
    original, seen = dio.atomic_write, [0]

    class HalfThenDie:
        def __init__(self, f):
            self.f = f
        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            self.f.flush()
            os.fsync(self.f.fileno())
            os.kill(os.getpid(), signal.SIGKILL)  # power cut mid-write

    def atomic_write(path, write):
        if os.path.basename(str(path)) == name:
            seen[0] += 1
            if seen[0] == nth:
                return original(path, lambda f: write(HalfThenDie(f)))
        return original(path, write)

    dio.atomic_write = atomic_write
    from distill.cli import main
    sys.exit(main(sys.argv[3:]))
""")


def teacher_cache_dirs(cache: Path) -> list[Path]:
    return sorted(p for p in (cache / "teacher").glob("*") if p.is_dir()) if (cache / "teacher").exists() else []


def in_teacher_cache_build(run: Path, cache: Path) -> bool:
    return any((d / "chunks").exists() and any((d / "chunks").iterdir()) and not (d / "complete.json").exists()
               for d in teacher_cache_dirs(cache))


def in_training(run: Path, cache: Path) -> bool:
    return (run / "checkpoints" / "last.pt").exists() and not (run / "student.pt").exists()


def in_evaluation(run: Path, cache: Path) -> bool:
    return (run / "student.pt").exists() and not (run / "report.json").exists()


def kill_when(cmd: list[str], ready: Callable[[], bool], jitter_s: float, timeout: float = 240) -> str:
    """Start ``cmd``; once ``ready()`` holds, wait ``jitter_s`` and SIGKILL it. Returns its output."""
    proc = subprocess.Popen(cmd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    t0 = time.monotonic()
    try:
        while not ready():
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                pytest.fail(f"the run ended (exit {proc.returncode}) before the kill point was reached:\n{out[-3000:]}")
            if time.monotonic() - t0 > timeout:
                pytest.fail("kill point not reached in time")
            time.sleep(0.01)
        time.sleep(jitter_s)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out


def assert_teacher_cache_complete_or_resumable(cache: Path) -> None:
    """A cache dir is complete (checksum matches) or lacks complete.json (the next run resumes/rebuilds it)."""
    import hashlib
    import json

    for d in teacher_cache_dirs(cache):
        if (d / "complete.json").exists():
            want = json.loads((d / "complete.json").read_text())["sha256"]
            assert hashlib.sha256((d / "embeddings.f32").read_bytes()).hexdigest() == want, d


@pytest.mark.slow
def test_sigkill_in_every_phase_then_resume_equals_uninterrupted(tmp_path: Path,
                                                                  tmp_path_factory: pytest.TempPathFactory) -> None:
    data = shared_tiny_cache(tmp_path_factory.getbasetemp())
    seed = int(os.environ.get("FACEDISTILL_FAULT_SEED", random.SystemRandom().randrange(10**6)))
    rng = random.Random(seed)
    print(f"kill jitter seed {seed} (rerun with FACEDISTILL_FAULT_SEED={seed})")

    clean_cache, cache = copy_cache(data, tmp_path / "cache-clean"), copy_cache(data, tmp_path / "cache")
    clean, run = tmp_path / "clean", tmp_path / "killed"
    # teacher batches of 4: the cache build has several chunks, so there is a moment with some done
    small_chunks = {"teacher.batch_size": 4}
    res = run_cli_subprocess("run", str(QUICKSTART), *set_args(tiny_overrides(clean_cache, **small_chunks)),
                             "--out", str(clean))
    assert res.returncode == 0, res.stderr[-3000:]

    args = ["run", str(QUICKSTART), *set_args(tiny_overrides(cache, **small_chunks)), "--out", str(run)]
    cli = [sys.executable, "-m", "distill.cli"]
    resume = ["--resume"]

    # 1. teacher cache build (the first run: no --resume yet)
    kill_when(cli + args, lambda: in_teacher_cache_build(run, cache), rng.uniform(0, 0.3))
    assert not (run / "checkpoints" / "last.pt").exists()
    check_run_dir_intact(run)
    assert_teacher_cache_complete_or_resumable(cache)

    # 2. training, after a mid-training checkpoint
    kill_when(cli + args + resume, lambda: in_training(run, cache), rng.uniform(0, 0.2))
    check_run_dir_intact(run)
    assert_teacher_cache_complete_or_resumable(cache)
    assert teacher_cache_dirs(cache) and all((d / "complete.json").exists() for d in teacher_cache_dirs(cache))

    # 3. half-way through writing checkpoints/last.pt (the next write after the one on disk)
    import torch

    before = (run / "checkpoints" / "last.pt").read_bytes()
    step_before = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    child = subprocess.run([sys.executable, "-c", KILL_MID_WRITE, "last.pt", "1", *args, *resume], env=cli_env(),
                           capture_output=True, text=True, timeout=240)
    assert child.returncode == -signal.SIGKILL, child.stderr[-3000:]
    assert (run / "checkpoints" / "last.pt").read_bytes() == before  # the old checkpoint, untouched
    assert list((run / "checkpoints").glob(".last.pt.*.tmp"))  # the half-written temp file is all that is left
    check_run_dir_intact(run)

    # 4. evaluation
    kill_when(cli + args + resume, lambda: in_evaluation(run, cache), rng.uniform(0, 0.5))
    check_run_dir_intact(run)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    # the resumed run trained further, unless training had already finished before the phase-3 kill
    assert state["step"] > step_before or state["step"] == state["total_steps"]

    # finish
    res = run_cli_subprocess(*args, *resume)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resuming" in res.stdout + res.stderr
    checked = check_run_dir_intact(run)
    assert {p.name for p in checked} >= {"last.pt", "student.pt", "report.json", "data_record.json"}
    assert_teacher_cache_complete_or_resumable(cache)
    assert_same_student(clean, run)
    # the teacher targets were the same too: the cache built across a kill equals the uninterrupted one
    (a,), (b,) = teacher_cache_dirs(clean_cache), teacher_cache_dirs(cache)
    assert a.name == b.name
    np.testing.assert_array_equal(np.fromfile(a / "embeddings.f32", np.float32),
                                  np.fromfile(b / "embeddings.f32", np.float32))


def test_resume_of_a_run_killed_before_any_checkpoint_starts_from_scratch(tmp_path: Path,
                                                                            tmp_path_factory: pytest.TempPathFactory
                                                                            ) -> None:
    """Killed during data preparation (config.yaml written, nothing else): --resume works, not an error."""
    data = shared_tiny_cache(tmp_path_factory.getbasetemp())
    cache = copy_cache(data, tmp_path / "cache", with_teacher=False)
    run = tmp_path / "run"
    args = ["run", str(QUICKSTART), *set_args(tiny_overrides(cache, **{"train.epochs": 1})), "--out", str(run)]
    kill_when([sys.executable, "-m", "distill.cli", *args], lambda: (run / "versions.json").exists(), 0.0)
    assert not (run / "checkpoints").exists()
    check_run_dir_intact(run)
    res = run_cli_subprocess(*args, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    check_run_dir_intact(run)
    assert (run / "student.pt").exists() and (run / "report.json").exists()
