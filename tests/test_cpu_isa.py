"""ISA detection from /proc/cpuinfo text: what a CPU speed figure is labelled with."""

from __future__ import annotations

from sink_modifier.runtime.cpu_isa import cpu_isa, isa_from_flags

AVX512_VNNI = """processor\t: 0
model name\t: Intel Xeon Processor (Cascadelake)
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16
processor\t: 1
flags\t\t: fpu sse2 avx avx2 fma
"""


def test_avx512_vnni_without_amx_is_named_and_the_first_flags_line_counts():
    isa = isa_from_flags(AVX512_VNNI)
    assert isa["summary"] == "AVX2, AVX-512, AVX-512 VNNI, AVX-512 BF16 (no AMX)"
    assert isa["flags"]["AVX-512 VNNI"] and not isa["flags"]["AMX"] and not isa["flags"]["AVX-VNNI"]
    assert isa["model"] == "Intel Xeon Processor (Cascadelake)"


def test_avx2_only_and_amx_machines():
    assert isa_from_flags("flags : sse2 avx avx2 fma\n")["summary"] == "AVX2 (no AMX)"
    amx = isa_from_flags("flags : avx2 avx512f avx512_vnni amx_tile amx_int8 amx_bf16 avx_vnni\n")
    assert amx["summary"] == "AVX2, AVX-512, AVX-512 VNNI, AVX-VNNI, AMX, AMX-INT8, AMX-BF16"
    assert isa_from_flags("flags : neon asimd\n")["summary"] == "none of AVX2/AVX-512/VNNI/AMX"


def test_unreadable_cpuinfo_says_unknown(tmp_path):
    isa = cpu_isa(tmp_path / "missing")
    assert isa["summary"].startswith("unknown (") and isa["flags"] == {}
    (tmp_path / "cpuinfo").write_text(AVX512_VNNI)
    assert cpu_isa(tmp_path / "cpuinfo")["flags"]["AVX-512"]
