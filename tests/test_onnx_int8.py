"""Integer ONNX export: a W8A8 checkpoint's own int8 weights with the recipe's activation arithmetic on ORT
int8 kernels, W4A16 as MatMulNBits, and the refusal of what ORT cannot run as stored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import CORPUS, MASK_ID, REPO, TINY_DLM, VOCAB, requires_shared

pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime needs the onnx extra: pip install -e '.[onnx]'")
onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from sink_modifier.cli import main  # noqa: E402
from sink_modifier.export.onnx_export import DEFAULT_ATOL, ONNX_FILE, ONNX_METADATA_FILE, load_for_export  # noqa: E402
from sink_modifier.export.onnx_int8 import ActivationGranularity, Int8Kernel, quantize_graph_int8  # noqa: E402
from sink_modifier.export.onnx_quantization import (  # noqa: E402
    ExportPrecision,
    QuantizedLinear,
    plan_export,
)
from sink_modifier.generation import generate  # noqa: E402
from sink_modifier.generation.onnx_runtime import OnnxDenoiser  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

W8A8_RECIPE = REPO / "recipes" / "sink_wanda_50_w8a8.yaml"
FP8_RECIPE = REPO / "recipes" / "sink_wanda_2of4_fp8_dynamic.yaml"
W4A16_RECIPE = REPO / "recipes" / "sink_wanda_2of4_w4a16.yaml"
FAST = dict(num_samples=2, seq_len=32, timesteps=(0.5,))


def _args(**over) -> dict:
    args = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel", "group_size": None,
            "dynamic": False}
    return {**args, **over}


def _config(weights, acts, fmt="int-quantized") -> dict:
    return {"quantization_config": {
        "quant_method": "compressed-tensors", "format": fmt, "ignore": ["lm_head"],
        "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": acts,
                                      "output_activations": None, "format": fmt}}}}


W8A8 = _config(_args(), _args(strategy="token", dynamic=True))
FP8 = _config(_args(type="float"), _args(type="float", strategy="token", dynamic=True), "float-quantized")
W4A16 = _config(_args(num_bits=4, strategy="group", group_size=32), None, "pack-quantized")


# -- the plan, from config.json alone ---------------------------------------------------------
def test_plan_reads_the_scheme_from_config_json():
    assert plan_export({}).precision is ExportPrecision.FLOAT and not plan_export({}).quantized_checkpoint
    assert plan_export(W8A8).precision is ExportPrecision.INT8
    assert plan_export(W4A16).precision is ExportPrecision.INT4
    dequantized = plan_export(FP8, dequantize=True)
    assert dequantized.precision is ExportPrecision.FLOAT and dequantized.dequantized


@pytest.mark.parametrize(("config", "message"), [
    (FP8, "FP8"),
    (_config(_args(), _args(strategy="token", dynamic=False)), "activation"),  # static activations
    (_config(_args(), _args(strategy="token", dynamic=True, symmetric=False)), "activation"),
    (_config(_args(), None), "float activations"),  # W8A16
    (_config(_args(num_bits=4, strategy="group", group_size=48), None, "pack-quantized"), "power of two"),
    (_config(_args(symmetric=False), _args(strategy="token", dynamic=True)), "symmetric"),
])
def test_plan_refuses_what_ort_cannot_run_naming_dequantize(config, message):
    with pytest.raises(ValueError, match=message) as err:
        plan_export(config)
    assert "--dequantize" in str(err.value)


# -- the rewrite on a one-MatMul graph, against compressed-tensors' own arithmetic ---------------
def _one_linear_graph(weight: np.ndarray) -> onnx.ModelProto:
    out_features, in_features = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_t"], ["y"], name="linear")], "one_linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", out_features])],
        [numpy_helper.from_array(np.ascontiguousarray(weight.T), "w_t")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def _activations() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, 64, generator=g) * torch.logspace(-3, 1, 64)[torch.randperm(64, generator=g)]
    x[0, 0] = 0.0  # an all-zero token: compressed-tensors puts eps in place of its zero scale
    ties = (torch.arange(64) - 32 + 0.5) / 16  # x / s = k + 0.5 exactly (s = 2^-4): round half to even
    x[0, 1] = ties.clamp(max=127.5 / 16)
    x[0, 1, -1] = 127.5 / 16  # the absmax, so that s is exactly 2^-4
    x[1, 2] = -x[1, 2].abs()  # negative absmax -> -128
    return x


@pytest.mark.parametrize("kernel", [Int8Kernel.INTEGER_TO_FLOAT, Int8Kernel.INTEGER])
@pytest.mark.parametrize("granularity", list(ActivationGranularity))
def test_int8_graph_computes_compressed_tensors_integers_bit_for_bit(kernel, granularity):
    from compressed_tensors.quantization import QuantizationArgs, fake_quantize
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    g = torch.Generator().manual_seed(1)
    q_w = torch.randint(-127, 128, (24, 64), generator=g, dtype=torch.int8)
    q_w[:, ::2] = 0  # pruned
    s_w = torch.rand(24, generator=g) / 100
    dequantized = (q_w.float() * s_w[:, None]).numpy()
    model = _one_linear_graph(dequantized)
    rewrite = quantize_graph_int8(model, {"lin": QuantizedLinear("lin", q_w.numpy(), s_w.numpy())},
                                  {"lin": dequantized}, activations=granularity, kernel=kernel)
    assert rewrite.int8_layers == {"lin": "linear"} and rewrite.float_matmuls == []
    integer_op = "MatMulIntegerToFloat" if kernel is Int8Kernel.INTEGER_TO_FLOAT else "MatMulInteger"
    matmul = next(n for n in model.graph.node if n.op_type == integer_op)
    assert "MatMul" not in {n.op_type for n in model.graph.node}
    model.graph.output.append(helper.make_tensor_value_info(matmul.input[0], TensorProto.UINT8, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    x = _activations()
    y, q_x = session.run(None, {"x": x.numpy()})
    args = QuantizationArgs(num_bits=8, type="int", symmetric=True, dynamic=True, strategy=granularity.value)
    scale, zero_point = compute_dynamic_scales_and_zp(x, args, torch.nn.Module())
    expected_q = torch.clamp(x / scale, -128, 127).round()
    assert np.array_equal(q_x.astype(np.int32) - 128, expected_q.numpy().astype(np.int32))
    if granularity is ActivationGranularity.TOKEN:
        assert (expected_q[0, 1, :-1] % 2 == 0).all() and expected_q[1, 2].min() == -128  # the ties and -128 ran
    expected_y = fake_quantize(x, scale, zero_point, args) @ torch.from_numpy(dequantized).T
    torch.testing.assert_close(torch.from_numpy(y), expected_y, rtol=1e-5, atol=1e-6)


def test_a_quantized_linear_missing_from_the_graph_is_an_error():
    q_w = np.ones((4, 8), np.int8)
    model = _one_linear_graph(np.full((4, 8), 0.5, np.float32))
    with pytest.raises(RuntimeError, match="not found in the exported graph"):
        quantize_graph_int8(model, {"lin": QuantizedLinear("lin", q_w, np.full(4, 0.25, np.float32))},
                            {"lin": np.full((4, 8), 0.25, np.float32)})


# -- tiny-dlm pruned 50% + W8A8 by the shipped recipe, exported through the CLI -----------------
@pytest.fixture(scope="module")
def w8a8_dir(tmp_path_factory):
    from sink_modifier.commands.prune import prune_checkpoint

    out = tmp_path_factory.mktemp("w8a8") / "tiny-dlm-w8a8"
    return prune_checkpoint(TINY_DLM, W8A8_RECIPE, CORPUS, out, **FAST).output_dir


@pytest.fixture(scope="module")
def int8_export(w8a8_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny-dlm-int8"
    assert main(["export-onnx", "--model", str(w8a8_dir), "--output", str(out), "--json"]) == 0
    return out


@pytest.fixture(scope="module")
def stored(w8a8_dir):
    from safetensors.torch import load_file

    return load_file(w8a8_dir / "model.safetensors")


@pytest.fixture(scope="module")
def fake_quant_model(w8a8_dir):
    from sink_modifier.families import load_pretrained

    return load_pretrained(w8a8_dir, dtype="float32").model


def _initializers(path):
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _as_int8(weight: np.ndarray) -> np.ndarray:
    """A graph's GEMM weight as the int8 values it multiplies by: u8u8 graphs hold w + 128 in uint8."""
    return (weight.astype(np.int16) - 128).astype(np.int8) if weight.dtype == np.uint8 else weight


@requires_shared(TINY_DLM)
def test_graph_holds_the_checkpoints_int8_weights_and_scales_exactly(int8_export, stored):
    graph = onnx.load(str(int8_export / ONNX_FILE)).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    int8_nodes = [n for n in graph.node if n.op_type == "MatMulIntegerToFloat"]
    layers = sorted(k.removesuffix(".weight_scale") for k in stored if k.endswith(".weight_scale"))
    assert len(layers) == len(int8_nodes) == 56  # 8 blocks x 7 Linears; lm_head is not quantized
    in_graph = {_as_int8(initializers[n.input[1]]).tobytes(): initializers[n.input[3]] for n in int8_nodes}
    for name in layers:
        values, scale = stored[f"{name}.weight"], stored[f"{name}.weight_scale"].float()
        assert values.dtype == torch.int8
        key = np.ascontiguousarray(values.numpy().T).tobytes()  # [in, out], as MatMul multiplies
        assert key in in_graph, f"{name}'s int8 values are not in the graph"
        assert np.array_equal(in_graph[key], scale.numpy().reshape(-1)), name
        # pruned zeros stay zero (50% per row) and every graph int8 weight is one stored
        assert ((values == 0).sum(dim=1) >= values.shape[1] // 2).all(), name
    form = json.loads((int8_export / ONNX_METADATA_FILE).read_text())["quantization"]["int8_operands"]["form"]
    assert {initializers[n.input[1]].dtype for n in int8_nodes} == {np.dtype(np.uint8 if form == "u8u8" else np.int8)}


@requires_shared(TINY_DLM)
def test_head_stays_float_and_the_export_records_int8(int8_export, stored):
    meta = json.loads((int8_export / ONNX_METADATA_FILE).read_text())
    assert meta["precision"] == "int8" and meta["quantization"]["int8_layers"] == 56
    assert meta["quantization"]["float_layers"] == ["lm_head"]
    assert meta["quantization"]["input_activations"]["strategy"] == "token"
    assert meta["check_atol"] == DEFAULT_ATOL[ExportPrecision.INT8]
    assert max(meta["check_max_abs_diff"].values()) < DEFAULT_ATOL[ExportPrecision.INT8]
    head = stored["lm_head.weight"].float().numpy().T
    floats = [a for a in _initializers(int8_export / ONNX_FILE).values() if a.dtype == np.float32 and a.ndim == 2]
    assert any(a.shape == head.shape and np.array_equal(a, head) for a in floats)
    session = OnnxDenoiser(int8_export).session
    assert session.get_modelmeta().custom_metadata_map["sink_modifier.precision"] == "int8"
    batch, seq = session.get_inputs()[0].shape
    assert isinstance(batch, str) and isinstance(seq, str)  # dynamic axes


@requires_shared(TINY_DLM)
def test_ort_optimized_graph_runs_integer_kernels_and_no_float_matmul_for_quantized_layers(int8_export, tmp_path):
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(int8_export / ONNX_FILE), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(options.optimized_model_filepath).graph
    constants = {i.name for i in graph.initializer}
    ops = [n.op_type for n in graph.node]
    assert ops.count("MatMulIntegerToFloat") == 56
    float_weight_matmuls = [n for n in graph.node if n.op_type in ("MatMul", "FusedMatMul", "Gemm")
                            and n.input[1] in constants]
    assert len(float_weight_matmuls) == 1  # the output head; attention's matmuls take no weight


def _without_activation_quantization(model, ids):
    for module in model.modules():
        module.quantization_enabled = False
    try:
        with torch.no_grad():
            return model(input_ids=ids).logits
    finally:
        for module in model.modules():
            module.quantization_enabled = True


@requires_shared(TINY_DLM)
@pytest.mark.parametrize(("batch", "length"), [(1, 5), (3, 64)])
def test_ort_int8_logits_match_the_fake_quantized_pytorch_model(int8_export, fake_quant_model, batch, length):
    ids = torch.randint(4, 8192, (batch, length), generator=torch.Generator().manual_seed(length))
    ids[:, length // 2:] = MASK_ID
    with torch.no_grad():
        expected = fake_quant_model(input_ids=ids).logits
    got = OnnxDenoiser(int8_export, intra_op_threads=1)(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < DEFAULT_ATOL[ExportPrecision.INT8]
    # what activation quantization does to the logits, ORT reproduces it (measured cos ~0.75;
    # the rest is rounding flips that float32 vs float64 PyTorch shows as well; no activation
    # quantization would be 0)
    reference = _without_activation_quantization(fake_quant_model, ids)
    effect = torch.nn.functional.cosine_similarity((got - reference).flatten(), (expected - reference).flatten(), dim=0)
    assert effect > 0.5


@requires_shared(TINY_DLM)
def test_first_layer_activation_integers_are_compressed_tensors(int8_export, fake_quant_model):
    from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp

    model = onnx.load(str(int8_export / ONNX_FILE))
    first = next(n for n in model.graph.node if n.op_type == "MatMulIntegerToFloat").input[0]
    model.graph.output.append(helper.make_tensor_value_info(first, TensorProto.UINT8, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ids = torch.randint(4, 8192, (3, 64), generator=torch.Generator().manual_seed(7))
    q_ort = session.run(None, {"input_ids": ids.numpy()})[1].astype(np.int32) - 128

    q_proj = fake_quant_model.model.layers[0].self_attn.q_proj
    seen = []
    hook = q_proj.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        fake_quant_model(input_ids=ids)
    hook.remove()
    scale, _ = compute_dynamic_scales_and_zp(seen[0], q_proj.quantization_scheme.input_activations, q_proj)
    q_torch = torch.clamp(seen[0] / scale, -128, 127).round().numpy().astype(np.int32)
    # the same integers up to the odd rounding tie the (float) RMSNorm before it moves by one ulp
    differ = np.abs(q_ort - q_torch)
    assert differ.max() <= 1 and (differ > 0).mean() < 1e-3


@requires_shared(TINY_DLM)
def test_onnx_denoiser_generates_with_the_int8_folder(int8_export, w8a8_dir):
    from sink_modifier.families import load_tokenizer

    denoiser = OnnxDenoiser(int8_export, intra_op_threads=1)
    assert (denoiser.mask_token_id, denoiser.max_position_embeddings) == (MASK_ID, 256)
    prompt = load_tokenizer(w8a8_dir)("The history of the city", return_tensors="pt").input_ids
    out = generate(denoiser, prompt, mask_token_id=MASK_ID, gen_length=16, steps=16, block_length=8)
    assert out.shape == (1, prompt.shape[1] + 16) and not (out == MASK_ID).any()
    assert denoiser.calls == 16


@requires_shared(TINY_DLM)
def test_dequantize_loads_the_w8a8_checkpoint_as_a_float_model(w8a8_dir, stored):
    loaded = load_for_export(w8a8_dir, dequantize=True)
    assert loaded.plan.dequantized and loaded.reference is None
    up = loaded.model.get_submodule("model.layers.0.mlp.up_proj")
    assert not hasattr(up, "quantization_scheme")
    layer = "model.layers.0.mlp.up_proj"
    exact = stored[f"{layer}.weight"].float() * stored[f"{layer}.weight_scale"].float()
    torch.testing.assert_close(up.weight, exact, rtol=2**-7, atol=0)  # bf16 dequantization rounding


# -- schemes ORT cannot run as stored: refused before any work, unless --dequantize ------------
def _quantized_llama(model_dir, recipe, text_file, out):
    from sink_modifier.commands.prune import prune_checkpoint

    return prune_checkpoint(model_dir, recipe, text_file, out, num_samples=2, seq_len=16, timesteps=(0.5,)).output_dir


@pytest.fixture(scope="module")
def fp8_dir(tiny_llama_dir, text_file, tmp_path_factory):
    return _quantized_llama(tiny_llama_dir, FP8_RECIPE, text_file, tmp_path_factory.mktemp("fp8") / "tiny-fp8")


def test_fp8_is_refused_naming_dequantize_and_exports_float_with_it(fp8_dir, tmp_path, capsys):
    out = tmp_path / "fp8-onnx"
    assert main(["export-onnx", "--model", str(fp8_dir), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "FP8" in err and "--dequantize" in err and not out.exists()
    assert main(["export-onnx", "--model", str(fp8_dir), "--output", str(out), "--dequantize", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["precision"] == "float32" and "float" in captured.err
    meta = json.loads((out / ONNX_METADATA_FILE).read_text())
    assert meta["quantization"]["dequantized"] is True and meta["quantization"]["weights"]["type"] == "float"
    ops = {n.op_type for n in onnx.load(str(out / ONNX_FILE)).graph.node}
    assert "MatMul" in ops and not ops & {"MatMulInteger", "MatMulIntegerToFloat", "QuantizeLinear"}


@pytest.fixture(scope="module")
def w4a16_dir(tiny_llama_dir, text_file, tmp_path_factory):
    return _quantized_llama(tiny_llama_dir, W4A16_RECIPE, text_file, tmp_path_factory.mktemp("w4a16") / "tiny-w4a16")


def test_w4a16_exports_matmulnbits_holding_the_checkpoints_int4_values(w4a16_dir, tmp_path, capsys):
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from safetensors.torch import load_file

    from sink_modifier.families import load_pretrained

    out = tmp_path / "int4.onnx"
    assert main(["export-onnx", "--model", str(w4a16_dir), "--output", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int4" and max(report["max_abs_diff"].values()) < DEFAULT_ATOL[ExportPrecision.INT4]
    graph = onnx.load(str(out)).graph
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == 14 and "MatMulInteger" not in {n.op_type for n in graph.node}
    in_graph = {}
    for node in nodes:
        packed = initializers[node.input[1]]  # [N, blocks, 16]: two weights a byte, low nibble first
        nibbles = np.stack([packed & 0xF, packed >> 4], axis=-1).reshape(packed.shape[0], -1).astype(np.int8) - 8
        in_graph[nibbles.tobytes()] = initializers[node.input[2]]
    stored = load_file(w4a16_dir / "model.safetensors")
    for key in (k for k in stored if k.endswith(".weight_packed")):
        name = key.removesuffix(".weight_packed")
        values = unpack_from_int32(stored[key], 4, torch.Size(stored[f"{name}.weight_shape"].tolist())).numpy()
        assert values.tobytes() in in_graph, f"{name}'s int4 values are not in the graph"
        assert np.array_equal(in_graph[values.tobytes()], stored[f"{name}.weight_scale"].float().numpy()), name
        groups = (values == 0).reshape(values.shape[0], -1, 4).sum(-1)
        assert (groups >= 2).all(), name  # the 2:4 zeros are still there
    ids = torch.randint(4, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = load_pretrained(w4a16_dir, dtype="float32").model(input_ids=ids).logits
    assert (OnnxDenoiser(out)(ids) - expected).abs().max() < DEFAULT_ATOL[ExportPrecision.INT4]


@requires_shared(TINY_DLM)
def test_eval_onnx_nelbo_of_the_int8_graph_is_within_0_01_nats_of_pytorch_w8a8(int8_export, w8a8_dir, capsys):
    """The issue's numerics bar, one command each, identical windows and masks."""
    from tests.conftest import HELDOUT

    common = ["--data", str(HELDOUT), "--num-windows", "4", "--seq-len", "64", "--mc-samples", "2", "--json"]
    assert main(["eval", "--model", str(w8a8_dir), *common]) == 0
    torch_w8a8 = json.loads(capsys.readouterr().out)
    assert main(["eval", "--onnx", "--model", str(int8_export), "--threads", "1", *common]) == 0
    ort_int8 = json.loads(capsys.readouterr().out)
    assert ort_int8["runtime"]["engine"] == "onnxruntime"
    assert abs(ort_int8["nelbo"] - torch_w8a8["nelbo"]) < 0.01
    assert ort_int8["nelbo"] != torch_w8a8["nelbo"]  # a different engine really ran (int8 kernels, not a copy)


@requires_shared(TINY_DLM)
def test_int8_head_rounds_the_head_into_the_int8_graph(w8a8_dir, tmp_path, fake_quant_model):
    """--int8-head: no float weight MatMul left; the head's integers are compressed-tensors' rounding of
    the checkpoint's float head; the export says the head was rounded here, not read."""
    out = tmp_path / "int8-head"
    assert main(["export-onnx", "--model", str(w8a8_dir), "--output", str(out), "--int8-head", "--json"]) == 0
    meta = json.loads((out / ONNX_METADATA_FILE).read_text())
    quantization = meta["quantization"]
    assert quantization["float_weight_matmuls"] == 0 and "lm_head" not in quantization["float_layers"]
    assert "--int8-head" in quantization["output_head"]
    head = fake_quant_model.lm_head.weight.detach().float()
    scale = head.abs().amax(dim=1, keepdim=True) / 127.5
    expected = torch.clamp(torch.round(head / scale), -128, 127).to(torch.int8).numpy()
    found = [_as_int8(v) for v in _initializers(out / ONNX_FILE).values()
             if v.dtype in (np.int8, np.uint8) and v.shape == expected.T.shape]
    assert any(np.array_equal(v, expected.T) for v in found)
    ids = torch.randint(4, VOCAB, (1, 24), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = fake_quant_model(input_ids=ids).logits
    got = OnnxDenoiser(out, intra_op_threads=1)(ids)
    assert (got - reference).abs().max() < DEFAULT_ATOL[ExportPrecision.INT8]


def test_int8_head_is_refused_for_a_float_checkpoint_before_loading(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["export-onnx", "--model", str(TINY_DLM), "--output", str(out), "--int8-head"]) == 2
    err = capsys.readouterr().err
    assert "--int8-head" in err and "W8A8" in err and "drop --int8-head" in err
    assert not out.exists()


@requires_shared(TINY_DLM)
def test_export_records_the_int8_operands_and_the_cpu_that_checked_it(int8_export):
    from sink_modifier.export.onnx_cpu import cpu_isa

    meta = json.loads((int8_export / ONNX_METADATA_FILE).read_text())
    operands = meta["quantization"]["int8_operands"]
    isa = cpu_isa()
    # auto: the exporting CPU decides, u8u8 wherever MLAS' U8S8 kernel would saturate
    assert operands["form"] == ("u8u8" if isa.u8s8_saturates else "u8s8")
    assert operands["chosen"].startswith("auto") and operands["export_cpu"]["isa"] == isa.value
    assert meta["check_cpu"]["isa"] == isa.value
    session = OnnxDenoiser(int8_export).session
    assert session.get_modelmeta().custom_metadata_map["sink_modifier.int8_operands"] == operands["form"]


@requires_shared(TINY_DLM)
@pytest.mark.parametrize("extra", [[], ["--int8-operands", "u8u8"]])
def test_a_failed_ort_check_is_one_line_naming_atol_and_exits_1(w8a8_dir, tmp_path, capsys, extra):
    out = tmp_path / "too-strict"
    assert main(["export-onnx", "--model", str(w8a8_dir), "--output", str(out), "--atol", "0", *extra]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if "check failed" in line]
    assert len(lines) == 1 and "--atol 0" in lines[0] and "Traceback" not in captured.err
    assert ("u8u8" if extra else "GEMMs") in lines[0] and "nothing was written" in lines[0]
    assert captured.out == "" and not out.exists()


@requires_shared(TINY_DLM)
def test_u8u8_export_is_exact_everywhere_and_matches_the_u8s8_integers_here(w8a8_dir, int8_export, tmp_path):
    """--int8-operands u8u8 holds the same integers (w + 128 with zero point 128): same logits as auto here."""
    out = tmp_path / "u8u8"
    assert main(["export-onnx", "--model", str(w8a8_dir), "--output", str(out), "--int8-operands", "u8u8"]) == 0
    meta = json.loads((out / ONNX_METADATA_FILE).read_text())
    assert meta["quantization"]["int8_operands"]["form"] == "u8u8"
    ids = torch.randint(4, VOCAB, (2, 40), generator=torch.Generator().manual_seed(5))
    portable, default = OnnxDenoiser(out, intra_op_threads=1)(ids), OnnxDenoiser(int8_export, intra_op_threads=1)(ids)
    from sink_modifier.export.onnx_cpu import cpu_isa

    if not cpu_isa().u8s8_saturates:  # both exact here: the same int32 products, the same float rescale
        torch.testing.assert_close(portable, default, rtol=0, atol=0)
