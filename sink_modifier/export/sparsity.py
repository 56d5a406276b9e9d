"""Measured sparsity of a model's weights: what a checkpoint's metadata records and verify checks."""

from __future__ import annotations

import torch

from sink_modifier.families.modules import expert_stacks, output_head

__all__ = ["prunable_weights", "sparsity_report"]


def prunable_weights(model: torch.nn.Module, skip: tuple[str, ...] = ("lm_head",)):
    """``(name, weight [out, in])`` of every weight a recipe prunes, each shared tensor once.

    ``nn.Linear`` weights by module name, and the 3-D expert stacks of MoE blocks (``[E, out,
    in]``, e.g. DiffusionGemma's ``experts.gate_up_proj``) by parameter name, flattened to
    ``[E * out, in]`` so row-wise and N:M checks read them like a Linear. The output head
    (``get_output_embeddings()``, whatever its name: LLaDA's is ``model.transformer.ff_out``)
    and names ending with an entry of ``skip`` are left out. A weight shared by two modules
    (DiffusionGemma's encoder and decoder share every layer) is listed under both names, so
    either module can be looked up; the overall fraction is unchanged by the repeat.
    """
    head = output_head(model)
    for name, module in model.named_modules():
        if module is head or name.endswith(skip):
            continue
        candidates = [(name, module.weight)] if isinstance(module, torch.nn.Linear) else expert_stacks(module, name)
        for full_name, weight in candidates:
            weight = weight.detach()
            yield full_name, weight.reshape(-1, weight.shape[-1]) if weight.dim() == 3 else weight


def sparsity_report(model: torch.nn.Module, skip: tuple[str, ...] = ("lm_head",)) -> dict:
    """Fraction of exactly-zero weights per prunable weight (see :func:`prunable_weights`) and overall.

    ``overall`` is weighted by parameter count.
    """
    per_layer: dict[str, float] = {}
    zeros = total = 0
    for name, weight in prunable_weights(model, skip):
        layer_zeros = int((weight == 0).sum())
        per_layer[name] = layer_zeros / weight.numel()
        zeros += layer_zeros
        total += weight.numel()
    return {
        "overall": zeros / total if total else 0.0,
        "num_layers": len(per_layer),
        "per_layer": per_layer,
    }

