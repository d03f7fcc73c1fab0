"""Shared helpers of the fault suite (tests/test_reliability_*.py); this module holds no tests.

A *tiny run* is configs/quickstart.yaml shrunk to seconds: 8 synthetic identities,
a 0.25 MobileNet-64 student, 2 epochs, no face detection (``align_backend=none``),
2 cached teacher views in 8-image chunks (so a kill can land between chunks).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def tiny_overrides(cache_dir: Path, **extra: Any) -> list[str]:
    """``--set`` items for a tiny, fully offline run whose caches live in ``cache_dir``."""
    sets = {
        "data.synthetic.identities": 8, "data.synthetic.images_per_identity": 4, "data.synthetic.size": 96,
        "data.align_backend": "none", "data.cache_dir": str(cache_dir), "data.workers": 0,
        "student.name": "mobilenet_v1_025", "student.input_size": 64,
        "train.epochs": 2, "train.batch_size": 8, "train.max_minutes": "null", "train.cache_views": 2,
        "train.checkpoint_every": 2, "train.warmup_steps": 2,
        "eval.latency": "false", "eval.batch_size": 8, "teacher.precision": "fp32",
    }
    sets.update(extra)
    return [f"{k}={v}" for k, v in sets.items()]


def set_args(overrides: list[str]) -> list[str]:
    return [a for item in overrides for a in ("--set", item)]


def cli_env() -> dict[str, str]:
    """One torch thread per child: tiny convs are much faster than on 2 contended cores."""
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli", *args]


def run_cli_subprocess(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cli_command(*args), env=cli_env(), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def run_cli_inprocess(argv: list[str]) -> tuple[int, str, str]:
    """``distill.cli.main(argv)`` with stdout/stderr captured: (exit code, stdout, stderr)."""
    from distill.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()


def shared_tiny_cache(base: Path) -> Path:
    """A data cache (synthetic faces + aligned crops) every tiny run in this session can copy.

    Built once per pytest session by ``distill cache-teacher`` on the tiny config, minus the
    teacher cache (tests that kill the cache build need it absent).
    """
    cache = base / "tiny-data-cache"
    done = cache / ".ready"
    if done.exists():
        return cache
    shutil.rmtree(cache, ignore_errors=True)
    res = run_cli_subprocess("cache-teacher", str(QUICKSTART), *set_args(tiny_overrides(cache)))
    assert res.returncode == 0, res.stderr[-3000:]
    shutil.rmtree(cache / "teacher", ignore_errors=True)
    done.write_text("ok")
    return cache


def copy_cache(src: Path, dst: Path, *, with_teacher: bool = False) -> Path:
    shutil.copytree(src, dst, symlinks=True, ignore=None if with_teacher else shutil.ignore_patterns("teacher"))
    return dst


def check_run_dir_intact(run_dir: Path) -> list[Path]:
    """Every .json parses and every .pt loads with ``weights_only=True``; returns the files checked."""
    checked = []
    for p in sorted(run_dir.rglob("*")):
        if p.name.endswith(".tmp"):
            continue  # an atomic write's temp file, left behind by SIGKILL; never read by the product
        if p.suffix == ".json":
            json.loads(p.read_text())
            checked.append(p)
        elif p.suffix == ".pt":
            torch.load(p, map_location="cpu", weights_only=True)
            checked.append(p)
    return checked


def student_state(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "student.pt", map_location="cpu", weights_only=True)["state_dict"]


def assert_same_student(a: Path, b: Path, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    sa, sb = student_state(a), student_state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=rtol, atol=atol, msg=lambda m, k=k: f"{k}: {m}")


# --------------------------------------------------------------------------- trainer-level pieces


def orl_faces(people: int = 4, per_person: int = 4, size: int = 48) -> "np.ndarray":
    """Real faces (ORL), smaller by default than the trainer tests' (same loader)."""
    from test_trainer import orl_faces as load

    return load(people, per_person, size)


class StandardizingNet(torch.nn.Module):
    """A small fixed teacher network: per-image standardisation, 8x8 pooling, a seeded linear map.

    Per-image standardisation without an epsilon is a classic real-world teacher bug:
    a flat (constant) image gives 0/0 = NaN. ``scale`` multiplies the output (huge values
    overflow the squared loss to inf).
    """

    def __init__(self, dim: int = 16, seed: int = 0, scale: float = 1.0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.proj = torch.nn.Parameter(torch.randn(3 * 64, dim, generator=g) / 8, requires_grad=False)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.round(x * 256)  # fixed-point input, as quantised models see it: a flat image is exactly flat
        mean = q.mean(dim=(1, 2, 3), keepdim=True)
        std = q.std(dim=(1, 2, 3), keepdim=True)
        z = torch.nn.functional.adaptive_avg_pool2d((q - mean) / std, 8).flatten(1)
        return z @ self.proj * self.scale


def standardizing_teacher(dim: int = 16, size: int = 48, scale: float = 1.0, alignment: str = "dlib_150"):
    from distill.preprocess import Preprocessing
    from teachers import CallableTeacher

    return CallableTeacher(StandardizingNet(dim, scale=scale), name="standardizing", embedding_dim=dim,
                           preprocessing=Preprocessing(size, alignment=alignment), normalized=False)


def synthetic_tree(folder: Path, identities: int = 8, per_identity: int = 4) -> tuple[Path, Path]:
    """An LFW-layout identity-folder tree of synthetic JPEG faces; returns (root, pairsDevTest.txt)."""
    from distill.data.synthetic import generate_synthetic

    synth = generate_synthetic(folder, identities=identities, images_per_identity=per_identity, size=96, ext=".jpg",
                               progress=False)
    return synth.root, synth.test_pairs_path


def folder_overrides(cache_dir: Path, root: Path, pairs: Path, **extra: Any) -> list[str]:
    """Tiny-run overrides reading an identity-folder tree, holding out (and testing on) ``pairs``' people."""
    return tiny_overrides(cache_dir, **{"data.source": "folder", "data.root": str(root),
                                        "data.exclude_identities_in": f"[{pairs}]", "eval.pairs": f"[{pairs}]",
                                        **extra})


def training_identities(root: Path, pairs: Path) -> list[str]:
    """Identity folders under ``root`` whose people are not in ``pairs`` (they are trained on)."""
    from distill.data import read_pairs

    held = read_pairs(pairs, root, check_exists=False).people()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in held)
