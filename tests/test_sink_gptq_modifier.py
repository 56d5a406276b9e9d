"""SinkAwareGPTQModifier: upstream GPTQ bit for bit with the weighting off; row-weighted Hessians with it on."""

from __future__ import annotations

import json

import pytest
import torch
from llmcompressor.modifiers.gptq import GPTQModifier

from sink_modifier import SinkAwareGPTQModifier
from sink_modifier.process import MaskTokenProcess, build_calibration
from tests.conftest import MASK_ID, noised_rows, word_tokenizer
from tests.test_sink_wanda_modifier import block_linears, prune

INT4_CHANNEL = {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int", "symmetric": True,
                                                               "strategy": "channel"}}}


def _state(model) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in block_linears(model).items()}


def test_with_every_weighting_off_it_is_llm_compressors_gptq_bit_for_bit(tiny_llama_dir):
    ids = noised_rows(4, 24, seed=1)
    ours = prune(tiny_llama_dir, [SinkAwareGPTQModifier(config_groups=INT4_CHANNEL, ignore=["lm_head"],
                                                        preserve_sparsity_mask=False)], ids)
    upstream = prune(tiny_llama_dir, [GPTQModifier(config_groups=INT4_CHANNEL, ignore=["lm_head"])], ids)
    for name, module in block_linears(upstream).items():
        assert torch.equal(block_linears(ours)[name].weight_scale, module.weight_scale), name
        assert torch.equal(block_linears(ours)[name].weight, module.weight), name


class _Captured(Exception):
    pass


def _hessians(model_dir, modifier, loader) -> dict[str, torch.Tensor]:
    """The modifier's Hessians (per module name) at the moment GPTQ would quantize the first layer."""
    seen: dict[str, torch.Tensor] = {}

    def capture(self, module_list):
        if not module_list:  # an epoch that calibrated nothing (the embedding's subgraph)
            return
        for module in module_list:
            seen[self._module_names[module]] = (self._hessians[module] / 1.0).clone()
        raise _Captured

    original = type(modifier).compress_module_list
    type(modifier).compress_module_list = capture
    try:
        with pytest.raises(Exception) as caught:
            prune(model_dir, [modifier], loader)
        assert isinstance(caught.value, _Captured) or isinstance(caught.value.__cause__, _Captured), caught.value
    finally:
        type(modifier).compress_module_list = original
    return seen


def test_elbo_row_weights_scale_each_rows_hessian_term_by_its_normalised_one_over_t(tiny_llama_dir):
    """GPTQ's Hessian sum 2 sum_r c_r X_r^T X_r (divided by the row count at the solve) with c_r = (1/t_r) /
    mean(1/t): checked against the unweighted Hessians of each timestep's rows alone (same rows, picked out)."""
    tokenizer = word_tokenizer()
    windows = noised_rows(3, 20, seed=2, mask_rate=0.0)
    config = type("C", (), {"mask_token_id": MASK_ID, "max_position_embeddings": 64})()
    grid = (0.2, 0.8)
    full = build_calibration(windows, tokenizer, process=MaskTokenProcess(MASK_ID), seq_len=20, num_samples=3,
                             timesteps=grid, seed=0, config=config)
    weighted = _hessians(tiny_llama_dir, SinkAwareGPTQModifier(config_groups=INT4_CHANNEL, ignore=["lm_head"],
                                                               timestep_weighting="elbo"), full.dataloader())
    plain = _hessians(tiny_llama_dir, SinkAwareGPTQModifier(config_groups=INT4_CHANNEL, ignore=["lm_head"]),
                      full.dataloader())
    mean_inverse = sum(1 / t for t in grid) / len(grid)
    # rows of one timestep: the same noised rows, picked out of the full set (the noise is keyed per row)
    per_t = {}
    for t in grid:
        rows = full.input_ids[full.timestep == t]
        per_t[t] = _hessians(tiny_llama_dir, SinkAwareGPTQModifier(config_groups=INT4_CHANNEL, ignore=["lm_head"]),
                             rows)
    name = next(iter(weighted))
    expected = sum((1 / t) / mean_inverse * per_t[t][name] for t in grid)
    torch.testing.assert_close(weighted[name], expected, rtol=1e-4, atol=1e-4)  # float32 sums in another order
    assert not torch.allclose(weighted[name], plain[name], rtol=1e-3)


def test_sink_weighting_changes_the_quantized_weights_and_runs_through_prune(tiny_llama_dir, text_file, tmp_path,
                                                                              capsys):
    from sink_modifier.cli import main

    recipe = tmp_path / "gptq_sink.yaml"
    recipe.write_text(
        "quantization_stage:\n  quantization_modifiers:\n    SinkAwareGPTQModifier:\n      ignore: [lm_head]\n"
        "      sink_weighting: true\n      config_groups:\n        group_0:\n          targets: [Linear]\n"
        "          weights: {num_bits: 4, type: int, symmetric: true, strategy: channel}\n")
    outputs = {}
    for name, text in (("on", recipe.read_text()), ("off", recipe.read_text().replace("true\n      config", "false\n      config"))):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        out = tmp_path / name
        assert main(["prune", "--model", str(tiny_llama_dir), "--recipe", str(path), "--data", str(text_file),
                     "--output", str(out), "--num-samples", "2", "--seq-len", "16"]) == 0
        outputs[name] = out
    capsys.readouterr()
    from safetensors.torch import load_file

    on, off = (load_file(str(outputs[k] / "model.safetensors")) for k in ("on", "off"))
    changed = [k for k in on if k.endswith("weight_packed") and not torch.equal(on[k], off[k])]
    assert changed, "sink weighting left every GPTQ weight as without it"
    recorded = json.loads((outputs["on"] / "sink_modifier.json").read_text())["modifiers"][0]
    assert recorded["type"] == "SinkAwareGPTQModifier" and recorded["sink_weighting"] is True
    assert main(["verify", str(outputs["on"])]) == 0
