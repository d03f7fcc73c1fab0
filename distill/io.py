"""Atomic file writes: a reader sees the old file or the complete new one, never half.

Every file the product writes into a run directory or cache goes through here
(temp file in the same folder, fsync, rename, fsync the folder).

Example::

    atomic_write_text(run_dir / "report.md", markdown)
    atomic_torch_save(state, run_dir / "checkpoints" / "last.pt")
"""
from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, IO

import torch

from distill.errors import InputError


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask: from /proc on Linux, else by setting it and putting it back at once."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o022)
        os.umask(mask)
        return mask


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(f)`` on a temp file beside ``path``, then rename it over ``path``.

    The file gets the permissions ``open()`` would give it (0o666 less the umask), or keeps those of the
    file it replaces; not mkstemp's private 0o600. On any error (a full disk included) the temp file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            mode = path.stat().st_mode & 0o7777
        except OSError:
            mode = 0o666 & ~_umask()
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(e.errno, f"{e.strerror} while writing {path}; the previous {path.name} (if any) is "
                                   f"unchanged. Free disk space and rerun (distill run --resume continues a run)"
                          ) from e
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (load it with :func:`safe_torch_load`)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())




# --------------------------------------------------------------------------- unreadable model files
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "a gzip archive"),
    (b"GIF8", "a GIF image"), (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF", "an HDF5 file (Keras/TensorFlow weights?)"),
)


def describe_file(path: str | Path) -> str:
    """What a file that failed to load as a model appears to be, from its first bytes (for error messages):
    e.g. ``"empty (0 bytes)"``, ``"an HTML page (5,120 bytes), not a model"``, ``"a zip archive cut short ..."``."""
    import zipfile

    p = Path(path)
    size = p.stat().st_size
    if size == 0:
        return "empty (0 bytes): an interrupted download or copy"
    with open(p, "rb") as f:
        head = f.read(2048)
    low = head.lstrip().lower()
    if low.startswith((b"<!doctype html", b"<html", b"<?xml")) or b"<head" in low[:1024] or b"<body" in low[:1024]:
        return (f"an HTML page ({size:,} bytes), not a model: a download that saved a web page (a login, error or "
                "'view file' page) instead of the file")
    if low.startswith(b"version https://git-lfs"):
        return "a Git LFS pointer, not the file itself (`git lfs pull` fetches it)"
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(p):
            return f"a zip archive cut short ({size:,} bytes, its end record is missing): a truncated copy or download"
        return "a zip archive that is not a PyTorch checkpoint, or a damaged one"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return (f"a Python pickle (protocol {head[1]}) of another program's objects, which facedistill never unpickles "
                "(unpickling runs code); a PyTorch checkpoint saved by torch >= 1.6 is a zip archive")
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"a binary file of {size:,} bytes that no model format recognises"
    kind = "a JSON document" if text.lstrip().startswith(("{", "[")) else "a text file"
    return f"{kind} starting {' '.join(text.split())[:60]!r}"


class ModelFileError(InputError, ValueError):
    """A model file that cannot be loaded (exit 2): ``path`` and ``what`` it appears to be (:func:`describe_file`).
    Callers that know the command in hand wrap it with their remedy; the others pass it on as it is."""

    def __init__(self, path: str | Path, what: str) -> None:
        super().__init__(f"{path} is {what}")
        self.path, self.what = Path(path), what


def safe_torch_load(path: str | Path) -> Any:
    """Load a checkpoint without executing pickled code (``weights_only=True``).

    Raises:
        FileNotFoundError: no such file.
        ModelFileError: not a loadable PyTorch checkpoint; the message names the file and what it appears to
            be (never torch's advice to unpickle it with ``weights_only=False``).
    """
    import warnings

    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a foreign pickle
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # noqa: BLE001 - described instead of torch's text
        what = describe_file(path)
        if what.startswith("a zip archive that is not") and "weights only load failed" in str(e).lower():
            what = ("a PyTorch checkpoint holding pickled objects other than tensors and plain containers, which "
                    "facedistill refuses to unpickle (unpickling can run code)")
        elif what.startswith("a zip archive that is not"):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            what += f" ({first[:200]})"
        raise ModelFileError(path, what) from None
