"""2:4 semi-structured acceleration: eligibility (pure), CPU refusal, dry run, and the speed benchmark's CPU path."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaForCausalLM

from sink_modifier.runtime import AccelerationReport, accelerate_2of4, eligible_2of4_linears
from sink_modifier.sparsity_pattern import is_n_m_sparse
from tests.conftest import tiny_llama_config

CUDA_SM80 = torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def prune_2of4(linear: nn.Linear) -> nn.Linear:
    with torch.no_grad():
        rows, cols = linear.weight.shape
        groups = linear.weight.abs().reshape(rows, cols // 4, 4)
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, -1).indices, True)
        linear.weight.mul_(keep.reshape(rows, cols))
    return linear


class Tiny(nn.Module):
    def __init__(self, dtype=torch.bfloat16):
        super().__init__()
        torch.manual_seed(0)
        self.good = prune_2of4(nn.Linear(128, 64, bias=False, dtype=dtype))
        self.good_bias = prune_2of4(nn.Linear(128, 64, bias=True, dtype=dtype))
        self.dense = nn.Linear(128, 64, bias=False, dtype=dtype)
        self.bad_shape = prune_2of4(nn.Linear(96, 48, bias=False, dtype=dtype))
        self.fp32 = prune_2of4(nn.Linear(128, 64, bias=False, dtype=torch.float32))
        self.embed = nn.Embedding(64, 128, dtype=dtype)
        self.tied = nn.Linear(128, 64, bias=False, dtype=dtype)
        self.tied.weight = self.embed.weight
        self.lm_head = prune_2of4(nn.Linear(128, 64, bias=False, dtype=dtype))

    def forward(self, x):
        return self.lm_head(self.good(x))


def test_eligibility_names_each_reason():
    reasons = eligible_2of4_linears(Tiny(), min_features=0)
    assert reasons["good"] is None and reasons["good_bias"] is None
    assert reasons["dense"].startswith("not 2:4 sparse") and "groups of 4 inputs" in reasons["dense"]
    assert "shape (out=48, in=96) is not a multiple of (32, 64)" in reasons["bad_shape"]
    assert "backend='cusparselt' alone needs only (16, 16)" in reasons["bad_shape"]
    assert "dtype float32 not supported" in reasons["fp32"]
    assert "shared with embed.weight" in reasons["tied"]
    assert reasons["lm_head"].startswith("lm_head")
    assert set(reasons) == {"good", "good_bias", "dense", "bad_shape", "fp32", "tied", "lm_head"}


def test_eligibility_options():
    model = Tiny()
    # default min_features keeps tiny layers dense
    assert "smaller than min_features=1024" in eligible_2of4_linears(model)["good"]
    # judged as if cast to bf16, the fp32 layer qualifies
    assert eligible_2of4_linears(model, min_features=0, dtype=torch.bfloat16)["fp32"] is None
    # cuSPARSELt alone needs multiples of 16 x 16 only; CUTLASS takes fp32
    assert eligible_2of4_linears(model, min_features=0, backend="cusparselt")["bad_shape"] is None
    assert eligible_2of4_linears(model, min_features=0, backend="cutlass")["fp32"] is None
    # not on CUDA when CUDA is required
    assert "not on a CUDA device" in eligible_2of4_linears(model, min_features=0, require_cuda=True)["good"]
    model.good.quantization_scheme = object()  # what compressed-tensors attaches
    assert "quantized" in eligible_2of4_linears(model, min_features=0)["good"]
    with pytest.raises(ValueError, match="backend"):
        eligible_2of4_linears(model, backend="marlin")
    with pytest.raises(ValueError, match="float32"):
        accelerate_2of4(model, dtype=torch.float32, dry_run=True)


def test_hf_model_every_block_linear_eligible_lm_head_skipped():
    model = LlamaForCausalLM(tiny_llama_config(hidden_size=64, intermediate_size=128)).to(torch.bfloat16)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and not name.endswith("lm_head"):
            prune_2of4(module)
    reasons = eligible_2of4_linears(model, min_features=0)
    assert [n for n, r in reasons.items() if r is not None] == ["lm_head"]
    assert sum(r is None for r in reasons.values()) == 14


@pytest.mark.skipif(CUDA_SM80, reason="tests the refusal on machines without a usable GPU")
def test_cpu_model_is_refused_with_a_clear_message(monkeypatch):
    model = Tiny()
    with pytest.raises(RuntimeError, match=r"need an NVIDIA GPU \(sm80\+\) with CUDA; the model is on cpu") as err:
        accelerate_2of4(model, min_features=0)
    assert "model.cuda()" in str(err.value) and "dry_run=True" in str(err.value)
    # CUDA present but the model left on the CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(RuntimeError, match="the model is on cpu: move it with model.cuda()"):
        accelerate_2of4(model, min_features=0)
    assert type(model.good.weight) is nn.Parameter  # nothing converted


def test_dry_run_reports_without_converting():
    model = Tiny()
    before = model.good.weight.detach().clone()
    report = accelerate_2of4(model, min_features=0, dry_run=True)
    assert isinstance(report, AccelerationReport) and report.dry_run
    assert report.eligible == ["good", "good_bias"] and report.converted == []
    assert report.num_skipped == 5 and "not 2:4" in report.skipped["dense"]
    assert type(model.good.weight) is nn.Parameter and torch.equal(model.good.weight, before)
    as_dict = report.to_dict()
    assert as_dict["num_eligible"] == 2 and as_dict["num_converted"] == 0 and as_dict["backend"] == "auto"
    assert "2 Linear layers eligible (dry run" in report.summary()


@pytest.mark.skipif(not CUDA_SM80, reason="needs an NVIDIA GPU with compute capability 8.0+")
def test_gpu_conversion_matches_dense():
    model = nn.Sequential(
        prune_2of4(nn.Linear(1024, 2048, bias=True)), nn.ReLU(), prune_2of4(nn.Linear(2048, 1024, bias=False))
    ).to("cuda", torch.bfloat16)
    x = torch.randn(2, 64, 1024, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        expected = model(x).float()
    report = accelerate_2of4(model, min_features=0)
    assert report.converted == ["0", "2"], report.skipped
    assert isinstance(model[0].weight, torch.sparse.SparseSemiStructuredTensor)
    with torch.no_grad():
        got = model(x).float()
    assert (got - expected).abs().max() <= 2e-2 * expected.abs().max()


# --------------------------------------------------------------------------- the benchmark script


@pytest.fixture(scope="module")
def bench():
    from tests.conftest import load_benchmark

    return load_benchmark("sparse24_speed")


TINY = ["--hidden", "64", "--mlp", "192", "--heads", "4", "--seq", "32", "--layers", "2", "--vocab", "128",
        "--min-features", "0", "--warmup", "0", "--repeats", "1"]


def test_benchmark_dry_run_on_cpu_runs_the_logic_and_writes_nothing(bench, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert bench.main(["--device", "cpu", "--dry-run", *TINY, "--output", str(out)]) == 0
    text = capsys.readouterr().out
    assert "14 Linear layers eligible (dry run" in text and "skip lm_head" in text
    assert "MLP (ff_proj, up_proj, ff_out)" in text and "model: 32 layers + lm_head" in text
    assert "nothing written" in text and not out.exists()


def test_benchmark_without_gpu_says_so_and_writes_nothing(bench, tmp_path, capsys):
    out = tmp_path / "results.json"
    assert bench.main(["--device", "cpu", *TINY, "--output", str(out)]) == 0
    assert "Nothing was measured and nothing was written" in capsys.readouterr().out
    if not torch.cuda.is_available():
        assert bench.main([*TINY, "--output", str(out)]) == 0
        assert "torch.cuda.is_available() is False" in capsys.readouterr().out
    assert not out.exists()


def test_benchmark_stack_is_2of4_and_bidirectional(bench):
    args = bench.parse_args(["--device", "cpu", *TINY])
    model = bench.build_stack(args, torch.device("cpu"), torch.float32)
    linears = [m for m in model.layers.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 14 and all(is_n_m_sparse(m.weight, 2, 4) for m in linears)
    assert all(float((m.weight == 0).float().mean()) == 0.5 for m in linears)
    x = torch.randn(1, 32, 64)
    cos, sin = bench.rotary_tables(32, 16, "cpu", torch.float32)
    with torch.no_grad():
        full = model(x, cos, sin)
        changed = x.clone()
        changed[:, -1] += 1.0  # the last token influences the first: no causal mask
        assert not torch.allclose(model(changed, cos, sin)[:, 0], full[:, 0])


def test_benchmark_rejects_bad_shapes(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--hidden", "100", "--heads", "3"])
