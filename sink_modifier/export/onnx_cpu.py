"""Which int8 instructions this CPU has, as ONNX Runtime's MLAS sees them.

MLAS (``onnxruntime/core/mlas/lib/platform.cpp``) picks its x86 int8 GEMM kernel from CPUID
when the library loads, and that choice decides whether a U8S8 product (uint8 activation x
int8 weight) is exact:

* AVX2 without VNNI (``MlasGemmU8S8KernelAvx2``) and AVX-512BW without VNNI
  (``MlasGemmU8S8KernelAvx512Core``) multiply with ``vpmaddubsw``, which adds each pair of
  u8 x s8 products into a *saturating* int16: 255 x 127 x 2 = 64770 is clamped to 32767;
* AVX-VNNI / AVX512-VNNI (``vpdpbusds``) and AMX (``tdpbusd``) add the products into int32:
  exact.

The U8U8 kernels on the same CPUs widen both operands to int16 (``vpmovzxbw``) and use
``vpmaddwd`` (pair sums in int32: exact), so they are exact everywhere; S8S8 and S8U8 have
x86 kernels only with AVX-VNNI-INT8 and otherwise run MLAS' portable C kernel (exact, slow).

:func:`cpu_isa` reads CPUID itself (a 27-byte ``cpuid`` stub in an executable page, Linux and
macOS on x86-64), because what matters is what the *running* process is told, which is also
what an emulator reports (``/proc/cpuinfo`` shows the host's flags under ``qemu-user``), and
because torch reports AVX512-VNNI but not AVX-VNNI. Where the stub cannot run, torch's own
CPU checks (cpuinfo) answer instead.
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from enum import Enum

__all__ = ["X64_QUANT_PRECISION", "CpuInfo", "CpuIsa", "cpu_info", "cpu_isa", "exact_int8_session_config"]

# ORT's session option that rewrites int8 weights to uint8 at load (U8U8 kernels: exact)
X64_QUANT_PRECISION = "session.x64quantprecision"


class CpuIsa(str, Enum):
    """The best int8 dot-product instructions the CPU (and its OS) offer, best first."""

    AMX = "amx"  # AMX-INT8 tiles (Sapphire Rapids and later)
    AVX512_VNNI = "avx512-vnni"  # Cascade Lake, Ice Lake, AMD Zen 4 and later
    AVX_VNNI = "avx-vnni"  # VEX-encoded VNNI on CPUs without AVX-512 (Alder Lake and later)
    AVX512 = "avx512"  # AVX-512BW without VNNI (Skylake-SP): U8S8 saturates
    AVX2 = "avx2"  # Haswell .. Comet Lake, AMD Zen 1-3: U8S8 saturates
    OLDER_X86 = "x86-pre-avx2"  # SSE kernels (Microsoft's SSE4.1 U8S8 build saturates too)
    NOT_X86 = "not-x86"  # ARM and others: MLAS' int8 kernels widen to int32 (exact)

    @property
    def u8s8_saturates(self) -> bool:
        """Whether MLAS' U8S8 GEMM adds product pairs into saturating int16 on this CPU."""
        return self in (CpuIsa.AVX512, CpuIsa.AVX2, CpuIsa.OLDER_X86)


@dataclass(frozen=True)
class CpuInfo:
    isa: CpuIsa
    flags: dict[str, bool]  # what the decision read (CPU and OS support)
    source: str  # "cpuid", or "torch" where the CPUID stub could not run

    def describe(self) -> dict:
        """For result records (``onnx_export.json``, benchmark JSON)."""
        return {"isa": self.isa.value, "u8s8_saturates": self.isa.u8s8_saturates, "machine": platform.machine(),
                "source": self.source, "flags": dict(self.flags)}


def cpu_isa() -> CpuIsa:
    return cpu_info().isa


@functools.cache
def cpu_info() -> CpuInfo:
    """This process's CPU, read once."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return CpuInfo(CpuIsa.NOT_X86, {}, "platform")
    try:
        flags = _cpuid_flags()
        source = "cpuid"
    except (OSError, ValueError, AttributeError, TypeError, BufferError):  # no executable page here (W^X policy, Windows)
        flags = _torch_flags()
        source = "torch"
    return CpuInfo(_classify(flags), flags, source)


def _classify(flags: dict[str, bool]) -> CpuIsa:
    if flags.get("amx_int8") and flags.get("os_amx"):
        return CpuIsa.AMX  # MLAS falls back to its AVX512-VNNI kernel if the OS refuses AMX: exact too
    avx512 = flags.get("avx512bw") and flags.get("os_avx512")
    if avx512 and flags.get("avx512_vnni"):
        return CpuIsa.AVX512_VNNI
    if flags.get("avx2") and flags.get("os_avx"):
        return CpuIsa.AVX_VNNI if flags.get("avx_vnni") else CpuIsa.AVX512 if avx512 else CpuIsa.AVX2
    return CpuIsa.OLDER_X86


# void cpuid(uint32 leaf /* edi */, uint32 subleaf /* esi */, uint32 out[4] /* rdx */)  (System V ABI)
#   push rbx; mov r8, rdx; mov eax, edi; mov ecx, esi; cpuid;
#   mov [r8], eax; mov [r8+4], ebx; mov [r8+8], ecx; mov [r8+12], edx; pop rbx; ret
_CPUID = bytes([0x53, 0x49, 0x89, 0xD0, 0x89, 0xF8, 0x89, 0xF1, 0x0F, 0xA2, 0x41, 0x89, 0x00, 0x41, 0x89, 0x58,
                0x04, 0x41, 0x89, 0x48, 0x08, 0x41, 0x89, 0x50, 0x0C, 0x5B, 0xC3])
# void xgetbv0(uint32 out[2] /* rdi */): xor ecx, ecx; xgetbv; mov [rdi], eax; mov [rdi+4], edx; ret
_XGETBV = bytes([0x31, 0xC9, 0x0F, 0x01, 0xD0, 0x89, 0x07, 0x89, 0x57, 0x04, 0xC3])


def _cpuid_flags() -> dict[str, bool]:
    import ctypes
    import mmap

    if platform.system() not in ("Linux", "Darwin") or ctypes.sizeof(ctypes.c_void_p) != 8:
        raise OSError("the CPUID stub follows the System V x86-64 calling convention")
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(_CPUID + _XGETBV)
    anchor = ctypes.c_char.from_buffer(page)  # holds the page's buffer: released before it closes
    try:
        address = ctypes.addressof(anchor)
        words = ctypes.c_uint32 * 4
        cpuid = ctypes.CFUNCTYPE(None, ctypes.c_uint32, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32))(address)
        xgetbv = ctypes.CFUNCTYPE(None, ctypes.POINTER(ctypes.c_uint32))(address + len(_CPUID))

        def leaf(n: int, sub: int = 0) -> list[int]:
            out = words()
            cpuid(n, sub, out)
            return list(out)

        top = leaf(0)[0]
        ecx1 = leaf(1)[2]
        _, ebx7, ecx7, edx7 = leaf(7) if top >= 7 else [0, 0, 0, 0]
        eax71 = leaf(7, 1)[0] if top >= 7 and leaf(7)[0] >= 1 else 0
        xcr0 = 0
        if ecx1 >> 27 & 1:  # OSXSAVE: the OS enabled XGETBV
            low_high = (ctypes.c_uint32 * 2)()
            xgetbv(low_high)
            xcr0 = low_high[0] | low_high[1] << 32
    finally:
        del anchor
        page.close()
    return {
        "avx2": bool(ebx7 >> 5 & 1) and bool(ecx1 >> 12 & 1),  # AVX2 and FMA3, as MLAS requires
        "avx512bw": bool(ebx7 >> 16 & 1) and (ebx7 & 0xC0020000) == 0xC0020000,  # F + DQ + BW + VL
        "avx512_vnni": bool(ecx7 >> 11 & 1),
        "avx_vnni": bool(eax71 >> 4 & 1),
        "amx_int8": bool(edx7 >> 25 & 1) and bool(edx7 >> 24 & 1),
        "os_avx": xcr0 & 0x6 == 0x6,
        "os_avx512": xcr0 & 0xE0 == 0xE0,
        "os_amx": xcr0 & 0x60000 == 0x60000,
    }


def _torch_flags() -> dict[str, bool]:
    """torch's cpuinfo-backed checks (they include OS support); torch has no AVX-VNNI check."""
    import torch

    cpu = torch.cpu
    avx512 = bool(cpu._is_avx512_supported())
    amx = bool(cpu._is_amx_tile_supported())
    return {"avx2": bool(cpu._is_avx2_supported()), "avx512bw": avx512, "avx512_vnni": bool(cpu._is_vnni_supported()),
            "avx_vnni": False, "amx_int8": amx, "os_avx": True, "os_avx512": avx512, "os_amx": amx}


def exact_int8_session_config(metadata, isa: CpuIsa | None = None) -> dict[str, str]:
    """ONNX Runtime session config entries a runner should set for an export on this CPU.

    ``metadata``: the .onnx file's metadata (``session.get_modelmeta().custom_metadata_map``).
    A u8s8 int8 graph (``sink_modifier.int8_operands``; int8 exports older than that key are all
    u8s8) on a CPU whose U8S8 kernel saturates gets ``session.x64quantprecision=1``: ORT then
    stores its weights as uint8 at load and runs the exact U8U8 kernels, the same integers as
    a u8u8 export. Anything else needs nothing (``{}``): setting it there would only slow a
    VNNI CPU down, since ORT applies it on every x86 CPU with AVX2.
    """
    if metadata.get("sink_modifier.precision") != "int8":
        return {}
    if metadata.get("sink_modifier.int8_operands", "u8s8") != "u8s8":
        return {}
    return {X64_QUANT_PRECISION: "1"} if (isa or cpu_isa()).u8s8_saturates else {}
