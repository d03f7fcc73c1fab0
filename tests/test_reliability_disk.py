"""Disk faults: a full disk while writing a checkpoint or the teacher cache keeps earlier files intact and
says what happened.

Two ways to fill the disk: a patched write that raises ``OSError(ENOSPC)`` half-way
(always runs), and a real, tiny tmpfs (needs root / CAP_SYS_ADMIN to mount; skipped,
saying so, where that is not allowed).
"""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import pytest
import torch

import distill.io as dio
from distill.config import TrainSettings
from distill.data.views import FaceViews
from distill.losses import DistillLoss
from distill.preprocess import Preprocessing
from distill.train import build_teacher_cache, fit
from students import MobileNet
from test_reliability_helpers import ROOT, cli_env, orl_faces, standardizing_teacher

QUIET = dict(progress=False, log=lambda m: None)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@contextlib.contextmanager
def tiny_tmpfs(where: Path, size_bytes: int) -> Iterator[Path]:
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"platform: cannot mount a tmpfs here (needs root/CAP_SYS_ADMIN): {res.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def student() -> MobileNet:
    torch.manual_seed(1)
    return MobileNet(alpha=0.25, input_size=48, embedding_dim=16, normalize=False)


def settings(**kw) -> TrainSettings:
    return TrainSettings(**{"epochs": 1, "batch_size": 8, "lr": 3e-3, "warmup_steps": 1, "checkpoint_every": 1,
                            "channels_last": False, **kw})


def train(run_dir: Path, epochs: int, resume: bool = False):
    return fit(student(), Preprocessing(48), standardizing_teacher(), FaceViews(orl_faces(4, 4), seed=0),
               DistillLoss(student_dim=16, teacher_dim=16), settings(epochs=epochs), run_dir, resume=resume, **QUIET)


def test_enospc_half_way_through_a_checkpoint_keeps_the_previous_one(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    train(tmp_path, epochs=1)
    last = tmp_path / "checkpoints" / "last.pt"
    good = last.read_bytes()
    original = dio.atomic_write

    class FullDisk:
        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

    def atomic_write(path, write):
        if Path(path).name == "last.pt":
            return original(path, lambda f: write(FullDisk(f)))
        return original(path, write)

    monkeypatch.setattr(dio, "atomic_write", atomic_write)
    with pytest.raises(OSError) as e:
        train(tmp_path, epochs=2, resume=True)
    assert e.value.errno == errno.ENOSPC
    msg = str(e.value)
    assert f"No space left on device while writing {last}" in msg and "unchanged" in msg and "--resume" in msg
    assert last.read_bytes() == good
    assert torch.load(last, weights_only=True)["step"] == 2
    assert not list((tmp_path / "checkpoints").glob("*.tmp"))  # the half-written temp file was removed
    monkeypatch.setattr(dio, "atomic_write", original)
    res = train(tmp_path, epochs=2, resume=True)  # space is back: the run continues where it was
    assert res.steps == 4 and res.stopped == "finished"


def test_real_full_tmpfs_during_checkpoint(tmp_path: Path) -> None:
    probe = tmp_path / "probe"
    train(probe, epochs=1)
    size = (probe / "checkpoints" / "last.pt").stat().st_size
    # room for one checkpoint and the logs, not for the temp copy of the next one
    with tiny_tmpfs(tmp_path / "small", int(size * 1.5) + 256 * 1024) as run_dir:
        with pytest.raises(OSError) as e:
            train(run_dir, epochs=2)
        assert e.value.errno == errno.ENOSPC and "while writing" in str(e.value) and "last.pt" in str(e.value)
        state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
        assert 1 <= state["step"] < 4
        assert not list((run_dir / "checkpoints").glob("*.tmp"))


BUILD_CACHE = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from test_reliability_helpers import orl_faces, standardizing_teacher
    from distill.data.views import FaceViews
    from distill.train import build_teacher_cache
    build_teacher_cache(standardizing_teacher(dim=128), FaceViews(orl_faces(4, 4), seed=0), 8, sys.argv[1],
                        batch_size=4, log=print)
    print("built")
""")


def test_real_full_tmpfs_during_teacher_cache_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """16 faces x 8 views x 128-D = 64 KiB of embeddings on a 16 KiB tmpfs (a memmap would die of SIGBUS)."""
    with tiny_tmpfs(tmp_path / "small", 16 * 1024) as cache_dir:
        res = subprocess.run([sys.executable, "-c", BUILD_CACHE.format(tests=str(ROOT / "tests")), str(cache_dir)],
                             env=cli_env(), capture_output=True, text=True, timeout=120)
        assert res.returncode == 1, f"exit {res.returncode}: {res.stderr[-2000:]}"
        assert "CacheError" in res.stderr and "cannot reserve" in res.stderr and "data.cache_dir" in res.stderr
        assert not any(cache_dir.iterdir())  # nothing half-built left behind
    # with room, the same build succeeds and is complete
    cache = build_teacher_cache(standardizing_teacher(dim=128), FaceViews(orl_faces(4, 4), seed=0), 8,
                                tmp_path / "roomy", batch_size=4, log=lambda m: None)
    assert (cache.path / "complete.json").exists()


def test_atomic_writes_get_ordinary_permissions(tmp_path: Path) -> None:
    """A run's files are readable like any file the user creates (umask), not mkstemp's private 0o600;
    a replaced file keeps its own mode."""
    old = os.umask(0o022)
    try:
        fresh = dio.atomic_write_text(tmp_path / "report.md", "x")
        assert fresh.stat().st_mode & 0o777 == 0o644
        os.chmod(fresh, 0o640)
        dio.atomic_write_text(fresh, "y")
        assert fresh.stat().st_mode & 0o777 == 0o640
        os.umask(0o077)
        assert dio.atomic_write_text(tmp_path / "private.json", "{}").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
