"""The diffusion forward process, one object per kind: mask-token absorbing noise, uniform substitution.

A forward process answers two questions, and every user asks it rather than re-implementing it:

* **calibration** (:meth:`ForwardProcess.noise_row`): a clean row ``[T]`` at time ``t``, with
  each (maskable) position corrupted with probability :func:`.schedule.noise_rate`; drawn from
  the generator of the row's coordinates (:func:`row_generator`), on the CPU, so a row's noise
  depends on its (window, timestep) only, never on batch size, build order or device;
* **evaluation** (:meth:`ForwardProcess.corrupt`, also the object's ``__call__``): what the
  positions an evaluation mask hides hold, ``corrupt(clean [B, T], mask [B, T], rows [B],
  stream) -> noisy``. *Which* positions are hidden is the scorer's business
  (:mod:`sink_modifier.scoring.masks`), the same for every model; ``rows`` are the global
  indices of the batch's rows and ``stream`` names the metric, so replacement tokens are common
  random numbers: a pure function of ``(seed, row, stream)``.

Masked DLMs (LLaDA, Dream) use :class:`MaskTokenProcess`; a uniform-noise model
(DiffusionGemma) has no mask token and uses :class:`UniformSubstitution`, whose replacement may
by chance equal the clean token, exactly as in the model's own forward process, so its share of
*changed* tokens is ``p(t) * (1 - 1/V)``. Pure tensor code: the randomness comes only from the
generators of :mod:`sink_modifier.data.keyed_random`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from sink_modifier.data.keyed_random import keyed_generator

from .schedule import DEFAULT_EPS, noise_rate

__all__ = ["ForwardProcess", "MaskTokenProcess", "UniformSubstitution", "row_generator"]


@runtime_checkable
class ForwardProcess(Protocol):
    """What calibration, evaluation, analysis and SparseGPT's reference mode need of a process."""

    name: ClassVar[str]
    eps: float

    def noise_row(
        self, input_ids: torch.LongTensor, t: float, generator: torch.Generator,
        maskable: torch.BoolTensor | None = None,
    ) -> torch.LongTensor:
        """A copy of ``input_ids [T]`` noised at time ``t`` (only where ``maskable``)."""

    def corrupt(self, clean: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, stream: str) -> torch.Tensor:
        """``clean [B, T]`` with the ``mask`` positions replaced as evaluation sees them."""

    def __call__(self, clean: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, stream: str) -> torch.Tensor:
        """The same as :meth:`corrupt` (a process is an evaluation corruption)."""

    def describe(self) -> dict[str, Any]:
        """The process's settings for a calibration record (JSON-able)."""

    def observed_rate(self, clean: torch.Tensor, noised: torch.Tensor) -> float | None:
        """The share of ``noised`` positions the process visibly corrupted (``None``: nothing to count)."""

    def describe_rates(self, clean: torch.Tensor, noised: torch.Tensor, timesteps: tuple[float, ...]) -> dict[str, Any]:
        """Expected and observed noise per timestep of sample-major rows ``[N * K, T']``."""


def row_generator(seed: int, sample_index: int, timestep_index: int) -> torch.Generator:
    """A CPU generator for one (window, timestep) row, independent of all others.

    The 63-bit seed is the first 8 bytes (little-endian, top bit cleared) of
    ``blake2b(b"sink_modifier.diffusion.row:{seed}:{sample_index}:{timestep_index}",
    digest_size=8)``: a row's noise is a function of its coordinates only, not of batch size
    or build order (the key string is as first released; changing it changes every checkpoint).
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


def _noised_positions(
    input_ids: torch.LongTensor, t: float, eps: float, generator: torch.Generator, maskable: torch.BoolTensor | None
) -> torch.BoolTensor:
    """Which positions of one row are noised: ``T`` uniform draws on the CPU, ``< p(t)``, and ``maskable``."""
    if input_ids.dim() != 1:
        raise ValueError(
            f"input_ids must be 1-D [T], got shape {tuple(input_ids.shape)}; noise one row at a time"
        )
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    p = noise_rate(t, eps)
    noised = (torch.rand(input_ids.shape[0], generator=generator) < p).to(input_ids.device)
    if maskable is not None:
        if maskable.shape != input_ids.shape or maskable.dtype != torch.bool:
            raise ValueError(
                f"maskable must be a bool tensor shaped like input_ids {tuple(input_ids.shape)}, "
                f"got {maskable.dtype} {tuple(maskable.shape)}"
            )
        noised &= maskable.to(input_ids.device)
    return noised


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class MaskTokenProcess:
    """Absorbing (masked) diffusion: a noised or hidden position holds ``mask_token_id``."""

    mask_token_id: int
    eps: float = DEFAULT_EPS
    name: ClassVar[str] = "mask_token"

    def __post_init__(self) -> None:
        _check_int("mask_token_id", self.mask_token_id, 0)
        noise_rate(0.5, self.eps)  # validates eps

    def noise_row(
        self, input_ids: torch.LongTensor, t: float, generator: torch.Generator,
        maskable: torch.BoolTensor | None = None,
    ) -> torch.LongTensor:
        """Each position (where ``maskable``) becomes the mask token with probability ``p(t)``.

        One draw per position: ``torch.rand(T, generator=generator) < p``; other tokens are
        unchanged and the result is on ``input_ids``' device.
        """
        masked = _noised_positions(input_ids, t, self.eps, generator, maskable)
        return input_ids.masked_fill(masked, int(self.mask_token_id))

    def corrupt(self, clean: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, stream: str) -> torch.Tensor:
        return clean.masked_fill(mask, self.mask_token_id)

    __call__ = corrupt

    def describe(self) -> dict[str, Any]:
        return {"mask_token_id": self.mask_token_id}

    def observed_rate(self, clean: torch.Tensor, noised: torch.Tensor) -> float | None:
        """Positions turned into the mask token among those whose clean token was not already it."""
        maskable = clean != self.mask_token_id
        total = int(maskable.sum())
        return int(((noised == self.mask_token_id) & maskable).sum()) / total if total else None

    def describe_rates(self, clean: torch.Tensor, noised: torch.Tensor, timesteps: tuple[float, ...]) -> dict[str, Any]:
        k = len(timesteps)
        return {"mask_rate_per_timestep": [
            {
                "t": float(t),
                "expected_mask_rate": noise_rate(t, self.eps),
                "observed_mask_rate": self.observed_rate(clean[j::k], noised[j::k]),
            }
            for j, t in enumerate(timesteps)
        ]}


@dataclass(frozen=True)
class UniformSubstitution:
    """Uniform diffusion: a noised or hidden position holds a token drawn uniformly from ``[0, vocab_size)``.

    DiffusionGemma's ``initialize_canvas`` draws ``randint(0, vocab_size)``, and its sampler
    redraws rejected tokens the same way. ``seed`` keys the evaluation replacements
    (:meth:`corrupt`); calibration rows use their own :func:`row_generator`.
    """

    vocab_size: int
    seed: int = 0
    eps: float = DEFAULT_EPS
    name: ClassVar[str] = "uniform"

    def __post_init__(self) -> None:
        _check_int("vocab_size", self.vocab_size, 2)
        noise_rate(0.5, self.eps)

    def noise_row(
        self, input_ids: torch.LongTensor, t: float, generator: torch.Generator,
        maskable: torch.BoolTensor | None = None,
    ) -> torch.LongTensor:
        """Each position (where ``maskable``) is replaced with probability ``p(t)`` by a uniform token.

        Draw order on the CPU generator: ``T`` uniforms deciding which positions are noised, then
        ``T`` replacement tokens (used or not, so a position's token does not depend on which
        other positions are replaced). ``t == 0`` returns a clean copy.
        """
        noised = _noised_positions(input_ids, t, self.eps, generator, maskable)
        tokens = torch.randint(0, self.vocab_size, input_ids.shape, generator=generator).to(input_ids)
        return torch.where(noised, tokens, input_ids)

    def replacements(self, rows: torch.Tensor, length: int, stream: str) -> torch.Tensor:
        """``[len(rows), length]`` evaluation tokens; row ``r`` depends only on ``(seed, r, stream)``."""
        return torch.stack([
            torch.randint(0, self.vocab_size, (length,), generator=keyed_generator(
                f"sink_modifier.evaluation:{int(self.seed)}:{int(r)}:uniform:{stream}"))
            for r in rows.tolist()
        ])

    def corrupt(self, clean: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, stream: str) -> torch.Tensor:
        tokens = self.replacements(rows, clean.shape[1], stream).to(clean)
        return torch.where(mask, tokens, clean)

    __call__ = corrupt

    def describe(self) -> dict[str, Any]:
        return {"noise": "uniform", "vocab_size": self.vocab_size}

    def observed_rate(self, clean: torch.Tensor, noised: torch.Tensor) -> float | None:
        """The share of changed tokens (a replacement may equal the clean token, so this is below ``p(t)``)."""
        return float((noised != clean).float().mean()) if clean.numel() else None

    def describe_rates(self, clean: torch.Tensor, noised: torch.Tensor, timesteps: tuple[float, ...]) -> dict[str, Any]:
        k = len(timesteps)
        return {"noise_rate_per_timestep": [
            {
                "t": float(t),
                "expected_noise_rate": noise_rate(t, self.eps),
                "expected_changed_rate": noise_rate(t, self.eps) * (1 - 1 / self.vocab_size),
                "observed_changed_rate": self.observed_rate(clean[j::k], noised[j::k]),
            }
            for j, t in enumerate(timesteps)
        ]}
