"""ONNX Runtime export folders scored, generated from and run by lm-eval exactly like the PyTorch checkpoint."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.conftest import HELDOUT, MASK_ID, TINY_DLM, requires_shared

pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="ONNX Runtime needs the onnx extra: pip install -e '.[onnx]'")

from sink_modifier.cli import main  # noqa: E402
from sink_modifier.export.onnx_export import ONNX_FILE, export_onnx  # noqa: E402
from sink_modifier.generation.onnx_runtime import OnnxDenoiser  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), requires_shared(TINY_DLM), requires_shared(HELDOUT)]

# small enough for one core, large enough that a shifted window or mask would move every number
EVAL = ["--data", str(HELDOUT), "--num-windows", "3", "--seq-len", "48", "--mc-samples", "4", "--seed", "5",
        "--batch-size", "6", "--json"]
GENERATE = ["--prompt", "The history of the city", "--gen-length", "8", "--steps", "8", "--block-length", "8",
            "--json"]


@pytest.fixture(scope="module")
def fp32_export(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny-dlm-onnx"
    export_onnx(TINY_DLM, out, optimize=False)
    return out


@pytest.fixture(scope="module")
def int8_export(fp32_export, tmp_path_factory):
    """The fp32 folder with its graph replaced by ORT's own dynamic int8 quantization (same interface)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = tmp_path_factory.mktemp("onnx-int8") / "tiny-dlm-int8"
    shutil.copytree(fp32_export, out, ignore=shutil.ignore_patterns(ONNX_FILE))
    quantize_dynamic(fp32_export / ONNX_FILE, out / ONNX_FILE, weight_type=QuantType.QInt8)
    return out


def _json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def _refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err


# ---------------------------------------------------------------- eval --onnx


def test_onnx_eval_scores_like_pytorch_on_the_same_windows_and_masks(fp32_export, capsys):
    in_torch = _json(capsys, ["eval", "--model", str(TINY_DLM), *EVAL])
    in_ort = _json(capsys, ["eval", "--onnx", "--model", str(fp32_export), "--threads", "1", *EVAL])
    assert set(in_ort) - set(in_torch) == {"runtime"} and "runtime" not in in_torch
    assert in_ort["runtime"]["engine"] == "onnxruntime" and in_ort["runtime"]["threads"] == 1
    assert "CPUExecutionProvider" in in_ort["runtime"]["providers"]
    assert in_ort["runtime"]["file"] == str(fp32_export / ONNX_FILE)
    for key in ("family", "kind", "objective", "num_windows", "seq_len", "mc_samples", "seed"):
        assert in_ort[key] == in_torch[key], key
    assert (in_ort["family"], in_ort["seq_len"]) == ("bidirectional", 48)
    assert in_ort["nelbo"] == pytest.approx(in_torch["nelbo"], abs=1e-4)
    assert in_ort["nelbo_stderr"] == pytest.approx(in_torch["nelbo_stderr"], abs=1e-4)
    assert in_ort["masked_ce"] == pytest.approx(in_torch["masked_ce"], abs=1e-4)
    assert in_ort["masked_acc"] == in_torch["masked_acc"]
    # and the numbers are real: another seed draws other windows and masks
    other = _json(capsys, ["eval", "--onnx", "--model", str(fp32_export), "--threads", "1", *EVAL, "--seed", "6"])
    assert abs(other["nelbo"] - in_ort["nelbo"]) > 1e-3


def test_onnx_eval_refuses_bad_input_before_any_work(fp32_export, tmp_path, capsys):
    line = _refused(capsys, ["eval", "--onnx", "--model", str(TINY_DLM), *EVAL])
    assert "is a model checkpoint" in line and "drop --onnx" in line and "sink-modifier export-onnx" in line
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no model.onnx" in _refused(capsys, ["eval", "--onnx", "--model", str(empty), *EVAL])
    assert "export-onnx" in _refused(capsys, ["eval", "--onnx", "--model", str(tmp_path / "absent"), *EVAL])
    line = _refused(capsys, ["eval", "--onnx", "--model", str(fp32_export / ONNX_FILE), *EVAL])
    assert "is a file" in line and "export-onnx --output DIR" in line
    line = _refused(capsys, ["eval", "--model", str(fp32_export), *EVAL])
    assert "is an ONNX export" in line and "pass --onnx" in line
    line = _refused(capsys, ["eval", "--onnx", "--model", str(fp32_export), *EVAL, "--seq-len", "300"])
    assert "exceeds the model's maximum sequence length 256" in line and "--seq-len 256" in line
    line = _refused(capsys, ["eval", "--onnx", "--model", str(fp32_export), *EVAL, "--family", "diffusion_gemma"])
    assert "diffusion_gemma" in line and "model(input_ids).logits" in line and "drop --onnx" in line
    mixed = tmp_path / "mixed"
    shutil.copytree(fp32_export, mixed, ignore=shutil.ignore_patterns(ONNX_FILE))
    (mixed / ONNX_FILE).symlink_to(fp32_export / ONNX_FILE)
    config = json.loads((mixed / "config.json").read_text())
    (mixed / "config.json").write_text(json.dumps({**config, "vocab_size": 9000}))
    line = _refused(capsys, ["eval", "--onnx", "--model", str(mixed), *EVAL])
    assert "vocab_size=8192 but config.json has 9000" in line and "--overwrite" in line


# ---------------------------------------------------------------- generate --onnx


def test_onnx_generate_equals_pytorch_and_says_it_ran_in_ort(fp32_export, capsys):
    in_torch = _json(capsys, ["generate", "--model", str(TINY_DLM), *GENERATE])
    in_ort = _json(capsys, ["generate", "--onnx", "--model", str(fp32_export), "--threads", "1", *GENERATE])
    assert "runtime" not in in_torch
    assert in_ort["runtime"]["engine"] == "onnxruntime" and in_ort["runtime"]["threads"] == 1
    assert in_ort["token_ids"] == in_torch["token_ids"] and in_ort["completion"] == in_torch["completion"]
    assert in_ort["forward_passes"] == in_torch["forward_passes"] == 8


def test_onnx_generate_runs_an_int8_graph(fp32_export, int8_export, capsys):
    fp32, int8 = OnnxDenoiser(fp32_export, intra_op_threads=1), OnnxDenoiser(int8_export, intra_op_threads=1)
    ids = torch.randint(4, 8192, (2, 24), generator=torch.Generator().manual_seed(0))
    ids[:, 12:] = MASK_ID
    gap = float((int8(ids) - fp32(ids)).abs().max())
    assert 1e-4 < gap < 5.0  # quantized weights: close to, not equal to, the fp32 logits
    result = _json(capsys, ["generate", "--onnx", "--model", str(int8_export), "--threads", "1", *GENERATE])
    assert result["runtime"]["file"] == str(int8_export / ONNX_FILE)
    assert len(result["token_ids"]) == 8 and MASK_ID not in result["token_ids"]
    scores = _json(capsys, ["eval", "--onnx", "--model", str(int8_export), "--threads", "1", *EVAL])
    assert 0 < scores["nelbo"] < 20 and scores["runtime"]["file"] == str(int8_export / ONNX_FILE)


# ---------------------------------------------------------------- lm-eval adapter


def test_lm_eval_adapter_runs_an_export_folder_like_its_checkpoint(fp32_export):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from sink_modifier.lm_eval import DiffusionLM

    common = dict(mc_num=6, batch_size=6, dtype="float32", device="cpu", gen_length=8, steps=8, block_length=8,
                  seed=3)
    in_torch = DiffusionLM(pretrained=str(TINY_DLM), **common)
    in_ort = DiffusionLM(pretrained=str(fp32_export), threads=1, **common)  # detected from model.onnx
    assert (in_torch.onnx, in_ort.onnx) == (False, True)
    assert (in_ort.family.name, in_ort.mask_token_id, in_ort.max_length) == ("bidirectional", MASK_ID, 256)
    assert in_ort.get_model_info()["sink_dlm"]["runtime"]["engine"] == "onnxruntime"
    assert "runtime" not in in_torch.get_model_info()["sink_dlm"]

    pairs = [("The river", " flows to the sea"), ("In 1850 the town", " had a mill"), ("A", " b c d e")]
    requests = [Instance(request_type="loglikelihood", doc={}, arguments=pair, idx=i) for i, pair in enumerate(pairs)]
    torch_ll = [value for value, _ in in_torch.loglikelihood(requests)]
    ort_ll = [value for value, _ in in_ort.loglikelihood(requests)]
    assert ort_ll == pytest.approx(torch_ll, abs=1e-4)
    assert len({round(v, 3) for v in torch_ll}) == 3  # three different requests, three different scores

    generation = [Instance(request_type="generate_until", doc={}, arguments=("The history of", {"until": []}), idx=0)]
    assert in_ort.generate_until(generation) == in_torch.generate_until(generation)

    with pytest.raises(ValueError, match="onnx=True"):
        DiffusionLM(pretrained=str(fp32_export), onnx=False, **common)
    with pytest.raises(ValueError, match="is a model checkpoint"):
        DiffusionLM(pretrained=str(TINY_DLM), onnx=True, **common)
