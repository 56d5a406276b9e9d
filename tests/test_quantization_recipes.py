"""Pruning + quantization: mask-preserving GPTQ maths, upstream GPTQ's refill, shipped recipes."""

from __future__ import annotations

import pytest
import torch
import yaml
from compressed_tensors.quantization import QuantizationArgs, fake_quantize
from compressed_tensors.quantization.utils import calculate_qparams
from llmcompressor import oneshot
from llmcompressor.modifiers.gptq import GPTQModifier
from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from sink_modifier.modifiers import MaskPreservingGPTQModifier, SinkAwareWandaPruningModifier
from sink_modifier.modifiers.masked_gptq_quantize import (
    SparsityMaskNotRepresentableError,
    masked_quantize_weight,
)
from tests.conftest import REPO, noised_rows, rows_loader

ROWS, COLS, GROUP = 16, 64, 16


# -- (a) the maths on a toy layer with a given Hessian ------------------------------------
def toy_layer(seed: int, pattern: str = "2:4"):
    """A pruned weight [ROWS, COLS], its pruning mask and a correlated input Hessian."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(ROWS, COLS, generator=g)
    if pattern == "2:4":
        order = w.abs().reshape(ROWS, -1, 4).argsort(-1)[..., :2]
        mask = torch.zeros(ROWS, COLS // 4, 4, dtype=torch.bool).scatter_(-1, order, True).reshape(ROWS, COLS)
    else:  # 50% per row
        mask = w.abs() <= w.abs().median(dim=1, keepdim=True).values
    w[mask] = 0
    x = torch.randn(256, COLS, generator=g) @ torch.randn(COLS, COLS, generator=g) * 0.3
    x = (x + torch.randn(256, COLS, generator=g)) * (torch.rand(COLS, generator=g) * 3)
    return w, mask, x, 2 * x.T @ x / x.shape[0]


def qparams(w: torch.Tensor, args: QuantizationArgs):
    if args.strategy == "group":
        grouped = w.reshape(w.shape[0], -1, args.group_size)
        return calculate_qparams(grouped.amin(-1), grouped.amax(-1), args)
    return calculate_qparams(w.amin(-1, keepdim=True), w.amax(-1, keepdim=True), args)


def run_gptq(fn, w, h, args, **kwargs):
    scale, zp = qparams(w, args)
    # fresh copies: upstream uses fp32 inputs as its working buffers
    q, loss, _ = fn(w.clone()[None], h.clone()[None], scale[None], zp[None], None, args, blocksize=GROUP, **kwargs)
    return q[0], loss


SCHEMES = {
    "int4-group-sym-static": QuantizationArgs(num_bits=4, symmetric=True, strategy="group", group_size=GROUP, actorder="static"),
    "int4-group-sym-weight": QuantizationArgs(num_bits=4, symmetric=True, strategy="group", group_size=GROUP, actorder="weight"),
    "int4-group-asym": QuantizationArgs(num_bits=4, symmetric=False, strategy="group", group_size=GROUP),
    "int8-channel": QuantizationArgs(num_bits=8, symmetric=True, strategy="channel"),
    "fp8-channel": QuantizationArgs(num_bits=8, type="float", symmetric=True, strategy="channel"),
}


@pytest.mark.parametrize("compensation", ["redistribute", "skip"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_masked_gptq_keeps_pruned_weights_zero(scheme, compensation):
    args = SCHEMES[scheme]
    w, mask, _, h = toy_layer(0)
    upstream, _ = run_gptq(quantize_weight, w, h, args)
    masked, _ = run_gptq(masked_quantize_weight, w, h, args, compensation=compensation)
    assert torch.all(masked[mask] == 0)
    # the surviving weights are on the quantization grid (what gets stored is what we have)
    scale, zp = qparams(w, args)
    assert torch.equal(fake_quantize(masked, scale, zp, args), masked)
    if scheme.startswith("int4"):
        assert (upstream[mask] != 0).any()  # what upstream does with the same input


@pytest.mark.parametrize("compensation", ["redistribute", "skip"])
@pytest.mark.parametrize("scheme", list(SCHEMES))
def test_all_false_mask_is_upstream_gptq_exactly(scheme, compensation):
    args = SCHEMES[scheme]
    w, _, _, h = toy_layer(1)  # has zeros, but the mask says nothing is pruned
    upstream, upstream_loss = run_gptq(quantize_weight, w, h, args)
    ours, ours_loss = run_gptq(
        masked_quantize_weight, w, h, args, pruned=torch.zeros(1, ROWS, COLS, dtype=torch.bool), compensation=compensation
    )
    assert torch.equal(ours, upstream)
    assert torch.equal(ours_loss, upstream_loss)


def test_redistributing_compensation_beats_skipping_it_and_rezeroing():
    """The design choice behind mask_compensation='redistribute' (the default)."""
    args = SCHEMES["int4-group-sym-static"]
    err = {"skip": 0.0, "redistribute": 0.0, "rezero": 0.0}
    for seed in range(6):
        for pattern in ("2:4", "50%"):
            w, mask, x, h = toy_layer(seed, pattern)
            upstream, _ = run_gptq(quantize_weight, w, h, args)
            outputs = {
                "rezero": upstream.masked_fill(mask, 0),
                "skip": run_gptq(masked_quantize_weight, w, h, args, compensation="skip")[0],
                "redistribute": run_gptq(masked_quantize_weight, w, h, args)[0],
            }
            for name, q in outputs.items():
                err[name] += float(((q - w) @ x.T).square().mean())
    assert err["redistribute"] < err["rezero"] < err["skip"], err


def test_zero_point_that_cannot_represent_zero_is_an_error():
    args = SCHEMES["int4-group-asym"]
    w, mask, _, h = toy_layer(2)
    scale, zp = qparams(w, args)
    with pytest.raises(SparsityMaskNotRepresentableError, match="symmetric"):
        masked_quantize_weight(w[None], h[None], scale[None], zp[None].float() + 0.5, None, args, blocksize=GROUP)


def test_pruned_mask_must_match_zeros():
    args = SCHEMES["int8-channel"]
    w, _, _, h = toy_layer(3)
    scale, zp = qparams(w, args)
    with pytest.raises(ValueError, match="exactly 0"):
        masked_quantize_weight(w[None], h[None], scale[None], zp[None], None, args, pruned=torch.ones(1, ROWS, COLS, dtype=torch.bool))


def test_modifier_fields_validate():
    assert MaskPreservingGPTQModifier(scheme="W4A16").preserve_sparsity_mask is True
    with pytest.raises(ValidationError, match="mask_compensation"):
        MaskPreservingGPTQModifier(scheme="W4A16", mask_compensation="drop")


# -- (b), (c), (d): through oneshot on the tiny bidirectional Llama -----------------------
W4_GROUP32 = {
    "group_0": {
        "targets": ["Linear"],
        "weights": {"num_bits": 4, "type": "int", "symmetric": True, "strategy": "group", "group_size": 32},
    }
}


@pytest.fixture(scope="module")
def calib_ids():
    return noised_rows(6, 24, seed=0)


def compress(model_dir, recipe, ids):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    oneshot(
        model=model,
        processor=AutoTokenizer.from_pretrained(model_dir),
        dataset=rows_loader(ids),
        recipe=recipe,
        pipeline="sequential",
    )
    return model


def quantized_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and hasattr(m, "weight_scale")}


def dequantized_weight(module) -> torch.Tensor:
    """What the module computes with: oneshot leaves the float ``weight`` (RTN: the pruned
    weight itself; GPTQ: values already on the grid) plus ``weight_scale``/``weight_zero_point``
    and its ``quantization_scheme``; the forward fake-quantizes ``weight`` with them."""
    args = module.quantization_scheme.weights
    return fake_quantize(module.weight, module.weight_scale, getattr(module, "weight_zero_point", None), args)


def broken_2of4_groups(weight: torch.Tensor) -> int:
    return int(((weight == 0).reshape(weight.shape[0], -1, 4).sum(-1) < 2).sum())


def test_upstream_gptq_refills_2of4_zeros(tiny_llama_dir, calib_ids):
    """llm-compressor 0.14 GPTQ after 2:4 pruning: the pattern is gone. If this starts
    failing, upstream preserves masks again and MaskPreservingGPTQModifier may be moot."""
    recipe = [
        SinkAwareWandaPruningModifier(sparsity=0.5, mask_structure="2:4"),
        GPTQModifier(config_groups=W4_GROUP32, ignore=["re:.*lm_head"]),
    ]
    upstream = compress(tiny_llama_dir, recipe, calib_ids)
    linears = quantized_linears(upstream)
    assert len(linears) == 14
    assert sum(broken_2of4_groups(dequantized_weight(m)) for m in linears.values()) > 0

    # preserve_sparsity_mask: false is upstream GPTQ, weight for weight and scale for scale
    recipe = [
        SinkAwareWandaPruningModifier(sparsity=0.5, mask_structure="2:4"),
        MaskPreservingGPTQModifier(config_groups=W4_GROUP32, ignore=["re:.*lm_head"], preserve_sparsity_mask=False),
    ]
    plain = quantized_linears(compress(tiny_llama_dir, recipe, calib_ids))
    for name, module in linears.items():
        assert torch.equal(plain[name].weight, module.weight), name
        assert torch.equal(plain[name].weight_scale, module.weight_scale), name


def quantizing_recipes():
    """The shipped recipes that prune and then quantize (quantization-only recipes keep no zeros to test)."""
    found = []
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        text = path.read_text()
        if ("QuantizationModifier" in text or "GPTQModifier" in text) and "sparsity_stage" in text:
            found.append(path)
    return found


def pruning_pattern(path):
    stages = [v for k, v in yaml.safe_load(path.read_text()).items() if k.endswith("_stage")]  # not `calibration:`
    for stage in stages:
        for group in stage.values():
            if "SinkAwareWandaPruningModifier" in group:
                args = group["SinkAwareWandaPruningModifier"]
                return args.get("mask_structure", "0:0"), float(args.get("sparsity") or 0.0)
    raise AssertionError(f"{path.name} does not prune with SinkAwareWandaPruningModifier")


def test_three_quantizing_recipes_are_shipped():
    names = {p.name for p in quantizing_recipes()}
    assert {"sink_wanda_2of4_fp8_dynamic.yaml", "sink_wanda_50_w8a8.yaml", "sink_wanda_2of4_w4a16.yaml"} <= names


@pytest.mark.parametrize("recipe", quantizing_recipes(), ids=lambda p: p.stem)
def test_recipe_keeps_sparsity_through_quantization(tiny_llama_dir, calib_ids, recipe):
    structure, sparsity = pruning_pattern(recipe)
    model = compress(tiny_llama_dir, str(recipe), calib_ids)
    linears = quantized_linears(model)
    assert len(linears) == 14  # every block Linear, not lm_head
    assert not hasattr(model.lm_head, "weight_scale")
    for name, module in linears.items():
        deq = dequantized_weight(module)
        pruned = module.weight == 0
        assert torch.all(deq[pruned] == 0), name  # every pruned weight dequantizes to 0
        if structure == "2:4":
            assert broken_2of4_groups(deq) == 0, name
        else:
            per_row = (deq == 0).sum(dim=1)
            assert torch.all(per_row >= int(module.in_features * sparsity)), name
            assert torch.all((module.weight == 0).sum(dim=1) == int(module.in_features * sparsity)), name

    # (d) the quantized model runs (fake-quantized forward on CPU, FP8 included)
    with torch.no_grad():
        logits = model(input_ids=calib_ids[:2]).logits
    assert logits.shape == (2, calib_ids.shape[1], model.config.vocab_size)
    assert torch.isfinite(logits).all()


def test_prune_leaves_the_head_float_even_when_a_quantization_recipe_does_not_ignore_it(
        tiny_llama_dir, text_file, tmp_path):
    """The family's ignores reach the quantization modifier *before* it resolves its config: a stale
    config once gave the head scale tensors that calibration never filled (NaN, 0 and 1e38 in the
    saved checkpoint)."""
    from safetensors.torch import load_file

    from sink_modifier.commands.prune import prune_checkpoint

    recipe = tmp_path / "w8a8_everything.yaml"
    recipe.write_text("quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n"
                      '      targets: ["Linear"]\n      scheme: W8A8\n')
    out = prune_checkpoint(tiny_llama_dir, recipe, text_file, tmp_path / "q", num_samples=2, seq_len=16,
                           timesteps=(0.5,)).output_dir
    stored = load_file(out / "model.safetensors")
    assert "lm_head.weight_scale" not in stored and stored["lm_head.weight"].is_floating_point()
    scales = {k: v.float() for k, v in stored.items() if k.endswith(".weight_scale")}
    assert len(scales) == 14
    for key, scale in scales.items():
        weight = stored[key.removesuffix("_scale")].float()
        assert torch.isfinite(scale).all() and (scale > 0).all(), key
        # int8 symmetric per channel: each row's largest |q| is 127 or 128 (the absmax maps to the edge)
        assert (weight.abs().amax(dim=1) >= 127).all(), key
