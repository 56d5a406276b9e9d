"""Every parameter accounted for: DiffusionGemma's experts quantized on disk and read back, coverage in
``sink_modifier.json`` and ``verify --json``, and a "quantized" checkpoint whose experts are float refused."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors import safe_open

from sink_modifier.cli import main
from tests.family_models.diffusion_gemma import build_diffusion_gemma_checkpoint

PRUNE_THEN = """sparsity_stage:
  sparsity_modifiers:
    SinkAwareWandaPruningModifier:
      sparsity: 0.5
      targets: ["Linear"]
      sink_weighting: false
quantization_stage:
  quantization_modifiers:
    QuantizationModifier:
      targets: ["Linear"]
      scheme: {scheme}
"""


@pytest.fixture(scope="module")
def dg(tmp_path_factory):
    folder = build_diffusion_gemma_checkpoint(tmp_path_factory.mktemp("dg") / "dense")
    rng = random.Random(0)
    docs = [" ".join(f"w{rng.randrange(4, 60)}" for _ in range(rng.randrange(40, 80))) for _ in range(40)]
    data = folder.parent / "docs.txt"
    data.write_text("\n\n".join(docs) + "\n")
    return folder, data


def _prune(dg, tmp_path, scheme: str, name: str = "out") -> tuple[int, object]:
    folder, data = dg
    recipe = tmp_path / f"{scheme}.yaml"
    recipe.write_text(PRUNE_THEN.format(scheme=scheme))
    out = tmp_path / name
    code = main(["prune", "--model", str(folder), "--recipe", str(recipe), "--data", str(data), "--output", str(out),
                 "--num-samples", "2", "--seq-len", "32"])
    return code, out


def _tensors(folder) -> dict[str, str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        return {k: handle.get_slice(k).get_dtype() for k in handle.keys()}


@pytest.mark.parametrize("scheme,dtype", [("W8A8", "I8"), ("FP8", "F8_E4M3")])
def test_prune_and_quantize_diffusion_gemma_quantizes_every_expert_and_reloads(dg, tmp_path, capsys, scheme, dtype):
    from sink_modifier.families import load_pretrained

    code, out = _prune(dg, tmp_path, scheme)
    assert code == 0, capsys.readouterr().err
    tensors = _tensors(out)
    experts = {k: v for k, v in tensors.items() if ".experts." in k and k.endswith(".weight")}
    # 2 layers x 4 experts x (gate, up, down), one quantized Linear each; no fused float stacks
    assert len(experts) == 24 and set(experts.values()) == {dtype}
    assert not [k for k in tensors if k.endswith(("experts.gate_up_proj", "experts.down_proj"))]
    # the encoder's text layers are the decoder's: stored once, as in the original checkpoint
    assert not [k for k in tensors if k.startswith("model.encoder.language_model.layers.") and "scalar" not in k]
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert not [n for n in quant["ignore"] if n.startswith("model.encoder.language_model.")]

    coverage = json.loads((out / "sink_modifier.json").read_text())["coverage"]
    assert coverage["problems"] == []
    rows = {(r["status"], r["reason"]): r for r in coverage["rows"]}
    quantized = rows[("pruned+quantized", None)]
    assert "model.decoder.layers.0.experts" in quantized["examples"] or quantized["modules"] >= 14
    reasons = {r["reason"] for r in coverage["rows"] if r["status"] == "dense"}
    assert {"vision tower (never sees text)", "router (tiny; pruning it reroutes tokens)",
            "embedding (not a Linear target)"} <= reasons
    assert sum(r["parameters"] for r in coverage["rows"]) == coverage["parameters"]

    # read back fused: the experts hold the dequantized stored values, pruned zeros included
    reloaded = load_pretrained(out).model
    dense = load_pretrained(dg[0]).model
    for layer in range(2):
        got, was = reloaded.model.decoder.layers[layer].experts, dense.model.decoder.layers[layer].experts
        assert got.gate_up_proj.shape == was.gate_up_proj.shape
        zeros = float((got.gate_up_proj == 0).float().mean())
        assert 0.45 < zeros < 0.6, zeros  # Wanda 50% per expert row, plus rounding zeros
        kept = got.gate_up_proj != 0
        error = (got.gate_up_proj - was.gate_up_proj).detach()[kept].abs().max()
        assert float(error) < 0.05 * float(was.gate_up_proj.detach().abs().max())
    capsys.readouterr()
    assert main(["verify", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["coverage"]["by_status"] == coverage["by_status"]


def test_a_checkpoint_with_float_experts_under_a_linear_target_fails_verify_with_one_line(dg, tmp_path, capsys):
    """llm-compressor's documented MoE path (oneshot, then repack_moe before save_pretrained) writes the
    fused experts float beside their scales: the trap that leaves ~88% of a DiffusionGemma float."""
    from llmcompressor import oneshot
    from llmcompressor.modeling.moe.linearize import repack_moe
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    folder, _ = dg
    model = AutoModelForImageTextToText.from_pretrained(folder)
    oneshot(model=model, processor=AutoTokenizer.from_pretrained(folder),
            recipe=[QuantizationModifier(targets=["Linear"], scheme="FP8_DYNAMIC", ignore=["re:.*lm_head"])])
    repack_moe(model)
    out = tmp_path / "upstream"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    assert [k for k, v in _tensors(out).items() if k.endswith("experts.gate_up_proj") and v == "F32"]
    capsys.readouterr()
    assert main(["verify", str(out), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    problems = [p for p in report["problems"] if "stored float although quantization_config targets them" in p]
    assert len(problems) == 1 and "experts" in problems[0] and "sink-modifier prune" in problems[0]


def test_prune_never_publishes_a_quantized_checkpoint_whose_experts_stayed_float(dg, tmp_path, capsys, monkeypatch):
    """If a family put fused float experts back after quantizing (as upstream's repack does), prune refuses:
    exit 1, one line, nothing written."""
    from llmcompressor.modeling.moe.linearize import repack_moe

    from sink_modifier.families.diffusion_gemma import DiffusionGemmaFamily

    monkeypatch.setattr(DiffusionGemmaFamily, "after_oneshot", lambda self, model: repack_moe(model))
    capsys.readouterr()
    code, out = _prune(dg, tmp_path, "FP8_DYNAMIC", "refused")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and err[-1].startswith("sink-modifier prune: check failed: ")
    assert "experts" in err[-1] and not out.exists() and list(tmp_path.glob(".refused*")) == []


def test_coverage_of_a_quantized_llama_names_the_head_and_embeddings(tiny_llama_dir, text_file, tmp_path, capsys):
    recipe = tmp_path / "w8a8.yaml"
    recipe.write_text("quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n      targets: [Linear]\n"
                      "      scheme: W8A8\n")
    out = tmp_path / "q"
    assert main(["prune", "--model", str(tiny_llama_dir), "--recipe", str(recipe), "--data", str(text_file),
                 "--output", str(out), "--num-samples", "2", "--seq-len", "16"]) == 0
    coverage = json.loads((out / "sink_modifier.json").read_text())["coverage"]
    by = {(r["status"], r["reason"]): r for r in coverage["rows"]}
    assert by[("quantized", None)]["modules"] == 14  # 2 layers x 7 Linears
    assert by[("dense", "output head (every recipe leaves it dense)")]["examples"] == ["lm_head"]
    assert ("dense", "embedding (not a Linear target)") in by
    head = torch.nn.Linear(32, 64).weight.numel()
    assert by[("dense", "output head (every recipe leaves it dense)")]["parameters"] == head
