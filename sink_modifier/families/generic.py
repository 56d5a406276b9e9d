"""The generic paths: any bidirectional Hugging Face LM, and autoregressive LMs for comparison.

A bidirectional model is recognised by ``is_causal: false`` in its config (how a Llama,
Qwen2 or Mistral checkpoint trained as a masked-diffusion LM says so under transformers 5);
it is calibrated on noised rows and scored by the NELBO. Everything else that
``AutoModelForCausalLM`` loads is treated as autoregressive: clean calibration rows, sinks
measured on clean text, perplexity.
"""

from __future__ import annotations

from typing import Any

from .base import ModelFamily

__all__ = ["BidirectionalFamily", "CausalFamily"]


class BidirectionalFamily(ModelFamily):
    name = "bidirectional"
    description = "any Hugging Face LM with is_causal: false (masked diffusion)"
    examples = ("../shared/models/tiny-dlm",)

    def matches(self, config: dict[str, Any]) -> bool:
        return config.get("is_causal") is False


class CausalFamily(ModelFamily):
    name = "causal"
    description = "autoregressive LMs (Llama, Qwen2, ...): clean calibration, perplexity"
    diffusion = False
    logit_shift = 1
    objective = "perplexity"
    examples = ("meta-llama/Llama-3.2-1B", "Qwen/Qwen2.5-0.5B")

    def matches(self, config: dict[str, Any]) -> bool:
        return True  # the fallback: anything AutoModelForCausalLM loads
