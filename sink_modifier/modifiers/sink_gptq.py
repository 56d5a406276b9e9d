"""``SinkAwareGPTQModifier``: GPTQ whose Hessians weight the calibration rows like our pruning statistics.

GPTQ's Hessian is a sum over calibration tokens, ``H = (2/N) Σ x xᵀ``. The sink weights
``1 − s``, the ELBO timestep weights ``1/t`` and the masked-position weights that the sink-aware
pruning modifiers apply to their statistics (:class:`~.sink_row_weighting.SinkRowWeighting`)
enter here the same way: each token's input row is scaled by its factor before llm-compressor's
own Hessian accumulation, so a down-weighted token counts less both in the column order and in
the error GPTQ compensates. Everything else (observers, activation ordering, the solver, the
saved format) is :class:`~.mask_preserving_gptq.MaskPreservingGPTQModifier`'s, i.e. upstream
GPTQ that keeps pruned zeros.

Every weighting is off by default (``sink_weighting: false``): the modifier is then
``MaskPreservingGPTQModifier``, and with ``preserve_sparsity_mask: false`` llm-compressor's
``GPTQModifier`` bit for bit (``tests/test_sink_gptq_modifier.py``).

```yaml
quantization_stage:
  quantization_modifiers:
    SinkAwareGPTQModifier:
      scheme: W4A16            # or config_groups, as for GPTQModifier
      ignore: ["re:.*lm_head"]
      sink_weighting: true     # the paper's idea, tried on quantization
      timestep_weighting: elbo # or uniform (default)
```
"""

from __future__ import annotations

import torch
from llmcompressor.core import Event, State

from sink_modifier.modifiers.mask_preserving_gptq import MaskPreservingGPTQModifier
from sink_modifier.modifiers.sink_row_weighting import SinkRowWeighting
from sink_modifier.modifiers.weighted_inputs import weighted_rows

__all__ = ["SinkAwareGPTQModifier"]


class SinkAwareGPTQModifier(SinkRowWeighting, MaskPreservingGPTQModifier):
    """GPTQ with row-weighted Hessians (sink, timestep, masked-position weights); see the module docstring.

    All ``GPTQModifier`` and ``MaskPreservingGPTQModifier`` fields apply; the weighting fields are
    :class:`~sink_modifier.modifiers.sink_row_weighting.SinkRowWeighting`'s, with ``sink_weighting``
    off by default here.
    """

    sink_weighting: bool = False

    def on_initialize(self, state: State, **kwargs) -> bool:
        super().on_initialize(state, **kwargs)
        self._initialize_row_weighting(state)
        return True

    def on_calibration_start(self, state: State, event: Event, **kwargs):
        super().on_calibration_start(state, event, **kwargs)  # observers and the Hessian hooks
        self._register_batch_hooks()

    def on_calibration_end(self, state: State, event: Event, **kwargs):
        super().on_calibration_end(state, event, **kwargs)
        self._end_row_weighting()

    def calibrate_module(self, module: torch.nn.Module, args: tuple[torch.Tensor, ...], _output: torch.Tensor):
        if not self._weights_rows():
            return super().calibrate_module(module, args, _output)
        inputs, weights = self.weights_for(module, args[0].detach())
        # float32 weighted rows, then upstream's accumulation (which works in float32 too)
        return super().calibrate_module(module, (weighted_rows(inputs, weights), *args[1:]), _output)
