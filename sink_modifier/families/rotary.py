"""Rotary-embedding repairs for remote code written against transformers 4.x.

transformers 5 removed the ``"default"`` entry of ``ROPE_INIT_FUNCTIONS`` (each model now
computes plain RoPE itself), and loads non-persistent buffers such as ``inv_freq`` as
uninitialised memory. Remote code that relies on either needs these two repairs.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["default_rope_parameters", "register_default_rope", "reset_rotary_buffers"]


def _rope_theta(config) -> float:
    parameters = getattr(config, "rope_parameters", None)
    if isinstance(parameters, dict) and "rope_theta" in parameters:
        return float(parameters["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        raise ValueError(f"{type(config).__name__} has neither rope_parameters['rope_theta'] nor rope_theta")
    return float(theta)


def default_rope_parameters(config=None, device=None, seq_len=None, **kwargs) -> tuple[torch.Tensor, float]:
    """Original RoPE: ``inv_freq = 1 / theta^(2i/d)`` and attention factor 1 (transformers 4 signature)."""
    if config is None:  # transformers 4 also allowed (base, dim) keyword arguments
        base, dim = float(kwargs["base"]), int(kwargs["dim"])
    else:
        base = _rope_theta(config)
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dim = int(dim * getattr(config, "partial_rotary_factor", 1.0))
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
    return inv_freq, 1.0


def register_default_rope() -> None:
    """Put plain RoPE back under ``ROPE_INIT_FUNCTIONS["default"]`` (no-op if present)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    ROPE_INIT_FUNCTIONS.setdefault("default", default_rope_parameters)


def reset_rotary_buffers(model: nn.Module) -> int:
    """Recompute rotary ``inv_freq`` buffers after loading; returns how many modules were reset.

    Uses the model's own ``reset_rope_parameters()`` when it has one (Dream does), else each
    rotary module's ``rope_init_fn(config, device)``.
    """
    reset = getattr(model, "reset_rope_parameters", None)
    if callable(reset):
        reset()
        return sum(1 for m in model.modules() if hasattr(m, "inv_freq"))
    count = 0
    for module in model.modules():
        init = getattr(module, "rope_init_fn", None)
        buffer = getattr(module, "inv_freq", None)
        config = getattr(module, "config", None) or getattr(model, "config", None)
        if callable(init) and isinstance(buffer, torch.Tensor):
            inv_freq, scaling = init(config, buffer.device)
            module.inv_freq = inv_freq.to(buffer.dtype)
            if hasattr(module, "original_inv_freq"):
                module.original_inv_freq = module.inv_freq
            if hasattr(module, "attention_scaling"):
                module.attention_scaling = scaling
            count += 1
    return count
