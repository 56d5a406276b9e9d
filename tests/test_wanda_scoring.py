"""Wanda scoring maths against naive loops and against llm-compressor's own Wanda."""

from __future__ import annotations

import pytest
import torch
from llmcompressor.modifiers.pruning.wanda.wanda_sparsify import (
    accumulate_row_scalars,
    make_empty_row_scalars,
    sparsify_weight,
)

from sink_modifier.modifiers.wanda_scoring import accumulate_statistic, column_scale, count_over_target, prune_mask


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(2, 6, 5, generator=g) for _ in range(3)]
    ws = [torch.rand(2, 6, generator=g) for _ in range(3)]
    return xs, ws


def _accumulate(kind: str, xs, ws):
    state, n = None, 0
    for x, w in zip(xs, ws):
        state, n = accumulate_statistic(kind, state, n, x, w)
    return state, n


def test_rms_statistic_is_mean_over_samples_of_weighted_squared_norms():
    xs, ws = _batches()
    state, n = _accumulate("rms", xs, ws)
    expected = torch.zeros(5)
    for x, w in zip(xs, ws):
        for b in range(2):
            for c in range(5):
                expected[c] += sum((w[b, t] * x[b, t, c]) ** 2 for t in range(6))
    assert n == 6
    torch.testing.assert_close(state, expected / 6)
    torch.testing.assert_close(column_scale("rms", state), (expected / 6).sqrt())


def test_sum_of_norms_statistic_sums_per_sample_norms():
    xs, ws = _batches(1)
    state, n = _accumulate("sum_of_norms", xs, ws)
    expected = torch.zeros(5)
    for x, w in zip(xs, ws):
        for b in range(2):
            expected += ((w[b, :, None] * x[b]) ** 2).sum(0).sqrt()
    torch.testing.assert_close(state, expected)
    torch.testing.assert_close(column_scale("sum_of_norms", state), expected)


@pytest.mark.parametrize("statistic", ["rms", "sum_of_norms"])
def test_statistics_do_not_depend_on_batch_size(statistic):
    xs, ws = _batches(2)
    x, w = torch.cat(xs), torch.cat(ws)
    together, _ = accumulate_statistic(statistic, None, 0, x, w)
    single, n = None, 0
    for b in range(x.shape[0]):
        single, n = accumulate_statistic(statistic, single, n, x[b : b + 1], w[b : b + 1])
    torch.testing.assert_close(together, single)


def test_unit_weights_reproduce_llmcompressor_row_scalars():
    xs, _ = _batches(3)
    linear = torch.nn.Linear(5, 4)
    ref, ref_n = make_empty_row_scalars(linear), 0
    ours, n = None, 0
    for x in xs:
        ref, ref_n = accumulate_row_scalars(x, linear, ref, ref_n)
        ours, n = accumulate_statistic("rms", ours, n, x, None)
    assert torch.equal(ours, ref)  # bit for bit: same operations in the same order


@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.7, 0.9])
def test_unstructured_mask_is_exact_per_row_and_prunes_lowest_scores(sparsity):
    g = torch.Generator().manual_seed(0)
    weight, scale = torch.randn(7, 40, generator=g), torch.rand(40, generator=g)
    mask = prune_mask(weight, scale, sparsity)
    k = int(40 * sparsity)
    assert torch.all(mask.sum(dim=1) == k)
    score = weight.abs() * scale
    for row in range(7):
        pruned, kept = score[row][mask[row]], score[row][~mask[row]]
        if k and k < 40:
            assert pruned.max() <= kept.min()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_n_m_mask_is_valid_and_prunes_lowest_in_each_group(n, m):
    g = torch.Generator().manual_seed(1)
    weight, scale = torch.randn(6, 32, generator=g), torch.rand(32, generator=g)
    mask = prune_mask(weight, scale, 0.5, n, m)
    groups = mask.reshape(6, 32 // m, m)
    assert torch.all(groups.sum(-1) == n)
    score = (weight.abs() * scale).reshape(6, 32 // m, m)
    assert torch.all(score.masked_fill(~groups, -1).amax(-1) <= score.masked_fill(groups, 1e9).amin(-1))


def test_n_m_needs_divisible_inputs():
    with pytest.raises(ValueError, match="divisible by 4"):
        prune_mask(torch.randn(3, 10), torch.ones(10), 0.5, 2, 4)


@pytest.mark.parametrize("prune_n,prune_m", [(0, 0), (2, 4)])
def test_masks_match_llmcompressor_wanda(prune_n, prune_m):
    g = torch.Generator().manual_seed(4)
    linear = torch.nn.Linear(16, 8, bias=False)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(8, 16, generator=g))
    scalars = torch.rand(16, generator=g)
    upstream = sparsify_weight(linear, {linear: scalars.clone()}, 0.5, prune_n, prune_m)
    ours = prune_mask(linear.weight.data, scalars.sqrt(), 0.5, prune_n, prune_m)
    assert torch.equal(ours, upstream == 0)


def _with_zeros(rows: int, cols: int, zeros_per_row: list[int], seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    for row, count in enumerate(zeros_per_row):
        weight[row, torch.randperm(cols, generator=g)[:count]] = 0
    return weight


def test_preserved_zeros_fill_each_rows_quota_first():
    weight = _with_zeros(4, 20, [3, 0, 10, 15])
    scale = torch.rand(20, generator=torch.Generator().manual_seed(6)) + 0.1
    scale[0] = 0.0  # a column scoring 0 everywhere: ties with the zeros, which must still win
    mask = prune_mask(weight, scale, 0.5, preserve_zeros=True)
    zeros = weight == 0
    assert torch.all(mask[zeros])  # every earlier zero stays pruned
    assert mask.sum(dim=1).tolist() == [10, 10, 10, 15]  # quota 10 per row; row 3 keeps its 15 zeros
    assert count_over_target(weight, 0.5) == 1
    # the rest of the quota goes to the lowest scores among the non-zero weights
    score = weight.abs() * scale
    for row in range(3):
        extra = mask[row] & ~zeros[row]
        if extra.any():
            assert score[row][extra].max() <= score[row][~mask[row]].min()


def test_preserved_zeros_count_towards_each_n_m_group():
    weight = torch.randn(3, 16, generator=torch.Generator().manual_seed(7))
    weight[0, 0] = 0  # one zero in a group: one more is pruned
    weight[1, 4:7] = 0  # three zeros in a 2:4 group: all kept
    mask = prune_mask(weight, torch.ones(16), 0.5, 2, 4, preserve_zeros=True)
    groups = mask.reshape(3, 4, 4).sum(-1)
    assert bool(mask[0, 0]) and groups[0, 0] == 2
    assert torch.all(mask[1, 4:7]) and groups[1, 1] == 3
    assert int((groups == 2).sum()) == 11
    assert count_over_target(weight, 0.5, 2, 4) == 1


def test_without_preserve_the_mask_is_upstreams_choice():
    weight = _with_zeros(4, 20, [3, 0, 10, 15])
    scale = torch.rand(20, generator=torch.Generator().manual_seed(6))
    mask = prune_mask(weight, scale, 0.5)
    assert torch.all(mask.sum(dim=1) == 10)  # exactly the quota, even where a row had more zeros
