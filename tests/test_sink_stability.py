"""Sink stability statistics on constructed mass tensors, the policies, and policies in oneshot."""

from __future__ import annotations

import pytest
import torch

from sink_modifier import SinkAwareWandaPruningModifier
from sink_modifier.families import FAMILIES
from sink_modifier.process import MaskTokenProcess, build_calibration
from sink_modifier.sinks.stability import (
    apply_sink_policy,
    dominant_sink_movement,
    dominant_sinks,
    mask_stability,
)
from tests.conftest import MASK_ID, VOCAB, rows_loader
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
def grouped():
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(4, VOCAB, (3, 24), generator=g)
    # sample-major: 4 noised copies per window
    return build_calibration(clean, None, process=MaskTokenProcess(MASK_ID), seq_len=24, num_samples=3,
                             timesteps=(0.2, 0.5, 0.8, 1.0), seed=0)


def _prune_grouped(tiny_llama_dir, loader, modifier=None, **kwargs):
    from tests.test_sink_wanda_modifier import prune

    return prune(tiny_llama_dir, [modifier or SinkAwareWandaPruningModifier(sparsity=0.5, **kwargs)], loader)


def test_policies_change_masks_when_batches_hold_one_window(tiny_llama_dir, grouped):
    one_window = grouped.dataloader(batch_size=4)
    results = {
        policy: {n: m.weight == 0 for n, m in block_linears(_prune_grouped(tiny_llama_dir, one_window, sink_policy=policy)).items()}
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


def test_row_table_reaches_the_modifier_through_a_plain_oneshot(tiny_llama_dir, grouped):
    modifier = SinkAwareWandaPruningModifier(sparsity=0.5, sink_policy="unstable")
    _prune_grouped(tiny_llama_dir, grouped.dataloader(batch_size=4), modifier)
    rows = modifier._rows  # read off state.data.calib at initialisation
    assert rows is not None and rows.batch_size == 4
    assert torch.equal(rows.window_index, grouped.window_index) and torch.equal(rows.timestep, grouped.timestep)


def test_policy_refuses_batches_that_are_not_one_window(tiny_llama_dir, grouped):
    with pytest.raises((ValueError, RuntimeError)) as info:
        _prune_grouped(tiny_llama_dir, grouped.dataloader(batch_size=3), sink_policy="unstable")
    assert "noised copies of one window" in _root_message(info) and "not at each of" in _root_message(info)
    with pytest.raises((ValueError, RuntimeError)) as info:
        _prune_grouped(tiny_llama_dir, grouped.dataloader(batch_size=1), sink_policy="unstable")
    assert "holds 1 row" in _root_message(info)


def test_policy_on_a_plain_dataloader_names_the_calibration_loader(tiny_llama_dir, grouped):
    with pytest.raises((ValueError, RuntimeError)) as info:
        _prune_grouped(tiny_llama_dir, rows_loader(grouped.input_ids, 4), sink_policy="unstable")
    message = _root_message(info)
    assert "carries no row table" in message and "CalibrationSet.dataloader(batch_size=len(timesteps))" in message


def test_attached_calibration_and_family_replace_what_the_modifier_would_find_itself(tiny_llama_dir, grouped):
    class Spy(type(FAMILIES["bidirectional"])):
        sink_passes = 0

        def sink_pass(self, model, token_ids, call_kwargs):
            Spy.sink_passes += 1
            return super().sink_pass(model, token_ids, call_kwargs)

    modifier = SinkAwareWandaPruningModifier(sparsity=0.5, sink_policy="unstable")
    modifier.attach(family=Spy(), calibration=grouped)
    pruned = _prune_grouped(tiny_llama_dir, rows_loader(grouped.input_ids, 4), modifier)  # a plain loader: rows from the set
    assert Spy.sink_passes == len(grouped) // 4  # one sink pass per batch, through the attached family
    expected = _prune_grouped(tiny_llama_dir, grouped.dataloader(batch_size=4), sink_policy="unstable")
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(block_linears(pruned).values(), block_linears(expected).values()))
