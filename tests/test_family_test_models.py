"""The tiny LLaDA-style and Dream-style remote-code folders: published layout, the breakages the published code shows
under transformers 5, and the hand workarounds that make them run (what the family registry has to automate)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer
from transformers.dynamic_module_utils import get_class_from_dynamic_module
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from tests.conftest import MASK_ID, VOCAB
from tests.family_models.build import build_dream_checkpoint, build_llada_checkpoint

LLADA_BLOCK = {"attn_norm", "ff_norm", "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"}
DREAM_LAYER = {
    "input_layernorm",
    "post_attention_layernorm",
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
}


@pytest.fixture(scope="module")
def llada_dir(tmp_path_factory):
    return build_llada_checkpoint(tmp_path_factory.mktemp("llada"))


@pytest.fixture(scope="module")
def dream_dir(tmp_path_factory):
    return build_dream_checkpoint(tmp_path_factory.mktemp("dream"))


def _rows(seed=0, batch=2, seq=32):
    return torch.randint(4, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _check_bidirectional(model):
    ids = _rows()
    with torch.no_grad():
        first = model(ids).logits
        again = model(ids).logits
        late = ids.clone()
        late[:, -1] = MASK_ID
        changed = model(late).logits
    assert first.shape == (2, 32, VOCAB)
    assert torch.equal(first, again)
    assert not torch.allclose(first[:, 0], changed[:, 0])
    return first


@pytest.fixture
def sdpa_spy(monkeypatch):
    """Records each SDPA call's is_causal flag and mean peak attention probability."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **kwargs):
        probs = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
        calls.append((is_causal, probs.max(-1).values.mean().item()))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    return calls


# ---------------------------------------------------------------- LLaDA


def _llada_by_hand(path):
    """Workaround: construct the remote class from its config, load the safetensors, set use_cache."""
    config = AutoConfig.from_pretrained(path, trust_remote_code=True)
    cls = get_class_from_dynamic_module("modeling_llada.LLaDAModelLM", path)
    model = cls(config)
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return model.eval()


def test_llada_folder_has_published_layout(llada_dir):
    config = json.loads((llada_dir / "config.json").read_text())
    assert config["model_type"] == "llada" and config["architectures"] == ["LLaDAModelLM"]
    assert config["auto_map"]["AutoModel"] == "modeling_llada.LLaDAModelLM"
    assert config["auto_map"]["AutoConfig"] == "configuration_llada.LLaDAConfig"
    assert (llada_dir / "modeling_llada.py").is_file() and (llada_dir / "configuration_llada.py").is_file()
    assert config["mask_token_id"] == MASK_ID == AutoTokenizer.from_pretrained(llada_dir).mask_token_id

    keys = set(load_file(str(llada_dir / "model.safetensors")))
    expected = {f"model.transformer.blocks.{i}.{m}.weight" for i in range(2) for m in LLADA_BLOCK}
    expected |= {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    assert keys == expected

    model = _llada_by_hand(llada_dir)
    assert isinstance(model.model.transformer.blocks[1].ff_out, torch.nn.Linear)
    assert model.get_output_embeddings() is model.model.transformer.ff_out  # untied head
    assert model.model.transformer.ff_out.weight.data_ptr() != model.model.transformer.wte.weight.data_ptr()


@pytest.mark.parametrize("auto", [AutoModel, AutoModelForCausalLM])
def test_llada_from_pretrained_fails_without_post_init(llada_dir, auto):
    with pytest.raises(AttributeError, match="'LLaDAModelLM' object has no attribute 'all_tied_weights_keys'"):
        auto.from_pretrained(llada_dir, trust_remote_code=True)


def test_llada_post_init_then_meets_the_old_tie_weights_signature(llada_dir, monkeypatch):
    cls = get_class_from_dynamic_module("modeling_llada.LLaDAModelLM", llada_dir)
    init, tie = cls.__init__, cls.tie_weights

    def init_with_post_init(self, config, *args, **kwargs):
        init(self, config, *args, **kwargs)
        self.post_init()

    monkeypatch.setattr(cls, "__init__", init_with_post_init)
    with pytest.raises(TypeError, match="tie_weights\\(\\) got an unexpected keyword argument 'recompute_mapping'"):
        AutoModel.from_pretrained(llada_dir, trust_remote_code=True)

    monkeypatch.setattr(cls, "tie_weights", lambda self, *args, **kwargs: tie(self))
    model = AutoModel.from_pretrained(llada_dir, trust_remote_code=True)
    saved = load_file(str(llada_dir / "model.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())


def test_llada_config_loses_use_cache_and_forward_reads_it(llada_dir):
    assert json.loads((llada_dir / "config.json").read_text())["use_cache"] is False
    model = _llada_by_hand(llada_dir)
    assert not hasattr(model.config, "use_cache")
    with pytest.raises(AttributeError, match="'LLaDAConfig' object has no attribute 'use_cache'"):
        model(_rows())
    with torch.no_grad():
        assert model(_rows(), use_cache=False).logits.shape == (2, 32, VOCAB)


def test_llada_runs_when_worked_around_by_hand(llada_dir, sdpa_spy):
    model = _llada_by_hand(llada_dir)
    model.config.use_cache = False
    _check_bidirectional(model)
    assert len(sdpa_spy) == 3 * 2  # three forwards, two blocks: attention only through SDPA
    assert all(not causal for causal, _ in sdpa_spy)
    assert min(peak for _, peak in sdpa_spy) > 5 / 32  # far from uniform attention


def test_llada_builder_is_deterministic(tmp_path):
    a = load_file(str(build_llada_checkpoint(tmp_path / "a") / "model.safetensors"))
    b = load_file(str(build_llada_checkpoint(tmp_path / "b") / "model.safetensors"))
    c = load_file(str(build_llada_checkpoint(tmp_path / "c", seed=1) / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.transformer.blocks.0.q_proj.weight"], c["model.transformer.blocks.0.q_proj.weight"])


# ---------------------------------------------------------------- Dream


@pytest.fixture
def default_rope(monkeypatch):
    """Workaround: give transformers 5's ROPE_INIT_FUNCTIONS back a "default" entry (undone after the test)."""
    monkeypatch.setitem(ROPE_INIT_FUNCTIONS, "default", LlamaRotaryEmbedding.compute_default_rope_parameters)


def _dream(path):
    model = AutoModel.from_pretrained(path, trust_remote_code=True)
    model.reset_rope_parameters()
    return model.eval()


def _inv_freqs(model):
    return [model.model.rotary_emb.inv_freq] + [layer.self_attn.rotary_emb.inv_freq for layer in model.model.layers]


def test_dream_folder_has_published_layout(dream_dir):
    config = json.loads((dream_dir / "config.json").read_text())
    assert config["model_type"] == "Dream" and config["architectures"] == ["DreamModel"]
    assert config["auto_map"] == {
        "AutoConfig": "configuration_dream.DreamConfig",
        "AutoModel": "modeling_dream.DreamModel",
    }
    assert (dream_dir / "modeling_dream.py").is_file() and (dream_dir / "configuration_dream.py").is_file()
    assert config["mask_token_id"] == MASK_ID == AutoTokenizer.from_pretrained(dream_dir).mask_token_id
    assert config["num_key_value_heads"] < config["num_attention_heads"]

    weights = load_file(str(dream_dir / "model.safetensors"))
    expected = {f"model.layers.{i}.{m}.weight" for i in range(2) for m in DREAM_LAYER}
    expected |= {f"model.layers.{i}.self_attn.{p}.bias" for i in range(2) for p in ("q_proj", "k_proj", "v_proj")}
    expected |= {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    assert set(weights) == expected
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (16, 32)  # 2 KV heads of 8


def test_dream_construction_fails_on_missing_default_rope(dream_dir, monkeypatch):
    # Stock transformers 5 has no "default" entry; remove one a loader may have registered for the session.
    monkeypatch.delitem(ROPE_INIT_FUNCTIONS, "default", raising=False)
    with pytest.raises(KeyError, match="default"):
        AutoModel.from_pretrained(dream_dir, trust_remote_code=True)


def test_dream_rope_buffers_are_uninitialised_until_reset(dream_dir, default_rope):
    model = AutoModel.from_pretrained(dream_dir, trust_remote_code=True)
    saved = load_file(str(dream_dir / "model.safetensors"))
    assert set(model.state_dict()) == set(saved)
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    expected = 1.0 / 10000.0 ** (torch.arange(0, 8, 2, dtype=torch.float) / 8)
    # Left as torch.empty_like gave them: garbage, zeros, or (by chance) anything, but not all three right.
    assert not all(torch.equal(buf, expected) for buf in _inv_freqs(model))
    model.reset_rope_parameters()
    assert all(torch.equal(buf, expected) for buf in _inv_freqs(model))


def test_dream_runs_when_worked_around_by_hand(dream_dir, default_rope, sdpa_spy):
    first = _check_bidirectional(_dream(dream_dir))
    assert torch.equal(first, _dream(dream_dir)(_rows()).logits.detach())  # a second load gives the same logits
    assert all(not causal for causal, _ in sdpa_spy)
    assert min(peak for _, peak in sdpa_spy) > 5 / 32


def test_dream_rejects_a_2d_integer_attention_mask(dream_dir, default_rope):
    model = _dream(dream_dir)
    ids = _rows()
    ones = torch.ones_like(ids)
    with pytest.raises(RuntimeError, match="Expected attn_mask dtype to be bool or float"):
        model(ids, attention_mask=ones)
    with torch.no_grad():
        plain = model(ids).logits
        assert torch.equal(model(ids, attention_mask=ones.bool()[:, None, None, :]).logits, plain)
        padded = ones.clone()
        padded[:, -4:] = 0
        masked = model(ids, attention_mask=padded.bool()[:, None, None, :]).logits
    assert not torch.allclose(masked[:, 0], plain[:, 0])


def test_dream_save_fails_on_list_tied_weights_keys(dream_dir, default_rope, tmp_path):
    model = _dream(dream_dir)
    assert model._tied_weights_keys == ["lm_head.weight"]
    with pytest.raises(AttributeError, match="'list' object has no attribute 'keys'"):
        model.save_pretrained(tmp_path / "out")
    model._tied_weights_keys = {}  # the transformers 5 format; the head is untied
    model.save_pretrained(tmp_path / "out")
    with torch.no_grad():
        assert torch.equal(_dream(tmp_path / "out")(_rows()).logits, model(_rows()).logits)
