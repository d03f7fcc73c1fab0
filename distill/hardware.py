"""What this CPU makes fast: the one place precision choices consult.

bf16 autocast pays off on CPUs with AMX tiles (Sapphire Rapids and later): there the dlib teacher ran
1,184 img/s in bf16 against 434 in fp32 (BENCHMARKS.md, an AMX machine). Without AMX, on AVX-512
with only ``avx512_bf16``, bf16 is *slower*: 255 against 337 img/s for the same teacher, batch 128,
measured on this project's 2-core VM (``python -m benchmarks.inference``). So ``precision: auto``
means bf16 with AMX and fp32 without.

The same probes name the CPU capability every ISA-dependent number was measured on
(:func:`cpu_capability`): onnxruntime's int8 kernels, for one, give different results with and
without VNNI (docs/int8.md), and speed depends on all of it.

Example::

    resolve_precision("auto")      # "bf16" on an AMX CPU, else "fp32"
    cpu_capability().label()       # e.g. "x86_64 AVX-512 + VNNI + bf16 (torch kernels AVX512)"
"""
from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from functools import lru_cache

import torch


@lru_cache(maxsize=1)
def has_amx() -> bool:
    """Whether this CPU has AMX tiles usable by torch (oneDNN's fast bf16/int8 matmuls)."""
    probe = getattr(torch.cpu, "_is_amx_tile_supported", None)
    try:
        return bool(probe()) if probe is not None else False
    except Exception:  # noqa: BLE001 - an unknown probe means "not known to be there"
        return False


def resolve_precision(precision: str) -> str:
    """``"auto"`` -> ``"bf16"`` with AMX, else ``"fp32"``; ``"fp32"`` and ``"bf16"`` unchanged.

    Raises:
        ValueError: another value.
    """
    if precision == "auto":
        return "bf16" if has_amx() else "fp32"
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be auto, fp32 or bf16, got {precision!r}")
    return precision


def _probe(name: str) -> bool:
    """``torch.cpu._is_<name>_supported()`` (cpuinfo's CPUID reading), False where torch lacks the probe."""
    fn = getattr(torch.cpu, f"_is_{name}_supported", None)
    try:
        return bool(fn()) if fn is not None else False
    except Exception:  # noqa: BLE001 - an unknown probe means "not known to be there"
        return False


@dataclass(frozen=True)
class CpuCapability:
    """The instruction sets that change this product's numbers, read with CPUID (torch's cpuinfo), so an
    emulator's CPU model (``qemu-x86_64 -cpu EPYC-Rome``) is reported as the code sees it.

    Attributes:
        machine: ``platform.machine()`` (``x86_64``, ``aarch64``, ...).
        torch_kernels: the kernel set torch dispatches to (``torch.backends.cpu.get_cpu_capability()``:
            ``AVX512``, ``AVX2``, ``DEFAULT``...; lowered by ``ATEN_CPU_CAPABILITY``).
        avx2, avx512: AVX2 / AVX-512 (F, BW, DQ, VL).
        vnni: AVX-512 VNNI (int8 dot products without the 16-bit intermediate sums of ``vpmaddubsw``:
            onnxruntime's u8s8 kernels saturate without it, docs/int8.md).
        avx512_bf16, amx: bf16 instructions and AMX tiles (``hardware.has_amx``).
    """

    machine: str
    torch_kernels: str
    avx2: bool
    avx512: bool
    vnni: bool
    avx512_bf16: bool
    amx: bool

    def label(self) -> str:
        """One line for reports, e.g. ``x86_64 AVX-512 + VNNI + bf16 (torch kernels AVX512)``."""
        if self.avx512:
            isa = "AVX-512" + "".join(f" + {n}" for n, on in (("VNNI", self.vnni), ("bf16", self.avx512_bf16),
                                                               ("AMX", self.amx)) if on)
        else:
            isa = "AVX2" if self.avx2 else "no AVX2"
            isa += " + VNNI" if self.vnni else " (no VNNI)" if self.avx2 else ""
        return f"{self.machine} {isa} (torch kernels {self.torch_kernels})"

    def int8_kernels(self) -> str:
        """Which of onnxruntime's x86 int8 dot-product paths this CPU takes: ``vnni`` (exact int32 sums),
        ``avx2-u8s8`` (``vpmaddubsw``: pairs of products summed in int16, saturating), or ``other``."""
        if self.machine.lower() not in ("x86_64", "amd64"):
            return "other"
        return "vnni" if self.vnni or self.amx else "avx2-u8s8" if self.avx2 else "other"

    def to_dict(self) -> dict:
        """JSON form (report.json ``versions.cpu``, the export's int8 record) with :meth:`label`."""
        return {**asdict(self), "label": self.label(), "int8_kernels": self.int8_kernels()}


@lru_cache(maxsize=1)
def cpu_capability() -> CpuCapability:
    """This CPU's :class:`CpuCapability` (read once per process)."""
    try:
        kernels = str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - older torch: unknown
        kernels = "unknown"
    return CpuCapability(machine=platform.machine(), torch_kernels=kernels, avx2=_probe("avx2"),
                         avx512=_probe("avx512"), vnni=_probe("vnni"), avx512_bf16=_probe("avx512_bf16"),
                         amx=has_amx())
