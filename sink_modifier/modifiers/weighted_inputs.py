"""Scaling a layer's input rows by per-token weights ``1 - s``: how sinks enter every statistic."""

from __future__ import annotations

import torch

__all__ = ["SCORING_DTYPE", "weighted_rows"]

SCORING_DTYPE = torch.float32


def weighted_rows(inputs: torch.Tensor, token_weights: torch.Tensor | None) -> torch.Tensor:
    """Inputs ``[B, T, d]`` (or ``[T, d]``) scaled per token, as float32 ``[B, T, d]``.

    A token with weight 0 (a full sink, or padding) contributes nothing to Wanda's column
    norms or SparseGPT's Hessian ``X^T X``; weight 1 leaves it untouched.
    """
    x = inputs.to(SCORING_DTYPE)
    if x.dim() == 2:
        x = x.unsqueeze(0)
    if token_weights is not None:
        x = x * token_weights.to(device=x.device, dtype=SCORING_DTYPE).reshape(x.shape[0], x.shape[1], 1)
    return x
