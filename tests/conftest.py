"""Shared fixtures. Real data lives in ../shared (read in place, never copied)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEDISTILL_SHARED", ROOT.parent / "shared"))
LFW = SHARED / "data" / "lfw"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    """../shared/data/lfw, or a skip that says why."""
    if not (LFW / "pairs.txt").exists():
        pytest.skip(f"LFW not found at {LFW} (set FACEDISTILL_SHARED to the shared/ folder)")
    return LFW


@pytest.fixture
def one_torch_thread():
    """Tiny convs run ~10x faster on 1 thread than on 2 contended ones (CI has 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
