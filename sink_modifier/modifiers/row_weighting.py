"""Diffusion-aware weights of calibration rows and positions: pure functions over tensors.

A pruning statistic (Wanda's column norms, SparseGPT's Hessian) is a sum over calibration
rows of per-token terms ``x_t x_tᵀ``. Two optional weights make it follow the denoiser's
training objective more closely; the modifiers (:mod:`.sink_base`) compose them with the
sink weights ``1 - s`` by multiplication.

**Timestep weighting** (``timestep_weighting: elbo``). The masked-diffusion ELBO weights the
loss of a sequence noised at time ``t`` by ``1 / t``. Row ``r`` (timestep ``t_r``) gets the
weight ``c_r = (1 / t_r) / mean_rows(1 / t)``: its contribution to the statistic is multiplied
by ``c_r``, and the weights average to 1 over the calibration rows, so the statistic keeps its
scale (an all-equal grid gives ``c = 1`` exactly). The mean is taken over the row table's
distinct timesteps, each with its share of rows (:func:`mean_inverse_timestep`); a
data-parallel share holding every timestep of its windows therefore gets the same weights,
bit for bit, as the whole set. Clean rows (``t = 0``) are refused: ``1 / t`` is infinite
there, and a clean row has no term at all in the ELBO (it masks nothing), so any finite
weight would be an arbitrary choice; calibrate on timesteps in ``(0, 1]``. The weight is
``1 / t``, not ``1 / p(t)`` with LLaDA's floor ``p(t) = (1 - eps) t + eps``: the two differ by
less than ``eps / t`` relatively (1% at ``t = 0.1`` with ``eps = 1e-3``). For a uniform-noise
model (DiffusionGemma) ``1 / t`` is the weighting its evaluation uses, not its own ELBO.

**Masked-position weighting** (``masked_position_weight: λ``). Only masked positions are
scored by the denoiser's loss, so a row's statistic is split into its masked and its visible
positions and the two are mixed with ``λ`` and ``1 - λ``. Per row, over its ``n`` valid tokens
(``n_m`` masked, ``n_v = n - n_m`` visible; padding is left out)::

    statistic_row = n * (λ * mean_masked(x x^T) + (1 - λ) * mean_visible(x x^T))

i.e. each masked token's term is weighted ``λ n / n_m`` and each visible token's
``(1 - λ) n / n_v``. The factor ``n`` keeps the unweighted statistic's scale: when ``λ``
equals the row's masked fraction ``n_m / n`` every weight is 1 and the row is unchanged, so
``λ`` reads as "the share of the row's statistic that comes from masked positions". A row
without masked positions (clean) or without visible ones (``t = 1``) keeps only the other
term: clean rows count ``(1 - λ)`` times, fully masked rows ``λ`` times (``λ = 1``: only masked
positions count, as in the loss; clean rows then add nothing).

Both weights multiply statistics of squared inputs, so on a layer's input rows they enter as
square roots (:func:`token_input_factors`); Wanda's ``sum_of_norms`` sums per-row norms
``||x_r||``, so there a row weight enters the row's inputs as is (``||c x|| = c ||x||``), while the
per-token masked weight stays under the norm's square (square root).
"""

from __future__ import annotations

import math

import torch

from sink_modifier.modifiers.weighted_inputs import SCORING_DTYPE

__all__ = [
    "elbo_row_weights",
    "masked_position_weights",
    "mean_inverse_timestep",
    "token_input_factors",
]


def mean_inverse_timestep(timesteps: torch.Tensor) -> float:
    """``mean_r(1 / t_r)`` over the rows' timesteps ``[R]``, summed per distinct timestep.

    Computed as ``Σ_k (n_k / R) (1 / t_k)`` over the distinct ``t_k`` in ascending order (float64),
    so every set of rows that holds each timestep equally often (a data-parallel share of whole
    windows) gives the same bits as the whole calibration set. Refuses ``t <= 0`` (see the module
    docstring) and an empty table.
    """
    t = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1)
    if t.numel() == 0:
        raise ValueError("timestep_weighting 'elbo' needs calibration rows; the row table is empty")
    _check_positive(t)
    values, counts = torch.unique(t, sorted=True, return_counts=True)
    total = int(t.numel())
    mean = 0.0
    for value, count in zip(values.tolist(), counts.tolist()):
        mean += (count / total) * (1.0 / value)
    return mean


def elbo_row_weights(timesteps: torch.Tensor, mean_inverse: float) -> torch.Tensor:
    """ELBO weights ``c_r = (1 / t_r) / mean_inverse`` of rows ``[B]`` (float64), ``mean_inverse``
    from :func:`mean_inverse_timestep` over all calibration rows."""
    t = torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1)
    _check_positive(t)
    if not (math.isfinite(mean_inverse) and mean_inverse > 0):
        raise ValueError(f"mean_inverse must be a positive finite number, got {mean_inverse}")
    return (1.0 / t) / mean_inverse


def masked_position_weights(
    is_masked: torch.Tensor, valid: torch.Tensor | None, masked_weight: float
) -> torch.Tensor:
    """Per-token weights ``[B, T]`` (float64) of the statistic: ``λ n / n_m`` at masked positions,
    ``(1 - λ) n / n_v`` at visible ones, 0 at padding (``valid == 0``), per row.

    ``is_masked [B, T]``: the row's positions that hold the mask token; ``valid [B, T]`` (or
    ``None``: every position) the non-padding ones; ``masked_weight`` is ``λ`` in ``[0, 1]``.
    """
    lam = float(masked_weight)
    if not 0.0 <= lam <= 1.0:  # NaN fails too
        raise ValueError(f"masked_position_weight must be in [0, 1], got {masked_weight}")
    masked = is_masked.to(torch.bool)
    if masked.dim() == 1:
        masked = masked.unsqueeze(0)
    keep = torch.ones_like(masked) if valid is None else valid.reshape(masked.shape).to(torch.bool)
    masked = masked & keep
    visible = keep & ~masked
    n = keep.sum(dim=-1, keepdim=True).to(torch.float64)
    n_masked = masked.sum(dim=-1, keepdim=True).to(torch.float64)
    n_visible = n - n_masked
    # An empty group has no tokens to weight; clamp only keeps the unused quotient finite.
    w_masked = lam * n / n_masked.clamp(min=1.0)
    w_visible = (1.0 - lam) * n / n_visible.clamp(min=1.0)
    zero = torch.zeros((), dtype=torch.float64, device=masked.device)
    return torch.where(masked, w_masked, torch.where(visible, w_visible, zero))


def token_input_factors(
    shape: tuple[int, int],
    sink_weights: torch.Tensor | None,
    position_weights: torch.Tensor | None = None,
    row_weights: torch.Tensor | None = None,
    *,
    row_power: float = 0.5,
) -> torch.Tensor | None:
    """What multiplies each token's input row, ``[B, T]`` = ``shape``: ``sink · √position · row^row_power``.

    ``sink_weights [B, T]`` (``1 - s``, already an input factor) or ``None``;
    ``position_weights [B, T]`` (:func:`masked_position_weights`, weights of the squared
    statistic); ``row_weights [B]`` (:func:`elbo_row_weights`, weights of a row's contribution);
    ``row_power`` 0.5 for statistics of squared inputs (Wanda ``rms``, Hessians), 1 for Wanda's
    ``sum_of_norms``. With no position or row weights the sink weights are returned unchanged
    (the same tensor, or ``None``), so the statistic is exactly what it is without these options.
    Factors are formed in float64 and rounded to float32 once.
    """
    if position_weights is None and row_weights is None:
        return sink_weights
    factors = torch.ones(shape, dtype=torch.float64)
    if position_weights is not None:
        factors = factors.to(position_weights.device) * position_weights.to(torch.float64).reshape(shape).sqrt()
    if row_weights is not None:
        rows = row_weights.to(device=factors.device, dtype=torch.float64).reshape(-1, 1)
        if rows.shape[0] != shape[0]:
            raise ValueError(f"{rows.shape[0]} row weights for a batch of {shape[0]} rows")
        factors = factors * rows**row_power
    factors = factors.to(SCORING_DTYPE)
    if sink_weights is None:
        return factors
    return sink_weights.to(SCORING_DTYPE) * factors.to(sink_weights.device).reshape(sink_weights.shape)


def _check_positive(t: torch.Tensor) -> None:
    bad = t[~(t > 0)]
    if bad.numel():
        raise ValueError(
            f"timestep_weighting 'elbo' weights each row by 1/t, which is undefined for rows at t = "
            f"{float(bad[0])} (clean rows have no term in the ELBO); calibrate on timesteps in (0, 1] "
            "(drop 0 from --timesteps, or from the calibration grid in Python) or use timestep_weighting: uniform"
        )
