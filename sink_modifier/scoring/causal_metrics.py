"""Next-token perplexity for autoregressive (causal) language models.

The baseline against which diffusion models are compared: ``logits[:, i]`` scores the token at
``i + 1``, so a window of ``T`` tokens yields ``T - 1`` scored positions (1..T-1; the first token
has no context and is not scored). The shift is done here rather than via ``labels=``, so the
computation is explicit and identical for every model. CE is pooled over all scored tokens and
computed with a float32 log-softmax.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from tqdm.auto import tqdm

from .inference import eval_mode, input_device

__all__ = ["perplexity"]


def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 8,
    progress: bool = False,
) -> dict:
    """Pooled next-token cross-entropy and perplexity over ``windows`` ``[N, T]``.

    Returns:
        ``{"ce": float, "ppl": exp(ce), "n_tokens": N * (T - 1)}``.
    """
    if windows.dim() != 2 or windows.shape[0] == 0 or windows.shape[1] < 2:
        raise ValueError(
            f"windows must be [N, T] with N >= 1 and T >= 2, got shape {tuple(windows.shape)}"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = input_device(model)
    ce_sum, n_tokens = 0.0, 0
    starts = range(0, windows.shape[0], batch_size)
    with eval_mode(model):
        for start in tqdm(starts, desc="perplexity", disable=not progress):
            batch = windows[start : start + batch_size].to(device=device, dtype=torch.long)
            output = model(input_ids=batch)
            logits = getattr(output, "logits", None)
            if logits is None:
                raise TypeError(f"model output {type(output).__name__} has no .logits")
            log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
            ce = -log_probs.gather(-1, batch[:, 1:].unsqueeze(-1)).squeeze(-1)
            ce_sum += ce.double().sum().item()
            n_tokens += ce.numel()
    ce_mean = ce_sum / n_tokens
    return {"ce": ce_mean, "ppl": math.exp(ce_mean), "n_tokens": n_tokens}
