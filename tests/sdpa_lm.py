"""A tiny LLaDA-shaped masked-diffusion LM whose attention calls SDPA itself.

Like the published LLaDA / Dream code it never returns attention probabilities, so sink
detection must recompute them from q and k. Module names follow LLaDA:
``model.transformer.blocks[i].{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out}``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class SdpaLMConfig(PretrainedConfig):
    model_type = "sdpa_lm_test"
    DEFAULTS = dict(vocab_size=64, d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64,
                    max_sequence_length=64, mask_token_id=3)

    def __init__(self, **kwargs):
        for name, default in self.DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))
        super().__init__(**kwargs)


def _rotate(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class SdpaBlock(nn.Module):
    def __init__(self, cfg: SdpaLMConfig):
        super().__init__()
        self.n_heads, self.n_kv = cfg.n_heads, cfg.n_kv_heads
        self.head_dim = cfg.d_model // cfg.n_heads
        self.attn_norm = nn.RMSNorm(cfg.d_model)
        self.ff_norm = nn.RMSNorm(cfg.d_model)
        self.q_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, self.n_kv * self.head_dim, bias=False)
        self.attn_out = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.ff_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.mlp_hidden_size, bias=False)
        self.ff_out = nn.Linear(cfg.mlp_hidden_size, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q_proj(h).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q, k = q * cos + _rotate(q) * sin, k * cos + _rotate(k) * sin
        k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False)
        x = x + self.attn_out(att.transpose(1, 2).reshape(b, t, -1))
        h = self.ff_norm(x)
        return x + self.ff_out(F.silu(self.ff_proj(h)) * self.up_proj(h))


class SdpaLMModel(nn.Module):
    def __init__(self, cfg: SdpaLMConfig):
        super().__init__()
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(cfg.vocab_size, cfg.d_model),
                blocks=nn.ModuleList(SdpaBlock(cfg) for _ in range(cfg.n_layers)),
                ln_f=nn.RMSNorm(cfg.d_model),
                ff_out=nn.Linear(cfg.d_model, cfg.vocab_size, bias=False),
            )
        )
        self.head_dim = cfg.d_model // cfg.n_heads

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.transformer.wte(input_ids)
        # Rotary frequencies are computed here, not kept in a non-persistent buffer:
        # from_pretrained leaves such buffers uninitialised in transformers 5 (the Dream bug).
        inv_freq = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2, device=input_ids.device).float() / self.head_dim))
        pos = torch.arange(input_ids.shape[1], device=input_ids.device).float()
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos()[None, None], emb.sin()[None, None]
        for block in self.transformer.blocks:
            x = block(x, cos, sin)
        return self.transformer.ff_out(self.transformer.ln_f(x))


class SdpaLMForMaskedDiffusion(PreTrainedModel):
    config_class = SdpaLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["SdpaBlock"]

    def __init__(self, config: SdpaLMConfig):
        super().__init__(config)
        self.model = SdpaLMModel(config)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=1.0 / math.sqrt(module.weight.shape[-1]))

    def get_input_embeddings(self):
        return self.model.transformer.wte

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_):
        return MaskedLMOutput(logits=self.model(input_ids))
