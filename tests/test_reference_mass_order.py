"""``sink_mask_mode: reference`` computes the paper's sink masks bit for bit; the default keeps today's bits.

The expected values are written from reference-spec §1.7 (the ``attn_collector``: ``q @ kᵀ / sqrt(hd)`` in the
model's dtype, ``softmax(S.float())``, ``P.sum(dim=2).sum(dim=1)`` per layer, layers summed into float32 zeros),
§1.8 (``sigmoid(alpha * (M - (mean + k * std)))``, population std) and §1.10 (per-timestep masks summed in
timestep order into zeros, divided by the count, weight ``1 - s̄``), independently of ``sink_modifier.sinks``.
Only the noising of the clean rows is taken from the modifier (it is not what is under test here).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from transformers import AutoModelForCausalLM

import sink_modifier.modifiers.sink_sparsegpt as sink_sparsegpt
from sink_modifier import SinkAwareSparseGPTModifier
from sink_modifier.process import MaskTokenProcess, row_generator
from sink_modifier.sinks import PAPER_COLLECTOR, global_attention_mass, mass_from_probabilities, mass_from_query_key
from tests.conftest import MASK_ID, noised_rows
from tests.test_sink_wanda_modifier import prune

TIMESTEPS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]  # the paper's 10 levels: torch's mean would differ
SINK_STD, SINK_ALPHA = 2.0, 5.0


# -- the paper's formulas (reference-spec §1.7, §1.8, §1.10), written out ---------------------------------------
def collector_mass(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """One layer's ``attn_collector`` argument from post-rotary ``q``/``k`` in the model's dtype."""
    if k.size(1) != q.size(1):
        k = k.repeat_interleave(q.size(1) // k.size(1), dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1))
    scores = scores / math.sqrt(q.size(-1))
    probs = torch.softmax(scores.float(), dim=-1)
    return probs.sum(dim=2).sum(dim=1)


def paper_sink_mask(mass: torch.Tensor) -> torch.Tensor:
    mean = mass.mean(dim=1, keepdim=True)
    std = mass.std(dim=1, keepdim=True, unbiased=False)
    return torch.sigmoid(SINK_ALPHA * (mass - (mean + SINK_STD * std)))


class _RecordSDPA(TorchFunctionMode):
    """Sees every SDPA call's ``q`` and ``k`` (the model itself runs unchanged)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.calls.append((args[0].detach(), args[1].detach()))
        return func(*args, **kwargs)


def paper_global_mass(model, ids: torch.Tensor, channel: str) -> torch.Tensor:
    """``M = Σ_l m_l``: the collector's float32 zeros plus each layer, in layer order."""
    mass = torch.zeros(ids.shape, dtype=torch.float32)
    with torch.no_grad():
        if channel == "eager":  # the paper's eager path sums the softmax output the model attends with
            for probs in model(input_ids=ids, output_attentions=True).attentions:
                mass += probs.sum(dim=2).sum(dim=1)
        else:
            with _RecordSDPA() as record:
                model(input_ids=ids)
            for q, k in record.calls:
                mass += collector_mass(q, k)
    return mass


def paper_token_weights(model, clean: torch.Tensor, channel: str, seed: int = 0) -> torch.Tensor:
    process = MaskTokenProcess(MASK_ID, eps=1e-3)
    out = []
    for row in clean:
        key = sink_sparsegpt._row_key(row)
        aggregated = torch.zeros((1, row.numel()), dtype=torch.float32)
        for j, t in enumerate(TIMESTEPS):
            noisy = process.noise_row(row, t, row_generator(seed, key, j))[None]
            aggregated += paper_sink_mask(paper_global_mass(model, noisy, channel))
        aggregated /= float(len(TIMESTEPS))
        out.append((1.0 - aggregated)[0])
    return torch.stack(out)


# -- pure functions --------------------------------------------------------------------------------------------
def test_each_order_is_its_formula_and_the_two_differ_in_the_last_bits():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(3 * torch.randn(2, 5, 64, 64, generator=g), dim=-1)
    default = mass_from_probabilities(probs)
    paper = mass_from_probabilities(probs, order="queries_then_heads")
    assert torch.equal(default, probs.sum(dim=1).sum(dim=1))
    assert torch.equal(paper, probs.sum(dim=2).sum(dim=1))
    assert not torch.equal(default, paper)  # why the option exists
    torch.testing.assert_close(default, paper, rtol=1e-6, atol=1e-5)
    with pytest.raises(ValueError, match="order must be"):
        mass_from_probabilities(probs, order="heads")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 32])  # sqrt(32) is not a power of two: dividing differs from scaling
def test_query_key_mass_is_the_collector_in_reference_mode_and_float32_by_default(dtype, head_dim):
    g = torch.Generator().manual_seed(1)
    q = (2 * torch.randn(2, 4, 40, head_dim, generator=g)).to(dtype)
    k = (2 * torch.randn(2, 2, 40, head_dim, generator=g)).to(dtype)  # GQA: 2 query heads per key head
    assert torch.equal(mass_from_query_key(q, k, **PAPER_COLLECTOR), collector_mass(q, k))

    kr = k.float().repeat_interleave(2, dim=1)
    probs = torch.softmax(torch.matmul(q.float(), kr.transpose(-1, -2)) * (1.0 / math.sqrt(head_dim)), dim=-1)
    default = mass_from_query_key(q, k)
    assert torch.equal(default, probs.sum(dim=1).sum(dim=1))
    if dtype == torch.bfloat16:  # the collector's bf16 scores are a different (rounded) attention
        assert (default - collector_mass(q, k)).abs().max() > 1e-3


@pytest.mark.parametrize("order", ["heads_then_queries", "queries_then_heads"])
@pytest.mark.parametrize("scores", ["float32", "model_dtype"])
def test_chunked_query_key_mass_equals_unchunked_in_each_order(order, scores):
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(2, 4, 37, 16, generator=g), torch.randn(2, 4, 37, 16, generator=g)
    weights = torch.ones(2, 37)
    weights[1, 30:] = 0  # padded queries
    whole = mass_from_query_key(q, k, query_weights=weights, order=order, scores=scores)
    # one block covering every query is the unchunked computation, bit for bit
    assert torch.equal(mass_from_query_key(q, k, query_weights=weights, chunk_size=37, order=order, scores=scores), whole)
    for chunk in (1, 5, 16):  # several blocks: the same sums, added in another order (rounding only)
        blocks = mass_from_query_key(q, k, query_weights=weights, chunk_size=chunk, order=order, scores=scores)
        torch.testing.assert_close(blocks, whole, rtol=1e-6, atol=1e-5)


# -- models ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", ["heads_then_queries", "queries_then_heads"])
def test_chunked_eager_mass_equals_unchunked_in_each_order(tiny_llama_dir, order):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    ids = noised_rows(2, 20, seed=5)
    whole = global_attention_mass(model, ids, order=order)
    assert torch.equal(global_attention_mass(model, ids, chunk_size=20, order=order), whole)
    torch.testing.assert_close(global_attention_mass(model, ids, chunk_size=3, order=order), whole, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_default_mass_keeps_heads_then_queries_bits(tiny_llama_dir, sdpa_lm_dir, attn):
    ids = noised_rows(2, 24, seed=6)
    if attn == "eager":
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
        with torch.no_grad():
            layers = [p.float().sum(dim=1).sum(dim=1) for p in model(input_ids=ids, output_attentions=True).attentions]
    else:
        model = AutoModelForCausalLM.from_pretrained(sdpa_lm_dir)
        with torch.no_grad(), _RecordSDPA() as record:
            model(input_ids=ids)
        layers = []
        for q, k in record.calls:
            scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * (1.0 / math.sqrt(q.size(-1)))
            layers.append(torch.softmax(scores, dim=-1).sum(dim=1).sum(dim=1))
    expected = layers[0].clone()
    for layer in layers[1:]:
        expected += layer
    assert torch.equal(global_attention_mass(model, ids), expected)
    assert not torch.equal(global_attention_mass(model, ids, **PAPER_COLLECTOR), expected)


@pytest.mark.parametrize("model_kind,dtype", [
    ("llada_shaped", torch.float32), ("llama_sdpa", torch.float32), ("llama_sdpa", torch.bfloat16),
])
def test_sdpa_mass_in_reference_mode_is_the_collectors_in_the_models_dtype(tiny_llama_dir, sdpa_lm_dir, model_kind, dtype):
    if model_kind == "llada_shaped":  # calls SDPA itself, k repeated for its query heads
        model = AutoModelForCausalLM.from_pretrained(sdpa_lm_dir, dtype=dtype)
    else:  # transformers' SDPA path: explicit scale=head_dim**-0.5, GQA keys
        model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=dtype, attn_implementation="sdpa")
    ids = noised_rows(2, 24, seed=7)
    assert torch.equal(global_attention_mass(model, ids, **PAPER_COLLECTOR), paper_global_mass(model, ids, "sdpa"))


@pytest.mark.parametrize("channel", ["eager", "sdpa"])
def test_reference_mode_token_weights_are_the_papers_bit_for_bit(tiny_llama_dir, sdpa_lm_dir, channel):
    model_dir = tiny_llama_dir if channel == "eager" else sdpa_lm_dir
    clean = noised_rows(3, 24, seed=8, mask_rate=0.0)  # T = 24: torch's mean over 10 timesteps sums in another order
    modifier = SinkAwareSparseGPTModifier(sparsity=0.5, sink_mask_mode="reference", reference_timesteps=TIMESTEPS,
                                          mask_token_id=MASK_ID, sink_std=SINK_STD, sink_alpha=SINK_ALPHA, ignore=["re:.*lm_head"])
    seen = []
    computed = modifier.batch_token_weights

    def record(input_ids, valid):
        weights = computed(input_ids, valid)
        seen.append(weights.clone())
        return weights

    object.__setattr__(modifier, "batch_token_weights", record)
    prune(model_dir, [modifier], clean, attn="eager" if channel == "eager" else None)
    ours = torch.cat(seen)
    assert ours.shape == clean.shape

    dense = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 **({"attn_implementation": "eager"} if channel == "eager" else {}))
    expected = paper_token_weights(dense, clean, channel)
    assert torch.equal(ours, expected)
    assert float(expected.max() - expected.min()) > 0.01  # the masks are not constant: positions differ
