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

Two reduction orders (float addition is not associative, so they differ in the last bits,
and SparseGPT's solver turns last-bit differences of the sink mask into flips of near-tied
weights):

* ``order="heads_then_queries"`` (default, today's bits): ``A.sum(heads)`` then queries.
* ``order="queries_then_heads"``: the paper's collector, ``A.sum(dim=2).sum(dim=1)``; the
  per-head query sums ``[B, H, K]`` are accumulated over query blocks, then heads summed.
  With ``scores="model_dtype"`` the scores are also the collector's: ``q @ kᵀ`` in the
  model's dtype (bf16 models round them to bf16) divided by ``sqrt(head_dim)``, then the
  float32 softmax. :data:`PAPER_COLLECTOR` names both options.

  Bit for bit with the paper's code when one query block covers the sequence (the default
  64 MiB budget does for ``B * H * T² * 4`` bytes below it; set ``chunk_size`` to ``T`` or
  more otherwise). Over several blocks the result differs from the single
  ``A.sum(dim=2)`` by rounding only: torch's own summation is a cascade whose order
  depends on the column and the CPU's vector width, so no block-wise accumulation
  reproduces it.

Pure tensor functions: nothing here knows about models or llm-compressor.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Literal

import torch

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "MassOrder",
    "PAPER_COLLECTOR",
    "ScoreFormula",
    "mass_from_probabilities",
    "mass_from_query_key",
    "per_head_mass",
    "query_chunk_size",
]

# Budget for one block of float32 scores; ~64 MiB keeps the peak far below the model's.
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024

MassOrder = Literal["heads_then_queries", "queries_then_heads"]
"""Which sum of ``A[b, h, i, j]`` comes first: heads (default, fastest) or queries (the paper's)."""

ScoreFormula = Literal["float32", "model_dtype"]
"""``float32``: ``(q.float() @ k.float()ᵀ) * scale``. ``model_dtype``: the paper's collector,
``(q @ kᵀ) / sqrt(head_dim)`` in the inputs' dtype, then ``softmax(scores.float())``."""

PAPER_COLLECTOR = MappingProxyType({"order": "queries_then_heads", "scores": "model_dtype"})
"""Options of the mass functions (and observers) that reproduce the paper's ``attn_collector``."""


def per_head_mass(probs: torch.Tensor, query_weights: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i A[b, h, i, j]``: probabilities ``[B, H, Q, K]`` summed over queries, float32 ``[B, H, K]``.

    The paper's first reduction (``attn_probs.sum(dim=2)``); padded queries (weight 0) drop out.
    """
    probs = probs.float()
    if query_weights is not None:
        probs = probs * query_weights[:, None, :, None].to(probs)
    return probs.sum(dim=2)


def mass_from_probabilities(
    probs: torch.Tensor,
    query_weights: torch.Tensor | None = None,
    *,
    order: MassOrder = "heads_then_queries",
) -> torch.Tensor:
    """Attention mass per key from probabilities ``[B, H, Q, K]``, as float32 ``[B, K]``.

    ``query_weights`` ``[B, Q]`` (1 for real tokens, 0 for padding) keeps padded queries,
    which are not text, from voting for sinks. ``order``: see the module docstring.
    """
    if probs.dim() != 4:
        raise ValueError(f"expected probabilities of shape [B, H, Q, K], got {tuple(probs.shape)}")
    _check_order(order)
    if order == "queries_then_heads":
        return per_head_mass(probs, query_weights).sum(dim=1)
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
    order: MassOrder = "heads_then_queries",
    scores: ScoreFormula = "float32",
) -> torch.Tensor:
    """Attention mass per key recomputed from ``q`` ``[B, Hq, Q, D]`` and ``k`` ``[B, Hk, K, D]``.

    Follows ``torch.nn.functional.scaled_dot_product_attention`` semantics exactly:
    ``attn_mask`` is boolean (True = may attend) or additive, broadcastable to
    ``[B, Hq, Q, K]``; ``is_causal`` uses the top-left aligned causal mask; ``scale``
    defaults to ``1/sqrt(D)``; grouped-query attention (``Hq`` a multiple of ``Hk``)
    shares each key head among its query group. ``scores="float32"`` (default) computes
    the scores in float32; ``"model_dtype"`` computes them as the paper's collector does
    (in the inputs' dtype, so bf16 for a bf16 model, a known imprecision kept for
    reproduction; divided by ``sqrt(D)`` when ``scale`` is the default, an additive mask
    added with torch's type promotion). ``order``: see the module docstring.
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
    _check_order(order)
    if scores not in ("float32", "model_dtype"):
        raise ValueError(f"scores must be 'float32' or 'model_dtype', got {scores!r}")
    if k_heads != q_heads:
        key = key.repeat_interleave(q_heads // k_heads, dim=1)
    paper_scores = scores == "model_dtype"
    # The paper divides by sqrt(head_dim); x / sqrt(D) and x * (1 / sqrt(D)) differ in the
    # last bit unless sqrt(D) is a power of two (D = 128: they differ).
    divisor = math.sqrt(head_dim) if paper_scores and (scale is None or math.isclose(scale, head_dim**-0.5)) else None
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    chunk = chunk_size or query_chunk_size(batch, q_heads, k_len)

    key_t = (key if paper_scores else key.float()).transpose(-1, -2)  # [B, H, D, K]
    mass = torch.zeros(batch, k_len, dtype=torch.float32, device=query.device)
    per_head = None  # [B, H, K] for order="queries_then_heads"
    for start in range(0, q_len, chunk):
        stop = min(start + chunk, q_len)
        if paper_scores:
            block_scores = torch.matmul(query[:, :, start:stop], key_t)
            block_scores = block_scores / divisor if divisor is not None else block_scores * scale
        else:
            block_scores = torch.matmul(query[:, :, start:stop].float(), key_t) * scale  # [B, H, c, K]
        if is_causal:
            rows = torch.arange(start, stop, device=query.device)[:, None]
            cols = torch.arange(k_len, device=query.device)[None, :]
            block_scores = block_scores.masked_fill(cols > rows, float("-inf"))
        if attn_mask is not None:
            block = _mask_block(attn_mask, start, stop, q_len)
            if block.dtype == torch.bool:
                block_scores = block_scores.masked_fill(~block, float("-inf"))
            else:
                block_scores = block_scores + (block if paper_scores else block.float())
        probs = torch.softmax(block_scores.float(), dim=-1).nan_to_num(0.0)  # all -inf rows -> 0
        if order == "queries_then_heads":
            weights = None if query_weights is None else query_weights[:, start:stop]
            block_mass = per_head_mass(probs, weights)
            per_head = block_mass if per_head is None else per_head.add_(block_mass)
            continue
        per_query = probs.sum(dim=1)  # [B, c, K]
        if query_weights is not None:
            per_query = per_query * query_weights[:, start:stop, None].to(per_query)
        mass += per_query.sum(dim=1)
    if per_head is not None:
        return per_head.sum(dim=1)
    return mass


def _check_order(order: str) -> None:
    if order not in ("heads_then_queries", "queries_then_heads"):
        raise ValueError(f"order must be 'heads_then_queries' or 'queries_then_heads', got {order!r}")


def _mask_block(mask: torch.Tensor, start: int, stop: int, q_len: int) -> torch.Tensor:
    """Rows ``start:stop`` of a mask broadcastable to ``[B, H, Q, K]``."""
    if mask.dim() >= 2 and mask.shape[-2] == q_len:
        return mask[..., start:stop, :]
    return mask  # broadcast over queries (shape [..., 1, K])
