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

On x86 CPUs without VNNI, MLAS' U8S8 kernel uses ``vpmaddubsw``, whose int16 pair sums can
saturate for activations near the int8 extremes; ORT documents this for every U8S8 model
(``quantize_dynamic``'s included). With VNNI (most server CPUs since 2019) and on ARM it is exact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum

import numpy as np

from sink_modifier.export.onnx_graph_edit import GraphBuilder, find_weight_matmuls, replace_weight_matmuls, require_domain
from sink_modifier.export.onnx_quantization import QuantizedLinear, refuse_non_finite_scales

__all__ = ["ActivationGranularity", "Int8Kernel", "Int8Rewrite", "quantize_graph_int8"]

MS_DOMAIN = "com.microsoft"
# float32 eps: what compressed-tensors puts in place of a zero scale (an all-zero token)
_EPS = float(np.finfo(np.float32).eps)


class Int8Kernel(str, Enum):
    """How the int8 product is written into the graph."""

    INTEGER_TO_FLOAT = "matmul-integer-to-float"  # com.microsoft MatMulIntegerToFloat + Mul (default)
    INTEGER = "matmul-integer"  # standard ONNX MatMulInteger + Cast + Mul + Mul
    DYNAMIC_PER_TENSOR = "dynamic-quantize-matmul"  # ORT's fused per-tensor uint8 (not the recipe's)


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


def _quantize_activation(b: GraphBuilder, nodes: list, x: str, granularity: ActivationGranularity, consts: dict):
    """Nodes computing ``(uint8 q_x + 128, scale s_x)`` exactly as compressed-tensors does.

    ``QuantizeLinear`` divides by the scale, clamps and rounds half to even (MLAS), the same
    float operations as compressed-tensors' ``clamp(x / s, -128, 127).round()``; it is one
    kernel instead of Div, Round, Add, Clip and Cast (same integers, measured faster).
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
        return b.node(nodes, "QuantizeLinear", [x, scale, consts["u8_zero_point"]], "q"), scale
    # per-axis QuantizeLinear takes a 1-D scale: one row per token
    shape = b.node(nodes, "Shape", [x], "shape")
    rows = b.node(nodes, "Flatten", [x], "rows", axis=-1)
    row_scale = b.node(nodes, "Reshape", [scale, consts["flat"]], "row_scale")
    row_zp = b.node(nodes, "Expand", [consts["u8_zero_point"], b.node(nodes, "Shape", [row_scale], "n")], "zp")
    q_rows = b.node(nodes, "QuantizeLinear", [rows, row_scale, row_zp], "q_rows", axis=0)
    return b.node(nodes, "Reshape", [q_rows, shape], "q"), scale


def quantize_graph_int8(
    model,
    layers: Mapping[str, QuantizedLinear],
    dequantized: Mapping[str, np.ndarray],
    *,
    activations: ActivationGranularity = ActivationGranularity.TOKEN,
    kernel: Int8Kernel = Int8Kernel.INTEGER_TO_FLOAT,
) -> Int8Rewrite:
    """Rewrite ``model`` (an ``onnx.ModelProto``, float32) in place; see the module docstring.

    ``layers``: the checkpoint's int8 weights and scales by module name; ``dequantized``: the
    float ``[out, in]`` weight the float export holds for each of them (to find it by value).
    """
    from onnx import TensorProto

    if set(layers) != set(dequantized):
        raise ValueError(f"layers and dequantized weights name different modules: "
                         f"{sorted(set(layers) ^ set(dequantized))[:3]}")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 18:
        raise ValueError(f"the int8 rewrite needs opset >= 18 (ReduceMax with axes as an input), the graph has "
                         f"{opset}; pass --opset 18 or higher")
    graph = model.graph
    placed, float_matmuls = find_weight_matmuls(graph, dequantized)
    b = GraphBuilder(graph, "int8")
    consts = {
        "last_axis": b.constant("last_axis", np.array([-1], np.int64)),
        "half_range": b.constant("half_range", np.array(127.5, np.float32)),  # (127 - (-128)) / 2
        "zero": b.constant("zero", np.array(0.0, np.float32)),
        "eps": b.constant("eps", np.array(_EPS, np.float32)),
        "u8_zero_point": b.constant("a_zero_point", np.array(128, np.uint8)),
        "one": b.constant("one", np.array(1.0, np.float32)),
        "flat": b.constant("flat", np.array([-1], np.int64)),
    }
    quantized_inputs: dict[str, tuple[str, str]] = {}  # activation -> (q, scale), shared by q/k/v etc.

    def rewrite(name: str, node, new_nodes: list) -> None:
        layer = layers[name]
        _check_values(layer, dequantized[name])
        x, y = node.input[0], node.output[0]
        weight = b.constant(f"{name}.weight_int8", np.ascontiguousarray(layer.values.T))  # [in, out]
        w_scale = b.constant(f"{name}.weight_scale", layer.scale.astype(np.float32))
        if kernel is Int8Kernel.DYNAMIC_PER_TENSOR:
            b.node(new_nodes, "DynamicQuantizeMatMul", [x, weight, w_scale], "y", output=y, domain=MS_DOMAIN)
            return
        if x not in quantized_inputs:
            quantized_inputs[x] = _quantize_activation(b, new_nodes, x, activations, consts)
        q, scale = quantized_inputs[x]
        if kernel is Int8Kernel.INTEGER_TO_FLOAT:
            partial = b.node(new_nodes, "MatMulIntegerToFloat",
                             [q, weight, consts["one"], w_scale, consts["u8_zero_point"]], "y_channel",
                             domain=MS_DOMAIN)
        else:
            acc = b.node(new_nodes, "MatMulInteger", [q, weight, consts["u8_zero_point"]], "acc")
            as_float = b.node(new_nodes, "Cast", [acc], "acc_float", to=TensorProto.FLOAT)
            partial = b.node(new_nodes, "Mul", [as_float, w_scale], "y_channel")
        b.node(new_nodes, "Mul", [partial, scale], "y", output=y)

    replaced = replace_weight_matmuls(graph, placed, rewrite)
    if kernel is not Int8Kernel.INTEGER:
        require_domain(model, MS_DOMAIN)
    return Int8Rewrite(int8_layers=replaced, float_matmuls=float_matmuls, kernel=kernel, activations=activations)


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
