"""Shared fixtures. Real data lives in ../shared (read in place, never copied).

A skip must never hide a guarantee: a test that skips because data, a package or a tool is missing
(a dependency changed, an install step failed) is reported as a **failure**, unless its reason starts
with one of :data:`DOCUMENTED_SKIPS` — the explicit choices for a platform listed in README
("Tests that may skip"). ``FACEDISTILL_ALLOW_SKIPS=1`` turns this off for a partial install.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FACEDISTILL_SHARED", ROOT.parent / "shared"))
LFW = SHARED / "data" / "lfw"

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: reason prefixes of the skips that are documented platform choices (README, "Tests that may skip")
DOCUMENTED_SKIPS = ("platform:", "exempt:")
STRICT_SKIPS = os.environ.get("FACEDISTILL_ALLOW_SKIPS", "") not in ("1", "true", "yes")


def skip_reason(report: pytest.TestReport) -> str:
    """The text of a skipped report's reason (``Skipped: `` removed)."""
    text = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    return text.removeprefix("Skipped: ")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Turn an undocumented skip into a failure that says why (see the module docs)."""
    outcome = yield
    report = outcome.get_result()
    if not (STRICT_SKIPS and report.skipped and not hasattr(report, "wasxfail")):
        return
    reason = skip_reason(report)
    if reason.startswith(DOCUMENTED_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (f"{item.nodeid} skipped: {reason}\nA skip that is not a documented platform choice is a "
                       "failure here: the guarantee this test holds was not checked. Install what it names "
                       "(`make install`, ../shared beside the project), or set FACEDISTILL_ALLOW_SKIPS=1 to accept "
                       "an unchecked guarantee on a partial install.")


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    """../shared/data/lfw, or a skip that says why."""
    if not (LFW / "pairs.txt").exists():
        pytest.skip(f"LFW not found at {LFW} (set FACEDISTILL_SHARED to the shared/ folder)")
    return LFW


@pytest.fixture(scope="session")
def lfw_align_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One aligned-face cache for the whole session (``data.cache_dir`` layout): the tests that align the
    LFW DevTest people (export's int8 check, the flagship re-evaluation, galleries) align them once."""
    return tmp_path_factory.getbasetemp() / "deploy-align-cache"


@pytest.fixture(scope="session")
def devtest_aligned(lfw_root: Path, lfw_align_cache: Path) -> Path:
    """:func:`lfw_align_cache` holding every image of the LFW DevTest people aligned to dlib_150 (dlib), done
    once with 2 worker processes; the int8 check, the flagship re-evaluation and galleries read it."""
    from distill.data.align import align_images
    from distill.data.folders import scan_identity_folder
    from distill.data.pairs import read_pairs

    root = lfw_root / "lfw-deepfunneled"
    people = read_pairs(lfw_root / "pairsDevTest.txt", root, check_exists=False).people()
    images = scan_identity_folder(root).select_identities(people)
    align_images(root, images.rel_paths, template="dlib_150", backend="dlib", cache_dir=lfw_align_cache / "aligned",
                 no_face="center", progress=False, workers=2)
    return lfw_align_cache


@pytest.fixture
def one_torch_thread():
    """Tiny convs run ~10x faster on 1 thread than on 2 contended ones (CI has 2 shared cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
