"""Scaling a layer's input rows by per-token weights ``1 - s``: how sinks enter every statistic."""

from __future__ import annotations

import torch

__all__ = ["SCORING_DTYPE", "weighted_rows"]

SCORING_DTYPE = torch.float32


def weighted_rows(
    inputs: torch.Tensor, token_weights: torch.Tensor | None, *, in_input_dtype: bool = False
) -> torch.Tensor:
    """Inputs ``[B, T, d]`` (or ``[T, d]``) scaled per token, as float32 ``[B, T, d]``.

    A token with weight 0 (a full sink, or padding) contributes nothing to Wanda's column
    norms or SparseGPT's Hessian ``X^T X``; weight 1 leaves it untouched. ``in_input_dtype``
    multiplies in the activations' own dtype before the cast, as the paper's code does
    (``x * (1 - s).to(x.dtype)``): identical for float32 models, the paper's bf16 rounding
    for bf16 ones (SparseGPT's ``sink_mask_mode: reference``).
    """
    x = inputs if inputs.dim() == 3 else inputs.unsqueeze(0)
    if token_weights is not None and in_input_dtype:
        scale = token_weights.to(device=x.device, dtype=x.dtype).reshape(x.shape[0], x.shape[1], 1)
        return (x * scale).to(SCORING_DTYPE)
    x = x.to(SCORING_DTYPE)
    if token_weights is not None:
        x = x * token_weights.to(device=x.device, dtype=SCORING_DTYPE).reshape(x.shape[0], x.shape[1], 1)
    return x
