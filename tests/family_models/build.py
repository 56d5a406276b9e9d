"""Write tiny LLaDA-style and Dream-style checkpoint folders, laid out as their hub repositories are.

Each folder holds ``config.json`` (with ``auto_map`` pointing at the copied ``configuration_*.py`` and
``modeling_*.py``), ``model.safetensors`` and the 64-word test tokenizer. The model classes cannot be used to write
these folders under transformers 5 (that is the point of them), and importing them would register their config
classes with ``AutoConfig`` for the whole process, so the weights are generated here from the published key names and
shapes, and the config is written as JSON.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent

HIDDEN = 32
LAYERS = 2
HEADS = 4
INTERMEDIATE = 64
MAX_POSITIONS = 64


def _tokenizer_and_ids():
    from tests.conftest import MASK_ID, VOCAB, word_tokenizer

    return word_tokenizer(), VOCAB, MASK_ID


def _weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Seeded weights at scales that give peaked (not uniform) attention in a 32-wide model.

    Norm weights are ones with one channel at 4 (a large-scale entry), biases small, embeddings unit-variance,
    q/k large enough that attention logits are O(1), the rest near 1/sqrt(fan_in).
    """
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        leaf = name.rsplit(".", 2)[-2] if name.count(".") else name
        if "norm" in leaf or leaf == "ln_f":
            t = torch.ones(shape)
            t[3] = 4.0
        elif name.endswith(".bias"):
            t = 0.1 * torch.randn(shape, generator=g)
        elif leaf in ("wte", "embed_tokens"):
            t = torch.randn(shape, generator=g)
        elif leaf in ("q_proj", "k_proj"):
            t = 0.35 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / shape[-1] ** 0.5
        out[name] = t.contiguous()
    return out


def _write(path: Path, config: dict, shapes: dict, seed: int, sources: list[Path]) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for source in sources:
        shutil.copy(source, path / source.name)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    save_file(_weights(shapes, seed), str(path / "model.safetensors"), metadata={"format": "pt"})
    tokenizer, _, _ = _tokenizer_and_ids()
    tokenizer.save_pretrained(path)
    return path


def _blocks(prefix: str, block: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """One block's parameter shapes, for every block ``{prefix}{i}.`` in order."""
    return {f"{prefix}{i}.{name}": shape for i in range(LAYERS) for name, shape in block.items()}


def build_llada_checkpoint(path, seed: int = 0) -> Path:
    """A LLaDA-8B-shaped folder at toy size (MHA, untied ``model.transformer.ff_out`` head), for trust_remote_code."""
    _, vocab, mask_id = _tokenizer_and_ids()
    config = dict(
        architectures=["LLaDAModelLM"],
        auto_map={"AutoConfig": "configuration_llada.LLaDAConfig", "AutoModel": "modeling_llada.LLaDAModelLM",
                  "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM"},
        model_type="llada", d_model=HIDDEN, n_heads=HEADS, n_kv_heads=HEADS, n_layers=LAYERS,
        mlp_hidden_size=INTERMEDIATE, mlp_ratio=INTERMEDIATE // HIDDEN, vocab_size=vocab, embedding_size=vocab,
        max_sequence_length=MAX_POSITIONS, rope=True, rope_theta=10000.0, rms_norm_eps=1e-5,
        include_bias=False, include_qkv_bias=False, weight_tying=False, block_type="llama",
        activation_type="silu", layer_norm_type="rms", block_group_size=1, init_std=0.02,
        mask_token_id=mask_id, pad_token_id=0, eos_token_id=1, use_cache=False, torch_dtype="float32",
    )
    square, up, down = (HIDDEN, HIDDEN), (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)
    shapes = {
        "model.transformer.wte.weight": (vocab, HIDDEN),
        **_blocks("model.transformer.blocks.", {
            "attn_norm.weight": (HIDDEN,), "ff_norm.weight": (HIDDEN,),
            "q_proj.weight": square, "k_proj.weight": square, "v_proj.weight": square, "attn_out.weight": square,
            "ff_proj.weight": up, "up_proj.weight": up, "ff_out.weight": down,
        }),
        "model.transformer.ln_f.weight": (HIDDEN,),
        "model.transformer.ff_out.weight": (vocab, HIDDEN),
    }
    sources = [HERE / "llada" / "configuration_llada.py", HERE / "llada" / "modeling_llada.py"]
    return _write(path, config, shapes, seed, sources)


def build_dream_checkpoint(path, seed: int = 0) -> Path:
    """A Dream-v0-shaped folder at toy size (Qwen2 names, GQA 4/2, biased q/k/v, untied lm_head)."""
    _, vocab, mask_id = _tokenizer_and_ids()
    kv_heads = 2
    kv = kv_heads * HIDDEN // HEADS
    config = dict(
        architectures=["DreamModel"],
        auto_map={"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        model_type="Dream", vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=kv_heads, hidden_act="silu",
        max_position_embeddings=MAX_POSITIONS, initializer_range=0.02, rms_norm_eps=1e-6, rope_theta=10000.0,
        rope_scaling=None, attention_dropout=0.0, tie_word_embeddings=False, use_cache=False,
        mask_token_id=mask_id, pad_token_id=0, eos_token_id=1, bos_token_id=None, torch_dtype="float32",
    )
    up, down = (INTERMEDIATE, HIDDEN), (HIDDEN, INTERMEDIATE)
    shapes = {
        "model.embed_tokens.weight": (vocab, HIDDEN),
        **_blocks("model.layers.", {
            "input_layernorm.weight": (HIDDEN,), "post_attention_layernorm.weight": (HIDDEN,),
            "self_attn.q_proj.weight": (HIDDEN, HIDDEN), "self_attn.q_proj.bias": (HIDDEN,),
            "self_attn.k_proj.weight": (kv, HIDDEN), "self_attn.k_proj.bias": (kv,),
            "self_attn.v_proj.weight": (kv, HIDDEN), "self_attn.v_proj.bias": (kv,),
            "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            "mlp.gate_proj.weight": up, "mlp.up_proj.weight": up, "mlp.down_proj.weight": down,
        }),
        "model.norm.weight": (HIDDEN,),
        "lm_head.weight": (vocab, HIDDEN),
    }
    sources = [HERE / "dream" / "configuration_dream.py", HERE / "dream" / "modeling_dream.py"]
    return _write(path, config, shapes, seed, sources)
