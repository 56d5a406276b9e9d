"""Prompt log-prob agreement between a runtime and the transformers reference."""

from __future__ import annotations

import pytest

from sink_modifier.runtime.logprob_agreement import compare_logprobs, first_divergence


def test_max_mean_and_worst_position_over_all_prompts():
    ref = [[None, -1.0, -2.0], [None, -3.0]]
    run = [[None, -1.0 + 1e-6, -2.0 - 3e-6], [None, -3.5]]
    agreement = compare_logprobs(ref, run, bound=1e-5)
    assert agreement.positions == 3
    assert agreement.max_abs == pytest.approx(0.5)
    assert (agreement.worst_prompt, agreement.worst_position) == (1, 1)
    assert agreement.mean_abs == pytest.approx((1e-6 + 3e-6 + 0.5) / 3)
    assert agreement.within_bound is False
    assert compare_logprobs(ref, ref, bound=0.0).within_bound is True
    assert compare_logprobs(ref, run).within_bound is None  # no bound: reported, not judged
    assert compare_logprobs(ref, run).to_dict()["within_bound"] is None


@pytest.mark.parametrize("run, message", [
    ([[None, -1.0], [None, -1.0]], "1 reference prompts but 2"),
    ([[None, -1.0, -2.0]], "2 reference positions"),
    ([[-0.1, -1.0]], "scored on one side only"),
    ([[None, float("nan")]], "non-finite"),
])
def test_misaligned_or_broken_inputs_are_errors(run, message):
    ref = [[None, -1.0]]
    with pytest.raises(ValueError, match=message):
        compare_logprobs(ref, run)
    with pytest.raises(ValueError, match="no scored positions"):
        compare_logprobs([[None]], [[None]])


def test_first_divergence_of_greedy_tokens():
    assert first_divergence([1, 2, 3], [1, 2, 3]) is None
    assert first_divergence([1, 2, 3], [1, 5, 3]) == 1
    assert first_divergence([1, 2], [1, 2, 9]) is None
