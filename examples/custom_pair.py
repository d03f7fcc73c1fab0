"""A user-defined teacher and student, distilled and evaluated by facedistill.

    python examples/custom_pair.py [--out runs/custom_pair]

The teacher is your own callable (here: dlib's face ResNet, L2-normalised, as a
stand-in for a model from another framework); the student is your own module.
"""
import argparse
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import distill
from students import DepthwiseSeparable
from teachers import CallableTeacher, build_teacher


class TinyStudent(nn.Module):
    """Three depthwise-separable blocks and a 128-D unit-norm embedding."""

    def __init__(self, dim: int = 128) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(DepthwiseSeparable(16, 32, 2), DepthwiseSeparable(32, 64, 2),
                                  DepthwiseSeparable(64, 128, 2))
        self.fc = nn.Linear(128, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.stem(x)).mean(dim=(2, 3))
        return F.normalize(self.fc(x), dim=1)


class Normalised(nn.Module):
    """Your teacher network: any module mapping preprocessed (B,3,S,S) input to (B,D)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(x), dim=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/custom_pair"))
    ap.add_argument("--minutes", type=float, default=0.5, help="training budget")
    args = ap.parse_args()

    dlib = build_teacher("dlib_resnet")
    teacher = CallableTeacher(Normalised(dlib), name="my_normalised_dlib",
                              preprocessing=dlib.preprocessing, embedding_dim=128, normalized=True)
    cfg = distill.load_config("configs/quickstart.yaml", [
        f"out={args.out}", "student.input_size=64", f"train.max_minutes={args.minutes}",
        "data.synthetic.identities=24", "data.synthetic.images_per_identity=6", "eval.latency=false"])
    summary = distill.distill_pair(teacher, TinyStudent(), cfg, overwrite=True)
    student = next(r for r in summary.results if r.role == "student")
    print("student accuracy:", next(iter(student.protocols.values())).accuracy_mean)
    # TinyStudent is not a registered class: load its weights back into an instance of it
    saved = distill.load_student(summary.student, module=TinyStudent())
    print("reloaded:", saved.name, f"{saved.embedding_dim}-D", "normalised" if saved.normalized else "raw")


if __name__ == "__main__":
    main()
