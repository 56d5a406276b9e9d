"""The diffusion schedule: which timesteps calibration covers, and how much noise each one means.

A diffusion LM (masked or uniform) is trained and run on inputs where each token is
independently corrupted with probability ``p(t)`` at diffusion time ``t``. Attention sinks and
activation statistics depend on how much of the input is corrupted, so calibration covers a
grid of timesteps instead of clean text only. One rate serves both forward processes, so one
timestep grid means the same amount of corruption for every kind of model.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable

__all__ = ["DEFAULT_EPS", "LLADA_TIMESTEPS", "check_timesteps", "mask_probability", "noise_rate", "timestep_grid"]

#: LLaDA's floor on the noise rate: ``p(t) = (1 - eps) t + eps`` for ``t > 0``.
DEFAULT_EPS: float = 1e-3


def timestep_grid(diffusion_steps: int = 50, sample_interval: int = 5) -> tuple[float, ...]:
    """Timesteps ``[k, 2k, ..., diffusion_steps] / diffusion_steps`` for ``k = sample_interval``.

    The defaults give the sink-aware-pruning paper's LLaDA grid
    ``[5, 10, ..., 50] / 50 = (0.1, 0.2, ..., 1.0)``.
    """
    for name, value in (("diffusion_steps", diffusion_steps), ("sample_interval", sample_interval)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if sample_interval > diffusion_steps:
        raise ValueError(
            f"sample_interval={sample_interval} is larger than diffusion_steps="
            f"{diffusion_steps}, so the grid would be empty; pass sample_interval <= "
            "diffusion_steps"
        )
    steps = range(sample_interval, diffusion_steps + 1, sample_interval)
    return tuple(step / diffusion_steps for step in steps)


LLADA_TIMESTEPS: tuple[float, ...] = timestep_grid(50, 5)


def noise_rate(t: float, eps: float = DEFAULT_EPS) -> float:
    """Probability that a token is corrupted at time ``t``: ``(1 - eps) * t + eps``.

    This is LLaDA's forward process (``eps`` keeps the rate away from 0 for small ``t``).
    ``t == 0`` is special-cased to probability 0: such rows are clean copies, which lets
    clean and noised calibration be mixed in one set and compared row for row.
    """
    if not _is_real(t) or not 0 <= t <= 1:
        raise ValueError(f"timestep t must be a number in [0, 1], got {t!r}")
    if not _is_real(eps) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    if t == 0:
        return 0.0
    return (1.0 - float(eps)) * float(t) + float(eps)


#: The name the masked process has always used for :func:`noise_rate`.
mask_probability = noise_rate


def check_timesteps(timesteps: Iterable[float]) -> tuple[float, ...]:
    """``timesteps`` as a non-empty tuple of floats in ``[0, 1]``, or a ``ValueError`` naming the fix."""
    if isinstance(timesteps, (str, bytes)) or not isinstance(timesteps, Iterable):
        raise ValueError(f"timesteps must be a sequence of floats in [0, 1], got {timesteps!r}")
    grid = tuple(timesteps)
    if not grid:
        raise ValueError("timesteps is empty; pass at least one t in [0, 1], e.g. LLADA_TIMESTEPS")
    for t in grid:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 <= t <= 1:
            raise ValueError(f"timesteps must all lie in [0, 1], got {t!r} in {grid!r}")
    return tuple(float(t) for t in grid)


def _is_real(value: object) -> bool:
    """A real, non-NaN number (bools excluded: ``True`` is not a timestep)."""
    return (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    )
