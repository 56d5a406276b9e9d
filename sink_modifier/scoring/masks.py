"""Evaluation masks that depend only on ``(seed, shape)``, never on the model.

Comparing a dense model with its pruned variants is only meaningful if every model is asked the
same questions. Every mask here is therefore a pure function of the seed, the window index and
the window length (plus the optional ``maskable`` set): no global RNG state, no model, no device.

Each window gets its own ``torch.Generator`` whose seed is derived by hashing
``(seed, window index, salt)``. Consequences:

* window ``i`` gets the same mask whether 3 or 10 windows are requested, and whatever batch size
  the metric uses later;
* different mask families (a fixed ratio of 0.15 vs 0.5, the NELBO scheme) use different salts,
  so they are independent draws rather than nested prefixes of one permutation.

Two families are provided:

* :func:`fixed_ratio_masks` -- exactly ``max(1, round(ratio * L))`` masked positions per window,
  for the "masked cross-entropy at ratio r" metric.
* :func:`stratified_masks` -- the stratified exact-count scheme of the LLaDA Monte-Carlo ELBO
  (Nie et al. 2025, §4.1 / ``get_log_likelihood.py``) over a given set of positions, the one
  generator behind :func:`nelbo_masks` (evaluation windows, see :mod:`.diffusion_metrics`) and
  :func:`elbo_masks` (an lm-eval request's continuation, keyed by its token ids, see :mod:`.elbo`).

``L`` is the *maskable* length: the whole window by default, or the number of ``True`` entries
of ``maskable`` (e.g. to keep a prompt or a BOS token visible).
"""

from __future__ import annotations

import torch

from sink_modifier.data.keyed_random import keyed_generator

__all__ = ["elbo_masks", "fixed_ratio_masks", "nelbo_masks", "stratified_counts", "stratified_masks", "window_generator"]

_ELBO_SALT = "lm_eval:elbo"


def window_generator(seed: int, index: int, salt: str) -> torch.Generator:
    """A CPU generator for one window, seeded from ``(seed, index, salt)``.

    A cryptographic hash (rather than e.g. ``seed + index``) keeps streams of neighbouring
    seeds/windows/salts unrelated, so seed 0 window 1 does not equal seed 1 window 0.
    """
    return keyed_generator(f"sink_modifier.evaluation:{int(seed)}:{int(index)}:{salt}")


def _maskable_positions(
    num_windows: int, seq_len: int, maskable: torch.Tensor | None
) -> list[torch.Tensor]:
    """Per-window index tensors of the positions that may be masked (validated)."""
    if num_windows < 0 or seq_len < 1:
        raise ValueError(f"need num_windows >= 0 and seq_len >= 1, got {num_windows}, {seq_len}")
    if maskable is None:
        every = torch.arange(seq_len)
        return [every] * num_windows
    if maskable.dtype != torch.bool or tuple(maskable.shape) != (num_windows, seq_len):
        raise ValueError(
            f"maskable must be a bool tensor of shape ({num_windows}, {seq_len}), "
            f"got {maskable.dtype} {tuple(maskable.shape)}"
        )
    positions = [row.nonzero().flatten() for row in maskable.cpu()]
    empty = [i for i, p in enumerate(positions) if p.numel() == 0]
    if empty:
        raise ValueError(f"windows {empty[:5]} have no maskable position")
    return positions


def fixed_ratio_masks(
    num_windows: int,
    seq_len: int,
    ratio: float,
    seed: int,
    *,
    maskable: torch.Tensor | None = None,
) -> torch.Tensor:
    """Masks with exactly ``max(1, round(ratio * L))`` positions masked in every window.

    An exact count (not Bernoulli(ratio) per token) removes the variance of the mask size, so the
    metric at ratio ``r`` measures the model at ``r`` and nothing else. Positions are the first
    ``k`` entries of a uniform random permutation of the maskable positions.

    Args:
        num_windows: ``N``.
        seq_len: ``T``.
        ratio: fraction of the maskable length to mask, in ``(0, 1]``.
        seed: evaluation seed; the salt makes each ratio an independent draw.
        maskable: optional ``BoolTensor[N, T]``; ``False`` positions are never masked and
            ``L`` is counted over the ``True`` ones.

    Returns:
        ``BoolTensor[N, T]``, ``True`` = masked.
    """
    ratio = float(ratio)
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    positions = _maskable_positions(num_windows, seq_len, maskable)
    salt = f"fixed_ratio:{ratio.hex()}"
    masks = torch.zeros(num_windows, seq_len, dtype=torch.bool)
    for i, pos in enumerate(positions):
        length = pos.numel()
        count = max(1, round(ratio * length))
        perm = torch.randperm(length, generator=window_generator(seed, i, salt))
        masks[i, pos[perm[:count]]] = True
    return masks


def stratified_counts(length: int, mc_samples: int, generator: torch.Generator) -> torch.Tensor:
    """The LLaDA stratified mask counts ``k_1..k_mc`` for one window of maskable length ``L``.

    ``k0 ~ UniformInt{1..L}``, ``k_r = round(linspace(k0, k0 + (mc-1) L/mc, mc))`` wrapped into
    ``[1, L]`` by ``((k - 1) mod L) + 1``: the ``mc`` counts are evenly spread over the whole range
    of masking levels (one per stratum of width ``L/mc``) with a random common offset. This is
    unbiased for the uniform-``k`` ELBO like i.i.d. draws, but with far lower variance, and every
    ``k >= 1`` so no sample is wasted.
    """
    k0 = int(torch.randint(1, length + 1, (1,), generator=generator))
    grid = torch.linspace(float(k0), k0 + (mc_samples - 1) * length / mc_samples, mc_samples,
                          dtype=torch.float64)
    counts = torch.round(grid).long()
    return (counts - 1) % length + 1


def stratified_masks(
    positions: torch.Tensor,
    seq_len: int,
    mc_samples: int,
    generator: torch.Generator,
    strata_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``mc_samples`` stratified exact-count masks over ``positions`` of a row of ``seq_len``.

    With ``L = len(positions)``, the counts come in groups of ``strata_size`` draws (default: one
    group of all ``mc_samples``), each group :func:`stratified_counts` with its own offset; then
    row ``r`` hides the first ``k_r`` entries of its own uniform random permutation of
    ``positions``. Every draw comes from ``generator``, counts first, in that order.

    Returns:
        ``(masks, counts)``: ``BoolTensor[mc, seq_len]`` and ``LongTensor[mc]`` with
        ``masks.sum(-1) == counts``.
    """
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    strata = mc_samples if strata_size is None else int(strata_size)
    if strata < 1 or mc_samples % strata:
        raise ValueError(f"the draws ({mc_samples}) must be a multiple of strata_size ({strata})")
    length = positions.numel()
    counts = torch.cat([stratified_counts(length, strata, generator) for _ in range(mc_samples // strata)])
    masks = torch.zeros(mc_samples, seq_len, dtype=torch.bool)
    for r in range(mc_samples):
        perm = torch.randperm(length, generator=generator)
        masks[r, positions[perm[: int(counts[r])]]] = True
    return masks, counts


def nelbo_masks(
    num_windows: int,
    seq_len: int,
    mc_samples: int,
    seed: int,
    *,
    maskable: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks for the LLaDA Monte-Carlo ELBO: ``mc_samples`` rows per window.

    Row ``r`` of window ``i`` masks exactly ``k[i, r]`` positions (see
    :func:`stratified_counts`), chosen by its own uniform random permutation of the maskable
    positions. The generator of window ``i`` draws ``k0`` first and then the ``mc`` permutations,
    so everything about window ``i`` depends only on ``(seed, i, mc_samples, L)``.

    Returns:
        ``(masks, counts)``: ``BoolTensor[N, mc, T]`` and ``LongTensor[N, mc]`` with
        ``masks.sum(-1) == counts``.
    """
    if mc_samples < 1:
        raise ValueError(f"mc_samples must be >= 1, got {mc_samples}")
    positions = _maskable_positions(num_windows, seq_len, maskable)
    masks = torch.zeros(num_windows, mc_samples, seq_len, dtype=torch.bool)
    counts = torch.zeros(num_windows, mc_samples, dtype=torch.long)
    for i, pos in enumerate(positions):
        masks[i], counts[i] = stratified_masks(pos, seq_len, mc_samples, window_generator(seed, i, "nelbo"))
    return masks, counts


def elbo_masks(
    length: int, mc_num: int, seed: int, key: int, strata_size: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``mc_num`` masks over ``length`` continuation positions of one lm-eval request.

    ``key`` names the request (:func:`.elbo.request_key` of its token ids), so a request gets
    the same masks whatever its position, batch, rank or model. Returns ``(masks, counts)``:
    ``BoolTensor[mc_num, length]`` and ``LongTensor[mc_num]``, see :func:`stratified_masks`.
    """
    if length < 1:
        raise ValueError(f"the continuation must have at least one token, got {length}")
    if mc_num < 1:
        raise ValueError(f"mc_num must be >= 1, got {mc_num}")
    return stratified_masks(torch.arange(length), length, mc_num, window_generator(seed, key, _ELBO_SALT), strata_size)
