"""Tests for sink_modifier.evaluation: masks, estimators vs naive loops, oracles, real tiny-dlm."""

from __future__ import annotations

import gzip
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from sink_modifier.scoring import (
    NelboResult,
    evaluate_model,
    fixed_ratio_masks,
    masked_cross_entropy,
    nelbo,
    nelbo_masks,
    perplexity,
)
from sink_modifier.scoring.denoiser import aligned_logits, denoiser_logits, guided_logits, masked_token_ce
from sink_modifier.scoring.masks import elbo_masks, stratified_counts, stratified_masks, window_generator

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
TINY_DLM = SHARED / "models" / "tiny-dlm"
HELDOUT = SHARED / "data" / "heldout.txt.gz"

VOCAB = 64
MASK_ID = 2


# --------------------------------------------------------------------------- fixtures / stubs


def _random_llama(is_causal: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=VOCAB, max_position_embeddings=64, is_causal=is_causal)
    return LlamaForCausalLM, config


def _sharpened_llama(is_causal: bool, seed: int) -> nn.Module:
    model_class, config = _random_llama(is_causal=is_causal)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    # Random init gives near-uniform logits; sharpen them so CE varies across tokens and rows.
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)
    return model


@pytest.fixture(scope="module")
def random_dlm() -> nn.Module:
    """A tiny random bidirectional Llama (no training needed to test estimator arithmetic)."""
    return _sharpened_llama(is_causal=False, seed=0)


@pytest.fixture(scope="module")
def random_causal() -> nn.Module:
    return _sharpened_llama(is_causal=True, seed=1)


def random_windows(n: int, t: int, seed: int = 0) -> torch.Tensor:
    """Random clean ids that avoid the mask id (a clean window never contains [MASK])."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (n, t), generator=g)
    return ids


def truth(t: int) -> torch.Tensor:
    """A position-dependent token sequence that no shift of itself reproduces."""
    return (7 * torch.arange(t) + 3) % VOCAB


class PositionOracle(nn.Module):
    """Knows the clean token at every position (all windows equal ``truth``).

    ``shift=0`` puts a huge logit on the token at ``i`` (LLaDA convention); ``shift=1`` on the
    token at ``i + 1`` (Dream convention). It has no parameters, and returns only ``.logits``,
    exercising the "any module whose output has .logits" contract.
    """

    def __init__(self, shift: int = 0, scale: float = 1e4) -> None:
        super().__init__()
        self.shift, self.scale = shift, scale

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        b, t = input_ids.shape
        targets = truth(t + 1)[self.shift : self.shift + t]
        logits = torch.nn.functional.one_hot(targets, VOCAB).float() * self.scale
        return SimpleNamespace(logits=logits.expand(b, t, VOCAB))


class Uniform(nn.Module):
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, VOCAB))


# --------------------------------------------------------------------------- masks


def test_fixed_ratio_exact_counts_and_reproducible():
    for ratio, seq_len in [(0.15, 50), (0.5, 7), (0.9, 33), (0.01, 20), (1.0, 5)]:
        masks = fixed_ratio_masks(6, seq_len, ratio, seed=3)
        assert masks.dtype == torch.bool and masks.shape == (6, seq_len)
        expected = max(1, round(ratio * seq_len))
        assert masks.sum(-1).tolist() == [expected] * 6
        assert torch.equal(masks, fixed_ratio_masks(6, seq_len, ratio, seed=3))
    a, b = fixed_ratio_masks(6, 50, 0.5, seed=0), fixed_ratio_masks(6, 50, 0.5, seed=1)
    assert not torch.equal(a, b)
    # Windows are independent draws, not one pattern repeated.
    assert len({tuple(row.tolist()) for row in a}) == 6
    # Different ratios are independent draws, not prefixes of a shared permutation.
    small, large = fixed_ratio_masks(20, 64, 0.15, 0), fixed_ratio_masks(20, 64, 0.5, 0)
    assert not bool((small <= large).all())


def test_masks_independent_of_number_of_windows():
    few, many = fixed_ratio_masks(3, 40, 0.3, seed=7), fixed_ratio_masks(10, 40, 0.3, seed=7)
    assert torch.equal(few, many[:3])
    (m3, k3), (m10, k10) = nelbo_masks(3, 40, 4, seed=7), nelbo_masks(10, 40, 4, seed=7)
    assert torch.equal(m3, m10[:3]) and torch.equal(k3, k10[:3])


def test_nelbo_masks_stratified_counts():
    seq_len, mc = 64, 8
    masks, counts = nelbo_masks(50, seq_len, mc, seed=0)
    assert masks.shape == (50, mc, seq_len) and counts.shape == (50, mc)
    assert counts.dtype == torch.long
    assert torch.equal(masks.sum(-1), counts)
    assert int(counts.min()) >= 1 and int(counts.max()) <= seq_len
    for row in counts:
        # One per stratum: mc distinct counts, and sorted they are spaced by ~L/mc.
        assert len(set(row.tolist())) == mc
        gaps = torch.diff(row.sort().values)
        assert int(gaps.min()) >= 7 and int(gaps.max()) <= 9 + seq_len // mc
    # The random offset k0 differs between windows; deterministic per seed.
    assert len({int(c[0]) for c in counts}) > 10
    again, counts_again = nelbo_masks(50, seq_len, mc, seed=0)
    assert torch.equal(again, masks) and torch.equal(counts_again, counts)
    # mc > L wraps into [1, L] rather than going out of range.
    _, wrapped = nelbo_masks(4, 5, 12, seed=1)
    assert int(wrapped.min()) >= 1 and int(wrapped.max()) <= 5


def test_nelbo_and_lm_eval_masks_are_one_generator():
    """Both ELBO mask families are the stratified generator over their positions, drawn as first released."""
    maskable = torch.ones(3, 12, dtype=torch.bool)
    maskable[:, :4] = False
    masks, counts = nelbo_masks(3, 12, 5, seed=2, maskable=maskable)
    for i in range(3):
        m, k = stratified_masks(torch.arange(4, 12), 12, 5, window_generator(2, i, "nelbo"))
        assert torch.equal(masks[i], m) and torch.equal(counts[i], k)
    # lm-eval's: counts per stratum first, then one permutation per draw, all from the request's generator
    length, mc, strata, key = 9, 6, 3, 1234
    generator = window_generator(4, key, "lm_eval:elbo")
    want_counts = torch.cat([stratified_counts(length, strata, generator) for _ in range(mc // strata)])
    want = torch.zeros(mc, length, dtype=torch.bool)
    for r in range(mc):
        want[r, torch.randperm(length, generator=generator)[: int(want_counts[r])]] = True
    got, got_counts = elbo_masks(length, mc, 4, key, strata)
    assert torch.equal(got, want) and torch.equal(got_counts, want_counts)


def test_denoiser_core_aligns_guides_and_scores():
    logits = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(aligned_logits(logits, 0, 2, 5), logits[:, 2:5])
    shifted = aligned_logits(logits, 1)
    assert torch.equal(shifted[:, 1:], logits[:, :-1]) and torch.equal(shifted[:, 0], logits[:, 0])
    assert torch.equal(aligned_logits(logits, 1, 3, 6), shifted[:, 3:6])
    uncond = torch.randn(2, 7, 5, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(guided_logits(logits, uncond, 0.5), uncond + 1.5 * (logits - uncond))
    # guidance runs conditional and unconditional rows in one forward
    calls = []

    def fn(ids):
        calls.append(ids.shape[0])
        return torch.where(ids[..., None] == 0, logits[:1].expand(ids.shape[0], -1, -1), uncond[:1].expand(ids.shape[0], -1, -1))

    noisy, unconditional = torch.zeros(1, 7, dtype=torch.long), torch.ones(1, 7, dtype=torch.long)
    got = denoiser_logits(fn, noisy, logit_shift=1, cfg=0.5, unconditional=unconditional, start=2, end=6)
    assert calls == [2] and torch.allclose(got, guided_logits(logits[:1, 1:5], uncond[:1, 1:5], 0.5))
    with pytest.raises(ValueError, match="unconditional"):
        denoiser_logits(fn, noisy, cfg=0.5)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[0, 3] = mask[1, 0] = True
    targets = torch.randint(0, 5, (2, 7), generator=torch.Generator().manual_seed(2))
    ce, correct = masked_token_ce(logits, targets, mask)
    want = [-torch.log_softmax(logits[b, i].double(), -1)[targets[b, i]] for b, i in ((0, 3), (1, 0))]
    assert torch.allclose(ce.double(), torch.stack(want), atol=1e-6)
    assert correct.tolist() == [bool(logits[b, i].argmax() == targets[b, i]) for b, i in ((0, 3), (1, 0))]


def test_maskable_respected():
    n, t = 8, 30
    maskable = torch.ones(n, t, dtype=torch.bool)
    maskable[:, :10] = False  # a prompt
    maskable[3, 10:25] = False  # window 3 has only 5 maskable positions
    lengths = maskable.sum(-1)
    masks = fixed_ratio_masks(n, t, 0.5, seed=0, maskable=maskable)
    assert not bool((masks & ~maskable).any())
    assert masks.sum(-1).tolist() == [max(1, round(0.5 * int(length))) for length in lengths]
    nmasks, counts = nelbo_masks(n, t, 6, seed=0, maskable=maskable)
    assert not bool((nmasks & ~maskable[:, None]).any())
    assert torch.equal(nmasks.sum(-1), counts)
    assert bool((counts <= lengths[:, None]).all()) and int(counts[3].max()) <= 5
    with pytest.raises(ValueError, match="no maskable"):
        fixed_ratio_masks(2, 4, 0.5, 0, maskable=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        nelbo_masks(2, 4, 2, 0, maskable=torch.ones(3, 4, dtype=torch.bool))


# --------------------------------------------------------------------------- estimators vs naive


def _naive_row_ce(model: nn.Module, clean: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    noisy = clean.clone()
    noisy[mask] = MASK_ID
    with torch.no_grad():
        logits = model(input_ids=noisy[None]).logits[0].float()
    return -torch.log_softmax(logits, -1)[mask, clean[mask]]


def test_nelbo_matches_naive_loop(random_dlm):
    windows, mc = random_windows(5, 24), 4
    result = nelbo(random_dlm, windows, MASK_ID, mc_samples=mc, seed=11, batch_size=3)
    masks, counts = nelbo_masks(5, 24, mc, seed=11)
    per_window = []
    for i in range(5):
        rows = []
        for r in range(mc):
            ce = _naive_row_ce(random_dlm, windows[i], masks[i, r])
            rows.append(ce.double().sum().item() * 24 / int(counts[i, r]))
        per_window.append(sum(rows) / mc / 24)
    expected = sum(per_window) / 5
    assert isinstance(result, NelboResult)
    assert result.nelbo == pytest.approx(expected, abs=1e-5)
    assert result.per_window == pytest.approx(per_window, abs=1e-5)
    std = torch.tensor(per_window, dtype=torch.float64).std(unbiased=True).item()
    assert result.stderr == pytest.approx(std / math.sqrt(5), abs=1e-6)
    assert result.stderr > 0
    assert (result.mc_samples, result.num_windows, result.seq_len, result.seed) == (mc, 5, 24, 11)
    as_dict = result.to_dict()
    assert as_dict["nelbo"] == result.nelbo and len(as_dict["per_window"]) == 5
    assert as_dict["ppl_bound"] == pytest.approx(math.exp(result.nelbo))


def test_masked_ce_matches_naive_loop(random_dlm):
    windows = random_windows(6, 20, seed=1)
    result = masked_cross_entropy(random_dlm, windows, MASK_ID, 0.5, seed=4, batch_size=4)
    masks = fixed_ratio_masks(6, 20, 0.5, seed=4)
    ces, correct = [], 0
    for i in range(6):
        ce = _naive_row_ce(random_dlm, windows[i], masks[i])
        ces.append(ce)
        noisy = windows[i].masked_fill(masks[i], MASK_ID)
        with torch.no_grad():
            pred = random_dlm(input_ids=noisy[None]).logits[0].argmax(-1)
        correct += int((pred[masks[i]] == windows[i][masks[i]]).sum())
    all_ce = torch.cat(ces).double()
    assert result["n_masked"] == 60 == all_ce.numel()
    assert result["ce"] == pytest.approx(all_ce.mean().item(), abs=1e-5)
    assert result["accuracy"] == pytest.approx(correct / 60)


def test_batch_size_does_not_change_results(random_dlm):
    windows = random_windows(7, 16, seed=2)
    one = nelbo(random_dlm, windows, MASK_ID, mc_samples=3, seed=5, batch_size=1)
    five = nelbo(random_dlm, windows, MASK_ID, mc_samples=3, seed=5, batch_size=5)
    assert one.nelbo == pytest.approx(five.nelbo, abs=1e-6)
    assert one.per_window == pytest.approx(five.per_window, abs=1e-6)
    ce1 = masked_cross_entropy(random_dlm, windows, MASK_ID, 0.15, seed=5, batch_size=1)
    ce5 = masked_cross_entropy(random_dlm, windows, MASK_ID, 0.15, seed=5, batch_size=5)
    assert ce1["ce"] == pytest.approx(ce5["ce"], abs=1e-6)
    assert ce1["n_masked"] == ce5["n_masked"] and ce1["accuracy"] == ce5["accuracy"]
    # A different seed sees different masks, hence a different estimate.
    other = nelbo(random_dlm, windows, MASK_ID, mc_samples=3, seed=6, batch_size=5)
    assert other.nelbo != pytest.approx(one.nelbo, abs=1e-6)


def test_model_training_flag_restored(random_dlm):
    random_dlm.train()
    try:
        masked_cross_entropy(random_dlm, random_windows(2, 8), MASK_ID, 0.5)
        assert random_dlm.training
    finally:
        random_dlm.eval()


# --------------------------------------------------------------------------- oracles


def test_perfect_and_uniform_models():
    windows = truth(32).repeat(4, 1)
    for ratio in (0.15, 0.9):
        perfect = masked_cross_entropy(PositionOracle(), windows, MASK_ID, ratio)
        assert perfect["ce"] < 1e-6 and perfect["accuracy"] == 1.0
    assert nelbo(PositionOracle(), windows, MASK_ID, mc_samples=4).nelbo < 1e-6
    uniform_ce = masked_cross_entropy(Uniform(), windows, MASK_ID, 0.5)["ce"]
    assert uniform_ce == pytest.approx(math.log(VOCAB), abs=1e-6)
    uniform = nelbo(Uniform(), windows, MASK_ID, mc_samples=5, seed=3)
    assert uniform.nelbo == pytest.approx(math.log(VOCAB), abs=1e-6)
    assert uniform.stderr == pytest.approx(0.0, abs=1e-9)


def test_logit_shift_dream_convention():
    windows = truth(32).repeat(3, 1)
    # Position 0 has no left neighbour under the shifted head; keep it visible, as with a BOS.
    maskable = torch.ones(3, 32, dtype=torch.bool)
    maskable[:, 0] = False
    dream = PositionOracle(shift=1)
    shifted = masked_cross_entropy(dream, windows, MASK_ID, 0.5, logit_shift=1, maskable=maskable)
    assert shifted["ce"] < 1e-6 and shifted["accuracy"] == 1.0
    unshifted = masked_cross_entropy(dream, windows, MASK_ID, 0.5, maskable=maskable)
    assert unshifted["ce"] > 100 and unshifted["accuracy"] == 0.0
    bound = nelbo(dream, windows, MASK_ID, mc_samples=4, logit_shift=1, maskable=maskable)
    assert bound.nelbo < 1e-6
    # And the LLaDA oracle is wrong under the Dream shift.
    llada_shifted = masked_cross_entropy(PositionOracle(), windows, MASK_ID, 0.5, logit_shift=1,
                                         maskable=maskable)
    assert llada_shifted["ce"] > 100
    with pytest.raises(ValueError, match="logit_shift"):
        masked_cross_entropy(dream, windows, MASK_ID, 0.5, logit_shift=2)


# --------------------------------------------------------------------------- causal


def test_perplexity_matches_naive(random_causal):
    windows = random_windows(5, 18, seed=3)
    result = perplexity(random_causal, windows, batch_size=2)
    total, count = 0.0, 0
    for window in windows:
        with torch.no_grad():
            logits = random_causal(input_ids=window[None]).logits[0].float()
        for i in range(1, 18):
            total -= torch.log_softmax(logits[i - 1], -1)[window[i]].item()
            count += 1
    assert result["n_tokens"] == count == 5 * 17
    assert result["ce"] == pytest.approx(total / count, abs=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(total / count), rel=1e-6)
    other_batching = perplexity(random_causal, windows, batch_size=5)
    assert other_batching["ce"] == pytest.approx(result["ce"], abs=1e-6)


# --------------------------------------------------------------------------- evaluate_model


def test_evaluate_model_structure_and_validation(random_dlm, random_causal):
    windows = random_windows(4, 16, seed=4)
    out = evaluate_model(random_dlm, windows, diffusion=True, mask_token_id=MASK_ID, seed=2,
                         mc_samples=3, progress=False)
    assert set(out) == {"nelbo", "nelbo_stderr", "masked_ce", "masked_acc", "num_windows",
                        "seq_len", "mc_samples", "seed"}
    assert set(out["masked_ce"]) == set(out["masked_acc"]) == {"0.15", "0.5", "0.9"}
    assert out["nelbo"] == pytest.approx(
        nelbo(random_dlm, windows, MASK_ID, mc_samples=3, seed=2).nelbo, abs=1e-9)
    assert out["masked_ce"]["0.5"] == pytest.approx(
        masked_cross_entropy(random_dlm, windows, MASK_ID, 0.5, seed=2)["ce"], abs=1e-9)
    assert (out["num_windows"], out["seq_len"], out["mc_samples"], out["seed"]) == (4, 16, 3, 2)

    causal = evaluate_model(random_causal, windows, diffusion=False, progress=False)
    assert set(causal) == {"ppl", "ce", "num_windows", "seq_len", "seed"}
    assert causal["ce"] == pytest.approx(perplexity(random_causal, windows)["ce"], abs=1e-9)

    with pytest.raises(ValueError, match="mask_token_id"):
        evaluate_model(random_dlm, windows, diffusion=True, progress=False)
    with pytest.raises(ValueError, match="empty"):
        evaluate_model(random_dlm, windows[:0], diffusion=True, mask_token_id=MASK_ID)
    with pytest.raises(ValueError, match=r"65.*64"):
        evaluate_model(random_dlm, random_windows(1, 65), diffusion=True, mask_token_id=MASK_ID)


# --------------------------------------------------------------------------- real tiny-dlm


def heldout_windows(tokenizer, num_windows: int, seq_len: int) -> torch.Tensor:
    """Consecutive windows of heldout documents joined by eos (id 1), tokenized lazily."""
    text = gzip.open(HELDOUT, "rt", encoding="utf-8").read()
    ids: list[int] = []
    for doc in (d for d in text.split("\n\n") if d.strip()):
        if ids:
            ids.append(tokenizer.eos_token_id)
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if len(ids) >= num_windows * seq_len:
            break
    return torch.tensor(ids[: num_windows * seq_len]).view(num_windows, seq_len)


@pytest.mark.skipif(not TINY_DLM.is_dir(), reason=f"real model folder absent: {TINY_DLM}")
def test_real_tiny_dlm_sanity():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(TINY_DLM)
    model = AutoModelForCausalLM.from_pretrained(TINY_DLM)
    mask_id = model.config.mask_token_id
    assert mask_id == tokenizer.mask_token_id == 2
    windows = heldout_windows(tokenizer, 8, 128)
    ce = masked_cross_entropy(model, windows, mask_id, 0.5, batch_size=8)
    assert 3.0 < ce["ce"] < 5.5, ce
    assert ce["n_masked"] == 8 * 64
    first = nelbo(model, windows, mask_id, mc_samples=4, batch_size=16)
    assert 3.0 < first.nelbo < 6.0, first
    second = nelbo(model, windows, mask_id, mc_samples=4, batch_size=16)
    assert first == second
    assert masked_cross_entropy(model, windows, mask_id, 0.5, batch_size=8) == ce
