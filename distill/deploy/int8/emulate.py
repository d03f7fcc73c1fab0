"""An int8 file's outputs on another x86 instruction set, without that machine: QEMU user-mode emulation.

onnxruntime picks its int8 kernels by CPUID. With AVX-512 VNNI (or AMX) a u8 x s8 dot product
accumulates exactly in int32; with AVX2 alone (and AVX-512 without VNNI) it uses ``vpmaddubsw``, which
adds pairs of u8 x s8 products in *saturating int16* first: 255 x 127 x 2 = 64,770 does not fit, so
full-range int8 weights can clip (onnxruntime's quantisation docs: "reduce_range" and U8U8 are the
remedies). A 7-bit weight range (``Int8Recipe.reduce_range``) keeps every pair within 255 x 63 x 2 =
32,130 < 32,767: the same integers on every ISA. This module shows it instead of assuming it:
``qemu-x86_64 -cpu EPYC-Rome`` (AMD Zen 2: AVX2, FMA, no AVX-512, no VNNI) reports that CPU through
CPUID, so onnxruntime runs its AVX2 kernels, bit for bit what such a machine computes (QEMU's TCG
emulates the integer instructions exactly; the child is numpy + onnxruntime only, see ``ort_child.py``).

QEMU is Debian's ``qemu-user`` (``apt-get install qemu-user``; ``make test`` installs it). TCG cannot
emulate AVX-512, so only CPUs without it can be emulated: the other side of a comparison is this machine.

Example::

    y_avx2 = run_onnx("student.int8.onnx", x, cpu="EPYC-Rome")    # (N, D), as on an AVX2-only EPYC
    y_here = run_onnx("student.int8.onnx", x)                     # this CPU (cpu_capability().label())
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

#: QEMU CPU models for the x86 int8 paths users have that this machine may not: AVX2 without VNNI
AVX2_CPU = "EPYC-Rome"
CHILD = Path(__file__).with_name("ort_child.py")


class EmulatorMissing(RuntimeError):
    """``qemu-x86_64`` is not installed (``apt-get install qemu-user``)."""


def qemu_binary() -> str | None:
    """The path of ``qemu-x86_64`` (Debian's qemu-user), or None."""
    return shutil.which("qemu-x86_64") or shutil.which("qemu-x86_64-static")


def run_onnx(model: str | Path, inputs: np.ndarray, *, cpu: str | None = None, batch_size: int = 64,
             timeout: float = 3600) -> np.ndarray:
    """The first output of ``model`` on ``inputs`` ``(N, ...)`` float32: ``(N, D)`` float32, computed by
    onnxruntime in a child process with one thread, on this CPU (``cpu=None``) or under
    ``qemu-x86_64 -cpu CPU`` (e.g. :data:`AVX2_CPU`).

    Raises:
        EmulatorMissing: ``cpu`` given and QEMU not installed.
        RuntimeError: the child failed (its stderr's tail in the message).
    """
    prefix: list[str] = []
    if cpu is not None:
        qemu = qemu_binary()
        if qemu is None:
            raise EmulatorMissing("qemu-x86_64 is not installed: `apt-get install qemu-user` (Debian) to run "
                                  f"int8 files as a {cpu} CPU would")
        prefix = [qemu, "-cpu", cpu]
    with tempfile.TemporaryDirectory(prefix="facedistill-emulate-") as tmp:
        x, y = Path(tmp) / "x.npy", Path(tmp) / "y.npy"
        np.save(x, np.ascontiguousarray(inputs, dtype=np.float32))
        proc = subprocess.run([*prefix, sys.executable, str(CHILD), str(model), str(x), str(y), str(batch_size)],
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0 or not y.exists():
            raise RuntimeError(f"onnxruntime child on {cpu or 'this CPU'} failed ({proc.returncode}): "
                               f"{proc.stderr[-1500:]}")
        return np.load(y)
