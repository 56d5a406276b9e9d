"""Sweeps cost one calibration: the checked sink cache (sink_cache_dir) and ``sink-modifier sweep``.

The cache must never change a result: a hit gives the weights of a run without it, bit for bit;
other weights, rows or sink settings miss; a damaged entry is recomputed and rewritten.
"""

from __future__ import annotations

import json

import pytest
import torch
from llmcompressor import oneshot
from transformers import AutoModelForCausalLM, AutoTokenizer

from sink_modifier import SinkAwareWandaPruningModifier
from sink_modifier.cli import main
from sink_modifier.sinks.mask_cache import FORMAT, TensorStore
from tests.conftest import HELDOUT, REPO, TINY_DLM, noised_rows, requires_shared, rows_loader

HEAD = ["re:.*lm_head"]


def prune(model_dir, ids, *, pipeline="sequential", model=None, **settings):
    """oneshot of one sink-aware Wanda on token rows ``ids``; the pruned weights and the modifier."""
    model = model if model is not None else AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    modifier = SinkAwareWandaPruningModifier(**{"sparsity": 0.5, "ignore": HEAD, **settings})
    oneshot(model=model, processor=AutoTokenizer.from_pretrained(model_dir), dataset=rows_loader(ids),
            recipe=[modifier], pipeline=pipeline)
    return {k: v.clone() for k, v in model.state_dict().items()}, modifier


def identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def ids():
    return noised_rows(4, 24, seed=0)


@pytest.mark.parametrize("pipeline", ["sequential", "basic"])
def test_a_cache_hit_gives_the_weights_of_a_run_without_the_cache(tiny_llama_dir, ids, tmp_path, pipeline):
    reference, _ = prune(tiny_llama_dir, ids, pipeline=pipeline)
    first, stored = prune(tiny_llama_dir, ids, pipeline=pipeline, sink_cache_dir=str(tmp_path))
    again, reused = prune(tiny_llama_dir, ids, pipeline=pipeline, sink_cache_dir=str(tmp_path))
    other, at_70 = prune(tiny_llama_dir, ids, pipeline=pipeline, sink_cache_dir=str(tmp_path), sparsity=0.7)
    assert identical(first, reference) and identical(again, reference)
    assert not identical(other, reference)  # the sparsity still acts
    assert stored.cache_counts["token_weights"] == {"hits": 0, "misses": 4}
    if pipeline == "sequential":  # statistics depend on the pruned earlier layers: masks only
        assert reused.cache_counts == at_70.cache_counts == {"token_weights": {"hits": 4, "misses": 0}}
    else:  # one-shot statistics do not depend on the sparsity: reused whole, no sink pass at all
        assert stored.cache_counts["statistics"] == {"hits": 0, "misses": 1}
        assert reused.cache_counts == at_70.cache_counts == {"statistics": {"hits": 1, "misses": 0}}
    # ... and the 70% run equals a 70% run without the cache
    assert identical(other, prune(tiny_llama_dir, ids, pipeline=pipeline, sparsity=0.7)[0])


def test_other_weights_rows_or_sink_settings_miss(tiny_llama_dir, ids, tmp_path):
    cache = str(tmp_path)
    prune(tiny_llama_dir, ids, sink_cache_dir=cache)
    changed = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    with torch.no_grad():
        changed.model.layers[1].mlp.down_proj.weight[0, 0] += 1e-3  # after the last attention: same masses
    misses = {"token_weights": {"hits": 0, "misses": 4}}
    assert prune(tiny_llama_dir, ids, model=changed, sink_cache_dir=cache)[1].cache_counts == misses
    assert prune(tiny_llama_dir, noised_rows(4, 24, seed=1), sink_cache_dir=cache)[1].cache_counts == misses
    assert prune(tiny_llama_dir, ids, sink_cache_dir=cache, sink_std=1.5)[1].cache_counts == misses
    # another query-block size rounds the block sums differently: a miss, then a hit of its own
    assert prune(tiny_llama_dir, ids, sink_cache_dir=cache, attention_chunk_size=5)[1].cache_counts == misses
    hit = prune(tiny_llama_dir, ids, sink_cache_dir=cache, attention_chunk_size=5)[1].cache_counts
    assert hit == {"token_weights": {"hits": 4, "misses": 0}}


def test_a_damaged_entry_is_detected_recomputed_and_rewritten(tiny_llama_dir, ids, tmp_path):
    reference, _ = prune(tiny_llama_dir, ids)
    prune(tiny_llama_dir, ids, sink_cache_dir=str(tmp_path))
    files = sorted((tmp_path / "token_weights").glob("*.pt"))
    assert len(files) == 4
    keys = {path: torch.load(path, weights_only=True)["key"] for path in files}
    truncated, tampered, foreign = files[:3]
    truncated.write_bytes(truncated.read_bytes()[:100])
    entry = torch.load(tampered, weights_only=True)
    entry["tensors"]["weights"][0, 0] += 0.5  # the stored checksum no longer matches
    torch.save(entry, tampered)
    entry = torch.load(foreign, weights_only=True)
    entry["key"] = entry["key"].replace('"format":', '"other":1,"format":')  # another key under this name
    torch.save(entry, foreign)
    store = TensorStore(tmp_path, "token_weights")
    assert [store.load(keys[path]) is None for path in files] == [True, True, True, False]
    weights, modifier = prune(tiny_llama_dir, ids, sink_cache_dir=str(tmp_path))
    assert modifier.cache_counts == {"token_weights": {"hits": 1, "misses": 3}}
    assert identical(weights, reference)
    for path in (truncated, tampered, foreign):  # rewritten whole: the next run reuses every entry
        assert torch.load(path, weights_only=True)["format"] == FORMAT
    assert prune(tiny_llama_dir, ids, sink_cache_dir=str(tmp_path))[1].cache_counts == {
        "token_weights": {"hits": 4, "misses": 0}}


# -- sink-modifier sweep ------------------------------------------------------------------------------
SWEEP = ["--model", str(TINY_DLM), "--recipe", str(REPO / "recipes" / "paper_sink_wanda_50.yaml"),
         "--data", str(HELDOUT), "--eval-data", str(HELDOUT), "--num-samples", "2", "--seq-len", "32",
         "--timesteps", "0.5", "--num-windows", "3", "--mc-samples", "1"]


@requires_shared(TINY_DLM)
@requires_shared(HELDOUT)
def test_sweep_runs_the_sink_pass_once_per_batch_and_writes_json_md_png(tmp_path, monkeypatch, capsys):
    import sink_modifier.modifiers.sink_row_weighting as sink_row_weighting

    calls = []
    original = sink_row_weighting.global_attention_mass

    def counting(model, input_ids, *args, **kwargs):
        calls.append(input_ids.shape)
        return original(model, input_ids, *args, **kwargs)

    monkeypatch.setattr(sink_row_weighting, "global_attention_mass", counting)
    out = tmp_path / "sweep"
    assert main(["sweep", *SWEEP, "--sparsities", "0.5,2:4", "--output", str(out), "--json"]) == 0
    assert len(calls) == 2  # 2 windows x 1 timestep, batches of 1 row: one sink pass each, for both points
    result = json.loads(capsys.readouterr().out)
    assert json.loads((out / "sweep.json").read_text()) == result
    assert sorted(p.name for p in out.iterdir()) == ["cache", "sweep.json", "sweep.md", "sweep.png"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    points = result["points"]
    assert [(p["point"], p["mask_structure"]) for p in points] == [("0.5", "0:0"), ("2:4", "2:4")]
    assert [p["cache"]["token_weights"] for p in points] == [{"hits": 0, "misses": 2}, {"hits": 2, "misses": 0}]
    assert all(abs(p["measured_sparsity"] - 0.5) < 1e-3 for p in points)
    for p in points:  # paired against the dense model on the same windows
        assert len(p["per_window"]) == len(result["dense"]["per_window"]) == 3
        expected = sum(a - b for a, b in zip(p["per_window"], result["dense"]["per_window"])) / 3
        assert p["delta"] == pytest.approx(expected) and p["delta"] == pytest.approx(p["value"] - result["dense"]["value"])
    table = (out / "sweep.md").read_text()
    assert "| dense | 0 |" in table and "| paper_sink_wanda_50 | 2:4 |" in table and "masks 2/2" in table


@pytest.mark.parametrize("bad, says", [
    ("1.5", "outside [0, 1]"), ("3:2", "0 < N < M"), ("", "comma-separated"), ("0.5,,0.6", "comma-separated"),
    ("0.5,0.5", "listed twice"), ("half", "neither a sparsity"), ("0:0", "unstructured"),
])
def test_bad_sparsities_are_refused_with_exit_2(tmp_path, capsys, bad, says):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", *SWEEP, "--sparsities", bad, "--output", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --sparsities" in err and says in err
    assert not (tmp_path / "o").exists()


def test_a_recipe_without_a_pruning_modifier_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    from sink_modifier.families import ModelFamily

    monkeypatch.setattr(ModelFamily, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    recipe = tmp_path / "quant.yaml"
    recipe.write_text("quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n      targets: [Linear]\n"
                      "      scheme: W8A8\n      ignore: [lm_head]\n")
    argv = ["sweep", *SWEEP, "--sparsities", "0.5", "--output", str(tmp_path / "o")]
    argv[argv.index("--recipe") + 1] = str(recipe)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "sink-modifier sweep: error: recipe" in err and "no pruning modifier with sparsity" in err
    assert not (tmp_path / "o").exists()


@requires_shared(TINY_DLM)
@requires_shared(HELDOUT)
def test_each_recipe_is_calibrated_on_its_own_calibration_block(tmp_path, capsys):
    """As prune would: options first, then each recipe's block; recipes with equal blocks share rows."""
    own = tmp_path / "own.yaml"
    own.write_text("calibration:\n  timesteps: [0.25, 1.0]\n  num_samples: 1\n"
                   + (REPO / "recipes" / "sink_wanda_50.yaml").read_text().split("sparsity_stage:", 1)[1]
                   .join(["sparsity_stage:", ""]))
    plain = tmp_path / "plain.yaml"  # no block: the defaults (LLaDA grid), num_samples from the option
    plain.write_text("sparsity_stage:" + (REPO / "recipes" / "sink_wanda_50.yaml").read_text().split("sparsity_stage:", 1)[1])
    argv = ["sweep", "--model", str(TINY_DLM), "--recipe", str(own), "--recipe", str(plain), "--data", str(HELDOUT),
            "--eval-data", str(HELDOUT), "--seq-len", "32", "--num-windows", "2", "--mc-samples", "1",
            "--sparsities", "0.5", "--output", str(tmp_path / "o"), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    by_name = {p["name"]: p["calibration"] for p in result["points"]}
    assert by_name["own"]["timesteps"] == [0.25, 1.0] and by_name["own"]["num_samples"] == 1
    assert by_name["own"]["origin"]["timesteps"].startswith(f"recipe {own}:")
    assert by_name["plain"]["timesteps"] == pytest.approx([0.1 * j for j in range(1, 11)])
    assert by_name["plain"]["num_samples"] == 32 and by_name["plain"]["origin"] == {
        "num_samples": "default", "timesteps": "default"}
    assert set(result["calibration"]) == {"own", "plain"}
    assert result["calibration"]["own"]["rows"] == 2 and result["calibration"]["plain"]["rows"] == 320
    assert "own 1 windows × 2 timesteps; plain 32 windows × 10 timesteps" in (tmp_path / "o" / "sweep.md").read_text()
