"""FaceNet teacher: weights through a local file, verification, and the offline error path."""
from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import torch

from distill.io import atomic_torch_save
from teachers import TEACHERS
from teachers.facenet import (FACENET_WEIGHTS, FacenetWeightsError, check_facenet_weights_available,
                              facenet_cache_dirs, resolve_facenet_weights)


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point torch hub and TORCH_HOME at empty folders, so no real cached weights are seen."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return hub / "checkpoints"


@pytest.fixture(scope="module")
def random_state(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    """A randomly initialised FaceNet saved as a state dict, with the 8631-class classifier facenet-pytorch ships."""
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    net = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631).eval()
    with torch.no_grad():  # non-trivial BN statistics so a wrong load would show
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("facenet") / "random.pt"
    atomic_torch_save(net.state_dict(), path)
    return path, net


def test_local_file_round_trip(random_state: tuple[Path, torch.nn.Module]) -> None:
    path, net = random_state
    assert resolve_facenet_weights(str(path)) == path
    teacher = TEACHERS.build("facenet", weights=str(path))
    g = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (2, 160, 160, 3), generator=g, dtype=torch.uint8)
    emb = teacher.embed(faces)
    net.classify = False  # embeddings, as the teacher gives
    with torch.no_grad():
        ref = net((faces.permute(0, 3, 1, 2).float() - 127.5) / 128.0)
    assert emb.shape == (2, 512) and torch.equal(emb, ref)
    assert teacher.preprocessing.alignment == "facenet_160" and teacher.normalized
    # Dropout stays off when a surrounding module trains
    torch.nn.Sequential(teacher).train()
    assert not teacher.net.dropout.training
    assert torch.equal(teacher.embed(faces), emb)


def test_named_weights_found_in_cache(random_state: tuple[Path, torch.nn.Module], empty_cache: Path) -> None:
    empty_cache.mkdir(parents=True)
    name = FACENET_WEIGHTS["casia-webface"].rsplit("/", 1)[1]
    (empty_cache / name).write_bytes(random_state[0].read_bytes())
    assert resolve_facenet_weights("casia-webface", download=False) == empty_cache / name
    assert check_facenet_weights_available("casia-webface") == []


def test_bad_files_rejected(tmp_path: Path, random_state: tuple[Path, torch.nn.Module]) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(FacenetWeightsError, match="junk.pt.*not a loadable"):
        resolve_facenet_weights(str(junk))
    state = torch.load(random_state[0], weights_only=True)
    state.pop("last_linear.weight")
    atomic_torch_save(state, tmp_path / "partial.pt")
    with pytest.raises(FacenetWeightsError, match="missing.*last_linear.weight"):
        TEACHERS.build("facenet", weights=str(tmp_path / "partial.pt"))
    with pytest.raises(FacenetWeightsError, match="no such file.*teacher.weights"):
        resolve_facenet_weights(str(tmp_path / "nope.pt"))
    assert check_facenet_weights_available(str(tmp_path / "nope.pt"))


def _github_reachable() -> bool:
    try:
        socket.create_connection(("github.com", 443), timeout=3).close()
        return True
    except OSError:
        return False


def test_offline_fails_fast_with_instructions(empty_cache: Path) -> None:
    with pytest.raises(FacenetWeightsError) as info:
        resolve_facenet_weights("vggface2", download=False)
    msg = str(info.value)
    assert "20180402-114759-vggface2.pt" in msg and str(empty_cache) in msg and "teacher.weights" in msg
    # vggface2 has no offline copy: the error says so and names the offline choice
    assert "no offline copy of 'vggface2'" in msg and "teacher.weights: casia-webface" in msg
    if _github_reachable():
        pytest.skip("platform: github.com is reachable: the offline download failure cannot be exercised here")
    start = time.monotonic()
    with pytest.raises(FacenetWeightsError, match="could not be downloaded") as info:
        TEACHERS.build("facenet")  # default weights: vggface2 -> real download attempt
    assert time.monotonic() - start < 15
    msg = str(info.value)
    assert "20180402-114759-vggface2.pt" in msg and str(empty_cache) in msg and "teacher.weights" in msg
    assert not any(empty_cache.glob("*.pt")), "a failed download left a file behind"
    start = time.monotonic()
    (problem,) = check_facenet_weights_available("vggface2")
    assert time.monotonic() - start < 15 and "teacher.weights" in problem
    assert facenet_cache_dirs()[0] == empty_cache
