"""Dream (Dream-org/Dream-v0-Base-7B, -Instruct): remote code, Qwen2 layout, shifted logits.

Published layout: Qwen2 names (``model.layers[i].self_attn.{q,k,v,o}_proj`` with q/k/v bias,
GQA; ``mlp.{gate,up,down}_proj``), attention through ``F.scaled_dot_product_attention``,
mask token 151666, pad = EOS 151643. Dream was adapted from an AR model and keeps its
next-token head: position ``i``'s logits predict token ``i + 1`` (``logit_shift = 1``). A
window's first/last token is kept unmasked only when it really is BOS/EOS.

What breaks under transformers 5, and the in-memory repair:

* the rotary embedding looks up ``ROPE_INIT_FUNCTIONS["default"]``, which transformers 5
  dropped → construction raises ``KeyError: 'default'``; we register the standard RoPE
  frequencies under that key.
* after ``from_pretrained`` the non-persistent rotary ``inv_freq`` buffers hold uninitialised
  memory (outputs change run to run) → call the model's ``reset_rope_parameters()``.
* ``save_pretrained`` fails on the old list-form ``_tied_weights_keys`` → converted to the
  transformers 5 mapping before saving.
* a 2-D integer ``attention_mask`` reaches SDPA and raises a dtype error → masks are given
  as 4-D booleans (or dropped when nothing is padded), also for direct ``model(...)`` calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import ModelFamily
from .remote_code import remote_class, require_trust
from .rotary import register_default_rope, reset_rotary_buffers

__all__ = ["DreamFamily", "boolean_attention_mask"]

AUTO_CLASSES = ("AutoModel", "AutoModelForCausalLM")


def boolean_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[B, T]`` 0/1 padding mask → ``[B, 1, T, T]`` bool (True = may attend) for bidirectional SDPA."""
    keep = attention_mask.bool()
    return keep[:, None, None, :].expand(-1, 1, keep.shape[1], -1)


def _fix_attention_mask(_module, args, kwargs):
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:
        kwargs["attention_mask"] = None if bool(mask.all()) else boolean_attention_mask(mask)
        return args, kwargs
    return None


class DreamFamily(ModelFamily):
    name = "dream"
    description = "Dream 7B (remote code, Qwen2 layout, logits shifted by one)"
    logit_shift = 1
    remote_code = True
    examples = ("Dream-org/Dream-v0-Base-7B", "Dream-org/Dream-v0-Instruct-7B")

    def matches(self, config: dict[str, Any]) -> bool:
        architectures = config.get("architectures") or []
        return str(config.get("model_type", "")).lower() == "dream" or any(
            str(a).startswith("Dream") for a in architectures
        )

    def load_model(
        self, folder: Path, config: dict[str, Any], *, dtype, trust_remote_code: bool, quantization_config=None
    ) -> nn.Module:
        from transformers import AutoModel

        require_trust(folder, config, trust_remote_code, "Dream")
        register_default_rope()
        cls = remote_class(folder, config, AUTO_CLASSES)
        _tied_keys_as_mapping(cls)
        kwargs = {} if quantization_config is None else {"quantization_config": quantization_config}
        model = AutoModel.from_pretrained(folder, dtype=dtype, trust_remote_code=True, **kwargs)
        reset_rotary_buffers(model)
        model.register_forward_pre_hook(_fix_attention_mask, with_kwargs=True)
        return model

    def prepare_for_save(self, model: nn.Module) -> None:
        _tied_keys_as_mapping(type(model))

    def maskable(self, clean_ids: torch.LongTensor, tokenizer: Any, config: Any) -> torch.BoolTensor:
        maskable = torch.ones_like(clean_ids, dtype=torch.bool)
        bos = getattr(tokenizer, "bos_token_id", None) or getattr(config, "bos_token_id", None)
        eos = getattr(tokenizer, "eos_token_id", None) or getattr(config, "eos_token_id", None)
        if bos is not None:
            maskable[:, 0] &= clean_ids[:, 0] != bos
        if eos is not None:
            maskable[:, -1] &= clean_ids[:, -1] != eos
        return maskable

    def calibration_loader(self, calibration, batch_size: int):
        # Calibration rows are full windows; the traced sequential pipeline would hand a
        # 2-D integer mask straight to Dream's SDPA call, so none is passed.
        return calibration.dataloader(batch_size, columns=("input_ids",))

    def model_inputs(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> dict:
        inputs = {"input_ids": input_ids}
        if attention_mask is not None and not bool(attention_mask.all()):
            inputs["attention_mask"] = boolean_attention_mask(attention_mask)
        return inputs


def _tied_keys_as_mapping(cls: type) -> None:
    """transformers 5 reads ``_tied_weights_keys`` as ``{target: source}``; Dream has a list."""
    keys = getattr(cls, "_tied_weights_keys", None)
    if isinstance(keys, (list, tuple)):
        # Dream unties its head (tie_word_embeddings false in the published config); the list
        # only named lm_head as tie-able, so the mapping ties it to the input embedding.
        cls._tied_weights_keys = {key: "model.embed_tokens.weight" for key in keys}
