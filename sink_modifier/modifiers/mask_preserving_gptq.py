"""``MaskPreservingGPTQModifier``: llm-compressor's GPTQ that leaves pruned weights at zero.

llm-compressor 0.14's ``GPTQModifier`` writes error compensation into pruned positions
and refills them (verified: after 2:4 pruning, W4A16 and W8A8 GPTQ leave a few percent of
the pruned zeros non-zero and the 2:4 pattern is gone). RTN ``QuantizationModifier``
schemes keep zeros but lose GPTQ's accuracy, which matters most at 4 bits. This subclass
changes only the quantization step: every weight that is exactly 0 when GPTQ quantizes
its layer is stored as exactly 0, enforced inside GPTQ's column loop so that the error
compensation ends up in the surviving weights
(:mod:`sink_modifier.modifiers.masked_gptq_quantize` has the maths and why re-zeroing
afterwards is not the same). Calibration, observers, activation ordering, batching,
distributed handling and the saved format are upstream's.

```yaml
quantization_stage:
  quantization_modifiers:
    MaskPreservingGPTQModifier:
      preserve_sparsity_mask: true
      mask_compensation: redistribute   # or skip
      ignore: ["lm_head"]
      scheme: W4A16            # or config_groups, exactly as for GPTQModifier
```
"""

from __future__ import annotations

import contextlib

import torch
from compressed_tensors.offload import disable_offloading
from compressed_tensors.utils import getattr_chain
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from llmcompressor.modifiers.gptq.helpers import assign_batches, prepare_batch, update_batch_qparams
from llmcompressor.utils.metric_logging import CompressionLogger
from loguru import logger
from pydantic import ValidationInfo, field_validator

from sink_modifier.modifiers.finite_fields import check_finite
from sink_modifier.modifiers.masked_gptq_quantize import Compensation, masked_quantize_weight

__all__ = ["MaskPreservingGPTQModifier"]


class MaskPreservingGPTQModifier(GPTQModifier):
    """GPTQ (arXiv 2210.17323) that keeps the sparsity mask of an already pruned model.

    Put it after a pruning modifier (same or later stage): llm-compressor runs all stages'
    modifiers in one list, in recipe order, so with the sequential pipeline each layer is
    pruned and then quantized at the end of its calibration epoch. The order matters and
    nothing checks it: with the quantization stage first, the layer is quantized dense and
    the pruning then zeroes quantized weights (writing recipes with
    ``yaml.safe_dump`` sorts ``quantization_stage`` before ``sparsity_stage``; pass
    ``sort_keys=False``). All ``GPTQModifier`` fields apply (``scheme``/``config_groups``, ``targets``,
    ``ignore``, ``block_size``, ``dampening_frac``, ``actorder``, ...).

    :param preserve_sparsity_mask: true stores every weight that is exactly zero before
        quantization as exactly zero; false is plain upstream GPTQ (which refills them). The quantization scheme must map 0 to 0
        (all symmetric schemes; asymmetric int schemes with their integer zero point do
        too); otherwise quantization fails with ``SparsityMaskNotRepresentableError``.
    :param mask_compensation: ``redistribute`` (default): pruned weights take their share of
        the compensation while columns to their left are quantized, are set to 0 when their
        own column is reached, and what they held is propagated to the weights to their
        right (SparseGPT's treatment of pruned weights; nothing is discarded; "left/right"
        is GPTQ's column order, i.e. after activation ordering). ``skip``:
        compensation is never written into pruned positions (llm-compressor's former
        ``preserve_sparsity_mask``); that share is dropped, which measured worse.
    """

    preserve_sparsity_mask: bool = True
    mask_compensation: Compensation = "redistribute"

    @field_validator("*", mode="after")
    @classmethod
    def _check_finite(cls, value, info: ValidationInfo):
        return check_finite(info.field_name, value)  # dampening_frac, ...: NaN / inf refused at load

    def compress_module_list(self, module_list):
        if not self.preserve_sparsity_mask:
            return super().compress_module_list(module_list)

        # Upstream's GPTQModifier.compress_module_list with the quantize call swapped.
        for batch in assign_batches(module_list, self.batched_quantization, self.block_size):
            quant_args = getattr_chain(batch[0], "quantization_scheme.weights")
            batch_qparams = [module.weight_observer.get_qparams() for module in batch]
            names = [self._module_names[module] for module in batch]
            logger.debug(f"Quantizing {len(batch)} module(s) with mask-preserving GPTQ: {names}")

            with torch.no_grad(), disable_offloading(), contextlib.ExitStack() as ctx_stack:
                weights, hessians, scales, zero_points, global_scales = prepare_batch(
                    batch, batch_qparams, self._hessians, self._num_samples
                )
                pruned = weights == 0
                comp_loggers = [ctx_stack.enter_context(CompressionLogger(module)) for module in batch]
                common = dict(
                    weights=weights,
                    hessians=hessians,
                    scale=scales,
                    zero_point=zero_points,
                    global_scale=global_scales,
                    quant_args=quant_args,
                    blocksize=self.block_size,
                    percdamp=self.dampening_frac,
                )
                if bool(pruned.any()):
                    quantized, losses, used_rtn_fallback = masked_quantize_weight(
                        **common, pruned=pruned, compensation=self.mask_compensation
                    )
                else:  # nothing to preserve: upstream (and its fused kernel where available)
                    quantized, losses, used_rtn_fallback = quantize_weight(**common)
                for index, comp_logger in enumerate(comp_loggers):
                    comp_logger.set_results(name="GPTQ", loss=losses[index].item())
                    if used_rtn_fallback[index].item():
                        self._rtn_fallback_module_names.append(names[index])
                    logger.debug(
                        f"{names[index]}: kept {int(pruned[index].sum())} pruned weights at zero"
                    )

                ctx_stack.close()
                update_batch_qparams(batch, quantized, scales, zero_points, global_scales, quant_args)
                self._num_compressed_modules += len(batch)
