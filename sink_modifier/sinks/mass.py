"""Received attention mass per key token: the quantity sinks are detected from.

For one attention layer with probabilities ``A[b, h, i, j]`` (query ``i`` attends to key
``j``), the mass a key receives is ``m[b, j] = sum_h sum_i A[b, h, i, j]``. Summed over the
layers of a model this is the paper's global mass ``M[b, j]``; because every query row of
``A`` sums to one, ``mean_j M[b, j] = layers * heads`` for an unpadded row.

Two ways in, one result:

* ``mass_from_probabilities``: the probabilities already exist (eager attention returns
  them), so the mass is a reduction.
* ``mass_from_query_key``: the model calls ``scaled_dot_product_attention`` and never
  materialises probabilities (LLaDA, Dream). The probabilities are recomputed from the
  real post-rotary ``q`` and ``k`` in float32, a block of queries at a time, so memory
  stays ``O(batch * heads * chunk * keys)`` instead of the full ``heads * T * T``.

Pure tensor functions: nothing here knows about models or llm-compressor.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "mass_from_probabilities",
    "mass_from_query_key",
    "query_chunk_size",
]

# Budget for one block of float32 scores; ~64 MiB keeps the peak far below the model's.
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024


def mass_from_probabilities(
    probs: torch.Tensor, query_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Attention mass per key from probabilities ``[B, H, Q, K]``, as float32 ``[B, K]``.

    ``query_weights`` ``[B, Q]`` (1 for real tokens, 0 for padding) keeps padded queries,
    which are not text, from voting for sinks.
    """
    if probs.dim() != 4:
        raise ValueError(f"expected probabilities of shape [B, H, Q, K], got {tuple(probs.shape)}")
    per_query = probs.float().sum(dim=1)  # [B, Q, K]
    if query_weights is None:
        return per_query.sum(dim=1)
    return torch.einsum("bqk,bq->bk", per_query, query_weights.to(per_query))


def query_chunk_size(
    batch: int, heads: int, keys: int, budget_bytes: int = DEFAULT_CHUNK_BYTES
) -> int:
    """Largest query block whose float32 scores ``[B, H, chunk, K]`` fit ``budget_bytes``."""
    return max(1, budget_bytes // max(1, batch * heads * keys * 4))


def mass_from_query_key(
    query: torch.Tensor,
    key: torch.Tensor,
    *,
    attn_mask: torch.Tensor | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    query_weights: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Attention mass per key recomputed from ``q`` ``[B, Hq, Q, D]`` and ``k`` ``[B, Hk, K, D]``.

    Follows ``torch.nn.functional.scaled_dot_product_attention`` semantics exactly:
    ``attn_mask`` is boolean (True = may attend) or additive, broadcastable to
    ``[B, Hq, Q, K]``; ``is_causal`` uses the top-left aligned causal mask; ``scale``
    defaults to ``1/sqrt(D)``; grouped-query attention (``Hq`` a multiple of ``Hk``)
    shares each key head among its query group. Scores are computed in float32 (the
    paper's collector rounds them to bf16 first, a known imprecision).
    Fully masked query rows contribute nothing. Returns float32 ``[B, K]``.
    """
    if query.dim() != 4 or key.dim() != 4:
        raise ValueError(
            f"expected q [B, H, Q, D] and k [B, H, K, D], got {tuple(query.shape)} and {tuple(key.shape)}"
        )
    batch, q_heads, q_len, head_dim = query.shape
    k_heads, k_len = key.shape[1], key.shape[2]
    if q_heads % k_heads:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of key heads ({k_heads})")
    if k_heads != q_heads:
        key = key.repeat_interleave(q_heads // k_heads, dim=1)
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    chunk = chunk_size or query_chunk_size(batch, q_heads, k_len)

    key_t = key.float().transpose(-1, -2)  # [B, H, D, K]
    mass = torch.zeros(batch, k_len, dtype=torch.float32, device=query.device)
    for start in range(0, q_len, chunk):
        stop = min(start + chunk, q_len)
        scores = torch.matmul(query[:, :, start:stop].float(), key_t) * scale  # [B, H, c, K]
        if is_causal:
            rows = torch.arange(start, stop, device=query.device)[:, None]
            cols = torch.arange(k_len, device=query.device)[None, :]
            scores = scores.masked_fill(cols > rows, float("-inf"))
        if attn_mask is not None:
            block = _mask_block(attn_mask, start, stop, q_len)
            if block.dtype == torch.bool:
                scores = scores.masked_fill(~block, float("-inf"))
            else:
                scores = scores + block.float()
        probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # all -inf rows -> 0
        per_query = probs.sum(dim=1)  # [B, c, K]
        if query_weights is not None:
            per_query = per_query * query_weights[:, start:stop, None].to(per_query)
        mass += per_query.sum(dim=1)
    return mass


def _mask_block(mask: torch.Tensor, start: int, stop: int, q_len: int) -> torch.Tensor:
    """Rows ``start:stop`` of a mask broadcastable to ``[B, H, Q, K]``."""
    if mask.dim() >= 2 and mask.shape[-2] == q_len:
        return mask[..., start:stop, :]
    return mask  # broadcast over queries (shape [..., 1, K])
