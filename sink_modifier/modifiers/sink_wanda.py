"""``SinkAwareWandaPruningModifier``: Wanda whose activation statistic down-weights attention sinks.

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
(:mod:`sink_modifier.sinks.observe`), and stores the per-token weights ``1 - s`` under the
batch index. The Linear hooks then look the weights up by ``current_batch_idx``. In the
sequential pipeline the embedding subgraph runs for all batches before any decoder
layer, so every mask comes from the dense model, as in the paper. ``sink_weighting:
false`` skips the sink pass and gives the identical pipeline without down-weighting.
"""

from __future__ import annotations

import re

import torch
from compressed_tensors.utils import align_module_device, update_offload_parameter
from loguru import logger
from pydantic import Field, PrivateAttr, field_validator, model_validator

from llmcompressor.core import State, active_session
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase
from llmcompressor.modifiers.utils.hooks import HooksMixin

from sink_modifier.modifiers.wanda_scoring import (
    Statistic,
    accumulate_statistic,
    column_scale,
    prune_mask,
)
from sink_modifier.sinks import global_attention_mass, token_weights

__all__ = ["SinkAwareWandaPruningModifier"]

_MASK_STRUCTURE = re.compile(r"^(\d+):(\d+)$")


class SinkAwareWandaPruningModifier(SparsityModifierBase):
    """Wanda pruning with attention-sink-aware activation statistics (arXiv 2602.17664).

    ```yaml
    sparsity_stage:
      sparsity_modifiers:
        SinkAwareWandaPruningModifier:
          sparsity: 0.5
          mask_structure: "0:0"
          targets: ["Linear"]
          ignore: ["re:.*lm_head"]
          sink_std: 2.0
          sink_alpha: 5.0
          sink_weighting: true
          statistic: rms
    ```

    :param sparsity: fraction of weights zeroed in every output row, in [0, 1)
        (ignored for N:M, where it is N/M).
    :param mask_structure: ``"0:0"`` unstructured, or ``"N:M"``: N of every M consecutive
        input weights of a row are pruned (``"2:4"``).
    :param sink_std: ``k`` of the sink threshold ``mean + k * std`` of the attention mass.
    :param sink_alpha: slope of the soft sink mask ``sigmoid(alpha * (mass - threshold))``.
    :param sink_weighting: false runs the same pipeline with no down-weighting (ablation).
    :param statistic: ``rms`` (llm-compressor's Wanda statistic on weighted inputs) or
        ``sum_of_norms`` (the paper code's sum of per-sample L2 norms).
    :param attention_chunk_size: queries per block when attention mass is recomputed
        from q and k (SDPA models); ``None`` picks a block of about 64 MiB.
    """

    sparsity: float | list[float] | None = None
    ignore: list[str] = Field(default_factory=lambda: ["re:.*lm_head"])
    sink_std: float = 2.0
    sink_alpha: float = 5.0
    sink_weighting: bool = True
    statistic: Statistic = "rms"
    attention_chunk_size: int | None = None

    _model: torch.nn.Module | None = PrivateAttr(default=None)
    _stats: dict[torch.nn.Module, torch.Tensor] = PrivateAttr(default_factory=dict)
    _num_samples: dict[torch.nn.Module, int] = PrivateAttr(default_factory=dict)
    _token_weights: dict[int, torch.Tensor | None] = PrivateAttr(default_factory=dict)
    _pending_attention_mask: torch.Tensor | None = PrivateAttr(default=None)
    _achieved_sparsity: dict[str, float] = PrivateAttr(default_factory=dict)

    # -- validation (fails at recipe load, naming the field) ------------------------
    @field_validator("sparsity", mode="after")
    @classmethod
    def _check_sparsity(cls, value):
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and not 0.0 <= float(v) < 1.0:
                raise ValueError(f"sparsity must be in [0, 1), got {v}; e.g. 0.5 prunes half the weights")
        return value

    @field_validator("mask_structure", mode="before")
    @classmethod
    def _check_mask_structure(cls, value):
        match = _MASK_STRUCTURE.match(str(value).strip())
        if not match:
            raise ValueError(f"mask_structure must look like 'N:M' (e.g. '2:4') or '0:0', got {value!r}")
        n, m = int(match[1]), int(match[2])
        if (n, m) != (0, 0) and not 0 < n < m:
            raise ValueError(
                f"mask_structure {value!r} is invalid: N of every M weights are pruned, so 0 < N < M "
                "(e.g. '2:4'); use '0:0' for unstructured sparsity"
            )
        return f"{n}:{m}"

    @field_validator("sink_alpha")
    @classmethod
    def _check_alpha(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"sink_alpha must be > 0 (slope of the sink sigmoid), got {value}")
        return value

    @field_validator("attention_chunk_size")
    @classmethod
    def _check_chunk(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"attention_chunk_size must be >= 1 or null, got {value}")
        return value

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
        self._model = state.model
        if self._input_embedding() is None:
            raise ValueError(
                f"{type(state.model).__name__} has no input embedding (get_input_embeddings() "
                "returned None); sink-aware pruning needs it to see each batch's token ids"
            )
        return True

    def on_calibration_start(self, state: State, event, **kwargs):
        super().on_calibration_start(state, event, **kwargs)  # Linear hooks
        self.register_hook(self._model, self._capture_attention_mask, "forward_pre", with_kwargs=True)
        self.register_hook(self._input_embedding(), self._start_batch, "forward_pre")

    def on_calibration_end(self, state: State, event, **kwargs):
        super().on_calibration_end(state, event, **kwargs)
        self._token_weights = dict()

    def on_finalize(self, state: State, **kwargs) -> bool:
        if not self.ended_:
            self.on_end(state, None)
        if self._num_samples:
            raise ValueError(f"Failed to compress {len(self._num_samples)} modules")
        self._token_weights = dict()
        self._stats = dict()
        self._module_names = dict()
        self._module_sparsities = dict()
        return True

    @property
    def achieved_sparsity(self) -> dict[str, float]:
        """Fraction of zeros in each pruned module's weight, by module name."""
        return dict(self._achieved_sparsity)

    # -- hooks -----------------------------------------------------------------------
    def _input_embedding(self) -> torch.nn.Module | None:
        getter = getattr(self._model, "get_input_embeddings", None)
        return getter() if callable(getter) else None

    def _capture_attention_mask(self, _module, _args, kwargs):
        # Fires only where the pipeline calls the whole model (basic); the sequential
        # pipeline calls traced subgraphs, and its rows are unpadded windows.
        self._pending_attention_mask = kwargs.get("attention_mask")

    def _start_batch(self, _module, args):
        batch_idx = active_session().state.current_batch_idx
        if batch_idx in self._token_weights:
            return
        input_ids = args[0]
        valid = self._pending_attention_mask
        self._pending_attention_mask = None
        if valid is not None and valid.shape != input_ids.shape:
            valid = None
        if valid is not None and bool(valid.all()):
            valid = None
        if self.sink_weighting:
            with HooksMixin.disable_hooks():
                mass = global_attention_mass(
                    self._model, input_ids, valid, chunk_size=self.attention_chunk_size
                )
            weights = token_weights(mass, self.sink_std, self.sink_alpha, valid)
        else:
            weights = None if valid is None else valid.float()
        self._token_weights[batch_idx] = weights

    def calibrate_module(self, module: torch.nn.Module, args, _output):
        inputs = args[0]
        batch_idx = active_session().state.current_batch_idx
        if batch_idx not in self._token_weights:
            raise RuntimeError(
                f"no sink weights for calibration batch {batch_idx} at {self._module_names[module]}: "
                "the model's input embedding did not run before this layer"
            )
        weights = self._token_weights[batch_idx]
        if weights is not None and inputs.shape[:-1] != weights.shape:
            if inputs.dim() == 2 and inputs.shape[0] == weights.numel():
                weights = weights.reshape(-1)  # token-flattened inputs
            else:
                raise ValueError(
                    f"{self._module_names[module]} receives inputs of shape {tuple(inputs.shape)}, "
                    f"which do not line up with the batch's tokens {tuple(weights.shape)}; "
                    "add it to `ignore`"
                )
        if inputs.dim() == 2 and weights is not None:
            inputs, weights = inputs.unsqueeze(0), weights.reshape(1, -1)
        self._stats[module], self._num_samples[module] = accumulate_statistic(
            self.statistic,
            self._stats.get(module),
            self._num_samples.get(module, 0),
            inputs.detach(),
            weights,
        )

    def compress_modules(self):
        for module in list(self._num_samples):
            name = self._module_names[module].rstrip(".")  # upstream names Linear targets "x.q_proj."
            scale = column_scale(self.statistic, self._stats.pop(module))
            num_samples = self._num_samples.pop(module)
            with torch.no_grad(), align_module_device(module):
                weight = module.weight.data
                mask = prune_mask(weight, scale, self._module_sparsities[module] or 0.0, self._prune_n, self._prune_m)
                pruned = weight.masked_fill(mask.to(weight.device), 0)
            update_offload_parameter(module, "weight", pruned)
            self._achieved_sparsity[name] = float((pruned == 0).float().mean())
            logger.info(
                f"Sink-aware Wanda: pruned {name} to {self._achieved_sparsity[name]:.2%} "
                f"({num_samples} samples, statistic={self.statistic}, sink_weighting={self.sink_weighting})"
            )
