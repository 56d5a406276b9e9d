"""Denoiser logits to per-token scores: the one place that aligns, guides and scores them.

Evaluation (:mod:`.diffusion_metrics`), the lm-eval ELBO (:mod:`.elbo`) and the sampler
(:mod:`sink_modifier.generation.sampler`) all read a denoiser the same way:

1. **Forward.** ``logits_fn(ids [B, T]) -> [B, T, V]`` is the family's forward
   (:meth:`ModelFamily.logits`, e.g. DiffusionGemma's prompt/canvas split) or, for a bare
   model, :func:`model_logits`.
2. **Alignment.** ``logit_shift=0``: ``logits[:, i]`` scores the token at ``i`` (LLaDA);
   ``logit_shift=1``: ``logits[:, i - 1]`` does (Dream, which kept its AR head).
   :func:`aligned_logits` re-indexes so column ``i`` always scores position ``i``.
3. **Guidance.** Classifier-free guidance ``un + (cfg + 1)(cond - un)``
   (:func:`guided_logits`), the conditional and unconditional rows in ONE forward.
4. **Scoring.** :func:`masked_token_ce`: float32 log-softmax of the hidden rows only.

What hidden positions hold is the family's business (a corruption
``(clean [B, T], mask [B, T], rows [B], stream) -> noisy``, see
:meth:`ModelFamily.evaluation_corruption`); :func:`resolve_corruption` falls back to the
mask token. Pure torch: nothing here imports transformers or llm-compressor.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from sink_modifier.process.forward import MaskTokenProcess

__all__ = [
    "Corruption",
    "LogitsFn",
    "aligned_logits",
    "check_logit_shift",
    "denoiser_logits",
    "guided_logits",
    "masked_token_ce",
    "model_logits",
    "resolve_corruption",
]

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
Corruption = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, str], torch.Tensor]


def check_logit_shift(logit_shift: int) -> None:
    if logit_shift not in (0, 1):
        raise ValueError(
            f"logit_shift must be 0 (logits[i] predict token i, LLaDA) or 1 "
            f"(logits[i] predict token i+1, Dream), got {logit_shift!r}"
        )


def model_logits(model: nn.Module) -> LogitsFn:
    """``ids -> model(input_ids=ids).logits`` (a tensor output, e.g. ``OnnxDenoiser``'s, is the logits)."""

    def logits_fn(ids: torch.Tensor) -> torch.Tensor:
        output = model(input_ids=ids)
        if isinstance(output, torch.Tensor):
            return output
        logits = getattr(output, "logits", None)
        if logits is None:
            raise TypeError(
                f"model output {type(output).__name__} has no .logits; pass logits_fn=... "
                "returning [B, L, vocab] logits for input ids [B, L]"
            )
        return logits

    return logits_fn


def resolve_corruption(mask_token_id: int | None, corrupt: Corruption | None) -> Corruption:
    """``corrupt`` (the family's, e.g. uniform substitution), else the mask token."""
    if corrupt is not None:
        return corrupt
    if mask_token_id is None:
        raise ValueError("pass mask_token_id (masked diffusion) or corrupt (e.g. the family's evaluation_corruption)")
    return MaskTokenProcess(int(mask_token_id))


def aligned_logits(logits: torch.Tensor, logit_shift: int, start: int = 0, end: int | None = None) -> torch.Tensor:
    """Columns of ``logits [B, T, V]`` re-indexed so column ``j`` scores the token at ``start + j``.

    Model dtype, not upcast; a view where the shift allows. With ``logit_shift=1`` no logit
    predicts position 0: it reuses ``logits[:, 0]``, which is meaningless, so position 0 must
    never be scored (:meth:`ModelFamily.scorable` excludes it).
    """
    end = logits.shape[1] if end is None else end
    if logit_shift == 0:
        return logits[:, start:end]
    if start >= logit_shift:
        return logits[:, start - logit_shift : end - logit_shift]
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)[:, start:end]


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, cfg: float) -> torch.Tensor:
    """Classifier-free guidance ``un + (cfg + 1)(cond - un)``, in float32."""
    uncond = uncond.float()
    return uncond + (cfg + 1) * (cond.float() - uncond)


def denoiser_logits(
    logits_fn: LogitsFn,
    noisy: torch.Tensor,
    *,
    logit_shift: int = 0,
    cfg: float = 0.0,
    unconditional: torch.Tensor | None = None,
    start: int = 0,
    end: int | None = None,
) -> torch.Tensor:
    """Aligned logits of positions ``start..end`` of ``noisy [B, T]`` (guided when ``cfg > 0``).

    With guidance, ``unconditional [B, T]`` (the context hidden) runs in the same forward as
    ``noisy`` and the result is float32; without, it is in the model's dtype.
    """
    if cfg <= 0:
        return aligned_logits(logits_fn(noisy), logit_shift, start, end)
    if unconditional is None or unconditional.shape != noisy.shape:
        raise ValueError("cfg > 0 needs an unconditional input of the same shape as the noisy one")
    both = logits_fn(torch.cat([noisy, unconditional]))
    rows = noisy.shape[0]
    cond = aligned_logits(both[:rows], logit_shift, start, end)
    uncond = aligned_logits(both[rows:], logit_shift, start, end)
    return guided_logits(cond, uncond, cfg)


def masked_token_ce(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-hidden-token CE and argmax correctness, in row-major order of ``mask [B, T]``.

    ``logits [B, T, V]`` must be aligned (:func:`aligned_logits`). Only the hidden rows are
    upcast, so the float32 log-softmax costs memory proportional to the number of hidden
    tokens, not ``B * T * V``.
    """
    selected = logits[mask].float()
    log_probs = torch.log_softmax(selected, dim=-1)
    tgt = targets[mask]
    ce = -log_probs.gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
    correct = selected.argmax(dim=-1) == tgt
    return ce, correct
