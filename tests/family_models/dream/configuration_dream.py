"""Dream-style configuration (Qwen2 field names), written for tests after the published Dream-v0 configuration."""

from transformers import PretrainedConfig
from transformers.modeling_rope_utils import rope_config_validation

# Dream-v0-Instruct-7B's values; the test checkpoints' config.json gives toy sizes.
DEFAULTS = dict(
    vocab_size=151936, hidden_size=4096, intermediate_size=22016, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=32768,
    hidden_act="silu", initializer_range=0.02, rms_norm_eps=1e-6, attention_dropout=0.0,
    rope_theta=10000.0, rope_scaling=None, use_cache=False,
)


class DreamConfig(PretrainedConfig):
    model_type = "Dream"
    keys_to_ignore_at_inference = ["past_key_values"]

    def __init__(self, tie_word_embeddings=False, mask_token_id=151666, pad_token_id=151643, **kwargs):
        for name, default in DEFAULTS.items():
            setattr(self, name, kwargs.pop(name, default))
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        # BC: a 'type' field becomes 'rope_type'.
        if self.rope_scaling is not None and "type" in self.rope_scaling:
            self.rope_scaling["rope_type"] = self.rope_scaling["type"]
        rope_config_validation(self)

        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
        self.mask_token_id = mask_token_id
        self.pad_token_id = pad_token_id
