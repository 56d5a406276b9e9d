"""The sink pass itself: eager attention run in query blocks, early stop, restored model state."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from transformers import AutoModelForCausalLM

from sink_modifier.sinks import global_attention_mass
from tests.conftest import noised_rows


def eager_model(model_dir):
    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")


def reference_mass(model, ids, attention_mask=None):
    """Plain eager forward, probabilities returned by the model, summed over layers, heads and real queries."""
    with torch.no_grad():
        out = model(ids, attention_mask=attention_mask, output_attentions=True)
    real = torch.ones_like(ids) if attention_mask is None else attention_mask
    mass = sum(torch.einsum("bhqk,bq->bk", a, real.float()) for a in out.attentions)
    return mass * real


class SoftmaxSizes(TorchFunctionMode):
    """Records the shape of every softmax computed while active."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax):
            self.shapes.append(tuple(out.shape))
        return out


@pytest.mark.parametrize("padded", [False, True])
def test_query_blocks_give_the_eager_mass(tiny_llama_dir, padded):
    model = eager_model(tiny_llama_dir)
    ids = noised_rows(3, 14, seed=3)
    mask = None
    if padded:
        mask = torch.ones_like(ids)
        mask[1, -5:] = 0
    expected = reference_mass(model, ids, mask)
    # blocks of 4 queries: layer 2 sees layer 1's output joined from the blocks, so equal
    # mass in every layer also checks that the attention outputs were put back together right
    blocked = global_attention_mass(model, ids, mask, chunk_size=4)
    whole = global_attention_mass(model, ids, mask)
    torch.testing.assert_close(blocked, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(whole, expected, rtol=1e-5, atol=1e-5)
    assert model.config._attn_implementation == "eager"


def test_eager_probabilities_never_exceed_one_query_block(tiny_llama_dir):
    model = eager_model(tiny_llama_dir)
    ids = noised_rows(2, 16, seed=4)
    heads = model.config.num_attention_heads
    with SoftmaxSizes() as sizes:
        global_attention_mass(model, ids, chunk_size=5)
    assert sizes.shapes, "no softmax seen: the test observes nothing"
    assert max(s[-2] for s in sizes.shapes) == 5  # query blocks of 5 (16 = 5 + 5 + 5 + 1)
    assert {s for s in sizes.shapes if len(s) == 4} <= {(2, heads, 5, 16), (2, heads, 1, 16)}
    with SoftmaxSizes() as sizes:  # a plain eager forward materialises all queries at once
        with torch.no_grad():
            model(ids)
    assert (2, heads, 16, 16) in sizes.shapes


def test_sink_pass_stops_after_the_last_attention(tiny_llama_dir):
    model = eager_model(tiny_llama_dir)
    ran = []
    last = model.model.layers[-1]
    last.mlp.register_forward_hook(lambda *_: ran.append("last mlp"))
    model.model.norm.register_forward_hook(lambda *_: ran.append("final norm"))
    model.lm_head.register_forward_hook(lambda *_: ran.append("lm_head"))
    model.model.layers[0].mlp.register_forward_hook(lambda *_: ran.append("first mlp"))
    ids = noised_rows(2, 12, seed=5)
    mass = global_attention_mass(model, ids)
    assert ran == ["first mlp"]
    layers, heads = model.config.num_hidden_layers, model.config.num_attention_heads
    torch.testing.assert_close(mass.mean(-1), torch.full((2,), float(layers * heads)))  # every layer counted
    ran.clear()
    with torch.no_grad():
        model(ids)  # the model itself is untouched afterwards
    assert ran == ["first mlp", "last mlp", "final norm", "lm_head"]


def test_sdpa_model_is_not_switched_and_still_stops_early(tiny_llama_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="sdpa")
    ran = []
    model.model.norm.register_forward_hook(lambda *_: ran.append("final norm"))
    ids = noised_rows(2, 12, seed=6)
    mass = global_attention_mass(model, ids, chunk_size=3)
    assert ran == [] and model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(mass, reference_mass(eager_model(tiny_llama_dir), ids), rtol=1e-4, atol=1e-4)
