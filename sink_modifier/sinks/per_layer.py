"""Attention mass kept per layer: ``M_l[b, j] = sum_heads sum_queries A_l`` for each layer ``l``.

:func:`~sink_modifier.sinks.observe.global_attention_mass` sums the layers (the paper's
global mass); diagnostics want to see *which* layers hold a sink, so this observer keeps
each observed self-attention call separately, in call order (= layer order for the
decoder stacks we support). Both observation channels of
:class:`~sink_modifier.sinks.observe.AttentionMassObserver` feed it unchanged, and the
sum over layers equals the global mass.
"""

from __future__ import annotations

import torch

from sink_modifier.sinks.mass import MassOrder, ScoreFormula
from sink_modifier.sinks.observe import AttentionMassObserver, SinkObservationError

__all__ = ["PerLayerAttentionMassObserver", "per_layer_attention_mass"]


class PerLayerAttentionMassObserver(AttentionMassObserver):
    """An :class:`AttentionMassObserver` that also keeps each layer's mass ``[B, T]``.

    ``observer.mass`` is still the running sum; ``observer.layer_masses`` is the list of
    per-layer contributions in the order the layers ran, and ``observer.per_layer_mass``
    stacks them into ``[L, B, T]``.
    """

    def reset(self, attention_mask: torch.Tensor | None = None) -> None:
        super().reset(attention_mask)
        self.layer_masses: list[torch.Tensor] = []

    def _add(self, layer_mass: torch.Tensor) -> None:
        super()._add(layer_mass)
        self.layer_masses.append(layer_mass.detach().float().clone())

    @property
    def per_layer_mass(self) -> torch.Tensor | None:
        if not self.layer_masses:
            return None
        device = self.layer_masses[0].device
        return torch.stack([m.to(device) for m in self.layer_masses])


def per_layer_attention_mass(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    forward_kwargs: dict | None = None,
    order: MassOrder = "heads_then_queries",
    scores: ScoreFormula = "float32",
) -> torch.Tensor:
    """Run one forward of ``model`` and return the attention mass of each layer, ``[L, B, T]`` float32.

    ``per_layer_attention_mass(...).sum(0)`` equals ``global_attention_mass(...)``; padding
    (``attention_mask == 0``) gets zero mass in every layer. ``order`` / ``scores`` as for
    :func:`~sink_modifier.sinks.observe.global_attention_mass`. Raises
    :class:`SinkObservationError` when no attention layer could be observed.
    """
    observer = PerLayerAttentionMassObserver(model, chunk_size=chunk_size, order=order, scores=scores)
    kwargs = dict(forward_kwargs or {})
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    with torch.no_grad(), observer:
        observer.reset(attention_mask)
        model(input_ids=input_ids, **kwargs)
    per_layer = observer.per_layer_mass
    if per_layer is None:
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        raise SinkObservationError(
            f"Could not observe attention in {type(model).__name__} (attn_implementation={impl!r}): "
            f"no '*Attention' module of {len(observer.attention_modules)} returned probabilities "
            "and no self-attention call to torch.nn.functional.scaled_dot_product_attention was "
            "seen. Load the model with attn_implementation='eager' or 'sdpa'."
        )
    if attention_mask is not None:
        per_layer = per_layer * attention_mask.to(per_layer)[None]
    return per_layer
