"""The analytic cost model (benchmarks/cost_model.py) against hand-computed counts (no model runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from tests.conftest import load_benchmark

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


cost = load_benchmark("cost_model")
report = load_benchmark("cost_report")

# d=8, 2 layers, 2 query heads / 1 kv head of 4, MLP 16, vocab 10
TINY = cost.ModelShape("tiny", hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, mlp=16, vocab=10, attention="sdpa")
T, N, K = 4, 3, 2  # 6 noised rows


def test_params():
    # q 8*8 + k,v 2*8*4 + o 8*8 + MLP 3*8*16 = 64 + 64 + 64 + 384 = 576; + two norms of 8
    assert cost.layer_linear_params(TINY) == 576
    assert cost.layer_params(TINY) == 592
    # embedding 80 + lm_head 80 + 2 layers + final norm 8
    assert cost.model_params(TINY) == 80 + 80 + 2 * 592 + 8


def test_layer_flops():
    f = cost.layer_flops(TINY, T)
    assert f["projections"] == 2 * 4 * (64 + 64 + 64)  # 1536
    assert f["mlp"] == 2 * 4 * 384  # 3072
    assert f["attention_qk"] == 2 * 2 * 4 * 4 * 4  # 2*H*hd*T^2 = 256
    assert f["attention_av"] == 256
    assert f["total"] == 5120
    assert cost.lm_head_flops(TINY, T) == 2 * 4 * 8 * 10  # 640
    assert cost.mass_flops(TINY, T, "query_key") == 256
    assert cost.mass_flops(TINY, T, "probabilities") == 0
    assert cost.layer_flops(TINY, T, batch=3)["total"] == 3 * 5120


def test_passes_and_flops_per_procedure():
    paper = cost.procedure_cost(TINY, T, N, K, "paper")
    ours = cost.procedure_cost(TINY, T, N, K, "ours")
    basic = cost.procedure_cost(TINY, T, N, K, "ours_basic")
    llmc = cost.procedure_cost(TINY, T, N, K, "llmc")
    # paper: dense + sink forward per (sample, timestep), both with the LM head
    assert paper["passes"]["full_forward_equivalents"] == 12
    assert paper["passes"]["layer_forwards"] == 24
    assert paper["passes"]["lm_head_forwards"] == 12
    assert paper["passes"]["mass_computations"] == 12
    assert paper["flops"]["total"] == 24 * 5120 + 12 * 640 + 12 * 256  # 133632
    # ours, sequential: sink pass + calibrate + propagate per row and layer, LM head on meta
    assert ours["passes"]["layer_forwards"] == 36
    assert ours["passes"]["sink_forwards"] == 6
    assert ours["passes"]["lm_head_forwards"] == 0
    assert ours["flops"]["total"] == 36 * 5120 + 12 * 256  # 187392
    assert basic["flops"]["total"] == 24 * 5120 + 12 * 256  # 125952
    # llm-compressor Wanda: calibrate + propagate
    assert llmc["passes"]["layer_forwards"] == 24
    assert llmc["passes"]["sink_forwards"] == 0
    assert llmc["flops"]["total"] == 24 * 5120  # 122880
    assert llmc["flops"]["mass"] == 0


def test_eager_models_reduce_probabilities_without_matmuls():
    eager = cost.ModelShape(**{**asdict(TINY), "attention": "eager"})
    ours = cost.procedure_cost(eager, T, N, K, "ours")
    assert ours["mass_source"] == "probabilities"
    assert ours["flops"]["mass"] == 0
    assert ours["flops"]["total"] == 36 * 5120
    # attention core of an eager forward: B*H*T^2*(2b + 4) = 2*16*8
    assert ours["memory"]["attention_core"] == 2 * 16 * 8
    # reduction: fp32 [B, T, T] head sum, plus an fp32 copy of bf16 probabilities
    assert ours["memory"]["mass_buffer"] == 16 * 4 + 2 * 16 * 4


def test_memory_counts():
    b = 2
    paper = cost.procedure_cost(TINY, T, N, K, "paper")
    m = paper["memory"]
    assert m["weights_layer"] == 592 * b
    assert m["weights_model"] == cost.model_params(TINY) * b
    assert m["weights_device"] == m["weights_model"]
    assert m["mass_buffer"] == 2 * 16 * 10  # B*H*T^2*(2 + 4 + 4)
    assert m["logits"] == 4 * 10 * b
    # per token: 2d + 2 d_q + 2 d_kv + 3m = 16 + 16 + 8 + 48 = 88 elements
    assert m["activations_layer"] == 4 * 88 * b
    assert m["attention_core"] == 0
    act_phase = m["activations_layer"] + m["mass_buffer"]
    assert m["peak_device"] == m["weights_device"] + m["hidden_states"] + max(act_phase, m["logits"]) + m["statistics"]

    ours = cost.procedure_cost(TINY, T, N, K, "ours")["memory"]
    # chunk covers all 4 queries here: 3 fp32 [1,2,4,4] blocks + fp32 keys [1,2,4,4] + GQA copy (bf16)
    # + fp32 query block + [1,4,4] head sum + [1,4] mass
    assert cost.chunk_rows(TINY, T) == 4
    assert ours["mass_buffer"] == 3 * 32 * 4 + 32 * 4 + 32 * 2 + 32 * 4 + 16 * 4 + 4 * 4
    assert ours["token_weights"] == 6 * 4 * 4
    assert ours["intermediates_host"] == 6 * 4 * 8 * b
    assert cost.procedure_cost(TINY, T, N, K, "llmc")["memory"]["mass_buffer"] == 0


def test_chunk_rows_follow_budget():
    llada = cost.PRESETS["llada-8b"]
    # 64 MiB / (32 heads * 4096 keys * 4 bytes) = 128 queries per block
    assert cost.chunk_rows(llada, 4096) == 128
    assert cost.chunk_rows(llada, 4096, chunk_bytes=1) == 1
    assert cost.chunk_rows(TINY, 4, chunk_bytes=10**9) == 4


def test_onload_placement():
    onl = {p: cost.procedure_cost(TINY, T, N, K, p, placement="onload") for p in cost.PROCEDURES}
    b = 2
    # llmc onloads one subgraph at a time: the larger of one block and the embedding
    assert onl["llmc"]["memory"]["weights_device"] == max(592 * b, 80 * b)
    # ours, sequential: the sink pass lifts disable_offloading(), one module at a time, like llmc
    assert onl["ours"]["memory"]["weights_device"] == max(592 * b, 80 * b)
    # ours, basic pipeline: whole-model forwards keep every layer onloaded (LM head on meta)
    assert onl["ours_basic"]["memory"]["weights_device"] == (cost.model_params(TINY) - 80) * b
    # the paper's code has no onloading
    assert onl["paper"]["placement"] == "resident"
    assert onl["paper"]["memory"]["weights_device"] == cost.model_params(TINY) * b


def test_llada_paper_collector_matches_reference_spec():
    # reference-spec §7.3: about 5.4 GB per batch element for LLaDA (H=32, T=4096)
    llada = cost.PRESETS["llada-8b"]
    paper = cost.procedure_cost(llada, 4096, 128, 10, "paper")
    assert paper["memory"]["mass_buffer"] == 32 * 4096 * 4096 * 10
    assert 5.3e9 < paper["memory"]["mass_buffer"] < 5.5e9
    # 2 x 128 x 10 = 2560 full forwards (§1.9)
    assert paper["passes"]["full_forward_equivalents"] == 2560
    # mean mass = L*H = 1024 is not the model's business here, but the shape is
    assert llada.layers * llada.heads == 1024


def test_report_ratios_and_config_loading(tmp_path):
    rep = cost.analytic_report(TINY, T, N, K)
    res = rep["procedures"]["resident"]
    assert res["llmc"]["ratio_vs_llmc"]["flops"] == 1.0
    assert res["ours"]["ratio_vs_llmc"]["flops"] == pytest.approx(187392 / 122880)
    table = report.analytic_table(rep)
    assert "ours, sequential" in table and "onload" in table

    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2,
                                "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
                                "intermediate_size": 16, "vocab_size": 10}))
    shape = cost.resolve_shape(str(path))
    assert (shape.hidden, shape.layers, shape.heads, shape.kv_heads, shape.head_dim, shape.mlp, shape.vocab) == (
        8, 2, 2, 1, 4, 16, 10)
    assert shape.attention == "eager"  # transformers' Llama: llm-compressor forces eager attention
    with pytest.raises(ValueError, match="unknown model"):
        cost.resolve_shape(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="procedure"):
        cost.procedure_cost(TINY, T, N, K, "nope")


def test_committed_cost_md_is_the_rendering_of_cost_json():
    # cost.md is never edited by hand: re-rendering the stored report reproduces it byte for byte
    results = BENCHMARKS / "results"
    stored = json.loads((results / "cost.json").read_text())
    stored["findings"] = report.findings(stored)
    assert report.markdown(stored) == (results / "cost.md").read_text()


def test_model_and_report_import_no_ml_libraries():
    # the analytic model and the rendering run where torch is absent; measurement imports it lazily
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import cost_model, cost_report, cost_measure; "
            "print(sorted({'torch', 'transformers', 'llmcompressor', 'sink_modifier'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, str(BENCHMARKS)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
