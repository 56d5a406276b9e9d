"""Diffusion-aware calibration weights: ELBO timestep weights of rows, masked-position weights of tokens."""

from __future__ import annotations

import math

import pytest
import torch
from llmcompressor import oneshot
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, AutoTokenizer

from sink_modifier import SinkAwareSparseGPTModifier, SinkAwareWandaPruningModifier
from sink_modifier.families import get_family
from sink_modifier.modifiers.row_weighting import (
    elbo_row_weights,
    masked_position_weights,
    mean_inverse_timestep,
    token_input_factors,
)
from sink_modifier.modifiers.wanda_scoring import batch_contribution
from sink_modifier.process import MaskTokenProcess, build_calibration
from sink_modifier.process.rows import CalibrationLoader
from sink_modifier.process.sharding import shard_calibration
from tests.conftest import MASK_ID, VOCAB, rows_loader, tiny_llama_config, word_tokenizer

HEAD = ["re:.*lm_head"]
KINDS = {"wanda": SinkAwareWandaPruningModifier, "sparsegpt": SinkAwareSparseGPTModifier}
SETTINGS = {"wanda": {}, "sparsegpt": {"block_size": 16, "hessian_dtype": "float64"}}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread):
    yield


def calibration(timesteps, num_windows=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    windows = torch.randint(4, VOCAB, (num_windows, 24), generator=g)
    return build_calibration(
        windows, word_tokenizer(), process=MaskTokenProcess(MASK_ID), seq_len=24, num_samples=num_windows,
        timesteps=timesteps, seed=seed, config=tiny_llama_config(),
    )


def prune(model_dir, modifier, loader, pipeline="sequential"):
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    oneshot(model=model, processor=AutoTokenizer.from_pretrained(model_dir), dataset=loader,
            recipe=[modifier], pipeline=pipeline)
    return model


def weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def zero_masks(model):
    return {n: m.weight == 0 for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and not n.endswith("lm_head")}


def flips(a, b):
    return sum(int((a[n] != b[n]).sum()) for n in a)


# -- the maths (pure) ------------------------------------------------------------------------------
def test_elbo_weights_from_known_timesteps():
    t = torch.tensor([0.25, 0.5, 1.0, 0.25, 0.5, 1.0], dtype=torch.float64)
    mean = mean_inverse_timestep(t)
    assert mean == pytest.approx((4 + 2 + 1) / 3, rel=1e-15)
    c = elbo_row_weights(t, mean)
    torch.testing.assert_close(c, torch.tensor([12, 6, 3, 12, 6, 3], dtype=torch.float64) / 7, rtol=1e-15, atol=0)
    assert float(c.mean()) == pytest.approx(1.0, rel=1e-15)
    assert torch.equal(elbo_row_weights(torch.tensor([0.3] * 5), mean_inverse_timestep(torch.tensor([0.3] * 5))),
                       torch.ones(5, dtype=torch.float64))  # one timestep: exactly 1


def test_elbo_normaliser_of_a_whole_window_share_is_the_whole_sets_bit_for_bit():
    cal = calibration((0.1, 0.3, 0.7), num_windows=5)
    full = mean_inverse_timestep(cal.timestep)
    for rank in range(2):
        share = shard_calibration(cal, rank, 2)  # 2 and 3 windows
        assert mean_inverse_timestep(share.timestep) == full
    assert mean_inverse_timestep(cal.timestep[:4]) != full  # not every timestep equally often: another mean


def test_elbo_refuses_clean_rows():
    with pytest.raises(ValueError, match=r"undefined for rows at t = 0\.0.*timesteps in \(0, 1\]"):
        mean_inverse_timestep(torch.tensor([0.0, 0.5]))
    with pytest.raises(ValueError, match="empty"):
        mean_inverse_timestep(torch.tensor([]))


def test_masked_position_weights_split_each_row_into_masked_and_visible_shares():
    masked = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    w = masked_position_weights(masked, valid, 0.5)
    expected = torch.tensor([
        [0.5 * 4 / 1, 0.5 * 4 / 3, 0.5 * 4 / 3, 0.5 * 4 / 3],  # λ n / n_m, (1 - λ) n / n_v
        [0.5, 0.5, 0.5, 0.5],  # clean row: only the visible term, (1 - λ) n / n
        [0.5, 0.5, 0.5, 0.5],  # fully masked row: λ n / n
        [0.5 * 2, 0.5 * 2, 0.0, 0.0],  # padding left out: n = 2
    ], dtype=torch.float64)
    torch.testing.assert_close(w, expected, rtol=1e-15, atol=0)
    # λ equal to the row's masked fraction: every weight is 1 (the unweighted statistic)
    assert torch.equal(masked_position_weights(masked[:1], None, 0.25), torch.ones(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        masked_position_weights(masked, None, 1.5)


@pytest.mark.parametrize("lam", [0.0, 0.3, 0.9, 1.0])
def test_masked_weighting_gives_the_documented_wanda_statistic(lam):
    """Hand-made rows: Σ_t w_t x_t² = n (λ mean_masked x² + (1 - λ) mean_visible x²) per row and column."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 3, generator=g, dtype=torch.float32)
    masked = torch.tensor([[1, 1, 0, 0, 0], [0, 1, 0, 0, 0]], dtype=torch.bool)
    factors = token_input_factors((2, 5), None, masked_position_weights(masked, None, lam))
    got, rows = batch_contribution("rms", x, factors)
    assert rows == 2
    x64 = x.to(torch.float64)
    expected = sum(
        5 * (lam * x64[r][masked[r]].pow(2).mean(0) + (1 - lam) * x64[r][~masked[r]].pow(2).mean(0)) for r in range(2)
    )
    torch.testing.assert_close(got.to(torch.float64), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("statistic,power", [("rms", 0.5), ("sum_of_norms", 1.0)])
def test_row_weights_scale_each_rows_contribution(statistic, power):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 4, 2, generator=g, dtype=torch.float32)
    c = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    got, _ = batch_contribution(statistic, x, token_input_factors((3, 4), None, None, c, row_power=power))
    per_row = torch.stack([batch_contribution(statistic, x[r:r + 1])[0] for r in range(3)]).to(torch.float64)
    torch.testing.assert_close(got.to(torch.float64), (c[:, None] * per_row).sum(0), rtol=1e-6, atol=1e-7)


def test_input_factors_multiply_sink_position_and_row_weights():
    sink = torch.tensor([[0.5, 1.0], [0.25, 0.0]])
    assert token_input_factors((2, 2), sink) is sink  # both options off: the sink weights untouched
    assert token_input_factors((2, 2), None) is None
    position = torch.tensor([[4.0, 1.0], [0.25, 9.0]], dtype=torch.float64)
    rows = torch.tensor([4.0, 0.25], dtype=torch.float64)
    got = token_input_factors((2, 2), sink, position, rows, row_power=0.5)
    expected = sink * position.sqrt().float() * torch.tensor([[2.0], [0.5]])
    assert got.dtype == torch.float32 and torch.equal(got, expected)
    assert torch.equal(token_input_factors((2, 3), None, None, rows), torch.tensor([[2.0] * 3, [0.5] * 3]))


# -- in oneshot ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_defaults_prune_like_the_options_absent(tiny_llama_dir, kind):
    cal = calibration((0.3, 0.6, 0.9))
    make = lambda **kw: KINDS[kind](sparsity=0.5, ignore=HEAD, **SETTINGS[kind], **kw)  # noqa: E731
    absent = weights(prune(tiny_llama_dir, make(), cal.dataloader()))
    explicit = make(timestep_weighting="uniform", masked_position_weight=None)
    explicit = weights(prune(tiny_llama_dir, explicit, cal.dataloader()))
    assert all(torch.equal(absent[n], explicit[n]) for n in absent)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("sink", [True, False])
def test_weights_of_one_change_nothing_bit_for_bit(tiny_llama_dir, kind, sink):
    """ELBO on one timestep (c = 1) and λ = every row's masked fraction (all weights 1): today's bits."""
    cal = calibration((0.5,))
    ids = cal.input_ids.clone()
    g = torch.Generator().manual_seed(3)
    ids[ids == MASK_ID] = 5
    for row in ids:  # exactly 6 of 24 positions masked in every row
        row[torch.randperm(24, generator=g)[:6]] = MASK_ID
    rows = cal.dataloader().rows
    make = lambda **kw: KINDS[kind](sparsity=0.5, ignore=HEAD, sink_weighting=sink, **SETTINGS[kind], **kw)  # noqa: E731
    loader = lambda: CalibrationLoader(rows_loader(ids).dataset, rows)  # noqa: E731
    today = weights(prune(tiny_llama_dir, make(), loader()))
    weighted = weights(prune(tiny_llama_dir, make(timestep_weighting="elbo", masked_position_weight=0.25), loader()))
    assert all(torch.equal(today[n], weighted[n]) for n in today)


@pytest.mark.parametrize("kind", list(KINDS))
def test_elbo_weight_equals_repeating_the_rows(tiny_llama_dir, kind):
    """t = 0.25 and 0.5 get c = 4/3 and 2/3: the statistic of each t = 0.25 row counted twice."""
    cal = calibration((0.25, 0.5))
    make = lambda **kw: KINDS[kind](sparsity=0.5, ignore=HEAD, **SETTINGS[kind], **kw)  # noqa: E731
    elbo = zero_masks(prune(tiny_llama_dir, make(timestep_weighting="elbo"), cal.dataloader()))
    repeated = torch.cat([torch.stack([cal.input_ids[i], cal.input_ids[i], cal.input_ids[i + 1]])
                          for i in range(0, len(cal), 2)])
    twice = zero_masks(prune(tiny_llama_dir, make(), rows_loader(repeated)))
    uniform = zero_masks(prune(tiny_llama_dir, make(), cal.dataloader()))
    assert flips(elbo, twice) <= 2  # float rounding of the two sums: at most a near-tie or two (0 here)
    assert flips(elbo, uniform) > 100  # the weighting is what changed them


def test_wanda_statistic_matches_a_direct_reference(tiny_llama_dir):
    """Basic pipeline, no sinks: scores |W| sqrt(Σ_r c_r Σ_t m_t x_t²) from hooks on the dense model."""
    cal, lam = calibration((0.2, 0.6, 1.0)), 0.8
    dense = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    linears = {n: m for n, m in dense.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n}
    acc = {n: torch.zeros(m.in_features, dtype=torch.float64) for n, m in linears.items()}
    c = (1 / cal.timestep) / (1 / cal.timestep).mean()
    current = {}

    def hook(name):
        def fn(_m, args):
            x = args[0][0].to(torch.float64)  # [T, d]
            masked = current["ids"] == MASK_ID
            n, n_m = masked.numel(), int(masked.sum())
            m = torch.where(masked, lam * n / max(n_m, 1), (1 - lam) * n / max(n - n_m, 1)).to(torch.float64)
            acc[name] += current["c"] * (m[:, None] * x.pow(2)).sum(0)
        return fn

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in linears.items()]
    with torch.no_grad():
        for row, weight in zip(cal.input_ids, c):
            current.update(ids=row, c=float(weight))
            dense(input_ids=row[None])
    for h in handles:
        h.remove()
    expected = {}
    for n, m in linears.items():
        score = m.weight.abs().to(torch.float64) * (acc[n] / len(cal)).sqrt()[None, :]
        idx = torch.sort(score, dim=1, stable=True).indices[:, : m.in_features // 2]
        expected[n] = torch.zeros_like(score, dtype=torch.bool).scatter_(1, idx, True)
    modifier = SinkAwareWandaPruningModifier(
        sparsity=0.5, ignore=HEAD, sink_weighting=False, timestep_weighting="elbo", masked_position_weight=lam
    )
    got = zero_masks(prune(tiny_llama_dir, modifier, cal.dataloader(batch_size=2), pipeline="basic"))
    assert flips(got, expected) <= 2  # float32 vs float64 accumulation: at most a near-tie or two
    unweighted = zero_masks(prune(tiny_llama_dir, SinkAwareWandaPruningModifier(
        sparsity=0.5, ignore=HEAD, sink_weighting=False), cal.dataloader(batch_size=2), pipeline="basic"))
    assert flips(unweighted, expected) > 50


@pytest.mark.parametrize("statistic", ["rms", "sum_of_norms"])
def test_weighted_masks_do_not_depend_on_batch_size(tiny_llama_dir, statistic):
    cal = calibration((0.3, 0.6, 0.9))
    make = lambda: SinkAwareWandaPruningModifier(  # noqa: E731
        sparsity=0.5, ignore=HEAD, statistic=statistic, timestep_weighting="elbo", masked_position_weight=0.7
    )
    one = zero_masks(prune(tiny_llama_dir, make(), cal.dataloader(batch_size=1)))
    three = zero_masks(prune(tiny_llama_dir, make(), cal.dataloader(batch_size=3)))
    assert all(torch.equal(one[n], three[n]) for n in one)


# -- refusals --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_elbo_without_a_row_table_is_refused_naming_the_loader(tiny_llama_dir, kind):
    cal = calibration((0.3, 0.6))
    with pytest.raises(ValueError, match=r"no row table.*CalibrationSet\.dataloader\(\.\.\.\)"):
        prune(tiny_llama_dir, KINDS[kind](sparsity=0.5, timestep_weighting="elbo"), rows_loader(cal.input_ids))


def test_elbo_with_clean_rows_is_refused(tiny_llama_dir):
    cal = calibration((0.0, 0.5))
    with pytest.raises(ValueError, match=r"t = 0\.0"):
        prune(tiny_llama_dir, SinkAwareWandaPruningModifier(sparsity=0.5, timestep_weighting="elbo"), cal.dataloader())


@pytest.mark.parametrize("family,message", [
    ("diffusion_gemma", "substitutes uniform random tokens"),
    ("causal", "causal model are clean"),
])
def test_masked_weighting_is_refused_where_nothing_is_masked(tiny_llama_dir, family, message):
    modifier = SinkAwareWandaPruningModifier(sparsity=0.5, masked_position_weight=0.7)
    modifier.attach(family=get_family(family))
    with pytest.raises(ValueError, match=message):
        prune(tiny_llama_dir, modifier, calibration((0.5,)).dataloader())


@pytest.mark.parametrize("cls", list(KINDS.values()))
@pytest.mark.parametrize("field,value,message", [
    ("masked_position_weight", 1.5, r"masked_position_weight must be in \[0, 1\]"),
    ("masked_position_weight", -0.1, r"masked_position_weight must be in \[0, 1\]"),
    ("masked_position_weight", math.nan, "masked_position_weight must be a finite number"),
    ("timestep_weighting", "linear", "timestep_weighting"),
])
def test_bad_weighting_settings_fail_at_recipe_load(cls, field, value, message):
    with pytest.raises(ValidationError, match=message):
        cls(sparsity=0.5, **{field: value})


@pytest.mark.parametrize("field,value", [("timestep_weighting", "elbo"), ("masked_position_weight", 0.5)])
def test_sparsegpt_reference_mode_refuses_row_weights(field, value):
    with pytest.raises(ValidationError, match="sink_mask_mode 'reference' calibrates on clean rows"):
        SinkAwareSparseGPTModifier(sparsity=0.5, sink_mask_mode="reference", **{field: value})


def test_the_plan_is_checked_before_any_weight_is_read():
    """What a command can call after parsing the recipe and resolving the family, before loading weights."""
    masked = SinkAwareWandaPruningModifier(sparsity=0.5, masked_position_weight=0.7)
    elbo = SinkAwareSparseGPTModifier(sparsity=0.5, timestep_weighting="elbo")
    with pytest.raises(ValueError, match="diffusion_gemma family's forward process substitutes uniform"):
        masked.check_calibration_plan(family=get_family("diffusion_gemma"))
    with pytest.raises(ValueError, match="causal model are clean"):
        masked.check_calibration_plan(family=get_family("causal"))
    with pytest.raises(ValueError, match=r"t = 0\.0"):
        elbo.check_calibration_plan(timesteps=(0.0, 0.5, 1.0))
    masked.check_calibration_plan(family=get_family("llada"), timesteps=(0.0, 0.5))  # both fine
    elbo.check_calibration_plan(family=get_family("diffusion_gemma"), calibration=calibration((0.5, 1.0)))
    SinkAwareWandaPruningModifier(sparsity=0.5).check_calibration_plan(
        family=get_family("diffusion_gemma"), timesteps=(0.0,))  # options off: nothing to refuse
