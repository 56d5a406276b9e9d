"""Measured sparsity of a model's weights: what a checkpoint's metadata records and verify checks."""

from __future__ import annotations

import torch

__all__ = ["is_n_m_sparse", "sparsity_report"]


def sparsity_report(model: torch.nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> dict:
    """Fraction of exactly-zero weights per ``nn.Linear`` (by name) and over all of them.

    The output head (``get_output_embeddings()``, whatever its name: LLaDA's is
    ``model.transformer.ff_out``) and modules whose name ends with an entry of ``skip`` are
    left out: recipes never prune the head. ``overall`` is weighted by parameter count.
    """
    getter = getattr(model, "get_output_embeddings", None)
    try:
        head = getter() if callable(getter) else None
    except (AttributeError, NotImplementedError):
        head = None
    per_layer: dict[str, float] = {}
    zeros = total = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith(skip) or module is head:
            continue
        weight = module.weight.detach()
        layer_zeros = int((weight == 0).sum())
        per_layer[name] = layer_zeros / weight.numel()
        zeros += layer_zeros
        total += weight.numel()
    return {
        "overall": zeros / total if total else 0.0,
        "num_layers": len(per_layer),
        "per_layer": per_layer,
    }


def is_n_m_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive inputs of every row has at least ``n`` zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight == 0).reshape(rows, cols // m, m).sum(-1) >= n).all())
