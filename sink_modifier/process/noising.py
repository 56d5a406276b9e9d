"""The masked-diffusion forward process, as pure tensor functions.

A masked DLM (LLaDA, Dream) is trained and run on inputs where each token is
independently replaced by a mask token with probability ``p(t)`` at diffusion
time ``t``. Attention sinks and activation statistics depend on how much of
the input is masked, so calibration covers a grid of timesteps instead of
clean text only.

Noise is made reproducible per row: each (sample, timestep) pair gets its own
generator derived from ``(seed, sample_index, timestep_index)``, so a row's
mask does not depend on batch size, row order or how many samples are built.
"""

from __future__ import annotations

import math
import numbers

import torch

from sink_modifier.data.keyed_random import keyed_generator

__all__ = [
    "LLADA_TIMESTEPS",
    "mask_probability",
    "noise_tokens",
    "row_generator",
    "timestep_grid",
]


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


def mask_probability(t: float, eps: float = 1e-3) -> float:
    """Probability that a token is masked at time ``t``: ``(1 - eps) * t + eps``.

    This is LLaDA's forward process (``eps`` keeps the rate away from 0 for
    small ``t``). ``t == 0`` is special-cased to probability 0: such rows are
    clean copies, which lets clean and noised calibration be mixed in one set
    and compared row for row.
    """
    if not _is_real(t) or not 0 <= t <= 1:
        raise ValueError(f"timestep t must be a number in [0, 1], got {t!r}")
    if not _is_real(eps) or not 0 <= eps < 1:
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    if t == 0:
        return 0.0
    return (1.0 - float(eps)) * float(t) + float(eps)


def _is_real(value: object) -> bool:
    """A real, non-NaN number (bools excluded: ``True`` is not a timestep)."""
    return (
        isinstance(value, numbers.Real) and not isinstance(value, bool) and not math.isnan(value)
    )


def row_generator(seed: int, sample_index: int, timestep_index: int) -> torch.Generator:
    """A CPU generator for one (sample, timestep) row, independent of all others.

    The 63-bit seed is the first 8 bytes (little-endian, top bit cleared) of
    ``blake2b(b"sink_modifier.diffusion.row:{seed}:{sample_index}:{timestep_index}",
    digest_size=8)``. Hashing (rather than ``seed + index``) keeps neighbouring
    seeds from sharing rows, and makes a row's noise a function of its
    coordinates only, not of batch size or build order.
    """
    coordinates = {"seed": seed, "sample_index": sample_index, "timestep_index": timestep_index}
    for name, value in coordinates.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be an int, got {value!r}")
    if sample_index < 0 or timestep_index < 0:
        raise ValueError(
            f"sample_index and timestep_index must be >= 0, got {sample_index}, {timestep_index}"
        )
    return keyed_generator(f"sink_modifier.diffusion.row:{seed}:{sample_index}:{timestep_index}", keep="low")


def noise_tokens(
    input_ids: torch.LongTensor,
    t: float,
    mask_token_id: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    maskable: torch.BoolTensor | None = None,
) -> torch.LongTensor:
    """Return a copy of ``input_ids [T]`` with tokens masked at time ``t``.

    Each position where ``maskable`` is true (all, by default) becomes
    ``mask_token_id`` independently with probability ``mask_probability(t, eps)``:
    ``torch.rand(T, generator=generator) < p``. Other tokens are unchanged.
    The uniform draw is made on CPU (so results do not depend on the device)
    and the result is on ``input_ids``' device.
    """
    if input_ids.dim() != 1:
        raise ValueError(
            f"input_ids must be 1-D [T], got shape {tuple(input_ids.shape)}; "
            "noise one row at a time"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    p = mask_probability(t, eps)
    draws = torch.rand(input_ids.shape[0], generator=generator)
    masked = (draws < p).to(input_ids.device)
    if maskable is not None:
        if maskable.shape != input_ids.shape or maskable.dtype != torch.bool:
            raise ValueError(
                f"maskable must be a bool tensor shaped like input_ids {tuple(input_ids.shape)}, "
                f"got {maskable.dtype} {tuple(maskable.shape)}"
            )
        masked &= maskable.to(input_ids.device)
    return input_ids.masked_fill(masked, int(mask_token_id))
