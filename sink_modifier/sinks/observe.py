"""Reading global attention mass off a running model: the only model-touching part of sinks/.

Two observation channels cover the models people prune, and they never both fire for
the same layer:

1. **Attention-module outputs.** Hugging Face attention modules return
   ``(attn_output, attn_weights)``; with eager attention (which llm-compressor forces
   during calibration) ``attn_weights`` are the probabilities ``[B, H, Q, K]``. A forward
   hook on every ``*Attention`` module reduces them to mass.
2. **SDPA interception.** Remote-code DLMs (LLaDA, Dream) call
   ``torch.nn.functional.scaled_dot_product_attention`` themselves and never return
   probabilities; HF models in ``sdpa`` mode do the same and return ``None`` weights. A
   ``TorchFunctionMode`` sees each SDPA call's real post-rotary ``q``/``k``, mask and
   flags, and the mass is recomputed from them in float32 query chunks (O(chunk*T)).

Only self-attention over the observed sequence counts (``Q == K == T``): cross-attention
or cached-prefix calls are skipped, so the mass is the paper's sum over layers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sink_modifier.sinks.mass import mass_from_probabilities, mass_from_query_key

__all__ = ["AttentionMassObserver", "SinkObservationError", "global_attention_mass"]


class SinkObservationError(ValueError):
    """The model ran, but no attention layer could be observed."""


class _SDPAInterceptor(TorchFunctionMode):
    def __init__(self, observer: "AttentionMassObserver"):
        super().__init__()
        self._observer = observer

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self._observer._observe_sdpa(*args, **kwargs)
        return func(*args, **kwargs)


class AttentionMassObserver:
    """Context manager accumulating ``M[b, j] = sum_layers sum_heads sum_queries A`` during forwards.

    >>> with AttentionMassObserver(model) as observer:
    ...     observer.reset(attention_mask)
    ...     model(input_ids, attention_mask=attention_mask)
    ...     mass = observer.mass  # [B, T] float32
    """

    def __init__(self, model: torch.nn.Module, chunk_size: int | None = None):
        self.model = model
        self.chunk_size = chunk_size
        self.attention_modules = [
            m for m in model.modules() if type(m).__name__.endswith("Attention")
        ]
        self._handles: list = []
        self._mode: _SDPAInterceptor | None = None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> "AttentionMassObserver":
        self._handles = [
            m.register_forward_hook(self._observe_module_output)
            for m in self.attention_modules
        ]
        self._mode = _SDPAInterceptor(self)
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def reset(self, attention_mask: torch.Tensor | None = None) -> None:
        """Start a new forward; ``attention_mask`` ``[B, T]`` marks real tokens (1) vs padding (0)."""
        self.mass: torch.Tensor | None = None
        self.layers_observed = 0
        self.calls_skipped = 0
        self._query_weights = None if attention_mask is None else attention_mask.float()

    # -- channels ----------------------------------------------------------------
    def _observe_module_output(self, module, args, output) -> None:
        if not isinstance(output, tuple) or len(output) < 2:
            return
        probs = output[1]
        if not isinstance(probs, torch.Tensor) or probs.dim() != 4:
            return
        if probs.shape[-1] != probs.shape[-2]:
            self.calls_skipped += 1
            return
        if not bool(torch.isfinite(probs).all()):
            raise SinkObservationError(
                f"{type(module).__name__} returned NaN/inf attention probabilities; the model's "
                "outputs are broken (uninitialised buffers after from_pretrained?)"
            )
        self._add(mass_from_probabilities(probs.detach(), self._weights_for(probs.shape[-2])))

    def _observe_sdpa(
        self,
        query,
        key,
        value=None,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
        **_,
    ) -> None:
        if query.shape[-2] != key.shape[-2]:
            self.calls_skipped += 1
            return
        if not (bool(torch.isfinite(query).all()) and bool(torch.isfinite(key).all())):
            # Seen with transformers 5: from_pretrained leaves non-persistent rotary buffers
            # uninitialised, so q/k are NaN and every probability would silently read as 0.
            raise SinkObservationError(
                "attention inputs (q or k) contain NaN/inf, so attention mass cannot be measured; "
                "the model's outputs are broken too (uninitialised rotary buffers after from_pretrained?)"
            )
        # Inside __torch_function__ the mode is already off, so these matmuls are not re-observed.
        mass = mass_from_query_key(
            query.detach(),
            key.detach(),
            attn_mask=None if attn_mask is None else attn_mask.detach(),
            is_causal=bool(is_causal),
            scale=scale,
            query_weights=self._weights_for(query.shape[-2]),
            chunk_size=self.chunk_size,
        )
        self._add(mass)

    # -- accumulation --------------------------------------------------------------
    def _weights_for(self, q_len: int) -> torch.Tensor | None:
        if self._query_weights is None or self._query_weights.shape[-1] != q_len:
            return None
        return self._query_weights

    def _add(self, layer_mass: torch.Tensor) -> None:
        layer_mass = layer_mass.float()
        if self.mass is None:
            self.mass = layer_mass.clone()
        else:
            self.mass += layer_mass.to(self.mass.device)
        self.layers_observed += 1


def global_attention_mass(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    chunk_size: int | None = None,
    forward_kwargs: dict | None = None,
) -> torch.Tensor:
    """Run one forward of ``model`` and return the global attention mass ``[B, T]`` (float32).

    Raises :class:`SinkObservationError` naming what was tried when no layer is observed
    (e.g. flash-attention kernels or custom attention code that neither returns
    probabilities nor calls ``scaled_dot_product_attention``).
    """
    observer = AttentionMassObserver(model, chunk_size=chunk_size)
    kwargs = dict(forward_kwargs or {})
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    with torch.no_grad(), observer:
        observer.reset(attention_mask)
        model(input_ids=input_ids, **kwargs)
    if observer.layers_observed == 0 or observer.mass is None:
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        raise SinkObservationError(
            f"Could not observe attention in {type(model).__name__} "
            f"(attn_implementation={impl!r}). Tried: (1) forward hooks on "
            f"{len(observer.attention_modules)} modules named '*Attention' for attention "
            "probabilities as output[1] (eager attention), (2) intercepting "
            "torch.nn.functional.scaled_dot_product_attention"
            + (f" ({observer.calls_skipped} calls were not self-attention over the input)" if observer.calls_skipped else "")
            + ". Load the model with attn_implementation='eager' or 'sdpa'; flash-attention "
            "and custom attention kernels hide the probabilities."
        )
    mass = observer.mass
    if attention_mask is not None:
        mass = mass * attention_mask.to(mass)
    return mass
