"""OWL layer sparsities (sparsity_profile: owl) computed during calibration, on both sink-aware modifiers."""

from __future__ import annotations

import pytest
import torch
from compressed_tensors.utils import match_named_modules
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier
from llmcompressor.utils.pytorch.module import infer_sequential_targets
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from sink_modifier import SinkAwareSparseGPTModifier, SinkAwareWandaPruningModifier
from sink_modifier.modifiers.owl import owl_layer_sparsities
from sink_modifier.process import MaskTokenProcess, build_calibration
from sink_modifier.sinks import global_attention_mass, soft_sink_mask
from tests.conftest import MASK_ID, VOCAB, rows_loader, tiny_llama_config, word_tokenizer

HEAD = ["re:.*lm_head"]
OWL = dict(sparsity_profile="owl", owl_m=3, owl_lmbda=0.05)
KINDS = {"wanda": SinkAwareWandaPruningModifier, "sparsegpt": SinkAwareSparseGPTModifier}
SETTINGS = {"wanda": {}, "sparsegpt": {"block_size": 16}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


@pytest.fixture(scope="module")
def four_layer_dir(tmp_path_factory):
    """A random bidirectional Llama of 4 layers: OWL's min-max rescaling is not trivial below 3."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("owl_llama")
    LlamaForCausalLM(tiny_llama_config(num_hidden_layers=4)).save_pretrained(path)
    word_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def cal():
    windows = torch.randint(4, VOCAB, (4, 24), generator=torch.Generator().manual_seed(0))
    return build_calibration(
        windows, word_tokenizer(), process=MaskTokenProcess(MASK_ID), seq_len=24, num_samples=4,
        timesteps=(0.3, 0.6, 0.9), seed=0, config=tiny_llama_config(),
    )


def prune(model_dir, modifier, loader, pipeline="sequential"):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    oneshot(model=model, processor=AutoTokenizer.from_pretrained(model_dir), dataset=loader,
            recipe=[modifier], pipeline=pipeline)
    return model


def upstream_owl(model, activations, sparsity, owl_m, owl_lmbda):
    """llm-compressor's own ``_infer_owl_layer_sparsity``, fed the given activations instead of its
    calibration pass (which cannot run in 0.14: see the test below)."""

    class FedActivations(WandaPruningModifier):
        def _get_activations(self, model, dataloader, nsamples=128):
            return activations

    upstream = FedActivations(sparsity=sparsity, sparsity_profile="owl", owl_m=owl_m, owl_lmbda=owl_lmbda)
    layers = dict(match_named_modules(model, infer_sequential_targets(model)))
    return {k: float(v) for k, v in upstream._infer_owl_layer_sparsity(model, layers, None).items()}


def dense_activations(model_dir, ids, sink_weighted):
    """Per-Linear column norms of one batch of every row on the dense model, rows scaled by ``1 - s``
    when ``sink_weighted`` (upstream's expression ``x.pow(2).sum(dim=(0, 1)).sqrt()``)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager")
    weights = None
    if sink_weighted:
        with torch.no_grad():
            weights = 1.0 - soft_sink_mask(global_attention_mass(model, ids), 2.0, 5.0)
    acts = {}

    def hook(name):
        def fn(_m, args):
            x = args[0] if weights is None else args[0] * weights[:, :, None]
            acts[name] = x.pow(2).sum(dim=(0, 1)).sqrt()
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and "lm_head" not in n]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    return model, acts


# -- the formula (pure) ----------------------------------------------------------------------------
def test_formula_on_known_ratios():
    got = owl_layer_sparsities({"a": 1.0, "b": 2.0, "c": 4.0}, 0.5, 0.1)
    scaled = {"a": 0.0, "b": 0.2 / 3, "c": 0.2}  # min-max to [0, 2 λ]
    mean = sum(scaled.values()) / 3
    assert got == pytest.approx({k: 0.5 - (v - mean) for k, v in scaled.items()}, abs=1e-15)
    assert sum(got.values()) / 3 == pytest.approx(0.5, abs=1e-15)
    assert got["c"] < got["b"] < got["a"]  # more outliers, less pruning


def test_equal_ratios_give_every_layer_the_target():
    assert owl_layer_sparsities({"a": 2.0, "b": 2.0}, 0.6, 0.08) == {"a": 0.6, "b": 0.6}  # upstream: 0/0
    assert owl_layer_sparsities({"a": 7.0}, 0.6, 0.08) == {"a": 0.6}
    assert owl_layer_sparsities({}, 0.6, 0.08) == {}


# -- in oneshot ------------------------------------------------------------------------------------
@pytest.mark.parametrize("sink", [False, True])
def test_layer_sparsities_are_upstreams_formula_on_the_same_activations(four_layer_dir, cal, sink):
    modifier = SinkAwareWandaPruningModifier(sparsity=0.5, ignore=HEAD, sink_weighting=sink, **OWL)
    prune(four_layer_dir, modifier, cal.dataloader(batch_size=len(cal)), pipeline="basic")
    model, acts = dense_activations(four_layer_dir, cal.input_ids, sink)
    expected = upstream_owl(model, acts, 0.5, OWL["owl_m"], OWL["owl_lmbda"])
    got = modifier.owl_layer_sparsity
    assert list(got) == [f"model.layers.{i}" for i in range(4)]
    assert got == pytest.approx(expected, abs=1e-12)
    assert sum(got.values()) / len(got) == pytest.approx(0.5, abs=1e-12)
    assert max(got.values()) - min(got.values()) == pytest.approx(2 * OWL["owl_lmbda"], abs=1e-12)
    # and the layers are pruned to them: exactly int(d_in * s_layer) per row for Wanda
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
            layer = ".".join(name.split(".")[:3])
            achieved = modifier.achieved_sparsity[name]
            assert achieved == int(module.in_features * got[layer]) / module.in_features, name


def test_sink_weighting_changes_the_outlier_ratios(four_layer_dir, cal):
    def sparsities(sink):
        modifier = SinkAwareWandaPruningModifier(sparsity=0.5, ignore=HEAD, sink_weighting=sink, **OWL)
        prune(four_layer_dir, modifier, cal.dataloader(batch_size=3))
        return modifier.owl_layer_sparsity

    off, on = sparsities(False), sparsities(True)
    assert any(abs(off[k] - on[k]) > 1e-6 for k in off)


@pytest.mark.parametrize("kind", list(KINDS))
def test_owl_prunes_end_to_end_in_both_pipelines(four_layer_dir, cal, kind):
    results = {}
    for pipeline in ("sequential", "basic"):
        modifier = KINDS[kind](sparsity=0.5, ignore=HEAD, **SETTINGS[kind], **OWL)
        model = prune(four_layer_dir, modifier, cal.dataloader(batch_size=3), pipeline=pipeline)
        targets = modifier.owl_layer_sparsity
        assert len(targets) == 4 and sum(targets.values()) / 4 == pytest.approx(0.5, abs=1e-12)
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
                target = targets[".".join(name.split(".")[:3])]
                achieved = float((module.weight == 0).float().mean())
                if kind == "wanda":  # int(d_in * s) per row
                    assert achieved == int(module.in_features * target) / module.in_features, name
                else:  # SparseGPT: int(rows * block * s) per block of columns
                    assert abs(achieved - target) <= 1 / module.in_features, name
        assert (model.lm_head.weight == 0).sum() == 0
        results[pipeline] = targets
    # both pipelines read the dense model's activations, before any layer is pruned
    assert results["sequential"] == pytest.approx(results["basic"], abs=1e-12)


def test_owl_sparsities_do_not_depend_on_batch_size(four_layer_dir, cal):
    def sparsities(batch_size):
        modifier = SinkAwareWandaPruningModifier(sparsity=0.5, ignore=HEAD, timestep_weighting="elbo", **OWL)
        prune(four_layer_dir, modifier, cal.dataloader(batch_size=batch_size))
        return modifier.owl_layer_sparsity

    assert sparsities(1) == pytest.approx(sparsities(len(cal)), abs=1e-12)


def test_upstream_owl_fails_where_ours_runs(four_layer_dir, cal):
    """Why this exists: llm-compressor 0.14's OWL runs a calibration inside on_initialize."""
    ids = cal.input_ids
    with pytest.raises(ValueError, match="Cannot invoke event before initializing"):
        prune(four_layer_dir, WandaPruningModifier(sparsity=0.5, ignore=HEAD, **OWL), rows_loader(ids))
    ours = SinkAwareWandaPruningModifier(sparsity=0.5, ignore=HEAD, sink_weighting=False, **OWL)
    prune(four_layer_dir, ours, rows_loader(ids))  # a plain DataLoader: OWL needs no row table
    assert len(ours.owl_layer_sparsity) == 4


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", list(KINDS.values()))
@pytest.mark.parametrize("settings,message", [
    (dict(OWL, mask_structure="2:4"), "mask_structure '2:4' ignores"),
    (dict(OWL, sparsity=[0.5, 0.6]), "needs one target sparsity"),
    (dict(OWL, owl_m=0), "owl_m must be > 0"),
    (dict(OWL, owl_lmbda=-0.1), "owl_lmbda must be >= 0"),
    ({"sparsity_profile": "owl", "owl_m": 5}, "Must provide all of"),  # upstream's own check
])
def test_bad_owl_settings_fail_at_recipe_load(cls, settings, message):
    with pytest.raises(ValidationError, match=message):
        cls(**{"sparsity": 0.5, **settings})


def test_layer_sparsity_outside_the_unit_interval_is_refused(four_layer_dir, cal):
    modifier = SinkAwareWandaPruningModifier(sparsity=0.9, ignore=HEAD, **dict(OWL, owl_lmbda=0.2))
    with pytest.raises(ValueError, match=r"outside \[0, 1\].*lower owl_lmbda"):
        prune(four_layer_dir, modifier, cal.dataloader(batch_size=3))


def test_owl_on_a_disk_offloaded_model_onloads_one_layer_at_a_time(tmp_path):
    """OWL's dense pass and its weight reads run inside the pipeline's disable_offloading(), like the sink pass."""
    from tests.test_offloaded_calibration import (
        LAYERS,
        OnloadTracker,
        disk_dispatched_model,
        plain_model,
    )
    from tests.test_offloaded_calibration import (
        prune as prune_rows,
    )

    model_dir = tmp_path / "model"
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(num_hidden_layers=LAYERS)).save_pretrained(model_dir)
    word_tokenizer().save_pretrained(model_dir)
    ids = torch.randint(4, VOCAB, (4, 24), generator=torch.Generator().manual_seed(1))
    make = lambda: SinkAwareWandaPruningModifier(sparsity=0.5, sink_weighting=False, **OWL)  # noqa: E731
    plain = make()
    expected = prune_rows(plain_model(model_dir), plain, ids)
    offloaded = make()
    (tmp_path / "offload").mkdir()
    model = disk_dispatched_model(model_dir, tmp_path / "offload")
    with OnloadTracker(model) as tracker:
        got = prune_rows(model, offloaded, ids)
    assert offloaded.owl_layer_sparsity == plain.owl_layer_sparsity and len(plain.owl_layer_sparsity) == LAYERS
    assert all(torch.equal(got[n], expected[n]) for n in expected)
    assert tracker.max_layers_alive_elsewhere == 1
