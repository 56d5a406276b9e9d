"""Shared fixtures: tiny models built from configs, saved where oneshot can reload them."""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from tests.sdpa_lm import SdpaLMConfig, SdpaLMForMaskedDiffusion

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY_DLM = SHARED / "models" / "tiny-dlm"
TINY_AR = SHARED / "models" / "tiny-ar"
CORPUS = SHARED / "data" / "corpus.txt.gz"
HELDOUT = SHARED / "data" / "heldout.txt.gz"

VOCAB = 64
MASK_ID = 2

AutoConfig.register(SdpaLMConfig.model_type, SdpaLMConfig, exist_ok=True)
AutoModelForCausalLM.register(SdpaLMConfig, SdpaLMForMaskedDiffusion, exist_ok=True)


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A 64-token word-level tokenizer with pad/eos/mask, built in memory."""
    vocab = {"<|pad|>": 0, "<|eos|>": 1, "<|mask|>": MASK_ID, "<|unk|>": 3}
    vocab.update({f"w{i}": i for i in range(4, VOCAB)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|unk|>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<|pad|>",
        eos_token="<|eos|>",
        mask_token="<|mask|>",
        unk_token="<|unk|>",
        model_max_length=64,
    )


def tiny_llama_config(**overrides) -> LlamaConfig:
    values = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        is_causal=False,
        mask_token_id=MASK_ID,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    values.update(overrides)
    return LlamaConfig(**values)


def _save(model, path: Path) -> Path:
    model.save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random bidirectional Llama (is_causal=False in config.json), with tokenizer."""
    torch.manual_seed(0)
    return _save(LlamaForCausalLM(tiny_llama_config()), tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def sdpa_lm_dir(tmp_path_factory) -> Path:
    """A random LLaDA-shaped model whose attention only calls SDPA."""
    torch.manual_seed(0)
    model = SdpaLMForMaskedDiffusion(SdpaLMConfig(vocab_size=VOCAB, mask_token_id=MASK_ID))
    return _save(model, tmp_path_factory.mktemp("sdpa_lm"))


@pytest.fixture(scope="session")
def text_file(tmp_path_factory) -> Path:
    """60 blank-line-separated documents of random words over the test vocabulary."""
    rng = random.Random(0)
    docs = [" ".join(f"w{rng.randrange(4, VOCAB)}" for _ in range(rng.randrange(20, 80))) for _ in range(60)]
    path = tmp_path_factory.mktemp("data") / "docs.txt"
    path.write_text("\n\n".join(docs) + "\n")
    return path


def noised_rows(num_rows: int, seq_len: int, seed: int = 0, mask_rate: float = 0.4) -> torch.Tensor:
    """Random token rows with a share of mask tokens, like noised calibration rows."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (num_rows, seq_len), generator=g)
    ids[torch.rand(num_rows, seq_len, generator=g) < mask_rate] = MASK_ID
    return ids


def rows_loader(ids: torch.Tensor, batch_size: int = 1) -> torch.utils.data.DataLoader:
    rows = [{"input_ids": r, "attention_mask": torch.ones_like(r)} for r in ids]
    return torch.utils.data.DataLoader(
        rows,
        batch_size=batch_size,
        collate_fn=lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]},
    )


# Modules whose tests run the product end to end (oneshot, the CLI, subprocesses, exports, lm-eval):
# marked `slow`, so `python -m pytest -m "not slow"` is a contributor's fast loop over the pure maths
# and rules (about a tenth of the suite's time). CI runs everything.
SLOW_MODULES = {
    "test_calibration_weighting", "test_cli", "test_coverage", "test_diffusion_gemma_model", "test_distributed",
    "test_fail_early", "test_family_rules", "test_generation", "test_lm_eval_adapter", "test_model_families",
    "test_offloaded_calibration", "test_onnx_eval", "test_onnx_export", "test_onnx_int8", "test_output_safety",
    "test_owl", "test_quantization_recipes", "test_recipe_calibration", "test_scriptable_output",
    "test_sink_gptq_modifier", "test_sink_sparsegpt_modifier", "test_sink_stability", "test_sink_wanda_modifier",
    "test_sweep", "test_upstream_scenarios", "test_verify", "test_vllm_layout",
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__.rpartition(".")[2] in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


BENCHMARKS = REPO / "benchmarks"


def load_benchmark(name: str):
    """A script of ``benchmarks/`` as a module (registered under its name; dataclasses look it up).

    The scripts import their siblings by name, as Python finds them when a script runs from
    ``benchmarks/``; that folder is put on the import path only while the module executes.
    """
    import importlib.util
    import sys

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(BENCHMARKS))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(BENCHMARKS))
    return sys.modules[name]


def requires_shared(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"{path} is not present (../shared beside the repo)")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one intra-op thread: on 2 (shared) cores threads spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
