"""ONNX export of a diffusion LM and the denoising loop in ONNX Runtime."""

from __future__ import annotations

import json

import pytest
import torch

from sink_modifier.generation import generate
from tests.conftest import MASK_ID, TINY_DLM, VOCAB, requires_shared

pytest.importorskip("onnxscript", reason="ONNX export needs the onnx extra: pip install -e '.[onnx]'")
pytest.importorskip("onnxruntime", reason="ONNX Runtime needs the onnx extra: pip install -e '.[onnx]'")

from sink_modifier.export.onnx_export import ONNX_FILE, ONNX_METADATA_FILE, export_onnx  # noqa: E402
from sink_modifier.generation.onnx_runtime import OnnxDenoiser  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dense_dlm():
    from sink_modifier.families import load_pretrained

    loaded = load_pretrained(TINY_DLM, dtype="float32")
    return loaded.model, loaded.tokenizer


@pytest.fixture(scope="module")
def exported_dlm(tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny-dlm-onnx"
    result = export_onnx(TINY_DLM, out, optimize=False)  # the optimizer runs in the CLI test below
    return result, OnnxDenoiser(out, intra_op_threads=1)


def _ids(batch, length, seed, vocab):
    return torch.randint(4, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@requires_shared(TINY_DLM)
def test_export_folder_is_complete_and_checked(exported_dlm):
    result, denoiser = exported_dlm
    folder = result.path.parent
    assert result.path.name == ONNX_FILE
    for name in ("config.json", "tokenizer.json", ONNX_METADATA_FILE):
        assert (folder / name).is_file(), name
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no partial folder left
    meta = json.loads((folder / ONNX_METADATA_FILE).read_text())
    assert meta["mask_token_id"] == MASK_ID and meta["max_position_embeddings"] == 256
    assert result.bidirectional is True
    assert set(result.max_abs_diff) == {"2x8", "2x33"} and max(result.max_abs_diff.values()) < 1e-4
    assert (denoiser.mask_token_id, denoiser.max_position_embeddings, denoiser.vocab_size) == (MASK_ID, 256, 8192)


@requires_shared(TINY_DLM)
@pytest.mark.parametrize(("batch", "length"), [(1, 5), (3, 64)])
def test_onnx_runtime_logits_match_pytorch(exported_dlm, dense_dlm, batch, length):
    model, _ = dense_dlm
    _, denoiser = exported_dlm
    ids = _ids(batch, length, seed=length, vocab=8192)
    ids[:, length // 2:] = MASK_ID  # a half-masked canvas, as during denoising
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    got = denoiser(ids)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4


@requires_shared(TINY_DLM)
def test_exported_attention_stays_bidirectional(exported_dlm, dense_dlm):
    model, _ = dense_dlm
    _, denoiser = exported_dlm
    ids = _ids(2, 24, seed=3, vocab=8192)
    changed = ids.clone()
    changed[:, -1] = MASK_ID  # a causal model's logits at positions < 23 could not move
    before, after = denoiser(ids), denoiser(changed)
    assert (after[:, 0] - before[:, 0]).abs().max() > 1e-2
    with torch.no_grad():
        assert (after - model(input_ids=changed).logits).abs().max() < 1e-4


@requires_shared(TINY_DLM)
def test_greedy_generation_in_onnx_runtime_equals_pytorch(exported_dlm, dense_dlm):
    model, tokenizer = dense_dlm
    _, denoiser = exported_dlm
    prompt = tokenizer("The history of the city", return_tensors="pt").input_ids
    kwargs = dict(mask_token_id=MASK_ID, gen_length=16, steps=16, block_length=8)
    calls = denoiser.calls
    in_torch = generate(model, prompt, **kwargs)
    in_ort = generate(denoiser, prompt, **kwargs)  # OnnxDenoiser is its own logits_fn
    assert denoiser.calls - calls == 16
    assert torch.equal(in_ort, in_torch), (tokenizer.decode(in_ort[0]), tokenizer.decode(in_torch[0]))
    with pytest.raises(ValueError, match="max_position_embeddings \\(256\\)"):
        generate(denoiser, prompt, mask_token_id=MASK_ID, gen_length=256, steps=8, block_length=256)


def test_single_file_export_through_the_cli(tiny_llama_dir, tmp_path, capsys):
    from sink_modifier.cli import main

    out = tmp_path / "tiny.onnx"
    assert main(["export-onnx", "--model", str(tiny_llama_dir), "--output", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(out) and out.is_file() and report["bidirectional"] is True
    assert max(report["max_abs_diff"].values()) < 1e-4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]
    denoiser = OnnxDenoiser(out)
    ids = _ids(2, 40, seed=1, vocab=VOCAB)
    from sink_modifier.families import load_pretrained

    with torch.no_grad():
        expected = load_pretrained(tiny_llama_dir, dtype="float32").model(input_ids=ids).logits
    assert (denoiser(ids) - expected).abs().max() < 1e-4
    # an existing output is not replaced without --overwrite
    assert main(["export-onnx", "--model", str(tiny_llama_dir), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_onnx_denoiser_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="export-onnx"):
        OnnxDenoiser(tmp_path)
