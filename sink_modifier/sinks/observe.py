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

Memory stays ``O(chunk * T)`` per layer in both channels. SDPA never materialises the
probabilities and channel 2 recomputes them a query block at a time. For channel 1, eager
attention would materialise ``[B, H, T, T]`` in every layer, so while an observer is
active a Hugging Face model whose ``config._attn_implementation`` is ``"eager"`` (what
llm-compressor forces during calibration) runs a registered implementation that calls the
model's *own* eager attention function on blocks of queries and reduces each block's
probabilities to mass at once (:mod:`sink_modifier.sinks.chunked_eager`). Softmax rows are
independent, so this is the eager computation, block by block; models whose eager
function cannot be found keep plain eager attention.

:func:`global_attention_mass` stops the forward as soon as every attention module has run
(the last layer's MLP, the final norm and the LM head are never computed) and, for a model
dispatched with compressed-tensors offloading, onloads weights one module at a time
(:mod:`sink_modifier.sinks.onload`).

``order`` / ``scores`` (:mod:`sink_modifier.sinks.mass`; ``**PAPER_COLLECTOR`` for the
paper's ``attn_collector``) choose the reduction order and, for the SDPA channel, the score
formula. Layers are summed in call order from the first layer's mass, as the paper's
collector does from zeros. The eager channels reduce the probabilities the model's eager
attention returns; those are the collector's bit for bit for a float32 model whose
``1/sqrt(head_dim)`` is exact (head_dim 16, 64, 256), but transformers rounds them to the
model's dtype, so ``scores`` cannot apply there.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from sink_modifier.families.modules import attention_modules as find_attention_modules
from sink_modifier.sinks import chunked_eager
from sink_modifier.sinks.errors import SinkObservationError
from sink_modifier.sinks.mass import (
    MassOrder,
    ScoreFormula,
    mass_from_probabilities,
    mass_from_query_key,
)
from sink_modifier.sinks.onload import onload_one_module_at_a_time

__all__ = ["AttentionMassObserver", "SinkObservationError", "global_attention_mass"]


class _AllAttentionObserved(Exception):
    """Raised from the last attention module's forward hook to end a sink pass early."""


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

    def __init__(
        self,
        model: torch.nn.Module,
        chunk_size: int | None = None,
        *,
        stop_when_all_observed: bool = False,
        attention_modules: list[torch.nn.Module] | None = None,
        trailing_keys: bool = False,
        order: MassOrder = "heads_then_queries",
        scores: ScoreFormula = "float32",
    ):
        """``attention_modules`` restricts observation to those modules (all channels; default: every
        ``*Attention`` module). ``trailing_keys``: a call with ``K > Q`` (queries after a cached
        prefix, e.g. DiffusionGemma's canvas over prompt + canvas keys) counts the mass its queries
        give to the last ``Q`` keys, their own tokens, with probabilities normalised over all ``K``.
        ``order`` / ``scores``: see the module docstring."""
        if order not in ("heads_then_queries", "queries_then_heads"):
            raise ValueError(f"order must be 'heads_then_queries' or 'queries_then_heads', got {order!r}")
        if scores not in ("float32", "model_dtype"):
            raise ValueError(f"scores must be 'float32' or 'model_dtype', got {scores!r}")
        self.model = model
        self.chunk_size = chunk_size
        self.order = order
        self.scores = scores
        self.stop_when_all_observed = stop_when_all_observed
        self.restricted = attention_modules is not None
        self.trailing_keys = trailing_keys
        self.attention_modules = (
            list(attention_modules) if attention_modules is not None else find_attention_modules(model)
        )
        self._observed_ids = set(map(id, self.attention_modules))
        self._running = 0
        self._handles: list = []
        self._mode: _SDPAInterceptor | None = None
        self._stack: contextlib.ExitStack | None = None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------
    def __enter__(self) -> "AttentionMassObserver":
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(self._chunked_eager_attention())
        self._handles = [
            m.register_forward_hook(self._observe_module_output)
            for m in self.attention_modules
        ]
        if self.restricted:  # SDPA calls count only inside an observed module
            self._handles += [m.register_forward_pre_hook(self._enter_module) for m in self.attention_modules]
        self._mode = _SDPAInterceptor(self)
        self._mode.__enter__()
        self._previous_observer = chunked_eager.activate(self)
        return self

    def __exit__(self, *exc) -> None:
        chunked_eager.activate(self._previous_observer)
        if self._mode is not None:
            self._mode.__exit__(*exc)
            self._mode = None
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self._stack is not None:
            self._stack.close()
            self._stack = None

    @contextlib.contextmanager
    def _chunked_eager_attention(self):
        """Swap eager attention for its query-blocked twin while observing, where possible."""
        config = getattr(self.model, "config", None)
        usable = (
            getattr(config, "_attn_implementation", None) == "eager"
            and self.attention_modules
            and all(chunked_eager.eager_function(m) is not None for m in self.attention_modules)
            and chunked_eager.register()
        )
        if not usable:
            yield
            return
        config._attn_implementation = chunked_eager.CHUNKED_EAGER
        try:
            yield
        finally:
            config._attn_implementation = "eager"

    def reset(self, attention_mask: torch.Tensor | None = None) -> None:
        """Start a new forward; ``attention_mask`` ``[B, T]`` marks real tokens (1) vs padding (0)."""
        self.mass: torch.Tensor | None = None
        self.layers_observed = 0
        self.calls_skipped = 0
        self._query_weights = None if attention_mask is None else attention_mask.float()
        self._not_yet_run = set(map(id, self.attention_modules))
        self._running = 0

    def counts(self, module: torch.nn.Module) -> bool:
        """Whether ``module``'s attention is part of the mass."""
        return not self.restricted or id(module) in self._observed_ids

    def own_keys(self, q_len: int, k_len: int) -> slice | None:
        """The key columns that are the queries' own tokens, or None for a call that is not counted."""
        if q_len == k_len:
            return slice(None)
        if self.trailing_keys and k_len > q_len:
            return slice(k_len - q_len, None)
        return None

    def _enter_module(self, module, args) -> None:
        self._running += 1

    # -- channels ----------------------------------------------------------------
    def _observe_module_output(self, module, args, output) -> None:
        if self.restricted:
            self._running = max(0, self._running - 1)
        self._read_module_output(module, output)
        self._not_yet_run.discard(id(module))
        if self.stop_when_all_observed and not self._not_yet_run and self.layers_observed:
            raise _AllAttentionObserved

    def _read_module_output(self, module, output) -> None:
        if not isinstance(output, tuple) or len(output) < 2:
            return
        probs = output[1]
        if not isinstance(probs, torch.Tensor) or probs.dim() != 4:
            return
        keys = self.own_keys(probs.shape[-2], probs.shape[-1])
        if keys is None:
            self.calls_skipped += 1
            return
        mass = mass_from_probabilities(
            probs.detach()[..., keys], self._weights_for(probs.shape[-2]), order=self.order
        )
        self._check_finite(mass, module)
        self._add(mass)

    @staticmethod
    def _check_finite(mass: torch.Tensor, module) -> None:
        # NaN/inf in any probability propagates into the sums (0 * inf is NaN too), so checking
        # the [B, T] mass finds them without another pass over [B, H, T, T].
        if not bool(torch.isfinite(mass).all()):
            raise SinkObservationError(
                f"{type(module).__name__} returned NaN/inf attention probabilities; the model's "
                "outputs are broken (uninitialised buffers after from_pretrained?)"
            )

    # Never traced: a model that compiles its attention (the paper's LLaDA code wraps SDPA in
    # @torch.compile) would otherwise have dynamo trace and inductor fuse this (other bits) and
    # replay the side effects on the observer out of order (wrong per-layer masses).
    @torch.compiler.disable
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
        if self.restricted and not self._running:
            return  # attention outside the observed modules (e.g. DiffusionGemma's prompt encoder)
        keys = self.own_keys(query.shape[-2], key.shape[-2])
        if keys is None:
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
            order=self.order,
            scores=self.scores,
        )
        self._add(mass[:, keys])

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
    forward_inputs: dict | None = None,
    attention_modules: list[torch.nn.Module] | None = None,
    trailing_keys: bool = False,
    order: MassOrder = "heads_then_queries",
    scores: ScoreFormula = "float32",
) -> torch.Tensor:
    """Run one forward of ``model`` and return the global attention mass ``[B, T]`` (float32).

    ``forward_inputs`` replaces ``input_ids=input_ids`` in the call (a model whose observed
    tokens are not its ``input_ids``: DiffusionGemma's canvas is ``decoder_input_ids``);
    ``attention_modules`` and ``trailing_keys`` go to :class:`AttentionMassObserver` (a
    family's :meth:`~sink_modifier.families.ModelFamily.sink_pass` supplies all three).
    ``order`` / ``scores`` go to :class:`AttentionMassObserver` (``**PAPER_COLLECTOR``: the
    paper's reduction order and score formula, for ``sink_mask_mode: reference``).

    The forward ends as soon as every ``*Attention`` module has run, and weights of a model
    offloaded with compressed-tensors are onloaded one module at a time, even inside
    llm-compressor's ``disable_offloading()`` (:mod:`sink_modifier.sinks.onload`).

    Raises :class:`SinkObservationError` naming what was tried when no layer is observed
    (e.g. flash-attention kernels or custom attention code that neither returns
    probabilities nor calls ``scaled_dot_product_attention``).
    """
    observer = AttentionMassObserver(
        model, chunk_size=chunk_size, stop_when_all_observed=True,
        attention_modules=attention_modules, trailing_keys=trailing_keys, order=order, scores=scores,
    )
    kwargs = dict(forward_kwargs or {})
    kwargs.update(forward_inputs if forward_inputs is not None else {"input_ids": input_ids})
    if attention_mask is not None:
        kwargs["attention_mask"] = attention_mask
    with torch.no_grad(), onload_one_module_at_a_time(), observer:
        observer.reset(attention_mask)
        try:
            model(**kwargs)
        except _AllAttentionObserved:
            pass
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
