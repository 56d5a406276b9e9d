"""``export-onnx --int8-head``: the output head int8 too, rounded at export time.

The recipes leave the output head float (the family rule: every recipe leaves it alone), and on
a small model it is a large share of the int8 graph's time: tiny-dlm's head (vocabulary 8192 on
hidden 320) is 21% of its Linear work and ~25% of the int8 graph's time by ORT's profiler, so
its int8 graph generates at 1.42x ORT fp32 with the head float and 1.99x with it int8
(``benchmarks/results/deploy_speed.md``). Its held-out NELBO moved by less than 1e-4.

The head is rounded the way compressed-tensors rounds a symmetric int8 per-channel weight
(``scale = absmax / 127.5`` per output row, ``q = clamp(round_half_even(w / scale), -128, 127)``,
float32 eps for a zero row) and then goes through the same per-token W8A8 rewrite as the
checkpoint's own layers. Unlike those, its integers are computed here, not read from the
checkpoint, and the export records that.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from sink_modifier.export.onnx_quantization import QuantizedLinear

__all__ = ["HEAD_NOTE", "round_head_to_int8"]

HEAD_NOTE = "int8 at export (--int8-head: per-channel symmetric round-to-nearest; the checkpoint left it float)"


def round_head_to_int8(plain: nn.Module) -> QuantizedLinear:
    """Round ``plain``'s output head to int8 in place (its float weight becomes the dequantized
    int8 one, so the float export holds exactly what the rewrite finds); return the int8 layer.

    A head tied to the input embedding is untied first: the embedding keeps its float weights.
    """
    head = plain.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        raise ValueError(f"--int8-head needs a Linear output head; this model's is {type(head).__name__}")
    name = next(n for n, module in plain.named_modules() if module is head)
    with torch.no_grad():
        weight = head.weight.detach().float()
        scale = weight.abs().amax(dim=1, keepdim=True) / 127.5
        scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(torch.float32).eps), scale)
        values = torch.clamp(torch.round(weight / scale), -128, 127)
        # a new Parameter: unties a head shared with the embedding, and leaves any model that
        # shares the old tensor (the compressed-tensors reference) as it was
        head.weight = nn.Parameter(values * scale, requires_grad=False)
    return QuantizedLinear(name, values.to(torch.int8).numpy(), scale.reshape(-1).numpy().astype(np.float32))
