"""From attention mass to a soft per-token sink mask (reference-spec §1.8).

For each row ``b`` (one noised sequence at one timestep):

    tau_b   = mean_j M[b, j] + sink_std * std_j M[b, j]     (population std)
    s[b, j] = sigmoid(sink_alpha * (M[b, j] - tau_b))

``s`` is 1 for a sink; activations of that token are scaled by ``1 - s`` when weights are
scored. Statistics run over real tokens only, and padding is never a sink.

Scale note, kept for parity with the paper's code: ``sink_alpha`` multiplies raw mass, whose
mean is ``layers * heads``, so on large models the sigmoid is nearly a hard step at ``tau``.
"""

from __future__ import annotations

import torch

__all__ = ["sink_threshold", "soft_sink_mask", "token_weights"]


def sink_threshold(
    mass: torch.Tensor, sink_std: float = 2.0, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-row threshold ``mean + sink_std * std`` over valid positions; ``[B, T] -> [B]``."""
    mass = mass.float()
    if valid is None:
        return mass.mean(dim=-1) + sink_std * mass.std(dim=-1, unbiased=False)
    weight = valid.to(mass)
    count = weight.sum(dim=-1).clamp_min(1.0)
    mean = (mass * weight).sum(dim=-1) / count
    var = (((mass - mean[:, None]) ** 2) * weight).sum(dim=-1) / count
    return mean + sink_std * var.sqrt()


def soft_sink_mask(
    mass: torch.Tensor,
    sink_std: float = 2.0,
    sink_alpha: float = 5.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft sink mask ``s`` in (0, 1), ``[B, T]``; exactly 0 at invalid (padding) positions."""
    tau = sink_threshold(mass, sink_std, valid)
    sink = torch.sigmoid(sink_alpha * (mass.float() - tau[:, None]))
    if valid is not None:
        sink = sink * valid.to(sink)
    return sink


def token_weights(
    mass: torch.Tensor,
    sink_std: float = 2.0,
    sink_alpha: float = 5.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token activation weights ``1 - s`` for scoring; 0 at padding (not text)."""
    weights = 1.0 - soft_sink_mask(mass, sink_std, sink_alpha, valid)
    if valid is not None:
        weights = weights * valid.to(weights)
    return weights
