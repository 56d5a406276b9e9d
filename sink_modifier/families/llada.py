"""LLaDA (GSAI-ML/LLaDA-8B-Base, -Instruct, LLaDA-1.5, LLaDA-MoE): remote code, bidirectional.

Published layout: ``model.transformer.blocks[i].{q_proj, k_proj, v_proj, attn_out, ff_proj,
up_proj, ff_out}``, attention through ``F.scaled_dot_product_attention`` (no probabilities
returned, so sinks are read by SDPA interception), mask token 126336, every position maskable.

What breaks under transformers 5, and the in-memory repair:

* ``config.use_cache`` is read in ``forward`` but transformers 5 drops generation keys from
  config kwargs, so a plain forward raises ``AttributeError`` → set ``use_cache=False`` on the
  loaded config (a DLM has no KV cache).
* the model class never calls ``post_init()``, so ``from_pretrained`` raises
  ``'LLaDAModelLM' object has no attribute 'all_tied_weights_keys'`` → the in-memory class
  gets a ``post_init()`` call at the end of ``__init__`` (:func:`ensure_post_init`).
* its ``tie_weights(self)`` override rejects the ``recompute_mapping=`` argument transformers 5
  passes → the override is wrapped to accept and ignore it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from sink_modifier.process.mask_token import resolve_mask_token_id

from .base import ModelFamily
from .remote_code import ensure_post_init, remote_class, require_trust, tolerate_tie_weights_arguments

__all__ = ["LLaDAFamily"]

LLADA_MASK_TOKEN_ID = 126336
LLADA_VOCAB_SIZE = 126464
AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModel")


class LLaDAFamily(ModelFamily):
    name = "llada"
    description = "LLaDA / LLaDA-1.5 / LLaDA-MoE (remote code, SDPA attention)"
    remote_code = True
    examples = ("GSAI-ML/LLaDA-8B-Base", "GSAI-ML/LLaDA-8B-Instruct", "GSAI-ML/LLaDA-1.5",
                "inclusionAI/LLaDA-MoE-7B-A1B-Base")

    def matches(self, config: dict[str, Any]) -> bool:
        model_type = str(config.get("model_type", "")).lower()
        architectures = config.get("architectures") or []
        return model_type.startswith("llada") or any(str(a).startswith("LLaDA") for a in architectures)

    def load_model(
        self, folder: Path, config: dict[str, Any], *, dtype, trust_remote_code: bool, quantization_config=None
    ) -> nn.Module:
        from transformers import AutoConfig

        require_trust(folder, config, trust_remote_code, "LLaDA")
        hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        if getattr(hf_config, "use_cache", None) is None:
            hf_config.use_cache = False
        # Load through the folder's own class, repaired in memory. Not through the auto class:
        # it maps the config class to whichever LLaDA class was registered first in this
        # process, which may be another folder's (unrepaired) copy of the same code.
        cls = remote_class(folder, config, AUTO_CLASSES)
        ensure_post_init(cls)
        tolerate_tie_weights_arguments(cls)
        # Saving copies the model code into the checkpoint, as the hub folder has it.
        cls.register_for_auto_class(next(a for a in AUTO_CLASSES if a in (config.get("auto_map") or {})))
        kwargs = {} if quantization_config is None else {"quantization_config": quantization_config}
        return cls.from_pretrained(folder, config=hf_config, dtype=dtype, **kwargs)

    def mask_token_id(self, tokenizer: Any, config: Any) -> int:
        try:
            return resolve_mask_token_id(tokenizer, config)
        except ValueError:
            # The published tokenizer names <|mdm_mask|> but does not declare it the mask token.
            if getattr(config, "vocab_size", None) == LLADA_VOCAB_SIZE:
                return LLADA_MASK_TOKEN_ID
            raise
