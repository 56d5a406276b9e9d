"""Eager attention a block of queries at a time, reducing each block's probabilities to mass.

Eager attention materialises ``[B, H, T, T]`` probabilities in every layer. While an
:class:`~sink_modifier.sinks.observe.AttentionMassObserver` is active, a Hugging Face model whose
``config._attn_implementation`` is ``"eager"`` runs :func:`chunked_eager_attention` instead,
registered with transformers' attention registry under :data:`CHUNKED_EAGER`: the model's *own*
eager attention function on blocks of queries, each block reduced to mass and dropped. Softmax
rows are independent, so this is the eager computation, block by block.
"""

from __future__ import annotations

import inspect

import torch

from sink_modifier.sinks.errors import SinkObservationError
from sink_modifier.sinks.mass import _mask_block, mass_from_probabilities, per_head_mass, query_chunk_size

__all__ = ["CHUNKED_EAGER", "activate", "active_observer", "chunked_eager_attention", "eager_function", "register"]

CHUNKED_EAGER = "sink_modifier_chunked_eager"
"""Name under which the chunked eager attention is registered with transformers."""

# The observer whose chunked eager attention is running. Sink passes are single-threaded
# forwards; the registered attention function needs a way back to its observer.
_active_observer = None


def activate(observer):
    """Make ``observer`` (an ``AttentionMassObserver``, or None) the one the registered attention
    reports to; returns the previous one. (Untyped: ``observe`` imports this module.)"""
    global _active_observer
    previous, _active_observer = _active_observer, observer
    return previous


def active_observer():
    """The observer of the sink pass running now, or None outside one."""
    return _active_observer


def eager_function(module: torch.nn.Module):
    """The eager attention function ``module``'s forward would call (its modeling file's
    ``eager_attention_forward``), or None."""
    forward = getattr(type(module), "forward", None)
    if forward is None:
        return None
    fn = inspect.unwrap(forward).__globals__.get("eager_attention_forward")
    return fn if callable(fn) and fn is not chunked_eager_attention else None


def chunked_eager_attention(module, query, key, value, attention_mask, *args, **kwargs):
    """The module's own eager attention, run on blocks of queries; each block's probabilities
    are reduced to mass and dropped. Returns ``(attn_output, None)`` so the module-output
    channel does not count the layer twice."""
    eager = eager_function(module)
    observer = _active_observer
    if eager is None:
        raise SinkObservationError(f"{type(module).__name__} has no eager_attention_forward to run in blocks")
    if observer is None or not observer.counts(module):  # outside a sink pass, or not observed: plain eager
        return eager(module, query, key, value, attention_mask, *args, **kwargs)
    batch, heads, q_len = query.shape[:3]
    k_len = key.shape[-2]
    chunk = min(q_len, observer.chunk_size or query_chunk_size(batch, heads, k_len))
    keys = observer.own_keys(q_len, k_len)
    weights = observer._weights_for(q_len) if keys is not None else None
    by_head = observer.order == "queries_then_heads"  # accumulate [B, H, K], sum heads at the end
    outputs, mass = [], None
    for start in range(0, q_len, chunk):
        stop = min(start + chunk, q_len)
        block_mask = None if attention_mask is None else _mask_block(attention_mask, start, stop, q_len)
        out, probs = eager(module, query[:, :, start:stop], key, value, block_mask, *args, **kwargs)
        outputs.append(out)
        if keys is None or not isinstance(probs, torch.Tensor):
            continue
        block_weights = None if weights is None else weights[:, start:stop]
        if by_head:
            block = per_head_mass(probs.detach()[..., keys], block_weights)
        else:
            block = mass_from_probabilities(probs.detach()[..., keys], block_weights)
        mass = block if mass is None else mass.add_(block)
        del probs
    if by_head and mass is not None:
        mass = mass.sum(dim=1)
    if keys is None:
        observer.calls_skipped += 1
    elif mass is not None:
        observer._check_finite(mass, module)
        observer._add(mass)
    if len(outputs) == 1:
        return outputs[0], None
    if any(out.dim() < 2 or out.shape[1] != min(chunk, q_len - i * chunk) for i, out in enumerate(outputs)):
        raise SinkObservationError(
            f"{type(module).__name__}'s eager attention does not return [B, Q, ...]; cannot join query blocks"
        )
    return torch.cat(outputs, dim=1), None


def register() -> bool:
    """Register the chunked eager attention (and eager's masks) with transformers, once; False where it cannot."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    except ImportError:  # pragma: no cover - transformers without attention interfaces
        return False
    if CHUNKED_EAGER not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(CHUNKED_EAGER, chunked_eager_attention)
        AttentionMaskInterface.register(CHUNKED_EAGER, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    return True
