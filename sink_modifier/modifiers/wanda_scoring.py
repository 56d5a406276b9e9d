"""Sink-aware Wanda maths: pure functions over tensors (the modifier only wires them in).

A Linear layer's input rows are tokens; ``token_weights`` ``w = 1 - s`` (sink mask ``s``)
scale each row before the usual Wanda column statistic is taken:

* ``rms`` (llm-compressor's Wanda): running mean over samples of ``||w ⊙ X[:, c]||²``;
  column scale = ``sqrt`` of it. Independent of batch size.
* ``sum_of_norms`` (the paper's code, reference-spec §1.9): ``Σ_samples ||w ⊙ X[:, c]||₂``;
  column scale = the sum itself. Taken per sample, so it equals the paper's numbers at its
  default ``batch_size=1`` and, unlike the paper's code, does not change with batch size.

Scores are ``|W| * scale[c]``; the lowest-scoring weights of every output row are pruned
(exactly ``int(d_in * sparsity)`` per row), or ``n`` of every ``m`` consecutive inputs
per row for N:M.
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
    "fold_contribution",
    "prune_mask",
]

Statistic = Literal["rms", "sum_of_norms"]
STATISTICS: tuple[str, ...] = ("rms", "sum_of_norms")


def batch_contribution(
    statistic: Statistic,
    inputs: torch.Tensor,
    token_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """One batch's column contribution ``[d_in]`` and row count.

    ``rms``: ``Σ_tokens (w x)²``; ``sum_of_norms``: ``Σ_rows ||w ⊙ X_row[:, c]||₂``.
    """
    x = weighted_rows(inputs, token_weights)
    if statistic == "rms":
        return x.pow(2).sum(dim=(0, 1)), x.shape[0]
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
        # Same running mean as llm-compressor's accumulate_row_scalars.
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
) -> torch.Tensor:
    """Boolean mask of weights to zero (True = prune) for Wanda scores ``|W| * scale``.

    Unstructured: per output row, the ``int(d_in * sparsity)`` lowest scores (stable sort,
    so ties resolve by column order and results are reproducible). N:M: in each row, the
    ``prune_n`` lowest scores of every group of ``prune_m`` consecutive columns.
    """
    rows, cols = weight.shape
    score = weight.abs().to(SCORING_DTYPE) * scale.to(device=weight.device, dtype=SCORING_DTYPE).reshape(1, -1)
    if prune_n:
        if cols % prune_m:
            raise ValueError(
                f"N:M sparsity {prune_n}:{prune_m} needs input features divisible by {prune_m}; "
                f"this layer has {cols}. Add it to `ignore` or pick another M."
            )
        groups = score.reshape(rows, cols // prune_m, prune_m)
        order = torch.argsort(groups, dim=-1, stable=True)[..., :prune_n]
        mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, order, True)
        return mask.reshape(rows, cols)
    k = int(cols * sparsity)
    order = torch.sort(score, dim=-1, stable=True).indices[:, :k]
    return torch.zeros_like(score, dtype=torch.bool).scatter_(1, order, True)
