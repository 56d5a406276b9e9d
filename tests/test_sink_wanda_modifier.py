"""SinkAwareWandaPruningModifier inside llm-compressor's oneshot(), end to end."""

from __future__ import annotations

import pytest
import torch
import yaml
from llmcompressor import oneshot
from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier
from llmcompressor.recipe import Recipe
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from sink_modifier import SinkAwareWandaPruningModifier
from tests.conftest import REPO, noised_rows, rows_loader


def prune(model_dir, recipe, ids, *, batch_size=1, pipeline="sequential", attn=None):
    """oneshot on token rows ``ids`` (a plain DataLoader of ``batch_size``), or on a given DataLoader."""
    kwargs = {"attn_implementation": attn} if attn else {}
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, **kwargs)
    oneshot(
        model=model,
        processor=AutoTokenizer.from_pretrained(model_dir),
        dataset=ids if isinstance(ids, torch.utils.data.DataLoader) else rows_loader(ids, batch_size),
        recipe=recipe,
        pipeline=pipeline,
    )
    return model


def block_linears(model):
    return {
        n: m for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and not n.endswith(("lm_head", "transformer.ff_out"))
    }


def zero_masks(model):
    return {n: (m.weight == 0) for n, m in block_linears(model).items()}


@pytest.fixture(scope="module")
def calib_ids():
    return noised_rows(6, 24, seed=0)


def test_yaml_recipe_prunes_every_row_to_exactly_half(tiny_llama_dir, calib_ids):
    model = prune(tiny_llama_dir, str(REPO / "recipes" / "sink_wanda_50.yaml"), calib_ids)
    linears = block_linears(model)
    assert len(linears) == 2 * 7
    for name, module in linears.items():
        per_row = (module.weight == 0).sum(dim=1)
        assert torch.all(per_row == module.in_features // 2), name
    assert (model.lm_head.weight == 0).sum() == 0


def test_2of4_recipe_gives_valid_pattern(tiny_llama_dir, calib_ids):
    model = prune(tiny_llama_dir, str(REPO / "recipes" / "sink_wanda_2of4.yaml"), calib_ids)
    for name, module in block_linears(model).items():
        groups = (module.weight == 0).reshape(module.out_features, -1, 4)
        assert torch.all(groups.sum(-1) == 2), name


def test_sdpa_only_model_prunes_through_oneshot(sdpa_lm_dir, calib_ids):
    recipe = SinkAwareWandaPruningModifier(sparsity=0.6, ignore=["re:.*transformer.ff_out$"])
    model = prune(sdpa_lm_dir, [recipe], calib_ids)
    linears = block_linears(model)
    assert {n.split(".")[-1] for n in linears} == {
        "q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj", "ff_out"
    }
    for name, module in linears.items():
        assert torch.all((module.weight == 0).sum(1) == int(module.in_features * 0.6)), name
    assert recipe.achieved_sparsity  # recorded per module
    assert all(abs(v - 0.6) < 0.02 for v in recipe.achieved_sparsity.values())


def test_weighting_off_equals_llmcompressor_wanda(tiny_llama_dir, calib_ids):
    head = ["re:.*lm_head"]
    ours = prune(tiny_llama_dir, [SinkAwareWandaPruningModifier(sparsity=0.5, sink_weighting=False, ignore=head)], calib_ids)
    upstream = prune(tiny_llama_dir, [WandaPruningModifier(sparsity=0.5, targets=["Linear"], ignore=head)], calib_ids)
    for (name, a), (_, b) in zip(ours.named_parameters(), upstream.named_parameters()):
        assert torch.equal(a, b), name


def test_sink_weighting_changes_the_masks(tiny_llama_dir, calib_ids):
    off = zero_masks(prune(tiny_llama_dir, [SinkAwareWandaPruningModifier(sparsity=0.5, sink_weighting=False)], calib_ids))
    on = zero_masks(prune(tiny_llama_dir, [SinkAwareWandaPruningModifier(sparsity=0.5, sink_weighting=True)], calib_ids))
    changed = sum(int((off[n] != on[n]).sum()) for n in off)
    assert changed > 0


@pytest.mark.parametrize("statistic", ["rms", "sum_of_norms"])
def test_masks_do_not_depend_on_batch_size(tiny_llama_dir, calib_ids, statistic):
    recipe = lambda: [SinkAwareWandaPruningModifier(sparsity=0.5, statistic=statistic)]  # noqa: E731
    one = zero_masks(prune(tiny_llama_dir, recipe(), calib_ids, batch_size=1))
    three = zero_masks(prune(tiny_llama_dir, recipe(), calib_ids, batch_size=3))
    for name in one:
        assert torch.equal(one[name], three[name]), name


def reference_sink_wanda_masks(model, ids, sparsity, sink_std=2.0, sink_alpha=5.0):
    """reference-spec §1.9 written out directly (batch_size=1, dense model, one-shot)."""
    linears = block_linears(model)
    acc = {n: torch.zeros(m.in_features) for n, m in linears.items()}
    current = {}

    def hook(name):
        def fn(_m, args, _o):
            if "s" in current:
                x = (1 - current["s"])[:, :, None] * args[0]
                acc[name] += x.reshape(-1, x.shape[-1]).norm(p=2, dim=0)
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in linears.items()]
    with torch.no_grad():
        for row in ids:
            current.clear()
            out = model(row[None], output_attentions=True)  # pass 1: collector
            mass = sum(a.sum(dim=2).sum(dim=1) for a in out.attentions)  # [1, T]
            tau = mass.mean(-1, keepdim=True) + sink_std * mass.std(-1, unbiased=False, keepdim=True)
            current["s"] = torch.sigmoid(sink_alpha * (mass - tau))
            model(row[None])  # pass 2: activations
    for h in handles:
        h.remove()
    masks = {}
    for n, m in linears.items():
        score = m.weight.abs() * acc[n][None, :]
        k = int(m.in_features * sparsity)
        idx = torch.topk(score, k, dim=1, largest=False)[1]
        masks[n] = torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
    return masks


def test_sum_of_norms_reproduces_reference_implementation(tiny_llama_dir, calib_ids):
    dense = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32, attn_implementation="eager")
    expected = reference_sink_wanda_masks(dense, calib_ids, 0.5)
    modifier = SinkAwareWandaPruningModifier(sparsity=0.5, statistic="sum_of_norms")
    pruned = prune(tiny_llama_dir, [modifier], calib_ids, pipeline="basic", batch_size=2)
    got = zero_masks(pruned)
    for name in expected:
        assert torch.equal(got[name], expected[name]), name


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("sparsity", 1.5, "sparsity must be in \\[0, 1\\]"),
        ("sparsity", -0.1, "sparsity must be in \\[0, 1\\]"),
        ("sparsity", float("nan"), "sparsity must be a finite number, got nan"),
        ("sink_std", float("inf"), "sink_std must be a finite number, got inf"),
        ("mask_structure", "3:2", "mask_structure '3:2' is invalid"),
        ("mask_structure", "2-4", "mask_structure must look like"),
        ("statistic", "mean", "statistic"),
        ("sink_alpha", 0.0, "sink_alpha must be > 0"),
    ],
)
def test_bad_settings_fail_at_recipe_load_naming_the_field(tmp_path, field, value, message):
    args = {"sparsity": 0.5, field: value}
    with pytest.raises(ValidationError, match=message) as err:
        SinkAwareWandaPruningModifier(**args)
    assert field in str(err.value)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"sparsity_stage": {"sparsity_modifiers": {"SinkAwareWandaPruningModifier": args}}}))
    with pytest.raises(ValidationError, match=message):
        Recipe.create_instance(str(path))


def test_yaml_names_the_class_once_the_package_is_imported():
    recipe = Recipe.create_instance(str(REPO / "recipes" / "paper_sink_wanda_50.yaml"))
    (modifier,) = recipe.modifiers
    assert isinstance(modifier, SinkAwareWandaPruningModifier)
    assert modifier.sparsity == 0.5 and modifier.sink_weighting is True


def test_unstructured_without_sparsity_is_rejected():
    with pytest.raises(ValidationError, match="sparsity is required"):
        SinkAwareWandaPruningModifier()
    assert SinkAwareWandaPruningModifier(mask_structure="2:4").mask_structure == "2:4"
