"""Uniform-substitution noise: the forward process of DiffusionGemma-style (uniform) diffusion.

A uniform-noise diffusion LM has no mask token: at diffusion time ``t`` each noised position
holds a token drawn uniformly from the whole vocabulary (DiffusionGemma's
``initialize_canvas`` draws ``randint(0, vocab_size)``, and its sampler redraws rejected
tokens the same way). A replacement may by chance equal the clean token, exactly as in the
model's own forward process, so the share of *changed* tokens is ``p(t) * (1 - 1/V)``.

The noise rate at ``t`` is the same ``mask_probability(t, eps)`` as the masked process, so
one timestep grid means the same amount of corruption for both kinds of model. Pure tensor
functions; randomness comes only from the generator passed in.
"""

from __future__ import annotations

import torch

from .noising import mask_probability

__all__ = ["substitute_uniformly", "uniform_noise_tokens"]


def _check_vocab(vocab_size: int) -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 2:
        raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")


def substitute_uniformly(
    input_ids: torch.LongTensor, positions: torch.BoolTensor, vocab_size: int, generator: torch.Generator
) -> torch.LongTensor:
    """A copy of ``input_ids [T]`` whose ``positions`` hold tokens drawn uniformly from ``[0, vocab_size)``.

    One draw per position of the row (``T`` draws, used or not), so the token at a position
    does not depend on which other positions are replaced.
    """
    _check_vocab(vocab_size)
    if input_ids.dim() != 1 or positions.shape != input_ids.shape or positions.dtype != torch.bool:
        raise ValueError(
            f"need input_ids [T] and a bool positions [T], got {tuple(input_ids.shape)} and "
            f"{positions.dtype} {tuple(positions.shape)}"
        )
    tokens = torch.randint(0, vocab_size, input_ids.shape, generator=generator).to(input_ids)
    return torch.where(positions.to(input_ids.device), tokens, input_ids)


def uniform_noise_tokens(
    input_ids: torch.LongTensor,
    t: float,
    vocab_size: int,
    generator: torch.Generator,
    eps: float = 1e-3,
    maskable: torch.BoolTensor | None = None,
) -> torch.LongTensor:
    """``input_ids [T]`` noised at time ``t``: each position (where ``maskable``) is replaced,
    with probability ``mask_probability(t, eps)``, by a uniform token of the vocabulary.

    Draw order on the CPU generator: ``T`` uniforms deciding which positions are noised, then
    ``T`` replacement tokens. ``t == 0`` returns a clean copy.
    """
    if input_ids.dim() != 1:
        raise ValueError(f"input_ids must be 1-D [T], got shape {tuple(input_ids.shape)}; noise one row at a time")
    p = mask_probability(t, eps)
    noised = torch.rand(input_ids.shape[0], generator=generator) < p
    if maskable is not None:
        if maskable.shape != input_ids.shape or maskable.dtype != torch.bool:
            raise ValueError(
                f"maskable must be a bool tensor shaped like input_ids {tuple(input_ids.shape)}, "
                f"got {maskable.dtype} {tuple(maskable.shape)}"
            )
        noised &= maskable.cpu()
    return substitute_uniformly(input_ids, noised, vocab_size, generator)
