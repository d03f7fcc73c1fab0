"""Issue 26's student levers: MobileFaceNet's GDConv pooling and warm starts (student.init)."""
from __future__ import annotations

import pytest
import torch

from distill.models.student import StudentFileError, warm_start
from distill.profile import profile
from students import MobileNet
from students.mobilenet import GDConv, feature_side


@pytest.mark.parametrize("size,side", [(112, 4), (96, 3), (128, 4), (160, 5), (224, 7)])
def test_gdconv_covers_the_whole_last_feature_map(size, side):
    assert feature_side(size) == side
    net = MobileNet(alpha=0.25, input_size=size, embedding_dim=16, pool="gdconv").eval()
    assert isinstance(net.pool, GDConv) and net.pool[0].kernel_size == (side, side)
    feats = net.forward_features(torch.randn(2, 3, size, size))
    assert feats.shape[-2:] == (side, side) and net(torch.randn(2, 3, size, size)).shape == (2, 16)
    avg = MobileNet(alpha=0.25, input_size=size, embedding_dim=16)
    extra = profile(net, size).mult_adds - profile(avg, size).mult_adds
    assert extra == side * side * net.num_features                  # the profiler counts the head's filter


def test_gdconv_weights_positions_unlike_average_pooling():
    """A GDConv filter that looks only at the centre ignores what happens in a corner; average pooling cannot."""
    net = MobileNet(alpha=0.25, input_size=112, embedding_dim=16, pool="gdconv").eval()
    with torch.no_grad():
        w = torch.zeros_like(net.pool[0].weight)
        w[:, :, 1:3, 1:3] = 1.0
        net.pool[0].weight.copy_(w)
    x = torch.zeros(1, net.num_features, 4, 4)
    corner = x.clone()
    corner[..., 0, 0] = 5.0
    assert torch.equal(net.pool(x), net.pool(corner))
    assert not torch.equal(torch.nn.AdaptiveAvgPool2d(1)(x), torch.nn.AdaptiveAvgPool2d(1)(corner))
    with pytest.raises(ValueError, match="pool must be one of"):
        MobileNet(pool="max")


def test_warm_start_loads_what_fits_and_says_what_is_fresh(tmp_path):
    src = MobileNet(alpha=0.25, input_size=64, embedding_dim=16)
    torch.save(src.state_dict(), tmp_path / "sd.pt")
    logs: list[str] = []
    same = MobileNet(alpha=0.25, input_size=64, embedding_dim=16)
    assert warm_start(same, tmp_path / "sd.pt", logs.append)["fresh"] == []
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), src.state_dict().values()))
    other_head = MobileNet(alpha=0.25, input_size=64, embedding_dim=32)
    out = warm_start(other_head, tmp_path / "sd.pt", logs.append)
    assert out["fresh"] == ["head"] and "fresh (no match in the file): head" in logs[-1]
    assert torch.equal(other_head.stem[0].weight, src.stem[0].weight)          # the body came along
    with pytest.raises(StudentFileError, match="no weight of"):
        warm_start(MobileNet(alpha=1.0, input_size=64, embedding_dim=7, num_classes=None, head_bn=False)
                   .head, tmp_path / "sd.pt", logs.append)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(StudentFileError, match="student.init"):
        warm_start(same, tmp_path / "junk.pt", logs.append)


def test_a_run_warm_starts_from_another_runs_student(tmp_path):
    """student.init through `distill run`: the second run starts from the first one's student.pt."""
    from test_reliability_helpers import QUICKSTART, run_cli_inprocess, set_args, tiny_overrides

    sets = tiny_overrides(tmp_path / "cache", **{"train.epochs": 1})
    rc, _, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(sets), "--out", str(tmp_path / "a")])
    assert rc == 0, err[-2000:]
    sets = tiny_overrides(tmp_path / "cache", **{"train.epochs": 1, "student.init": str(tmp_path / "a" / "student.pt"),
                                                "student.pool": "gdconv"})
    rc, out, err = run_cli_inprocess(["run", str(QUICKSTART), *set_args(sets), "--out", str(tmp_path / "b")])
    assert rc == 0, err[-2000:]
    assert "student.init:" in out + err and "fresh (no match in the file): pool" in out + err
