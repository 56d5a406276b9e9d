"""Sink stability statistics on constructed mass tensors, the policies, and policies in oneshot."""

from __future__ import annotations

import pytest
import torch

from sink_modifier import SinkAwareWandaPruningModifier
from sink_modifier.process import noise_windows
from sink_modifier.sinks.stability import (
    apply_sink_policy,
    dominant_sink_movement,
    dominant_sinks,
    mask_stability,
)
from tests.conftest import MASK_ID, VOCAB
from tests.test_sink_wanda_modifier import block_linears

K, T = 10, 12


def mass_with_sinks(positions):
    mass = torch.ones(len(positions), T)
    for k, p in enumerate(positions):
        mass[k, p] = 20.0
    return mass


def test_fixed_sink_has_zero_movement():
    stats = dominant_sink_movement(mass_with_sinks([3] * K))
    assert stats == {"position_std": 0.0, "stay_fraction": 1.0, "distinct_positions": 1}


def test_sink_moving_every_step_has_maximal_movement():
    positions = [0, 11] * (K // 2)  # the widest possible jumps
    stats = dominant_sink_movement(mass_with_sinks(positions))
    assert stats["stay_fraction"] == 0.0
    assert stats["position_std"] == pytest.approx(5.5)  # half at 0, half at 11: the maximum std on [0, 11]
    assert dominant_sink_movement(mass_with_sinks(list(range(K))))["distinct_positions"] == K


def test_dominant_sink_ignores_padding():
    mass = mass_with_sinks([5, 5])
    mass[:, 11] = 100.0
    valid = torch.ones(2, T, dtype=torch.bool)
    valid[:, 11] = False
    assert dominant_sinks(mass, valid).tolist() == [5, 5]


def test_mask_stability_mean_and_std():
    masks = torch.zeros(K, T)
    masks[:, 2] = 1.0  # always a sink
    masks[::2, 7] = 1.0  # a sink half of the time
    mean, std = mask_stability(masks)
    assert mean[2] == 1 and std[2] == 0
    assert mean[7] == pytest.approx(0.5) and std[7] == pytest.approx(0.5)
    assert mean[0] == 0 and std[0] == 0


def test_policies_select_the_right_occurrences():
    masks = torch.zeros(K, T)
    masks[:, 2] = 1.0  # stable sink
    masks[::2, 7] = 1.0  # transient sink
    assert torch.equal(apply_sink_policy(masks, "all"), masks)
    unstable = apply_sink_policy(masks, "unstable")
    assert unstable[:, 2].sum() == 0 and torch.equal(unstable[:, 7], masks[:, 7])
    stable = apply_sink_policy(masks, "stable")
    assert torch.equal(stable[:, 2], masks[:, 2]) and stable[:, 7].sum() == 0
    with pytest.raises(ValueError, match="unknown sink_policy"):
        apply_sink_policy(masks, "sometimes")


@pytest.fixture(scope="module")
def grouped_rows():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(4, VOCAB, (3, 24), generator=g)
    ids, _, _ = noise_windows(clean, (0.2, 0.5, 0.8, 1.0), MASK_ID, seed=0)
    return ids  # sample-major: 4 noised copies per window


def _prune_grouped(tiny_llama_dir, ids, batch_size, **kwargs):
    from tests.test_sink_wanda_modifier import prune

    return prune(tiny_llama_dir, [SinkAwareWandaPruningModifier(sparsity=0.5, **kwargs)], ids, batch_size=batch_size)


def test_policies_change_masks_when_batches_hold_one_window(tiny_llama_dir, grouped_rows):
    results = {
        policy: {n: m.weight == 0 for n, m in block_linears(_prune_grouped(tiny_llama_dir, grouped_rows, 4, sink_policy=policy)).items()}
        for policy in ("all", "unstable", "stable")
    }
    differs = lambda a, b: any(not torch.equal(results[a][n], results[b][n]) for n in results[a])  # noqa: E731
    assert differs("all", "unstable") or differs("all", "stable")
    for masks in results.values():
        assert all(torch.all(m.sum(1) == m.shape[1] // 2) for m in masks.values())


def _root_message(info) -> str:
    """llm-compressor's sequential pipeline re-raises errors as RuntimeError from the original."""
    err = info.value
    while err.__cause__ is not None:
        err = err.__cause__
    return str(err)


def test_policy_refuses_batches_that_mix_windows(tiny_llama_dir, grouped_rows):
    with pytest.raises((ValueError, RuntimeError)) as info:
        _prune_grouped(tiny_llama_dir, grouped_rows[2:6], 4, sink_policy="unstable")
    assert "noised copies of one window" in _root_message(info) and "disagree" in _root_message(info)
    with pytest.raises((ValueError, RuntimeError)) as info:
        _prune_grouped(tiny_llama_dir, grouped_rows[:4], 1, sink_policy="unstable")
    assert "batch of 1 row" in _root_message(info)
