"""DiffusionGemma (``DiffusionGemmaForBlockDiffusion``, native in transformers ≥ 5.12).

A causal prompt encoder plus a bidirectional canvas decoder that attends to the prompt's
keys and values and to the canvas; MoE experts; a vision tower. It loads with
``AutoModelForImageTextToText``; ``forward(input_ids=prompt, decoder_input_ids=canvas)``
returns logits over the canvas only. Calibration noises only the canvas (the prompt stays
clean, as at inference), and the vision tower, which sees no text, stays dense.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import ModelFamily

__all__ = ["DiffusionGemmaFamily"]


class DiffusionGemmaFamily(ModelFamily):
    name = "diffusion_gemma"
    description = "DiffusionGemma block diffusion (native transformers; prompt encoder + canvas decoder, MoE)"
    examples = ("google/diffusion-gemma",)

    def matches(self, config: dict[str, Any]) -> bool:
        architectures = config.get("architectures") or []
        return config.get("model_type") == "diffusion_gemma" or any(
            str(a).startswith("DiffusionGemma") for a in architectures
        )

    def load_model(self, folder: Path, *, dtype, trust_remote_code: bool, quantization_config=None) -> nn.Module:
        from transformers import AutoModelForImageTextToText

        kwargs = {} if quantization_config is None else {"quantization_config": quantization_config}
        return AutoModelForImageTextToText.from_pretrained(
            folder, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
        )

    def mask_token_id(self, tokenizer: Any, config: Any) -> int:
        from sink_modifier.diffusion.mask_token import resolve_mask_token_id

        text_config = getattr(config, "text_config", None)
        try:
            return resolve_mask_token_id(tokenizer, config)
        except ValueError:
            return resolve_mask_token_id(None, text_config)

    def pruning_ignore(self, model: nn.Module) -> list[str]:
        # The vision tower and its projector never see text calibration: their inputs would
        # be empty, so they stay dense.
        return ["re:.*vision_tower.*", "re:.*embed_vision.*"]

    def logits(self, model: nn.Module, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return model(**self.model_inputs(input_ids, attention_mask)).logits
