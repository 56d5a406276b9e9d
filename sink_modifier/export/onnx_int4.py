"""Turn an exported float graph into a W4A16 graph that holds the checkpoint's own int4 weights.

Every ``MatMul`` whose weight is a quantized Linear's (found by value,
:mod:`sink_modifier.export.onnx_graph_edit`) becomes com.microsoft ``MatMulNBits``: 4-bit
weights in blocks of ``group_size`` along the input dimension with one float scale per block,
float activations. compressed-tensors stores symmetric int4 ``q`` in ``[-8, 7]``; MatMulNBits
stores unsigned nibbles with a default zero point of 8, so ``q + 8`` with no zero-point input
dequantizes to exactly ``q * scale``: the checkpoint's values and group scales, unchanged.

``accuracy_level`` is left at ORT's default (the float32 product of the dequantized weights):
W4A16 means 16-bit (here 32-bit) activations, and level 4 would quantize the activations to
int8 per block, which the checkpoint never did. So on ORT's CPU provider W4A16 is a size
win, not a speed win: tiny-dlm's MatMulNBits graph runs as fast as the fp32 one (1.0-1.07x,
``benchmarks/deploy_speed.py``) and reproduces the PyTorch W4A16 model to float rounding
(max |Δlogit| 1.3e-5).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sink_modifier.export.onnx_graph_edit import (
    GraphBuilder,
    find_weight_matmuls,
    replace_weight_matmuls,
    require_domain,
)
from sink_modifier.export.onnx_quantization import QuantizedLinear, refuse_non_finite_scales

__all__ = ["Int4Rewrite", "pack_int4_blocks", "quantize_graph_int4"]

MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class Int4Rewrite:
    """The quantized Linears replaced (module name -> MatMul node) and the weight MatMuls left float."""

    int4_layers: dict[str, str]
    float_matmuls: list[str]
    block_size: int


def pack_int4_blocks(values: np.ndarray, block_size: int) -> np.ndarray:
    """int4 ``values`` ``[N, K]`` in ``[-8, 7]`` -> MatMulNBits' ``B``: uint8 ``[N, ceil(K / block), block / 2]``,
    each byte two consecutive weights (the first in the low nibble), stored as ``q + 8``."""
    rows, cols = values.shape
    blocks = math.ceil(cols / block_size)
    unsigned = np.full((rows, blocks * block_size), 8, np.uint8)  # padding: q = 0
    unsigned[:, :cols] = (values.astype(np.int16) + 8).astype(np.uint8)
    pairs = unsigned.reshape(rows, blocks, block_size // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def quantize_graph_int4(
    model, layers: Mapping[str, QuantizedLinear], dequantized: Mapping[str, np.ndarray], *, block_size: int,
) -> Int4Rewrite:
    """Rewrite ``model`` (an ``onnx.ModelProto``, float32) in place; see the module docstring.

    ``layers``: the checkpoint's int4 values ``[out, in]`` and group scales ``[out, in / block_size]``;
    ``dequantized``: the float ``[out, in]`` weight the float export holds for each of them.
    """

    if block_size < 16 or block_size & (block_size - 1):
        raise ValueError(f"MatMulNBits needs a block size that is a power of two >= 16, got {block_size}")
    graph = model.graph
    placed, float_matmuls = find_weight_matmuls(graph, dequantized)
    b = GraphBuilder(graph, "int4")

    def rewrite(name: str, node, new_nodes: list) -> None:
        layer = layers[name]
        _check_values(layer, dequantized[name], block_size)
        out_features, in_features = layer.values.shape
        packed = b.constant(f"{name}.weight_int4", pack_int4_blocks(layer.values, block_size))
        scales = b.constant(f"{name}.weight_scale", layer.scale.astype(np.float32))
        b.node(new_nodes, "MatMulNBits", [node.input[0], packed, scales], "y", output=node.output[0],
               domain=MS_DOMAIN, K=in_features, N=out_features, bits=4, block_size=block_size)

    replaced = replace_weight_matmuls(graph, placed, rewrite)
    require_domain(model, MS_DOMAIN)
    return Int4Rewrite(int4_layers=replaced, float_matmuls=float_matmuls, block_size=block_size)


def _check_values(layer: QuantizedLinear, dequantized: np.ndarray, block_size: int) -> None:
    """The stored int4 x group scales must be the weight the float export holds (to dequantization rounding)."""
    rows, cols = dequantized.shape
    if layer.values.shape != dequantized.shape or layer.scale.shape != (rows, math.ceil(cols / block_size)):
        raise ValueError(f"{layer.name}: stored int4 weight {layer.values.shape} / scale {layer.scale.shape} do not "
                         f"fit the model's weight {dequantized.shape} in groups of {block_size}; the checkpoint "
                         "does not match its config.json")
    refuse_non_finite_scales(layer)
    if layer.values.min() < -8 or layer.values.max() > 7:
        raise ValueError(f"{layer.name}: stored values exceed the int4 range [-8, 7]")
    exact = layer.values.astype(np.float32) * np.repeat(layer.scale, block_size, axis=1)[:, :cols]
    if not np.allclose(exact, dequantized, rtol=2**-7, atol=0):
        raise ValueError(f"{layer.name}: the stored int4 values x scales differ from the weight the model loaded; "
                         "the checkpoint's weight files and config.json do not belong together")
