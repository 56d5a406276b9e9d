"""LLaDA-style masked-diffusion model, written for tests.

Module names and state-dict keys follow the published LLaDA-8B remote code
(``model.transformer.{wte, blocks.i.{q_proj,k_proj,v_proj,attn_out,ff_proj,up_proj,ff_out,attn_norm,ff_norm}, ln_f,
ff_out}``). So do two habits of that code which break under transformers 5, kept here on purpose:

* ``LLaDAModelLM.__init__`` never calls ``self.post_init()``;
* ``LLaDAModelLM.forward`` falls back to ``self.config.use_cache``.

Attention is bidirectional and computed only with ``F.scaled_dot_product_attention``; the attention mask is accepted
and ignored, as in the published code.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_llada import LLaDAConfig


class RMSLayerNorm(nn.Module):
    def __init__(self, size: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class RotaryEmbedding(nn.Module):
    """Frequencies are computed on every call (nothing cached in buffers)."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q_len, k_len = q.shape[-2], k.shape[-2]
        exponents = torch.arange(0, self.head_dim, 2, device=q.device, dtype=torch.float) / self.head_dim
        inv_freq = 1.0 / self.theta**exponents
        freqs = torch.outer(torch.arange(k_len, device=q.device, dtype=torch.float), inv_freq)
        pos = torch.cat((freqs, freqs), dim=-1)
        sin, cos = pos.sin()[None, None], pos.cos()[None, None]
        q_ = self._apply(q.float(), sin[:, :, k_len - q_len : k_len], cos[:, :, k_len - q_len : k_len])
        k_ = self._apply(k.float(), sin, cos)
        return q_.type_as(q), k_.type_as(k)

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((-x2, x1), dim=-1)

    def _apply(self, t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
        return t * cos + self._rotate_half(t) * sin


class LLaDALlamaBlock(nn.Module):
    def __init__(self, layer_id: int, config: LLaDAConfig):
        super().__init__()
        self.layer_id = layer_id
        d = config.d_model
        self.n_heads = config.n_heads
        self.n_kv_heads = config.n_kv_heads or config.n_heads
        self.head_dim = d // self.n_heads
        hidden = config.mlp_hidden_size or config.mlp_ratio * d
        qkv_bias = config.include_bias or config.include_qkv_bias
        self.attn_norm = RMSLayerNorm(d, config.rms_norm_eps)
        self.ff_norm = RMSLayerNorm(d, config.rms_norm_eps)
        self.q_proj = nn.Linear(d, d, bias=qkv_bias)
        self.k_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(d, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.attn_out = nn.Linear(d, d, bias=config.include_bias)
        self.ff_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.up_proj = nn.Linear(d, hidden, bias=config.include_bias)
        self.ff_out = nn.Linear(hidden, d, bias=config.include_bias)
        self.act = nn.SiLU()
        self.rotary_emb = RotaryEmbedding(self.head_dim, config.rope_theta)

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        B, T, C = q.shape
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.rotary_emb(q, k)
        if self.n_kv_heads != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False)
        return self.attn_out(att.transpose(1, 2).contiguous().view(B, T, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn_norm(x)
        x = x + self.attention(self.q_proj(h), self.k_proj(h), self.v_proj(h))
        h = self.ff_norm(x)
        return x + self.ff_out(self.act(self.ff_proj(h)) * self.up_proj(h))


class LLaDAModel(nn.Module):
    def __init__(self, config: LLaDAConfig, init_params: bool = True):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.embedding_size or config.vocab_size, config.d_model),
                emb_drop=nn.Dropout(0.0),
                ln_f=RMSLayerNorm(config.d_model, config.rms_norm_eps),
            )
        )
        self.transformer.update({"blocks": nn.ModuleList(LLaDALlamaBlock(i, config) for i in range(config.n_layers))})
        if not config.weight_tying:
            self.transformer.update(
                {"ff_out": nn.Linear(config.d_model, config.embedding_size or config.vocab_size, bias=False)}
            )
        if init_params:
            self.reset_parameters()

    def reset_parameters(self):
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=std)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, input_ids: torch.LongTensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.transformer.emb_drop(self.transformer.wte(input_ids))
        for block in self.transformer.blocks:
            x = block(x)
        x = self.transformer.ln_f(x)
        if self.config.weight_tying:
            return F.linear(x, self.transformer.wte.weight)
        return self.transformer.ff_out(x)


class LLaDAModelLM(PreTrainedModel):
    config_class = LLaDAConfig
    base_model_prefix = "model"
    _no_split_modules = ["LLaDALlamaBlock"]

    def __init__(self, config: LLaDAConfig, model: Optional[LLaDAModel] = None, init_params: bool = False):
        super().__init__(config)
        # As in the published code: no self.post_init() here.
        self.model = model if model is not None else LLaDAModel(config, init_params=init_params)

    def forward(
        self,
        input_ids: torch.LongTensor = None,
        attention_mask: Optional[torch.Tensor] = None,
        use_cache: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        **kwargs,
    ):
        if use_cache is None:
            use_cache = self.config.use_cache
        if use_cache:
            raise NotImplementedError("this test model has no KV cache")
        return_dict = return_dict if return_dict is not None else self.config.use_return_dict
        logits = self.model(input_ids, attention_mask=attention_mask)
        if not return_dict:
            return (logits,)
        return CausalLMOutputWithPast(logits=logits)

    def get_input_embeddings(self) -> nn.Module:
        return self.model.transformer.wte

    def set_input_embeddings(self, value: nn.Module):
        self.model.transformer.wte = value

    def get_output_embeddings(self):
        return self.model.transformer.wte if self.config.weight_tying else self.model.transformer.ff_out

    def tie_weights(self):
        if self.config.weight_tying:
            self.model.transformer.ff_out = self.model.transformer.wte


AutoModel.register(LLaDAConfig, LLaDAModelLM)
