"""FaceNet (facenet-pytorch's InceptionResnetV1) as a teacher, with explicit weight resolution.

Weights are resolved apart from the constructor, by :func:`resolve_facenet_weights`:
the torch hub checkpoint cache (under facenet-pytorch's own file names), else a
download with a progress bar (short timeouts), else an immediate error that
names the file, the folder to put it in and the ``teacher.weights`` config key.

Example::

    from teachers import TEACHERS
    from teachers.facenet import check_facenet_weights_available, resolve_facenet_weights

    problems = check_facenet_weights_available("vggface2")   # [] when usable; never downloads
    teacher = TEACHERS.build("facenet", weights="vggface2", precision="bf16")
    emb = teacher.embed(faces_uint8)     # facenet_160 crops -> (B, 512), unit rows
"""
from __future__ import annotations

import os
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import torch

from distill.io import atomic_write, safe_torch_load
from distill.preprocess import Preprocessing

from .base import Teacher

#: named weight sets: facenet-pytorch's release URLs (its load_weights); the file name is the cache name
FACENET_WEIGHTS: dict[str, str] = {
    "vggface2": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "casia-webface":
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
}
#: fixed_image_standardization of facenet-pytorch: (x - 127.5) / 128 on 160x160 MTCNN-style crops
FACENET_PREPROCESSING = Preprocessing(160, mean=(127.5,) * 3, std=(128.0,) * 3, alignment="facenet_160")
CONNECT_TIMEOUT_S = 5.0


class FacenetWeightsError(FileNotFoundError):
    """FaceNet weights are missing or unusable; the message says which file, where, and what to do."""


def facenet_cache_dirs() -> list[Path]:
    """Folders searched for named weights: torch hub's checkpoints, then facenet-pytorch's own."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    torch_home = Path(os.path.expanduser(os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME",
                                                                                          "~/.cache"), "torch"))))
    dirs = [hub, torch_home / "checkpoints"]
    return list(dict.fromkeys(dirs))


def _filename(weights: str) -> str:
    return FACENET_WEIGHTS[weights].rsplit("/", 1)[1]


@lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
    from facenet_pytorch import InceptionResnetV1  # imported when used: it pulls in torchvision

    return {k: tuple(v.shape) for k, v in InceptionResnetV1(pretrained=None).state_dict().items()}


def _embedding_state(path: Path) -> dict[str, torch.Tensor]:
    """Load ``path`` and return the embedding-network part of the state dict (classifier ``logits.*`` dropped)."""
    try:
        state = safe_torch_load(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        raise FacenetWeightsError(f"{path}: not a loadable torch state dict ({type(e).__name__}: {e}). "
                                  "Delete it and download it again, or set teacher.weights to a good copy.") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FacenetWeightsError(f"{path}: expected a state dict of InceptionResnetV1, got {type(state).__name__}")
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    expected = _expected_shapes()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {expected[k]}" for k in expected
             if k in state and tuple(getattr(state[k], "shape", ())) != expected[k]]
    if missing or unexpected or wrong:
        raise FacenetWeightsError(
            f"{path}: not an InceptionResnetV1 state dict: missing {missing[:3]}, unexpected {unexpected[:3]}, "
            f"wrong shapes {wrong[:3]} ({len(missing)}/{len(unexpected)}/{len(wrong)} in all)")
    return state


def _missing_message(weights: str, reason: str) -> str:
    name, dirs = _filename(weights), facenet_cache_dirs()
    return (f"FaceNet weights {weights!r} ({name}) are not in the torch hub cache ({dirs[0]}) and {reason}. "
            f"Download {FACENET_WEIGHTS[weights]} on a machine with internet and put {name} in {dirs[0]}, "
            f"or set the config key teacher.weights to the local path of the file.")


def _download(url: str, dest: Path) -> None:
    """Stream ``url`` to ``dest`` atomically with a progress bar; short connect timeout, no hang when offline."""
    from tqdm import tqdm

    with urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S) as resp:  # noqa: S310 - fixed https URLs
        total = int(resp.headers.get("Content-Length") or 0) or None

        def write(f) -> None:
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {dest.name}") as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))

        atomic_write(dest, write)


def _cached(weights: str) -> Path | None:
    for d in facenet_cache_dirs():
        if (d / _filename(weights)).is_file():
            return d / _filename(weights)
    return None


def resolve_facenet_weights(weights: str, *, download: bool = True) -> Path:
    """Path of verified FaceNet weights: a named set (``vggface2``, ``casia-webface``) or a local file.

    Named sets are looked up in :func:`facenet_cache_dirs` under facenet-pytorch's file names; if
    absent and ``download`` is true they are downloaded (progress bar, 5 s connect timeout) into the
    torch hub cache. Every file is verified to load as an InceptionResnetV1 state dict. Raises
    :class:`FacenetWeightsError` at once when the file is missing and cannot be fetched.

    Example::

        path = resolve_facenet_weights("vggface2")            # ~/.cache/torch/hub/checkpoints/20180402-...pt
        path = resolve_facenet_weights("/data/my_facenet.pt")
    """
    if weights not in FACENET_WEIGHTS:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FacenetWeightsError(f"FaceNet weights {weights!r}: no such file, and not a named set "
                                      f"({', '.join(FACENET_WEIGHTS)}). Fix teacher.weights.")
        _embedding_state(path)
        return path
    path = _cached(weights)
    if path is None:
        if not download:
            raise FacenetWeightsError(_missing_message(weights, "downloading is off"))
        path = facenet_cache_dirs()[0] / _filename(weights)
        try:
            _download(FACENET_WEIGHTS[weights], path)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            raise FacenetWeightsError(_missing_message(weights, f"could not be downloaded ({e})")) from None
    try:
        _embedding_state(path)
    except FacenetWeightsError as e:
        raise FacenetWeightsError(f"{e} (cached copy {path} is corrupt: delete it)") from None
    return path


def _reachable(url: str) -> str | None:
    """None if ``url`` answers a HEAD request within the connect timeout, else the reason."""
    try:
        req = urllib.request.Request(url, method="HEAD")
        with urllib.request.urlopen(req, timeout=CONNECT_TIMEOUT_S):  # noqa: S310
            return None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        return str(e)


def check_facenet_weights_available(weights: str | None, *, probe_network: bool = True) -> list[str]:
    """Problems that would stop the FaceNet teacher from loading ``weights`` ([] = fine). Never downloads.

    A named set that is not cached is fine only if its URL answers (a HEAD request, 5 s timeout),
    unless ``probe_network`` is false, in which case it is a problem.
    """
    if weights is None:
        return []
    try:
        resolve_facenet_weights(weights, download=False)
        return []
    except FacenetWeightsError as e:
        if weights in FACENET_WEIGHTS and _cached(weights) is None and probe_network:
            reason = _reachable(FACENET_WEIGHTS[weights])
            if reason is None:
                return []
            return [_missing_message(weights, f"its URL is unreachable ({reason})")]
        return [str(e)]


class FaceNetTeacher(Teacher):
    """InceptionResnetV1 (512-D, L2-normalised), always in eval mode (its Dropout(0.6) stays off)."""

    def __init__(self, *, name: str = "facenet", precision: str = "fp32") -> None:
        super().__init__(name=name, preprocessing=FACENET_PREPROCESSING, embedding_dim=512, normalized=True,
                         precision=precision)
        from facenet_pytorch import InceptionResnetV1

        self.net = InceptionResnetV1(pretrained=None, classify=False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def load_weights_file(self, path: str | Path) -> "FaceNetTeacher":
        """Load verified weights (see :func:`resolve_facenet_weights`); the classifier is dropped."""
        self.net.load_state_dict(_embedding_state(Path(path)), strict=True)
        return self


def facenet(weights: str | Path | None = "vggface2", precision: str = "fp32") -> FaceNetTeacher:
    """FaceNet teacher. ``weights``: ``vggface2`` (default), ``casia-webface``, a local file, or None (random)."""
    teacher = FaceNetTeacher(precision=precision)
    if weights is None:
        return teacher
    return teacher.load_weights_file(resolve_facenet_weights(str(weights)))
