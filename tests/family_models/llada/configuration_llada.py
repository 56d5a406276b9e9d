"""LLaDA-style configuration, written for tests (OLMo-style field names, as LLaDA-8B's config.json has).

Like the published configuration, ``use_cache`` reaches ``PretrainedConfig.__init__`` through ``**kwargs``;
transformers 5 pops generation keys from those kwargs, so the attribute is never set.
"""

from transformers import AutoConfig, PretrainedConfig

DEFAULTS = dict(
    d_model=768, n_heads=12, n_kv_heads=None, n_layers=12, mlp_hidden_size=None, mlp_ratio=4,
    vocab_size=50257, embedding_size=50304, max_sequence_length=1024,
    rope=True, rope_theta=10000.0, rms_norm_eps=1e-5, include_bias=False, include_qkv_bias=False,
    weight_tying=False, block_type="llama", activation_type="silu", layer_norm_type="rms",
    block_group_size=1, init_std=0.02, mask_token_id=50256, pad_token_id=1, eos_token_id=50256,
)


class LLaDAConfig(PretrainedConfig):
    model_type = "llada"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, use_cache: bool = False, **kwargs):
        all_kwargs = dict(DEFAULTS)
        all_kwargs.update(kwargs)
        all_kwargs.update({"use_cache": use_cache})
        all_kwargs.update({"architectures": all_kwargs.get("architectures", ["LLaDAModelLM"])})
        super().__init__(**all_kwargs)

    @property
    def num_attention_heads(self):
        return self.n_heads

    @property
    def num_hidden_layers(self):
        return self.n_layers

    @property
    def hidden_size(self):
        return self.d_model


AutoConfig.register("llada", LLaDAConfig)
