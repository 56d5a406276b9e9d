"""What every sink-aware pruning modifier shares: settings, validation, and the sink-mask lifecycle.

How the global sink masks fit llm-compressor's lifecycle
--------------------------------------------------------
The paper's mask for a calibration row is computed from the attention mass summed over
*all* layers of the dense model, but llm-compressor's sequential pipeline calibrates
layer 0 on every batch before layer 1 has seen any. So the masks must exist before the
first Linear of the first decoder layer runs, without a calibration pass of our own in
``on_initialize`` (that is what breaks OWL in llm-compressor 0.14: events cannot fire
before the session is initialised).

We hang a forward-pre hook on the input embedding. Every pipeline (basic and sequential)
runs the embedding first for each batch and sets ``state.current_batch_idx``. When the
hook sees a batch for the first time it runs one forward of the still-dense model on that
batch's token ids with all modifier hooks disabled, reads the attention mass
(:mod:`sink_modifier.sinks.observe`), and stores per-token weights ``1 - s`` under the
batch index. The Linear hooks then look the weights up by ``current_batch_idx``. In the
sequential pipeline the embedding subgraph runs for all batches before any decoder
layer, so every mask comes from the dense model, as in the paper. ``sink_weighting:
false`` (with ``timestep_weighting``, ``masked_position_weight`` and ``sparsity_profile`` at
their defaults) hangs no such hook and skips the sink pass: the modifier is then upstream's
(``WandaPruningModifier`` / ``SparseGPTModifier``) bit for bit, on any module tree.

The same hook serves the diffusion-aware options, which need each batch's token ids or
index: ``masked_position_weight`` and ``timestep_weighting`` multiply the batch's token
weights by per-position and per-row factors (:mod:`sink_modifier.modifiers.row_weighting`;
each row's timestep from the rows' table), so they work per row in either pipeline and do
not depend on the batch size. OWL (``sparsity_profile: owl``) runs one more dense forward of
the batch there, collecting every pruned Linear's column sums of its (weighted) squared
inputs with plain torch hooks; before the first layer is pruned (the first sequential epoch
end, when every batch has passed the embedding) the per-layer sparsities are computed from
them with upstream's formula (:mod:`sink_modifier.modifiers.owl`), the ranks' sums gathered
in rank order under ``torchrun``.

What the sink pass costs (:func:`sink_modifier.sinks.global_attention_mass`):

* It ends as soon as every attention module has run: the last layer's MLP, the final norm
  and the LM head are skipped (llm-compressor already replaces the LM head by a meta stub
  during calibration). What remains is one dense forward up to the last attention per
  batch, which upstream Wanda does not pay; measured against upstream Wanda in
  ``benchmarks/results/cost.md``.
* Attention memory is ``O(chunk * T)`` per layer, never ``[B, H, T, T]``: llm-compressor
  forces eager attention, so the pass swaps in the model's own eager function run on
  blocks of ``attention_chunk_size`` queries (SDPA models recompute mass from ``q, k`` in
  blocks).
* Offloaded models: the embedding subgraph runs inside ``disable_offloading()``, which
  would keep every weight the pass reads onloaded until that subgraph ends, i.e. the whole
  model at once. The pass lifts it, so weights are onloaded one module at a time and
  released after use (:mod:`sink_modifier.sinks.onload`); each batch's pass then moves
  every weight once (free when onload and offload device are both the CPU).

What the modifier is told, and what it finds out itself
-------------------------------------------------------
``sink-modifier prune`` resolves the model family and builds the calibration set once, and
hands both down with :meth:`SinkAwareSparsityBase.attach` before ``oneshot``. A direct
``oneshot()`` user need not: the family is then detected from ``model.config`` (once per
model), and the rows' (window, timestep) are read off the calibration DataLoader in
``state.data.calib`` when it is a :meth:`CalibrationSet.dataloader
<sink_modifier.process.calibration.CalibrationSet.dataloader>` (its
:class:`~sink_modifier.process.rows.RowTable`); ``state.current_batch_idx`` picks a batch's rows.
"""

from __future__ import annotations

import torch
from llmcompressor.core import State
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase
from loguru import logger
from pydantic import PrivateAttr, ValidationInfo, field_validator, model_validator

from sink_modifier.modifiers.finite_fields import check_finite
from sink_modifier.modifiers.owl_layers import OwlLayerSparsity
from sink_modifier.modifiers.sink_row_weighting import SinkRowWeighting
from sink_modifier.sparsity_pattern import parse_mask_structure

__all__ = ["SinkAwareSparsityBase"]


class SinkAwareSparsityBase(SinkRowWeighting, SparsityModifierBase):
    """Base of the sink-aware modifiers; subclasses implement ``calibrate_module`` and ``compress_modules``.

    Options and their constraints: ``docs/recipes.md``. The sink and row-weighting settings
    (``sink_weighting``, ``sink_std``, ``timestep_weighting``, ...) are
    :class:`~sink_modifier.modifiers.sink_row_weighting.SinkRowWeighting`'s.

    :param sparsity: fraction of weights to prune, in [0, 1] (N/M for N:M); a list: one per target, as upstream.
    :param mask_structure: ``"0:0"`` unstructured, or ``"N:M"`` (N of every M consecutive inputs of a row pruned).
    :param targets: modules to prune, as upstream (default ``["Linear"]``).
    :param ignore: modules left alone, as upstream; the default ``[]`` prunes the head too (list ``"re:.*lm_head"``).
    :param preserve_sparsity_mask: weights already exactly zero stay pruned, counted in the target.
    :param sparsity_profile: ``"owl"`` (with ``owl_m``, ``owl_lmbda``): per-layer sparsities from OWL's outlier ratios.
    :param owl_m: OWL's outlier threshold ``M`` (score above ``M`` times its layer's mean; > 0, the paper uses 5).
    :param owl_lmbda: OWL's ``λ``: layer sparsities lie within ``sparsity ± 2 * owl_lmbda`` (>= 0).
    """

    sparsity: float | list[float] | None = None
    preserve_sparsity_mask: bool = False

    _achieved_sparsity: dict[str, float] = PrivateAttr(default_factory=dict)
    _owl: OwlLayerSparsity | None = PrivateAttr(default=None)

    # -- validation (fails at recipe load, naming the field) ------------------------
    @field_validator("*", mode="after")
    @classmethod
    def _check_finite(cls, value, info: ValidationInfo):
        return check_finite(info.field_name, value)

    @field_validator("sparsity", mode="after")
    @classmethod
    def _check_sparsity(cls, value):
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and not 0.0 <= float(v) <= 1.0:  # NaN fails too
                raise ValueError(f"sparsity must be in [0, 1], got {v}; e.g. 0.5 prunes half the weights")
        return value

    @field_validator("mask_structure", mode="before")
    @classmethod
    def _check_mask_structure(cls, value):
        n, m = parse_mask_structure(value)
        return f"{n}:{m}"

    @model_validator(mode="after")
    def _check_owl(self):
        if self.sparsity_profile != "owl" or self.owl_m is None or self.owl_lmbda is None:
            return self  # upstream's validator refuses an incomplete OWL setting
        if self.mask_structure != "0:0":
            raise ValueError(
                f"sparsity_profile 'owl' sets one sparsity per layer, which mask_structure "
                f"{self.mask_structure!r} ignores (N:M prunes N of every M weights in every layer); "
                "use mask_structure '0:0' or drop sparsity_profile, owl_m and owl_lmbda"
            )
        if not isinstance(self.sparsity, float):
            raise ValueError(
                f"sparsity_profile 'owl' needs one target sparsity (a number), got {self.sparsity!r}; "
                "OWL derives the per-layer values itself"
            )
        if self.owl_m <= 0:
            raise ValueError(
                f"owl_m must be > 0 (outlier threshold, a multiple of the layer's mean score), got {self.owl_m}"
            )
        if self.owl_lmbda < 0:
            raise ValueError(
                f"owl_lmbda must be >= 0 (layer sparsities span sparsity ± 2 * owl_lmbda), got {self.owl_lmbda}"
            )
        return self

    @model_validator(mode="after")
    def _check_sparsity_given(self):
        if self.sparsity is None and self.mask_structure == "0:0":
            raise ValueError("sparsity is required for unstructured pruning (mask_structure '0:0'); e.g. sparsity: 0.5")
        n, m = (int(p) for p in self.mask_structure.split(":"))
        if n and isinstance(self.sparsity, float) and abs(self.sparsity - n / m) > 1e-6:
            logger.warning(
                f"mask_structure {self.mask_structure} prunes exactly {n / m:.0%} of weights; "
                f"sparsity={self.sparsity} is ignored"
            )
        return self

    # -- lifecycle -----------------------------------------------------------------
    def on_initialize(self, state: State, **kwargs) -> bool:
        super().on_initialize(state, **kwargs)
        self._initialize_row_weighting(state)
        return True

    def _needs_batch_hook(self) -> bool:
        """OWL needs each batch's token ids too (its dense pass), whatever the weighting."""
        return super()._needs_batch_hook() or self.sparsity_profile == "owl"

    def _batch_hook_reason(self) -> str:
        reasons = [r for r in (super()._batch_hook_reason(),
                               "sparsity_profile='owl'" if self.sparsity_profile == "owl" else "") if r]
        return " and ".join(reasons)

    def on_calibration_start(self, state: State, event, **kwargs):
        super().on_calibration_start(state, event, **kwargs)  # Linear hooks
        self._warn_if_head_pruned()
        if self._owl is not None:
            self._owl.reset()
        self._register_batch_hooks()

    def _warn_if_head_pruned(self) -> None:
        """Say so when the output head is among the pruned modules.

        Upstream warns only where a matched name ends in ``lm_head``; with ``targets:
        ["Linear"]`` its names end in ``"."`` and nothing is said. Here the head is also found
        as ``get_output_embeddings()`` (LLaDA's is ``model.transformer.ff_out``).
        """
        get_head = getattr(self._model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        for module, name in self._module_names.items():
            if name.endswith("lm_head"):
                continue  # upstream has warned
            short = name.rstrip(".")
            if module is head or short.endswith("lm_head"):
                logger.warning(
                    f"{type(self).__name__} prunes the output head {short} (targets match it and ignore "
                    f'does not list it); to keep it dense add "{short}" to ignore'
                )

    def on_calibration_end(self, state: State, event, **kwargs):
        super().on_calibration_end(state, event, **kwargs)
        self._end_row_weighting()

    def _finalize_checks(self, state: State, pending: dict) -> None:
        if not self.ended_:
            self.on_end(state, None)
        if pending:
            raise ValueError(f"Failed to compress {len(pending)} modules")
        self._token_weights = dict()
        self._module_names = dict()
        self._module_sparsities = dict()

    @property
    def achieved_sparsity(self) -> dict[str, float]:
        """Fraction of zeros in each pruned module's weight, by module name."""
        return dict(self._achieved_sparsity)

    def _record_sparsity(self, module: torch.nn.Module, weight: torch.Tensor) -> str:
        name = self._module_names[module].rstrip(".")  # upstream names Linear targets "x.q_proj."
        self._achieved_sparsity[name] = float((weight == 0).float().mean())
        return name

    # -- OWL layer sparsities (sparsity_profile: owl; the work is modifiers/owl_layers.py) --------
    def _after_batch_weights(self, input_ids, valid, weights) -> None:
        if self.sparsity_profile != "owl":
            return
        extra = self._family().sink_pass(self._model, input_ids, self._pending_call)
        call = dict(extra.get("forward_kwargs") or {})
        call.update(extra.get("forward_inputs") or {"input_ids": input_ids})
        if valid is not None:
            call["attention_mask"] = valid
        self._owl.add_batch(self._model, list(self._module_names), call,
                            lambda module, inputs: self._aligned(module, inputs, weights))

    def _infer_owl_layer_sparsity(self, model, layers, dataloader):
        """Upstream runs a calibration pass here, inside ``on_initialize`` (which 0.14 refuses); this
        modifier only notes the layers and computes their sparsities during calibration."""
        self._owl = OwlLayerSparsity(layers)
        return self.sparsity

    @property
    def owl_layer_sparsity(self) -> dict[str, float]:
        """OWL's target sparsity of each layer (empty without ``sparsity_profile: owl``, or before pruning)."""
        return dict(self._owl.layer_sparsity or {}) if self._owl is not None else {}

    def _resolve_owl(self) -> None:
        """Set every pruned module's sparsity to its layer's OWL sparsity (once, before the first prune)."""
        if self.sparsity_profile != "owl" or self._owl.layer_sparsity is not None:
            return
        per_module = self._owl.resolve(self._module_names, self.sparsity, self.owl_m, self.owl_lmbda,
                                       type(self).__name__)
        self._module_sparsities.update(per_module)

    def on_sequential_epoch_end(self, state: State, event, **kwargs):
        self._resolve_owl()  # every batch has passed the embedding: the sums are complete
        super().on_sequential_epoch_end(state, event, **kwargs)
