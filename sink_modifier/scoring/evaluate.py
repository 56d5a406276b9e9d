"""One call that scores a model the same way every time, for result tables.

Diffusion models get the NELBO bound plus masked CE/accuracy at a few mask ratios; causal models
get next-token perplexity. Everything is seeded, so two models evaluated with the same ``seed``
and ``windows`` are scored on identical masks and their numbers are directly comparable. Inputs
are validated up front, because a window longer than the model's position table would otherwise
fail deep inside attention or, worse, silently extrapolate RoPE.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .causal_metrics import perplexity
from .diffusion_metrics import masked_cross_entropy, nelbo

__all__ = ["evaluate_model"]


def _validate(model: nn.Module, windows: torch.Tensor) -> None:
    if windows.dim() != 2:
        raise ValueError(f"windows must be a 2-D tensor [N, T], got shape {tuple(windows.shape)}")
    if windows.numel() == 0:
        raise ValueError(f"windows is empty: shape {tuple(windows.shape)}")
    max_positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if max_positions is not None and windows.shape[1] > max_positions:
        raise ValueError(
            f"windows have {windows.shape[1]} tokens but the model's max_position_embeddings "
            f"is {max_positions}"
        )


def evaluate_model(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    diffusion: bool,
    mask_token_id: int | None = None,
    seed: int = 0,
    mc_samples: int = 8,
    ratios: Sequence[float] = (0.15, 0.5, 0.9),
    batch_size: int = 8,
    logit_shift: int = 0,
    progress: bool = True,
    maskable: torch.Tensor | None = None,
    logits_fn=None,
    corrupt=None,
) -> dict:
    """Score ``model`` on clean token ``windows`` ``[N, T]``.

    Diffusion (``diffusion=True``, needs ``mask_token_id``)::

        {"nelbo", "nelbo_stderr", "masked_ce": {"0.15": ce, ...}, "masked_acc": {...},
         "num_windows", "seq_len", "mc_samples", "seed"}

    Causal: ``{"ppl", "ce", "num_windows", "seq_len", "seed"}``.
    Ratio keys are ``str(float(ratio))``. ``maskable [N, T]``, ``logit_shift`` and ``logits_fn``
    carry a family's rules (:meth:`ModelFamily.maskable`, ``.logit_shift``, ``.logits``);
    ``corrupt`` replaces what hidden positions hold (``ModelFamily.evaluation_corruption``; default the mask token).
    """
    _validate(model, windows)
    num_windows, seq_len = windows.shape
    if not diffusion:
        result = perplexity(model, windows, batch_size=batch_size, progress=progress)
        return {
            "ppl": result["ppl"],
            "ce": result["ce"],
            "num_windows": num_windows,
            "seq_len": seq_len,
            "seed": seed,
        }
    if mask_token_id is None and corrupt is None:
        raise ValueError("diffusion=True needs mask_token_id (e.g. model.config.mask_token_id) or corrupt")
    # Every metric scores the same windows under the same family rules.
    shared = dict(seed=seed, batch_size=batch_size, logit_shift=logit_shift, progress=progress,
                  maskable=maskable, logits_fn=logits_fn, corrupt=corrupt)
    bound = nelbo(model, windows, mask_token_id, mc_samples=mc_samples, **shared)
    masked_ce: dict[str, float] = {}
    masked_acc: dict[str, float] = {}
    for ratio in ratios:
        result = masked_cross_entropy(model, windows, mask_token_id, ratio, **shared)
        masked_ce[str(float(ratio))] = result["ce"]
        masked_acc[str(float(ratio))] = result["accuracy"]
    return {
        "nelbo": bound.nelbo,
        "nelbo_stderr": bound.stderr,
        "masked_ce": masked_ce,
        "masked_acc": masked_acc,
        "num_windows": num_windows,
        "seq_len": seq_len,
        "mc_samples": mc_samples,
        "seed": seed,
    }
