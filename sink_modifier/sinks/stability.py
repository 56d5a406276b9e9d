"""How sinks move across the denoising trajectory: pure statistics over ``[K timesteps, T]`` tensors.

The paper's central observation is that sinks in diffusion LMs are *transient*: the token
that soaks up attention changes as the canvas is denoised, while an autoregressive model's
sink stays put (position 0 or a separator). Its released code never measures this
(reference-spec §2); these functions do, for one sample at a time:

* ``dominant_sinks``: the position with the largest mass at each timestep;
* ``dominant_sink_movement``: std of that position over timesteps, and the fraction of
  consecutive timesteps where it stays the same;
* ``mask_stability``: per-position mean and (population) std over timesteps of the soft sink
  mask ``s``; a position that is a sink at every timestep has mean 1, std 0; one that is a
  sink at half of them has std 0.5, the maximum for a mask in [0, 1];
* ``apply_sink_policy``: which sink occurrences to down-weight (``all``, ``unstable``, ``stable``).
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = [
    "SINK_POLICIES",
    "SinkPolicy",
    "apply_sink_policy",
    "dominant_sink_movement",
    "dominant_sinks",
    "mask_stability",
]

SinkPolicy = Literal["all", "unstable", "stable"]
SINK_POLICIES: tuple[str, ...] = ("all", "unstable", "stable")


def dominant_sinks(mass: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Position of the largest attention mass at each timestep: ``[K, T] -> [K]`` (long)."""
    if valid is not None:
        mass = mass.masked_fill(~valid.bool(), float("-inf"))
    return mass.argmax(dim=-1)


def dominant_sink_movement(mass: torch.Tensor, valid: torch.Tensor | None = None) -> dict[str, float]:
    """How far the dominant sink moves across the ``K`` timesteps of one sample.

    ``position_std``: population std of the dominant position (tokens); 0 for a fixed sink.
    ``stay_fraction``: share of consecutive timestep pairs whose dominant position is equal;
    1 for a fixed sink, 0 for one that moves at every step. ``distinct_positions``: how many
    different positions are dominant at some timestep.
    """
    positions = dominant_sinks(mass, valid)
    k = positions.numel()
    stays = (positions[1:] == positions[:-1]).float().mean().item() if k > 1 else 1.0
    return {
        "position_std": positions.float().std(unbiased=False).item() if k > 1 else 0.0,
        "stay_fraction": stays,
        "distinct_positions": int(positions.unique().numel()),
    }


def mask_stability(soft_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position mean and population std of the soft sink mask over timesteps: ``[K, T] -> ([T], [T])``."""
    masks = soft_masks.float()
    return masks.mean(dim=0), masks.std(dim=0, unbiased=False)


def apply_sink_policy(
    soft_masks: torch.Tensor,
    policy: SinkPolicy = "all",
    *,
    unstable_std: float = 0.2,
    stable_mean: float = 0.5,
) -> torch.Tensor:
    """Keep only the sink occurrences a policy down-weights: ``[K, T] -> [K, T]``.

    * ``all``: every occurrence, each timestep on its own (the paper's code);
    * ``unstable``: occurrences at positions whose sinkness varies across timesteps,
      ``std_t s[:, j] > unstable_std`` (a transient sink: the paper's claim is that these
      mislead AR-era heuristics);
    * ``stable``: occurrences at positions that are sinks most of the time and do not vary,
      ``mean_t s[:, j] >= stable_mean`` and ``std_t s[:, j] <= unstable_std`` (what the
      AR heuristic "keep the sinks" would protect; an ablation).

    ``unstable_std`` = 0.2 marks a binary mask that flips in at least ~5% of timesteps of
    10 (std of a Bernoulli(p) is sqrt(p(1−p)); p = 0.05 gives 0.22); ``stable_mean`` = 0.5
    asks for a sink at the majority of timesteps.
    """
    if policy == "all":
        return soft_masks
    mean, std = mask_stability(soft_masks)
    if policy == "unstable":
        keep = std > unstable_std
    elif policy == "stable":
        keep = (mean >= stable_mean) & (std <= unstable_std)
    else:
        raise ValueError(f"unknown sink_policy {policy!r}; choose one of {SINK_POLICIES}")
    return soft_masks * keep.to(soft_masks)[None, :]
