"""What an evaluation mask puts in place of the hidden tokens: a mask token, or uniform random tokens.

:mod:`.masks` decides *which* positions are hidden (the same for every model); a corruption
decides what the model sees there. Masked DLMs (LLaDA, Dream) see their mask token. A
uniform-noise model (DiffusionGemma) has no mask token: it sees a token drawn uniformly from
the vocabulary, as in its own forward process. The replacement tokens are common random
numbers too: a pure function of ``(seed, row, stream)``, drawn on the CPU, so every model is
scored on identical inputs whatever the batch size.

A corruption is called as ``corrupt(clean [B, T], mask [B, T], rows [B], stream) -> noisy``,
where ``rows`` are the global indices of the batch's rows and ``stream`` names the metric
(so two metrics draw independent replacements).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sink_modifier.data.keyed_random import keyed_generator

__all__ = ["MaskTokenCorruption", "UniformCorruption"]


@dataclass(frozen=True)
class MaskTokenCorruption:
    """Hidden positions become ``mask_token_id`` (masked diffusion)."""

    mask_token_id: int
    description = "mask token"

    def __call__(self, clean: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, stream: str) -> torch.Tensor:
        return clean.masked_fill(mask, self.mask_token_id)


@dataclass(frozen=True)
class UniformCorruption:
    """Hidden positions become tokens drawn uniformly from ``[0, vocab_size)`` (uniform diffusion)."""

    vocab_size: int
    seed: int
    description = "uniform random tokens"

    def replacements(self, rows: torch.Tensor, length: int, stream: str) -> torch.Tensor:
        """``[len(rows), length]`` replacement tokens; row ``r`` depends only on ``(seed, r, stream)``."""
        return torch.stack(
            [
                torch.randint(0, self.vocab_size, (length,), generator=keyed_generator(f"sink_modifier.evaluation:{int(self.seed)}:{int(r)}:uniform:{stream}"))
                for r in rows.tolist()
            ]
        )

    def __call__(self, clean: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor, stream: str) -> torch.Tensor:
        tokens = self.replacements(rows, clean.shape[1], stream).to(clean)
        return torch.where(mask, tokens, clean)
