"""Sink-aware Wanda maths: pure functions over tensors (the modifier only wires them in).

A Linear layer's input rows are tokens; ``token_weights`` ``w = 1 - s`` (sink mask ``s``)
scale each row before the usual Wanda column statistic is taken:

* ``rms`` (llm-compressor's Wanda): running mean over samples of ``||w ⊙ X[:, c]||²``;
  column scale = ``sqrt`` of it. Independent of batch size. Computed with llm-compressor's
  own operations in its order (``accumulate_row_scalars``: ``torch.norm(X.t(), dim=1) ** 2``
  on the float32 ``[d_in, tokens]`` view, folded as ``S *= n/(n+a); S += c/(n+a)``), so with
  no token weights the statistic is upstream's bit for bit.
* ``sum_of_norms`` (the paper's code, reference-spec §1.9): ``Σ_samples ||w ⊙ X[:, c]||₂``;
  column scale = the sum itself. Taken per sample, so it equals the paper's numbers at its
  default ``batch_size=1`` and, unlike the paper's code, does not change with batch size.

Scores are ``|W| * scale[c]``; the lowest-scoring weights of every output row are pruned
(exactly ``int(d_in * sparsity)`` per row), or ``n`` of every ``m`` consecutive inputs
per row for N:M. ``preserve_zeros`` ranks weights that are already zero first, so they fill
the quota and stay pruned even where they exceed it.
"""

from __future__ import annotations

from typing import Literal

import torch

from sink_modifier.modifiers.weighted_inputs import SCORING_DTYPE, weighted_rows

__all__ = [
    "STATISTICS",
    "Statistic",
    "accumulate_statistic",
    "batch_contribution",
    "column_scale",
    "count_over_target",
    "fold_contribution",
    "magnitude_prune",
    "prune_mask",
]

Statistic = Literal["rms", "sum_of_norms"]
STATISTICS: tuple[str, ...] = ("rms", "sum_of_norms")


def batch_contribution(
    statistic: Statistic,
    inputs: torch.Tensor,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """One batch's column contribution ``[d_in]`` and sample count (rows of the batch).

    ``rms``: ``Σ_tokens (w x)²``, as ``torch.norm(·, p=2, dim=1) ** 2`` over the columns
    ``[d_in, tokens]`` (llm-compressor's operations and layout); ``sum_of_norms``:
    ``Σ_rows ||w ⊙ X_row[:, c]||₂``.
    """
    x = weighted_rows(inputs, token_weights)  # [B, T, d_in]
    if statistic == "rms":
        columns = x.reshape(-1, x.shape[-1]).t()  # [d_in, B * T]: upstream's view, not a copy
        return torch.norm(columns, p=2, dim=1) ** 2, x.shape[0]
    if statistic == "sum_of_norms":
        return x.pow(2).sum(dim=1).sqrt().sum(dim=0), x.shape[0]
    raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")


def fold_contribution(
    statistic: Statistic,
    state: torch.Tensor | None,
    num_samples: int,
    contribution: torch.Tensor,
    added: int,
) -> tuple[torch.Tensor, int]:
    """Fold one batch's :func:`batch_contribution` into the running statistic (``state=None`` starts one)."""
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")
    if state is None:
        state = torch.zeros(contribution.shape[-1], dtype=SCORING_DTYPE, device=contribution.device)
    if statistic == "rms":
        # llm-compressor's accumulate_row_scalars, operation for operation (bit for bit).
        state = state * (num_samples / (num_samples + added))
        state = state + contribution / (num_samples + added)
    else:
        state = state + contribution
    return state, num_samples + added


def accumulate_statistic(
    statistic: Statistic,
    state: torch.Tensor | None,
    num_samples: int,
    inputs: torch.Tensor,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """Fold one batch of layer inputs into the running column statistic.

    Returns the new ``(state [d_in], num_samples)``; ``state=None`` starts a new one.
    Folding the batches' :func:`batch_contribution` in the same order gives the same bits
    (how data-parallel ranks combine their shares).
    """
    contribution, added = batch_contribution(statistic, inputs, token_weights)
    return fold_contribution(statistic, state, num_samples, contribution, added)


def column_scale(statistic: Statistic, state: torch.Tensor) -> torch.Tensor:
    """Per-input-column activation scale that multiplies ``|W|`` in the Wanda score."""
    if statistic == "rms":
        return state.sqrt()
    if statistic == "sum_of_norms":
        return state
    raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")


def prune_mask(
    weight: torch.Tensor,
    scale: torch.Tensor,
    sparsity: float,
    prune_n: int = 0,
    prune_m: int = 0,
    *,
    preserve_zeros: bool = False,
) -> torch.Tensor:
    """Boolean mask of weights to zero (True = prune) for Wanda scores ``|W| * scale``.

    Unstructured: per output row, the ``int(d_in * sparsity)`` lowest scores (stable sort,
    so ties resolve by column order and results are reproducible). N:M: in each row, the
    ``prune_n`` lowest scores of every group of ``prune_m`` consecutive columns.
    ``preserve_zeros``: weights that are exactly 0 rank below every other score, so they
    count towards each row's quota (each group's ``prune_n``) and are all pruned, also where
    a row or group already holds more zeros than the target (:func:`count_over_target`).
    """
    rows, cols = weight.shape
    score = weight.abs().to(SCORING_DTYPE) * scale.to(device=weight.device, dtype=SCORING_DTYPE).reshape(1, -1)
    zeros = weight == 0 if preserve_zeros else None
    if zeros is not None:
        score = score.masked_fill(zeros, float("-inf"))
    if prune_n:
        if cols % prune_m:
            raise ValueError(
                f"N:M sparsity {prune_n}:{prune_m} needs input features divisible by {prune_m}; "
                f"this layer has {cols}. Add it to `ignore` or pick another M."
            )
        groups = score.reshape(rows, cols // prune_m, prune_m)
        order = torch.argsort(groups, dim=-1, stable=True)[..., :prune_n]
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True).reshape(rows, cols)
    else:
        k = int(cols * sparsity)
        order = torch.sort(score, dim=-1, stable=True).indices[:, :k]
        mask = torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)
    return mask if zeros is None else mask | zeros


def count_over_target(weight: torch.Tensor, sparsity: float, prune_n: int = 0, prune_m: int = 0) -> int:
    """How many rows (unstructured) or N:M groups already hold more zeros than the target."""
    zeros = weight == 0
    if prune_n:
        return int((zeros.reshape(weight.shape[0], -1, prune_m).sum(dim=-1) > prune_n).sum())
    return int((zeros.sum(dim=1) > int(weight.shape[1] * sparsity)).sum())


def magnitude_prune(linears, sparsity: float, prune_n: int = 0, prune_m: int = 0) -> None:
    """Prune each ``nn.Linear`` of ``linears`` by ``|W|`` per output row (or N:M), in place: Wanda's mask
    with a unit activation scale, the data-free baseline the studies compare with."""
    with torch.no_grad():
        for module in linears:
            weight = module.weight
            weight.masked_fill_(prune_mask(weight, torch.ones(weight.shape[1]), sparsity, prune_n, prune_m), 0)
