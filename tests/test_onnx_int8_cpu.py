"""int8 that holds on any x86 CPU: the chosen GEMM operands are exact for inputs that saturate MLAS'
U8S8 kernel on CPUs without VNNI (vpmaddubsw's int16 pair sums), whatever CPU runs this suite."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime needs the onnx extra: pip install -e '.[onnx]'")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sink_modifier.export.onnx_cpu import (  # noqa: E402
    X64_QUANT_PRECISION,
    CpuIsa,
    cpu_info,
    cpu_isa,
    exact_int8_session_config,
)
from sink_modifier.export.onnx_int8 import (  # noqa: E402
    AUTO_OPERANDS,
    Int8Kernel,
    Int8Operands,
    choose_operands,
    quantize_graph_int8,
)
from sink_modifier.export.onnx_quantization import QuantizedLinear  # noqa: E402

K, N = 64, 24


def vpmaddubsw_gemm(a_u8: np.ndarray, w_s8: np.ndarray) -> np.ndarray:
    """What MLAS' AVX2 / AVX-512BW U8S8 kernel computes without VNNI: ``vpmaddubsw`` multiplies
    u8 x s8 and adds adjacent pairs (k = 2j, 2j + 1) into a *saturating* int16, then ``vpmaddwd``
    by 1 widens those pair sums to int32 and they are accumulated exactly."""
    products = a_u8.astype(np.int64)[:, :, None] * w_s8.astype(np.int64)[None, :, :]  # [M, K, N]
    pairs = products[:, 0::2] + products[:, 1::2]
    return np.clip(pairs, -32768, 32767).sum(axis=1)


def _saturating_case():
    """Activations whose integers are 127 (uint8 255 with zero point 128) against weights of +-127
    and -128: every pair sum is +-64770 or -65280, far past int16."""
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (N, K)).astype(np.int8)  # [out, in], as stored
    w[:, : K // 2] = 127
    w[0] = -128
    s_w = (rng.random(N).astype(np.float32) + 0.5) / 100
    x = rng.standard_normal((3, K)).astype(np.float32)
    x[0] = 1.0  # every q = 127 (x / s = 127.5 rounds half to even to 128, clamped to 127)
    x[1] = -1.0  # every q = -127 or -128 (the float32 scale decides)
    x[2, ::2] = 1.0  # absmax 1 from the even entries
    return x, w, s_w


def _session(operands: Int8Operands, kernel: Int8Kernel, config: dict[str, str] | None = None):
    x, w, s_w = _saturating_case()
    dequantized = w.astype(np.float32) * s_w[:, None]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_t"], ["y"], name="linear")], "one_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["rows", N])],
        [numpy_helper.from_array(np.ascontiguousarray(dequantized.T), "w_t")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    quantize_graph_int8(model, {"lin": QuantizedLinear("lin", w, s_w)}, {"lin": dequantized}, kernel=kernel,
                        operands=operands)
    q_type = TensorProto.INT8 if operands is Int8Operands.S8S8 else TensorProto.UINT8
    types = {"QuantizeLinear": q_type, "MatMulInteger": TensorProto.INT32}
    model.graph.output.extend(helper.make_tensor_value_info(n.output[0], types[n.op_type], None)
                              for n in model.graph.node if n.op_type in types)
    options = ort.SessionOptions()
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]), x, w, s_w


def _exact(x: np.ndarray, w: np.ndarray):
    scale = np.abs(x).max(axis=-1, keepdims=True) / np.float32(127.5)
    q = np.clip(np.round(x / scale), -128, 127).astype(np.int64)
    return q, q @ w.astype(np.int64).T, scale


def test_the_inputs_saturate_the_u8s8_pair_sums_of_cpus_without_vnni():
    x, w, _ = _saturating_case()
    q, exact, _ = _exact(x, w)
    assert (q[0] == 127).all() and (q[1] <= -127).all()
    saturated = vpmaddubsw_gemm(q + 128, w.T) - 128 * w.astype(np.int64).sum(axis=1)  # MLAS' zero-point fix-up
    assert (saturated != exact).mean() > 0.5 and np.abs(saturated - exact).max() > 10**5


@pytest.mark.parametrize("kernel", [Int8Kernel.INTEGER, Int8Kernel.INTEGER_TO_FLOAT])
@pytest.mark.parametrize("requested", [AUTO_OPERANDS, Int8Operands.U8U8.value])
def test_the_chosen_operands_are_exact_for_inputs_that_saturate_u8s8(kernel, requested):
    """auto (what export-onnx does on this CPU) and u8u8 give the exact int32 product here, whatever
    this CPU is; the former default, u8s8, fails this on an AVX2 machine (last test)."""
    operands, _ = choose_operands(requested, cpu_isa())
    session, x, w, s_w = _session(operands, kernel)
    q, exact, scale = _exact(x, w)
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": x})))
    offset = 0 if operands is Int8Operands.S8S8 else 128
    q_graph = next(v for k, v in results.items() if "/q" in k)
    assert np.array_equal(q_graph.astype(np.int64) - offset, q)
    if kernel is Int8Kernel.INTEGER:
        acc = next(v for k, v in results.items() if "/acc" in k)
        assert acc.dtype == np.int32 and np.array_equal(acc.astype(np.int64), exact)
    expected = exact.astype(np.float64) * s_w[None, :] * scale
    np.testing.assert_allclose(results["y"], expected, rtol=1e-5)


def test_u8s8_is_exact_only_where_the_cpu_has_vnni():
    """Documents the kernel difference on whatever CPU runs the suite (AVX2 CI: saturated; VNNI: exact)."""
    session, x, w, _ = _session(Int8Operands.U8S8, Int8Kernel.INTEGER)
    _, exact, _ = _exact(x, w)
    acc = next(v for o, v in zip(session.get_outputs(), session.run(None, {"x": x})) if "/acc" in o.name)
    if cpu_isa().u8s8_saturates:
        assert not np.array_equal(acc, exact)
        q, _, _ = _exact(x, w)  # and what it computes is the vpmaddubsw model's result
        modelled = vpmaddubsw_gemm(q + 128, w.T) - 128 * w.astype(np.int64).sum(axis=1)
        assert np.array_equal(acc.astype(np.int64), modelled)
    else:
        assert np.array_equal(acc.astype(np.int64), exact)


def test_the_runner_session_option_makes_a_u8s8_graph_exact_on_a_cpu_without_vnni():
    """exact_int8_session_config: what a runner sets for an (older or VNNI-made) u8s8 export."""
    metadata = {"sink_modifier.precision": "int8", "sink_modifier.int8_operands": "u8s8"}
    assert exact_int8_session_config(metadata, CpuIsa.AVX2) == {X64_QUANT_PRECISION: "1"}
    assert exact_int8_session_config({"sink_modifier.precision": "int8"}, CpuIsa.AVX512) == {X64_QUANT_PRECISION: "1"}
    assert exact_int8_session_config(metadata, CpuIsa.AVX512_VNNI) == {}
    assert exact_int8_session_config({**metadata, "sink_modifier.int8_operands": "u8u8"}, CpuIsa.AVX2) == {}
    assert exact_int8_session_config({"sink_modifier.precision": "int4"}, CpuIsa.AVX2) == {}
    session, x, w, _ = _session(Int8Operands.U8S8, Int8Kernel.INTEGER_TO_FLOAT,
                                exact_int8_session_config(metadata, cpu_isa()))
    _, exact, scale = _exact(x, w)
    y = session.run(["y"], {"x": x})[0]
    s_w = _saturating_case()[2]
    np.testing.assert_allclose(y, exact.astype(np.float64) * s_w[None, :] * scale, rtol=1e-5)


@pytest.mark.parametrize("isa", list(CpuIsa))
def test_auto_picks_u8u8_exactly_where_u8s8_saturates(isa):
    operands, why = choose_operands(AUTO_OPERANDS, isa)
    assert operands is (Int8Operands.U8U8 if isa.u8s8_saturates else Int8Operands.U8S8)
    assert isa.value in why
    assert choose_operands("u8u8", isa)[0] is Int8Operands.U8U8
    assert isa.u8s8_saturates == (isa in (CpuIsa.AVX2, CpuIsa.AVX512, CpuIsa.OLDER_X86))


def test_cpu_info_reads_this_cpu():
    info = cpu_info()
    assert isinstance(info.isa, CpuIsa) and info.describe()["isa"] == info.isa.value
    if info.source == "cpuid":
        import torch

        assert info.flags["avx2"] == bool(torch.cpu._is_avx2_supported())  # cpuinfo agrees
        assert info.flags["avx512_vnni"] == bool(torch.cpu._is_vnni_supported())
