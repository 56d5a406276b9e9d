"""Turn an exported float graph into a W8A8 int8 graph that holds the checkpoint's own int8 weights.

The model is exported as a float graph first (the checkpoint dequantized, see
:mod:`sink_modifier.export.onnx_export`); then every ``MatMul`` whose weight is a quantized
Linear's (found by value, :mod:`sink_modifier.export.onnx_graph_edit`) becomes

    s_x = max|x| / 127.5 per token (eps where 0)        compressed-tensors' dynamic qparams
    q_x = clip(round_half_even(x / s_x), -128, 127)      its fake-quant rounding
    y   = (q_x @ W_int8^T) * s_w * s_x                   int32 accumulation, exact

so the activation integers are those the PyTorch fake-quantized forward computes, bit for bit
given the same input (``calculate_qparams``: symmetric scale = absmax / (255 / 2), float32 eps
for a zero scale; ``torch.round`` rounds half to even like ONNX/MLAS), and the weight integers
and per-channel scales are the ones stored in the safetensors. Only the float rounding of the
final rescale differs. (Through a whole model, last-bit differences in float ops between
the runtimes move an activation across a rounding boundary now and then and that compounds
over the layers: ORT vs PyTorch logits differ by up to ~0.25 on tiny-dlm, as much as
PyTorch float32 vs float64 fake-quant does.)

Kernels (:class:`Int8Kernel`). MLAS' fast x86 int8 GEMM is U8S8: a symmetric int8 activation
``q_x`` is fed as ``uint8 q_x + 128`` with zero point 128, which gives exactly the int8 x int8
product. The default emits ``QuantizeLinear`` (per-token scale, one row per token) and
com.microsoft ``MatMulIntegerToFloat`` (the int32 -> float conversion and the per-channel
weight scale fused into the GEMM's output stage), then one ``Mul`` by the per-token scale
(``MatMulIntegerToFloat``'s ``a_scale`` takes only a scalar). ``QuantizeLinear`` gives the
same integers as an explicit Div/Round/Add/Clip/Cast chain in one kernel. The standard-ONNX
``MatMulInteger`` + ``Cast`` + ``Mul`` form computes the same numbers (ORT does not fuse it
when the activation scale is per token) and runs ~4% slower. ORT's own fused
``DynamicQuantizeMatMul`` (what ``onnxruntime.quantization.quantize_dynamic`` emits)
quantizes activations per *tensor*, asymmetric uint8: not the recipe's arithmetic; with the
same weights it is ~7% faster but has ~3.5x the logit error against the PyTorch W8A8 model
(mean |Δ| 0.055 vs 0.015, argmax agreement 95.1% vs 99.4%), so per token is the default and
the fused per-tensor form is kept for comparison only.

Measured (tiny-dlm, T = 256, 1 thread, AMD EPYC with AVX-512 VNNI, ORT 1.32, engines
interleaved; ``benchmarks/deploy_speed.py``): forward 1.58x (batch 1) / 1.54x (batch 8) ORT
fp32, ~3x PyTorch fp32. Per ORT's profiler, in the int8 graph the float output head is ~25%
of the time, the int8 GEMMs ~25%, the per-token quantization and rescale ~10%. The head is
21% of tiny-dlm's Linear MACs (vocabulary 8192 on hidden 320) and stays float (the recipe
ignores it); ``quantize_dynamic``, which also quantizes the head, reaches 2.1x. At LLaDA-8B
width, where the head is ~7%, a 2-layer stack of width 1024 already runs 3.3x faster in
int8 than in fp32.

Operands (:class:`Int8Operands`, ``--int8-operands``). MLAS picks its x86 kernel by the operand
types (``MlasGemmQuantGetDispatch`` in ``qgemm.h``, kernels chosen from CPUID in ``platform.cpp``):

* U8S8 (activation ``q + 128`` x int8 weight): without VNNI, ``MlasGemmU8S8KernelAvx2`` and
  ``MlasGemmU8S8KernelAvx512Core`` multiply with ``vpmaddubsw``, which adds each pair of
  products into a saturating int16 (255 x 127 x 2 = 64770 > 32767); with AVX-VNNI /
  AVX512-VNNI (``vpdpbusds``) or AMX (``tdpbusd``) products are summed in int32: exact.
* U8U8 (the weight stored as ``w + 128`` in uint8, zero point 128: the same integer product):
  ``MlasGemmU8U8KernelAvx2`` / ``...Avx512Core`` widen both operands to int16 (``vpmovzxbw``)
  and add pairs in int32 (``vpmaddwd``): exact on every CPU, but with no VNNI kernel.
* S8S8 / S8U8: x86 kernels only with AVX-VNNI-INT8, else MLAS' portable C kernel (exact, slow).
* ORT's own remedy, the session option ``session.x64quantprecision=1``, rewrites int8 weights
  to uint8 at load (``Avx2WeightS8ToU8Transformer``), but on every x86 CPU with AVX2, VNNI or
  not (``MlasPlatformU8S8Overflow`` compares dispatch tables): it must be set per CPU.

Measured on tiny-dlm (this repo's W8A8 checkpoint; AVX2 by running ORT under ``qemu-x86_64
-cpu Haswell``, whose CPUID has no AVX-512 / VNNI; speed natively on AVX512-VNNI only):
u8s8 under emulated AVX2 misses the PyTorch W8A8 logits by 1.55 with ``--int8-head`` (0.55
without), u8u8 and s8s8 by 0.23 (as u8s8 does natively: all three give the same integers
there); 7-bit activations by 0.64-0.68 on either CPU. With VNNI, forward at 1 thread, batch 1
is 1.65x ORT fp32 in u8s8 and 1.18x in u8u8 (2.10x / 1.24x with ``--int8-head``), s8s8 0.4x.
So the default (``auto``) is chosen by the exporting CPU: u8s8 where it is exact, u8u8 where it
saturates; ``u8u8`` gives a graph exact on every CPU and in any runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from sink_modifier.export.onnx_graph_edit import (
    GraphBuilder,
    find_weight_matmuls,
    replace_weight_matmuls,
    require_domain,
)
from sink_modifier.export.onnx_quantization import QuantizedLinear, refuse_non_finite_scales

__all__ = ["AUTO_OPERANDS", "OPERANDS_NOTE", "ActivationGranularity", "Int8Kernel", "Int8Operands", "Int8Rewrite",
           "choose_operands", "quantize_graph_int8"]

MS_DOMAIN = "com.microsoft"
# float32 eps: what compressed-tensors puts in place of a zero scale (an all-zero token)
_EPS = float(np.finfo(np.float32).eps)


class Int8Kernel(str, Enum):
    """How the int8 product is written into the graph."""

    INTEGER_TO_FLOAT = "matmul-integer-to-float"  # com.microsoft MatMulIntegerToFloat + Mul (default)
    INTEGER = "matmul-integer"  # standard ONNX MatMulInteger + Cast + Mul + Mul
    DYNAMIC_PER_TENSOR = "dynamic-quantize-matmul"  # ORT's fused per-tensor uint8 (not the recipe's)


class Int8Operands(str, Enum):
    """The integer types of the int8 GEMM's operands: MLAS picks its x86 kernel by them."""

    U8U8 = "u8u8"  # activation q + 128, weight w + 128 (uint8, zero points 128): exact on every CPU
    U8S8 = "u8s8"  # activation q + 128 x int8 weight: int16 pair sums saturate without VNNI
    S8S8 = "s8s8"  # int8 x int8: MLAS' portable C kernel on x86 without AVX-VNNI-INT8 (exact, slow)
    U8S8_7BIT = "u8s8-7bit"  # 7-bit activations, U8S8 cannot saturate: not the recipe's arithmetic


AUTO_OPERANDS = "auto"

# what onnx_export.json says of each form (measured: see the module docstring)
OPERANDS_NOTE = {
    Int8Operands.U8U8: "uint8 activation x uint8 weight (w + 128, zero point 128: the same integer product); MLAS' "
                       "U8U8 kernels widen to int16 and add pairs in int32 (vpmaddwd): exact on every CPU, and in "
                       "any ONNX Runtime session; slower than u8s8 where VNNI exists",
    Int8Operands.U8S8: "uint8 activation (q + 128) x int8 weight: MLAS' fast form, exact with VNNI / AMX and on ARM; "
                       "on x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) its int16 pair sums saturate, unless "
                       "the session sets session.x64quantprecision=1 (ORT then makes the weights uint8 itself)",
    Int8Operands.S8S8: "int8 x int8: exact, but MLAS runs its portable C kernel on x86 without AVX-VNNI-INT8",
    Int8Operands.U8S8_7BIT: "7-bit activations (q in [-64, 63]) x int8 weight: U8S8 cannot saturate, but the "
                            "activations are not the recipe's int8",
}


def choose_operands(requested: str | Int8Operands, isa) -> tuple[Int8Operands, str]:
    """The operand form for ``requested`` (an :class:`Int8Operands` value or ``"auto"``) on a CPU
    of ``isa`` (:class:`~sink_modifier.export.onnx_cpu.CpuIsa`), and why, for ``onnx_export.json``.

    ``auto``: u8s8 where MLAS' U8S8 kernel is exact (VNNI, AMX, ARM), u8u8 where it saturates.
    Safe-everywhere u8u8 costs too much with VNNI to be the default there (tiny-dlm forward
    1.65x -> 1.18x ORT fp32, with --int8-head 2.10x -> 1.24x, AVX512-VNNI, one interleaved run).
    """
    if requested != AUTO_OPERANDS:
        operands = Int8Operands(requested)
        return operands, f"{operands.value} as asked"
    if isa.u8s8_saturates:
        return Int8Operands.U8U8, (f"auto: this CPU ({isa.value}) has no VNNI, so MLAS' U8S8 kernel saturates; "
                                   "u8u8 is exact here and on every other CPU")
    return Int8Operands.U8S8, (f"auto: this CPU ({isa.value}) runs U8S8 exactly and fastest (u8u8 costs ~30% of "
                               "the int8 speed-up with VNNI); on an x86 CPU without VNNI this graph saturates unless "
                               "its session sets session.x64quantprecision=1: export with --int8-operands u8u8 for "
                               "a graph exact on every CPU")


class ActivationGranularity(str, Enum):
    """Which values share one dynamic activation scale (compressed-tensors' ``strategy``)."""

    TOKEN = "token"
    TENSOR = "tensor"


@dataclass(frozen=True)
class Int8Rewrite:
    """What the rewrite did: the quantized Linears it replaced (module name -> MatMul node) and
    the weight MatMuls it left float (initializer names, e.g. the output head)."""

    int8_layers: dict[str, str]
    float_matmuls: list[str]
    kernel: Int8Kernel
    activations: ActivationGranularity
    operands: Int8Operands = Int8Operands.U8U8


def _quantize_activation(b: GraphBuilder, nodes: list, x: str, granularity: ActivationGranularity, consts: dict,
                         operands: Int8Operands):
    """Nodes computing ``(q_x as the GEMM takes it, scale s_x)`` exactly as compressed-tensors does.

    ``QuantizeLinear`` divides by the scale, clamps and rounds half to even (MLAS), the same
    float operations as compressed-tensors' ``clamp(x / s, -128, 127).round()``; it is one
    kernel instead of Div, Round, Add, Clip and Cast (same integers, measured faster). Its
    zero point (128 into uint8, 0 into int8) gives the GEMM ``q_x + 128`` or ``q_x`` itself.
    """
    absx = b.node(nodes, "Abs", [x], "abs")
    if granularity is ActivationGranularity.TOKEN:
        amax = b.node(nodes, "ReduceMax", [absx, consts["last_axis"]], "absmax", keepdims=1)
    else:
        amax = b.node(nodes, "ReduceMax", [absx], "absmax", keepdims=0)
    raw = b.node(nodes, "Div", [amax, consts["half_range"]], "scale_raw")
    zero = b.node(nodes, "Equal", [raw, consts["zero"]], "scale_is_zero")
    scale = b.node(nodes, "Where", [zero, consts["eps"], raw], "scale")
    if granularity is ActivationGranularity.TENSOR:
        q = b.node(nodes, "QuantizeLinear", [x, scale, consts["a_zero_point"]], "q")
    else:
        # per-axis QuantizeLinear takes a 1-D scale: one row per token
        shape = b.node(nodes, "Shape", [x], "shape")
        rows = b.node(nodes, "Flatten", [x], "rows", axis=-1)
        row_scale = b.node(nodes, "Reshape", [scale, consts["flat"]], "row_scale")
        row_zp = b.node(nodes, "Expand", [consts["a_zero_point"], b.node(nodes, "Shape", [row_scale], "n")], "zp")
        q_rows = b.node(nodes, "QuantizeLinear", [rows, row_scale, row_zp], "q_rows", axis=0)
        q = b.node(nodes, "Reshape", [q_rows, shape], "q")
    if operands is Int8Operands.U8S8_7BIT:
        # x / s reaches +-63.5, which rounds (half to even) to 64: clamp to the 7-bit range [-64, 63]
        q = b.node(nodes, "Clip", [q, consts["a_min"], consts["a_max"]], "q7")
    return q, scale


def quantize_graph_int8(
    model,
    layers: Mapping[str, QuantizedLinear],
    dequantized: Mapping[str, np.ndarray],
    *,
    activations: ActivationGranularity = ActivationGranularity.TOKEN,
    kernel: Int8Kernel = Int8Kernel.INTEGER_TO_FLOAT,
    operands: Int8Operands = Int8Operands.U8U8,
) -> Int8Rewrite:
    """Rewrite ``model`` (an ``onnx.ModelProto``, float32) in place; see the module docstring.

    ``layers``: the checkpoint's int8 weights and scales by module name; ``dequantized``: the
    float ``[out, in]`` weight the float export holds for each of them (to find it by value).
    ``operands``: the integer types the GEMM multiplies (:class:`Int8Operands`; the module
    docstring says which are exact where).
    """
    from onnx import TensorProto

    if set(layers) != set(dequantized):
        raise ValueError(f"layers and dequantized weights name different modules: "
                         f"{sorted(set(layers) ^ set(dequantized))[:3]}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if kernel is Int8Kernel.DYNAMIC_PER_TENSOR and operands not in (Int8Operands.U8U8, Int8Operands.U8S8):
        raise ValueError(f"{kernel.value} quantizes its activations to uint8 itself; it takes u8u8 or u8s8 "
                         f"operands, not {operands.value}")
    if opset < 18:
        raise ValueError(f"the int8 rewrite needs opset >= 18 (ReduceMax with axes as an input), the graph has "
                         f"{opset}; pass --opset 18 or higher")
    graph = model.graph
    placed, float_matmuls = find_weight_matmuls(graph, dequantized)
    b = GraphBuilder(graph, "int8")
    seven_bit = operands is Int8Operands.U8S8_7BIT
    if operands is Int8Operands.S8S8:
        a_zero_point = np.array(0, np.int8)  # q_x itself
    else:
        a_zero_point = np.array(64 if seven_bit else 128, np.uint8)  # q_x + 64 / + 128
    consts = {
        "last_axis": b.constant("last_axis", np.array([-1], np.int64)),
        # (127 - (-128)) / 2; the 7-bit range [-64, 63]: 63.5
        "half_range": b.constant("half_range", np.array(63.5 if seven_bit else 127.5, np.float32)),
        "zero": b.constant("zero", np.array(0.0, np.float32)),
        "eps": b.constant("eps", np.array(_EPS, np.float32)),
        "a_zero_point": b.constant("a_zero_point", a_zero_point),
        "one": b.constant("one", np.array(1.0, np.float32)),
        "flat": b.constant("flat", np.array([-1], np.int64)),
    }
    if seven_bit:
        consts["a_min"] = b.constant("a_min", np.array(0, np.uint8))
        consts["a_max"] = b.constant("a_max", np.array(127, np.uint8))
    if operands is Int8Operands.U8U8:
        consts["w_zero_point"] = b.constant("w_zero_point", np.array(128, np.uint8))
    quantized_inputs: dict[str, tuple[str, str]] = {}  # activation -> (q, scale), shared by q/k/v etc.

    def rewrite(name: str, node, new_nodes: list) -> None:
        layer = layers[name]
        _check_values(layer, dequantized[name])
        x, y = node.input[0], node.output[0]
        operand = _weight_operand(layer.values, operands)  # [in, out]
        weight = b.constant(f"{name}.weight_{operand.dtype}", operand)
        w_zp = [consts["w_zero_point"]] if operands is Int8Operands.U8U8 else []
        w_scale = b.constant(f"{name}.weight_scale", layer.scale.astype(np.float32))
        if kernel is Int8Kernel.DYNAMIC_PER_TENSOR:
            b.node(new_nodes, "DynamicQuantizeMatMul", [x, weight, w_scale, *w_zp], "y", output=y, domain=MS_DOMAIN)
            return
        if x not in quantized_inputs:
            quantized_inputs[x] = _quantize_activation(b, new_nodes, x, activations, consts, operands)
        q, scale = quantized_inputs[x]
        if kernel is Int8Kernel.INTEGER_TO_FLOAT:
            partial = b.node(new_nodes, "MatMulIntegerToFloat",
                             [q, weight, consts["one"], w_scale, consts["a_zero_point"], *w_zp], "y_channel",
                             domain=MS_DOMAIN)
        else:
            acc = b.node(new_nodes, "MatMulInteger", [q, weight, consts["a_zero_point"], *w_zp], "acc")
            as_float = b.node(new_nodes, "Cast", [acc], "acc_float", to=TensorProto.FLOAT)
            partial = b.node(new_nodes, "Mul", [as_float, w_scale], "y_channel")
        b.node(new_nodes, "Mul", [partial, scale], "y", output=y)

    replaced = replace_weight_matmuls(graph, placed, rewrite)
    if kernel is not Int8Kernel.INTEGER:
        require_domain(model, MS_DOMAIN)
    return Int8Rewrite(int8_layers=replaced, float_matmuls=float_matmuls, kernel=kernel, activations=activations,
                       operands=operands)


def _weight_operand(values: np.ndarray, operands: Int8Operands) -> np.ndarray:
    """The stored int8 ``[out, in]`` weight as the GEMM's ``[in, out]`` operand: the int8 values
    themselves, or for u8u8 ``w + 128`` as uint8 (the same bits with the sign bit flipped),
    which with zero point 128 multiplies by exactly ``w``."""
    matrix = np.ascontiguousarray(values.T)
    if operands is Int8Operands.U8U8:
        return (matrix.astype(np.int16) + 128).astype(np.uint8)
    return matrix


def _check_values(layer: QuantizedLinear, dequantized: np.ndarray) -> None:
    """The stored int8 x scale must be the weight the float export holds (to dequantization rounding)."""
    if layer.values.shape != dequantized.shape or layer.scale.shape != (dequantized.shape[0],):
        raise ValueError(f"{layer.name}: stored int8 weight {layer.values.shape} / scale {layer.scale.shape} do not "
                         f"fit the model's weight {dequantized.shape}; the checkpoint does not match its config.json")
    refuse_non_finite_scales(layer)
    exact = layer.values.astype(np.float32) * layer.scale[:, None]
    # the checkpoint is dequantized in the scale's dtype (bf16: 8 significant bits), so allow its rounding
    if not np.allclose(exact, dequantized, rtol=2**-7, atol=0):
        raise ValueError(f"{layer.name}: the stored int8 values x scales differ from the weight the model loaded; "
                         "the checkpoint's weight files and config.json do not belong together")
