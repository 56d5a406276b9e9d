"""A tiny DiffusionGemma (transformers' ``DiffusionGemmaForBlockDiffusion``) for offline tests.

DiffusionGemma is a block-diffusion model: a causal text encoder (plus a Gemma 4 vision
tower) reads the prompt ``input_ids`` into a KV cache, and a bidirectional decoder denoises a
canvas ``decoder_input_ids`` (``canvas_length`` tokens) attending over that cache and itself.
The encoder's text layers and the decoder's layers *share* their weights (tied), experts are
3-D ``nn.Parameter`` tensors (``gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``), and
logits cover the canvas only. Noise is uniform over the vocabulary (random tokens), not a
mask token; the config has no ``mask_token_id``.

The tiny checkpoint uses the 64-token word tokenizer of ``tests/conftest.py`` (pad 0, eos 1,
mask 2, unk 3) and is saved with it, so ``AutoModelForImageTextToText.from_pretrained`` and
``AutoTokenizer.from_pretrained`` both load it offline.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion

__all__ = [
    "CANVAS_LENGTH",
    "build_diffusion_gemma_checkpoint",
    "tiny_diffusion_gemma_config",
    "tiny_diffusion_gemma_model",
]

VOCAB = 64
PAD_ID, EOS_ID, MASK_ID, UNK_ID = 0, 1, 2, 3
CANVAS_LENGTH = 8
# Image marker ids: the real ones (255999, 258880, 258882) lie outside a 64-token vocabulary.
# Here they are the top three word ids, so calibration rows should draw tokens below VOCAB - 3
# if an image placeholder must never appear (text-only forwards do not care).
BOI_ID, IMAGE_ID, EOI_ID = VOCAB - 3, VOCAB - 2, VOCAB - 1


def tiny_diffusion_gemma_config(**overrides) -> DiffusionGemmaConfig:
    """A DiffusionGemma config of ~100k parameters: hidden 32, 2 layers, 4 experts (top-2), a 1-layer vision tower.

    ``overrides`` go to the top-level config; ``text_config`` / ``vision_config`` given as
    dicts are merged into the tiny defaults.
    """
    text = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        layer_types=["sliding_attention", "full_attention"], sliding_window=16, max_position_embeddings=128,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=16, num_global_key_value_heads=1,
        num_experts=4, top_k_experts=2, moe_intermediate_size=16,
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, bos_token_id=None,
        use_bidirectional_attention=None,  # encoder causal over the prompt; the decoder is always bidirectional
    )
    text.update(overrides.pop("text_config", {}) or {})
    vision = dict(
        model_type="gemma4_vision", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=2, head_dim=8,
        patch_size=4, pooling_kernel_size=2, position_embedding_size=64, max_position_embeddings=64,
    )
    vision.update(overrides.pop("vision_config", {}) or {})
    values = dict(
        text_config=text, vision_config=vision, canvas_length=CANVAS_LENGTH,
        boi_token_id=BOI_ID, eoi_token_id=EOI_ID, image_token_id=IMAGE_ID,
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, mask_token_id=MASK_ID,
    )
    values.update(overrides)
    return DiffusionGemmaConfig(**values)


def tiny_diffusion_gemma_model(seed: int = 0, **overrides) -> DiffusionGemmaForBlockDiffusion:
    torch.manual_seed(seed)
    return DiffusionGemmaForBlockDiffusion(tiny_diffusion_gemma_config(**overrides)).eval()


def build_diffusion_gemma_checkpoint(path: str | Path, seed: int = 0, **overrides) -> Path:
    """Save a seeded tiny DiffusionGemma plus the 64-token word tokenizer under ``path``."""
    from tests.conftest import word_tokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tiny_diffusion_gemma_model(seed, **overrides).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path
