"""`sink-modifier verify`: a fresh checkpoint passes; each kind of damage is named."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from sink_modifier.cli import main
from sink_modifier.commands.prune import prune_checkpoint
from sink_modifier.export import METADATA_FILE
from sink_modifier.export.verify import VerifyReport, verify_checkpoint
from sink_modifier.families import load_pretrained
from tests.checkpoint_edits import edit_weights
from tests.conftest import REPO, VOCAB

RECIPE_2OF4 = REPO / "recipes" / "sink_wanda_2of4.yaml"
# two timesteps instead of the LLaDA grid of ten keep each prune to a few seconds
FAST = dict(num_samples=2, seq_len=16, timesteps=(0.5, 1.0))
LAYER = "model.layers.1.mlp.up_proj"


@pytest.fixture(scope="module")
def pruned_dir(tiny_llama_dir, text_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify") / "pruned-2of4"
    prune_checkpoint(tiny_llama_dir, RECIPE_2OF4, text_file, out, **FAST)
    return out


@pytest.fixture(scope="module")
def quantized(tiny_llama_dir, text_file, tmp_path_factory):
    """2:4 sink-Wanda then W8A8 (RTN, keeps the zeros) in one oneshot, written by prune."""
    folder = tmp_path_factory.mktemp("verify-q")
    recipe = folder / "sink_2of4_w8a8.yaml"
    recipe.write_text(
        RECIPE_2OF4.read_text()
        + "quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n"
        + '      targets: ["Linear"]\n      scheme: W8A8\n      ignore: ["lm_head"]\n'
    )
    return prune_checkpoint(tiny_llama_dir, recipe, text_file, folder / "pruned-2of4-w8a8", **FAST)


def copy(src, tmp_path):
    return shutil.copytree(src, tmp_path / src.name)


def edit_json(path, edit):
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def first_zero(weight):
    return tuple(int(i) for i in (weight == 0).nonzero()[0])


def test_fresh_checkpoint_passes_every_check(pruned_dir):
    report = verify_checkpoint(pruned_dir)
    assert report.ok and report.problems == []
    text = "\n".join(report.checks)
    for expected in (METADATA_FILE, "vLLM", "reloaded", "all 14 recorded layers", "2:4", "finite logits"):
        assert expected in text, expected
    assert not report.quantized
    assert json.loads(json.dumps(report.to_dict()))["ok"] is True


def test_nonzero_where_a_pruned_zero_was_names_the_layer_and_the_2of4_break(pruned_dir, tmp_path):
    folder = copy(pruned_dir, tmp_path)

    def corrupt(tensors):
        weight = tensors[f"{LAYER}.weight"]
        weight[first_zero(weight)] = 0.5

    edit_weights(folder, corrupt)
    report = verify_checkpoint(folder)
    assert not report.ok
    assert len(report.problems) == 2, report.problems
    sparsity, pattern = report.problems
    assert sparsity.startswith(f"{LAYER}:") and "records" in sparsity
    assert pattern.startswith(f"{LAYER}: breaks 2:4") and "1 group(s)" in pattern
    assert any("finite logits" in c for c in report.checks)  # the other checks still ran


def test_missing_metadata_is_named_and_the_rest_still_checked(pruned_dir, tmp_path):
    folder = copy(pruned_dir, tmp_path)
    (folder / METADATA_FILE).unlink()
    report = verify_checkpoint(folder)
    assert not report.ok
    assert len(report.problems) == 1 and METADATA_FILE in report.problems[0]
    assert any("finite logits" in c for c in report.checks)

    (folder / METADATA_FILE).write_text("{not json")
    report = verify_checkpoint(folder)
    assert not report.ok and "cannot be parsed" in report.problems[0]


def test_sparsity_config_with_targets_is_refused_naming_vllm(pruned_dir, tmp_path):
    folder = copy(pruned_dir, tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(
        sparsity_config={"format": "sparse-24-bitmask", "targets": ["Linear"], "sparsity_structure": "2:4"}))
    report = verify_checkpoint(folder)
    assert not report.ok
    assert any("vLLM" in p and "targets" in p for p in report.problems)

    # an empty sparsity_config is what llm-compressor writes today: accepted
    edit_json(folder / "config.json", lambda c: c.update(sparsity_config={}))
    assert verify_checkpoint(folder).ok


def test_foreign_quant_method_is_a_problem(pruned_dir, tmp_path):
    folder = copy(pruned_dir, tmp_path)
    edit_json(folder / "config.json", lambda c: c.update(quantization_config={"quant_method": "gptq", "bits": 4}))
    report = verify_checkpoint(folder)
    assert not report.ok
    assert any("quant_method 'gptq'" in p for p in report.problems)


def test_wrong_record_and_missing_module_are_named(pruned_dir, tmp_path):
    folder = copy(pruned_dir, tmp_path)

    def edit(meta):
        meta["sparsity"]["per_layer"]["model.layers.0.self_attn.q_proj"] = 0.6
        meta["sparsity"]["per_layer"]["model.layers.7.mlp.up_proj"] = 0.5

    edit_json(folder / METADATA_FILE, edit)
    report = verify_checkpoint(folder)
    assert not report.ok
    text = "\n".join(report.problems)
    assert "model.layers.0.self_attn.q_proj: 50.000000% of weights are exactly zero" in text
    assert "60.000000%" in text
    assert "model.layers.7.mlp.up_proj: recorded" in text and "no such" in text
    assert "num_layers=14 but per_layer lists 15" in text


def test_non_finite_logits_are_a_problem(pruned_dir, tmp_path):
    folder = copy(pruned_dir, tmp_path)

    def poison(tensors):
        weight = tensors["model.layers.0.mlp.down_proj.weight"]
        weight[weight != 0] = float("nan")  # zeros stay where they were: only the forward check fails

    edit_weights(folder, poison)
    report = verify_checkpoint(folder)
    assert not report.ok
    assert len(report.problems) == 1 and "non-finite logits" in report.problems[0]


def test_not_a_folder_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        verify_checkpoint(tmp_path / "absent")
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError):
        verify_checkpoint(tmp_path / "file")


def test_cli_exit_codes(pruned_dir, tmp_path, capsys):
    assert main(["verify", str(pruned_dir)]) == 0
    out = capsys.readouterr().out
    assert "verified" in out and "ok       2:4" in out

    assert main(["verify", str(pruned_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True

    folder = copy(pruned_dir, tmp_path)
    (folder / METADATA_FILE).unlink()
    assert main(["verify", str(folder)]) == 1
    captured = capsys.readouterr()
    assert f"PROBLEM  {METADATA_FILE} is missing" in captured.out
    assert "1 problem(s)" in captured.err

    assert main(["verify", str(folder), "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["ok"] is False and METADATA_FILE in result["problems"][0]

    assert main(["verify", str(tmp_path / "absent")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # refused by the parser, before anything is read
        main(["verify", str(pruned_dir), "--tolerance", "-1"])
    assert exit_info.value.code == 2 and "--tolerance: expected a number >= 0" in capsys.readouterr().err


def test_quantized_checkpoint_verifies_and_reloads_with_the_in_memory_logits(quantized):
    folder = quantized.output_dir
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "compressed-tensors"
    assert config["quantization_config"]["format"] == "int-quantized"
    assert not config["quantization_config"].get("sparsity_config")

    report = verify_checkpoint(folder)
    assert report.ok, report.problems
    assert report.quantized and any("dequantized at load" in c for c in report.checks)

    reloaded = load_pretrained(folder).model
    up = reloaded.get_submodule(LAYER)
    assert up.weight.dtype == torch.float32 and up.quantization_scheme.weights.num_bits == 8

    ids = torch.randint(3, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = quantized.model(ids).logits
        got = reloaded(ids).logits
    # After save the in-memory model holds the same quantize-dequantized weights, and both
    # apply W8A8's dynamic per-token int8 fake quantization to the Linear inputs in forward.
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for module in reloaded.modules():
        module.quantization_enabled = False
    with torch.no_grad():
        unquantized_inputs = reloaded(ids).logits
    assert (unquantized_inputs - expected).abs().max() > 1e-5  # the tolerance is below the activation QDQ


def test_quantized_checkpoint_records_rounding_zeros_so_any_change_is_caught(quantized, tmp_path):
    folder = copy(quantized.output_dir, tmp_path)

    def one_more_zero(tensors):
        weight = tensors[f"{LAYER}.weight"]
        assert weight.dtype == torch.int8
        weight[tuple(int(i) for i in (weight != 0).nonzero()[0])] = 0

    edit_weights(folder, one_more_zero)
    report = verify_checkpoint(folder)
    assert not report.ok
    assert any(p.startswith(f"{LAYER}:") and "exactly zero" in p for p in report.problems), report.problems

    def refill_a_pruned_zero(tensors):
        weight = tensors[f"{LAYER}.weight"]
        row, col = first_zero(weight)
        group = weight[row, col - col % 4: col - col % 4 + 4]
        # one group's zeros both become nonzero: the pattern breaks
        group[group == 0] = 3

    edit_weights(folder, refill_a_pruned_zero)
    report = verify_checkpoint(folder)
    assert not report.ok
    assert any(p.startswith(f"{LAYER}: breaks 2:4") for p in report.problems), report.problems


def test_report_defaults():
    report = VerifyReport(path="x")
    assert report.to_dict() == {"path": "x", "ok": False, "quantized": False, "checks": [], "problems": [],
                                "notes": [], "coverage": None}
