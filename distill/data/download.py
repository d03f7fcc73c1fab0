"""Getting LFW when it is not on disk: torchvision's official-archive download with md5 checks.

Offline, :func:`ensure_lfw` fails within seconds naming what is missing,
instead of hanging in a download.
"""
from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from distill.errors import MissingInputError

LFW_URL = "http://vis-www.cs.umass.edu/lfw/"
LFW_FILES = ("pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt")


def is_reachable(url: str, timeout: float = 3.0) -> bool:
    """A quick TCP connect to ``url``'s host: tells online from offline without a long hang."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def lfw_missing(lfw_dir: Path) -> list[str]:
    """The LFW files and folders ``lfw_dir`` lacks (pairs files and ``lfw-deepfunneled/``)."""
    missing = [str(lfw_dir / f) for f in LFW_FILES if not (lfw_dir / f).is_file()]
    if not (lfw_dir / "lfw-deepfunneled").is_dir():
        missing.append(str(lfw_dir / "lfw-deepfunneled") + "/")
    return missing


def ensure_lfw(lfw_dir: Path, *, download: bool) -> Path:
    """Return ``lfw_dir`` holding deep-funneled LFW and the official pairs files, downloading if allowed.

    Uses :class:`torchvision.datasets.LFWPairs`, which downloads the official
    archive and verifies its md5 (and the pairs files' md5).
    """
    missing = lfw_missing(lfw_dir)
    if not missing:
        return lfw_dir
    how = (f"Put LFW there (lfw-deepfunneled/ and pairs*.txt from {LFW_URL}), point $FACEDISTILL_LFW at an "
           f"existing copy, or run offline with configs/quickstart.yaml.")
    if not download:
        raise MissingInputError(f"LFW is missing: {', '.join(missing)}. {how}")
    if not is_reachable(LFW_URL):
        raise MissingInputError(f"LFW is missing ({', '.join(missing)}) and {LFW_URL} cannot be reached "
                                f"(offline?). {how}")
    from torchvision.datasets import LFWPairs

    for split in ("10fold", "train", "test"):
        LFWPairs(str(lfw_dir), split=split, image_set="deepfunneled", download=True)
    fetched = lfw_dir / "lfw-py"
    for name in (*LFW_FILES, "lfw-deepfunneled"):
        if (fetched / name).exists() and not (lfw_dir / name).exists():
            (fetched / name).rename(lfw_dir / name)
    still = lfw_missing(lfw_dir)
    if still:
        raise FileNotFoundError(f"LFW download finished but these are still missing: {', '.join(still)}")
    return lfw_dir
