"""What vLLM 0.32's loader would refuse, read from our checkpoint files (sink_modifier.export.vllm_layout).

Tiny DiffusionGemma and Llama checkpoints are pruned / quantized with prune_checkpoint (the
CLI's code path) and the files are then read the way vLLM's loader reads them.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import torch

from sink_modifier.commands.prune import prune_checkpoint
from sink_modifier.export.verify import verify_checkpoint
from sink_modifier.export.vllm_layout import check_vllm_layout, vllm_scheme
from tests.checkpoint_edits import edit_weights
from tests.conftest import REPO
from tests.family_models.diffusion_gemma import build_diffusion_gemma_checkpoint

FAST = dict(num_samples=2, seq_len=16, timesteps=(0.3, 0.7))
W8A8 = REPO / "recipes" / "sink_wanda_50_w8a8.yaml"
WANDA = REPO / "recipes" / "sink_wanda_50.yaml"


@pytest.fixture(scope="module")
def gemma(tmp_path_factory, text_file):
    root = tmp_path_factory.mktemp("vllm-layout")
    base = build_diffusion_gemma_checkpoint(root / "base")
    return {
        "base": base,
        "pruned": prune_checkpoint(base, WANDA, text_file, root / "pruned", **FAST).output_dir,
        "w8a8": prune_checkpoint(base, W8A8, text_file, root / "w8a8", **FAST).output_dir,
    }


@pytest.fixture(scope="module")
def llama_w8a8(tiny_llama_dir, text_file, tmp_path_factory):
    return prune_checkpoint(tiny_llama_dir, W8A8, text_file, tmp_path_factory.mktemp("llama") / "w8a8", **FAST).output_dir


def codes(report):
    return Counter(f.code for f in report.refusals)


def test_dense_and_pruned_diffusion_gemma_map_onto_vllm_names(gemma):
    for name in ("base", "pruned"):
        report = check_vllm_layout(gemma[name])
        assert report.ok, [f.message for f in report.refusals]
        assert report.architecture == "DiffusionGemmaForBlockDiffusion" and report.tensors > 50


def test_quantized_diffusion_gemma_from_prune_maps_onto_vllm_expert_by_expert(gemma):
    report = check_vllm_layout(gemma["w8a8"])
    assert report.ok, [f.message for f in report.refusals]
    assert any(f.code == "scheme" and "CompressedTensorsW8A8Int8" in f.message for f in report.notes)


def _as_upstream_writes_it(folder):
    """Edit a good W8A8 DiffusionGemma into what upstream's repack path writes: float encoder copies of the
    decoder's weights, the encoder named in ignore, and fused float experts where int8 per-expert ones were."""
    config = json.loads((folder / "config.json").read_text())
    config["quantization_config"]["ignore"].append("model.encoder.language_model.layers.0.mlp.down_proj")
    (folder / "config.json").write_text(json.dumps(config))

    def edit(tensors):
        tensors["model.encoder.language_model.layers.0.mlp.down_proj.weight"] = torch.randn(32, 64)
        for name in [k for k in tensors if k.startswith("model.decoder.layers.1.experts.")]:
            del tensors[name]
        tensors["model.decoder.layers.1.experts.gate_up_proj"] = torch.randn(4, 32, 32)
        tensors["model.decoder.layers.1.experts.down_proj"] = torch.randn(4, 32, 16)

    edit_weights(folder, edit)
    return folder


def test_float_encoder_copies_their_ignores_and_fused_float_experts_are_refused(gemma, tmp_path):
    folder = _as_upstream_writes_it(shutil.copytree(gemma["w8a8"], tmp_path / "upstream"))
    report = check_vllm_layout(folder)
    found = codes(report)
    assert set(found) == {"tied_copies", "ignore", "experts"}, found
    text = "\n".join(f.message for f in report.refusals)
    assert "model.encoder.language_model.layers.0.mlp.down_proj.weight F32" in text
    assert "I8" in text and "model.layers.1.experts" in text and "fused F32" in text


def test_verify_reports_the_vllm_refusals_and_passes_a_llama_w8a8(gemma, llama_w8a8, tmp_path):
    good = verify_checkpoint(gemma["w8a8"])
    assert good.ok, good.problems
    bad = verify_checkpoint(_as_upstream_writes_it(shutil.copytree(gemma["w8a8"], tmp_path / "bad")))
    assert not bad.ok
    assert any(p.startswith("vLLM 0.32.0 would refuse:") for p in bad.problems)
    assert any("reloaded with from_pretrained" in c for c in bad.checks)  # transformers still loads it
    ok = verify_checkpoint(llama_w8a8)
    assert ok.ok, ok.problems
    assert any("vLLM 0.32.0 layout" in c and "CompressedTensorsW8A8Int8" in c for c in ok.checks)
    # the test Llama is bidirectional (is_causal: false): vLLM would serve it causally
    assert any("is_causal: false" in n for n in ok.notes)


def test_v_proj_in_a_full_attention_layer_and_wrong_expert_shape_are_refused(gemma, tmp_path):
    folder = shutil.copytree(gemma["base"], tmp_path / "edited")

    def edit(tensors):
        k = tensors["model.decoder.layers.1.self_attn.k_proj.weight"]
        tensors["model.decoder.layers.1.self_attn.v_proj.weight"] = k.clone()
        tensors["model.decoder.layers.0.experts.down_proj"] = tensors[
            "model.decoder.layers.0.experts.down_proj"].transpose(1, 2).contiguous()
        tensors["model.decoder.stray.weight"] = torch.zeros(2)

    edit_weights(folder, edit)
    report = check_vllm_layout(folder)
    assert codes(report) == Counter({"k_eq_v": 1, "experts": 1, "names": 1}), report.refusals
    assert "[4, 16, 32]" in next(f.message for f in report.refusals if f.code == "experts")


def test_sparsity_targets_and_foreign_architectures(gemma, tmp_path):
    folder = shutil.copytree(gemma["pruned"], tmp_path / "sparse")
    config = json.loads((folder / "config.json").read_text())
    config["sparsity_config"] = {"format": "sparse-24-bitmask", "targets": ["Linear"]}
    (folder / "config.json").write_text(json.dumps(config))
    assert codes(check_vllm_layout(folder)) == Counter({"sparsity_targets": 1})

    config.pop("sparsity_config")
    config["architectures"] = ["LLaDAModelLM"]
    (folder / "config.json").write_text(json.dumps(config))
    report = check_vllm_layout(folder)
    assert codes(report) == Counter({"architecture": 1}) and "LLaDA" in report.refusals[0].message
    with pytest.raises(NotADirectoryError):
        check_vllm_layout(folder / "config.json")


INT8_W = dict(num_bits=8, type="int", symmetric=True, strategy="channel", dynamic=False)


@pytest.mark.parametrize("group, fmt, scheme", [
    ({"weights": INT8_W, "input_activations": dict(num_bits=8, type="int", strategy="token", dynamic=True,
                                                   symmetric=True)}, "int-quantized", "CompressedTensorsW8A8Int8"),
    ({"weights": dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32, dynamic=False),
      "input_activations": None}, "pack-quantized", "CompressedTensorsWNA16"),
    ({"weights": dict(num_bits=8, type="float", symmetric=True, strategy="channel", dynamic=False),
      "input_activations": dict(num_bits=8, type="float", strategy="token", dynamic=True, symmetric=True)},
     "float-quantized", "CompressedTensorsW8A8Fp8"),
    ({"weights": dict(num_bits=4, type="int", symmetric=True, strategy="group", group_size=32, dynamic=False),
      "input_activations": None}, "int-quantized", None),
    ({"weights": INT8_W, "input_activations": dict(num_bits=8, type="int", strategy="group", dynamic=True,
                                                   symmetric=True)}, "int-quantized", None),
    # NVFP4: a GPU-only FP4 scheme this check does not mirror, neither accepted nor refused
    ({"weights": dict(num_bits=4, type="float", symmetric=True, strategy="tensor_group", group_size=16),
      "input_activations": dict(num_bits=4, type="float", strategy="tensor_group", group_size=16, dynamic="local")},
     "nvfp4-pack-quantized", ""),
])
def test_scheme_selection_follows_vllm(group, fmt, scheme):
    chosen, why = vllm_scheme(group, fmt)
    assert chosen == scheme, why
