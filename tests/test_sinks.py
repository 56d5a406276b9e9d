"""Sink maths against naive reference computations, and observation of real models."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from sink_modifier.sinks import (
    SinkObservationError,
    global_attention_mass,
    mass_from_probabilities,
    mass_from_query_key,
    sink_threshold,
    soft_sink_mask,
    token_weights,
)
from tests.conftest import noised_rows


def naive_probs(q, k, attn_mask=None, is_causal=False, scale=None):
    b, hq, tq, d = q.shape
    k = k.repeat_interleave(hq // k.shape[1], dim=1)
    s = (q.double() @ k.double().transpose(-1, -2)) * (scale or 1 / math.sqrt(d))
    if is_causal:
        s = s.masked_fill(torch.ones(tq, k.shape[2], dtype=torch.bool).triu(1), float("-inf"))
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else s + attn_mask.double()
    return torch.softmax(s, dim=-1).nan_to_num(0.0)


def test_mass_from_probabilities_sums_heads_and_queries():
    probs = torch.softmax(torch.randn(2, 3, 5, 5), dim=-1)
    mass = mass_from_probabilities(probs)
    expected = torch.zeros(2, 5)
    for b in range(2):
        for h in range(3):
            for i in range(5):
                expected[b] += probs[b, h, i]
    torch.testing.assert_close(mass, expected)
    # every query row sums to one, so the total is heads * queries
    torch.testing.assert_close(mass.sum(-1), torch.full((2,), 15.0))


def test_mass_from_probabilities_ignores_padded_queries():
    probs = torch.softmax(torch.randn(1, 2, 4, 4), dim=-1)
    weights = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(
        mass_from_probabilities(probs, weights), probs[:, :, :3].sum(dim=(1, 2))
    )


@pytest.mark.parametrize("chunk", [1, 3, None])
@pytest.mark.parametrize(
    "case",
    ["plain", "gqa", "causal", "bool_mask", "additive_mask", "scale", "key_padding"],
)
def test_mass_from_query_key_matches_full_softmax(case, chunk):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 7, 8)
    k = torch.randn(2, 2 if case == "gqa" else 4, 7, 8)
    kwargs = {}
    if case == "causal":
        kwargs["is_causal"] = True
    if case == "bool_mask":
        kwargs["attn_mask"] = torch.rand(2, 1, 7, 7) > 0.3
        kwargs["attn_mask"][..., 0] = True
    if case == "additive_mask":
        kwargs["attn_mask"] = torch.randn(2, 4, 7, 7)
    if case == "key_padding":
        kwargs["attn_mask"] = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])[:, None, None, :]
    if case == "scale":
        kwargs["scale"] = 0.3
    got = mass_from_query_key(q, k, chunk_size=chunk, **kwargs)
    expected = naive_probs(q, k, **kwargs).sum(dim=(1, 2)).float()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_threshold_and_sigmoid_match_formula():
    mass = torch.tensor([[1.0, 2.0, 3.0, 10.0], [4.0, 4.0, 4.0, 4.5]])
    for b in range(2):
        row = mass[b].tolist()
        mean = sum(row) / 4
        std = math.sqrt(sum((x - mean) ** 2 for x in row) / 4)  # population std
        tau = mean + 2.0 * std
        assert sink_threshold(mass, 2.0)[b].item() == pytest.approx(tau, rel=1e-6)
        expected = [1 / (1 + math.exp(-5.0 * (x - tau))) for x in row]
        assert soft_sink_mask(mass, 2.0, 5.0)[b].tolist() == pytest.approx(expected, rel=1e-5)
    torch.testing.assert_close(token_weights(mass), 1 - soft_sink_mask(mass))


def test_padding_is_never_a_sink_and_excluded_from_statistics():
    real = torch.tensor([[1.0] * 9 + [50.0]])
    valid = torch.tensor([[1] * 10 + [0]])
    # a huge "mass" at a padded position must neither be a sink nor move the threshold
    padded = torch.cat([real, torch.tensor([[900.0]])], dim=-1)
    s = soft_sink_mask(padded, valid=valid)
    torch.testing.assert_close(s[:, :10], soft_sink_mask(real))
    assert s[0, 10] == 0 and s[0, 9] > 0.99 and s[0, 0] < 0.01
    assert token_weights(padded, valid=valid)[0, 10] == 0


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_global_mass_of_hf_model_sums_layers_and_heads(tiny_llama_dir, attn):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation=attn)
    ids = noised_rows(3, 16)
    mass = global_attention_mass(model, ids)
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    torch.testing.assert_close(mass.mean(-1), torch.full((3,), float(layers * heads)))
    # both observation channels give the same numbers
    other = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, attn_implementation="sdpa" if attn == "eager" else "eager"
    )
    torch.testing.assert_close(global_attention_mass(other, ids), mass, rtol=1e-4, atol=1e-4)


def test_global_mass_of_sdpa_only_model_equals_naive_recomputation(sdpa_lm_dir, monkeypatch):
    model = AutoModelForCausalLM.from_pretrained(sdpa_lm_dir)
    ids = noised_rows(2, 20)
    expected = torch.zeros(2, 20, dtype=torch.float64)
    real_sdpa = torch.nn.functional.scaled_dot_product_attention

    def recording_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
        expected.add_(naive_probs(q, k, attn_mask, is_causal, scale).sum(dim=(1, 2)))
        return real_sdpa(q, k, v, attn_mask=attn_mask, is_causal=is_causal, scale=scale)

    with torch.no_grad(), monkeypatch.context() as patch:
        patch.setattr(torch.nn.functional, "scaled_dot_product_attention", recording_sdpa)
        model(ids)
    mass = global_attention_mass(model, ids, chunk_size=4)
    torch.testing.assert_close(mass, expected.float(), rtol=1e-4, atol=1e-4)
    cfg = model.config
    torch.testing.assert_close(mass.mean(-1), torch.full((2,), float(cfg.n_layers * cfg.n_heads)))
    assert mass.max() > 1.1 * mass.min()  # a real, non-uniform attention pattern


def test_padded_positions_get_no_mass(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, attn_implementation="eager")
    ids = noised_rows(2, 12)
    am = torch.ones_like(ids)
    am[1, -4:] = 0
    mass = global_attention_mass(model, ids, am)
    assert torch.all(mass[1, -4:] == 0)
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    assert mass[1].sum().item() == pytest.approx(8 * layers * heads, rel=1e-4)


class _OpaqueAttentionLM(torch.nn.Module):
    """Attention by hand (softmax inside), returns no probabilities, never calls SDPA."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 8)
        self.proj = torch.nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask=None):
        x = self.emb(input_ids)
        a = torch.softmax(x @ x.transpose(-1, -2), dim=-1)
        return self.proj(a @ x)


def test_unobservable_attention_fails_with_what_was_tried():
    with pytest.raises(SinkObservationError, match="scaled_dot_product_attention") as err:
        global_attention_mass(_OpaqueAttentionLM(), torch.randint(0, 16, (1, 5)))
    assert "eager" in str(err.value) and "*Attention" in str(err.value)


def test_nan_attention_inputs_fail_loudly_instead_of_reading_as_zero_mass(sdpa_lm_dir):
    model = AutoModelForCausalLM.from_pretrained(sdpa_lm_dir)
    with torch.no_grad():
        model.model.transformer.blocks[0].k_proj.weight.fill_(float("nan"))
    with pytest.raises(SinkObservationError, match="NaN"):
        global_attention_mass(model, noised_rows(1, 8))
