"""``SinkAwareWandaPruningModifier``: Wanda whose activation statistic down-weights attention sinks.

The sink-mask lifecycle is shared with the other sink-aware modifiers
(:mod:`sink_modifier.modifiers.sink_base`); the maths is in
:mod:`sink_modifier.modifiers.wanda_scoring`.
"""

from __future__ import annotations

import torch
from compressed_tensors.utils import align_module_device, update_offload_parameter
from loguru import logger
from pydantic import PrivateAttr

from llmcompressor.core import State

from sink_modifier.modifiers.sink_base import SinkAwareSparsityBase
from sink_modifier.modifiers.wanda_scoring import (
    Statistic,
    accumulate_statistic,
    column_scale,
    prune_mask,
)

__all__ = ["SinkAwareWandaPruningModifier"]


class SinkAwareWandaPruningModifier(SinkAwareSparsityBase):
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

    Every output row keeps exactly ``d_in - int(d_in * sparsity)`` weights (or N:M per row).
    See :class:`SinkAwareSparsityBase` for the shared sink settings.

    :param statistic: ``rms`` (llm-compressor's Wanda statistic on weighted inputs) or
        ``sum_of_norms`` (the paper code's sum of per-sample L2 norms).
    """

    statistic: Statistic = "rms"

    _stats: dict[torch.nn.Module, torch.Tensor] = PrivateAttr(default_factory=dict)
    _num_samples: dict[torch.nn.Module, int] = PrivateAttr(default_factory=dict)

    def calibrate_module(self, module: torch.nn.Module, args, _output):
        inputs, weights = self.weights_for(module, args[0].detach())
        self._stats[module], self._num_samples[module] = accumulate_statistic(
            self.statistic, self._stats.get(module), self._num_samples.get(module, 0), inputs, weights
        )

    def compress_modules(self):
        for module in list(self._num_samples):
            scale = column_scale(self.statistic, self._stats.pop(module))
            num_samples = self._num_samples.pop(module)
            with torch.no_grad(), align_module_device(module):
                weight = module.weight.data
                sparsity = self._module_sparsities[module] or 0.0
                mask = prune_mask(weight, scale, sparsity, self._prune_n, self._prune_m)
                pruned = weight.masked_fill(mask.to(weight.device), 0)
            update_offload_parameter(module, "weight", pruned)
            name = self._record_sparsity(module, pruned)
            logger.info(
                f"Sink-aware Wanda: pruned {name} to {self._achieved_sparsity[name]:.2%} "
                f"({num_samples} samples, statistic={self.statistic}, sink_weighting={self.sink_weighting})"
            )

    def on_finalize(self, state: State, **kwargs) -> bool:
        self._finalize_checks(state, self._num_samples)
        self._stats = dict()
        return True
