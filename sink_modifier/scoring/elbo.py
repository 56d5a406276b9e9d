"""The Monte-Carlo ELBO of a continuation given its context, as lm-eval's ``loglikelihood`` asks it.

The sequence is ``context + continuation``; only continuation positions are ever hidden. Draw
``r`` hides exactly ``k_r`` of the ``L`` continuation positions (:func:`.masks.elbo_masks`:
stratified counts, a uniform random subset) and scores ``(L / k_r) * sum_{hidden i} -log p(x_i |
noisy)``; the log-likelihood is minus the mean over the ``mc_num`` draws (a lower bound on
``log p(continuation | context)`` in expectation, for a masked-diffusion model). The counts are
stratified in groups of ``strata_size`` draws (default: all ``mc_num`` in one group); the
reference (``llada_dist``) uses ``strata_size = batch_size``, so its estimate depends on the batch
size, here ``batch_size`` only says how many rows go through the model at once.

Masks are keyed by ``(seed, token ids of the pair)`` (:func:`request_key`): the same request
gets the same masks whatever its position, batch, rank or model (common random numbers).

What a hidden position holds is the family's corruption (default: the mask token); a
uniform-noise family's replacement tokens are keyed by ``(seed, request, draw)`` the same way.
With ``cfg > 0`` the unconditional input is the row with its context hidden by that same
corruption (for mask-token families: every context token becomes the mask token, as the
reference does). The logits come from ``logits_fn`` (the family's forward) and are aligned,
guided and scored by :mod:`.denoiser`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from sink_modifier.data.keyed_random import keyed_seed

from . import denoiser
from .inference import eval_mode, input_device
from .masks import elbo_masks

__all__ = ["mc_loglikelihood", "request_key"]

_NOISE_STREAM = "lm_eval:elbo"
_UNCONDITIONAL_STREAM = "lm_eval:cfg"


def request_key(*token_lists: Sequence[int]) -> int:
    """A 63-bit integer naming a request by its token ids (order-sensitive, lists kept apart)."""
    return keyed_seed(
        chunk
        for tokens in token_lists
        for chunk in (len(tokens).to_bytes(4, "little"), b"".join(int(t).to_bytes(4, "little", signed=True) for t in tokens))
    )


def _draw_key(key: int, draw: int) -> int:
    """The row index a corruption keys its replacement tokens by: one per (request, draw)."""
    return keyed_seed(f"{key}:{draw}")


def mc_loglikelihood(
    model: nn.Module,
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    mask_token_id: int | None = None,
    mc_num: int = 128,
    batch_size: int = 32,
    cfg: float = 0.0,
    logit_shift: int = 0,
    seed: int = 1234,
    strata_size: int | None = None,
    progress: bool = False,
    logits_fn: denoiser.LogitsFn | None = None,
    corrupt: denoiser.Corruption | None = None,
) -> list[float]:
    """Monte-Carlo ELBO of each ``(context_ids, continuation_ids)`` pair (see the module docstring).

    ``logits_fn`` (default ``model(input_ids=...).logits``), ``logit_shift`` and ``corrupt``
    (default the mask token) carry the family's rules. Rows of equal total length are batched
    together (``batch_size`` rows per forward, no padding), so the result does not depend on
    ``batch_size`` or on the order of ``pairs``. An empty continuation scores 0.
    """
    denoiser.check_logit_shift(logit_shift)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    hide = denoiser.resolve_corruption(mask_token_id, corrupt)
    forward = logits_fn if logits_fn is not None else denoiser.model_logits(model)
    device = input_device(model)
    row_loss = torch.zeros(len(pairs), mc_num, dtype=torch.float64)
    weights = torch.zeros(len(pairs), mc_num, dtype=torch.float64)

    def rows() -> Iterator[tuple]:
        """(pair, draw, clean ids, mask, context length, draw key), by sequence length; masks made lazily."""
        for j in sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1])):
            context, continuation = pairs[j]
            ctx_len, length = len(context), len(continuation)
            if logit_shift and ctx_len == 0:
                raise ValueError("logit_shift=1 needs at least one context token (the prefix token)")
            if length == 0:  # nothing to score: log-likelihood 0
                continue
            seq = torch.tensor(list(context) + list(continuation), dtype=torch.long)
            key = request_key(context, continuation)
            masks, counts = elbo_masks(length, mc_num, seed, key, strata_size)
            weights[j] = length / counts.double()
            full = torch.zeros(mc_num, ctx_len + length, dtype=torch.bool)
            full[:, ctx_len:] = masks
            for r in range(mc_num):
                yield j, r, seq, full[r], ctx_len, _draw_key(key, r)

    def score(batch: list[tuple]) -> None:
        clean = torch.stack([row[2] for row in batch]).to(device)
        mask = torch.stack([row[3] for row in batch]).to(device)
        keys = torch.tensor([row[5] for row in batch], dtype=torch.long)
        noisy = hide(clean, mask, keys, _NOISE_STREAM)
        unconditional = None
        if cfg > 0:
            ctx = torch.tensor([row[4] for row in batch], device=device)
            context = torch.arange(clean.shape[1], device=device)[None, :] < ctx[:, None]
            unconditional = hide(noisy, context, keys, _UNCONDITIONAL_STREAM)
        logits = denoiser.denoiser_logits(forward, noisy, logit_shift=logit_shift, cfg=cfg, unconditional=unconditional)
        ce, _ = denoiser.masked_token_ce(logits, clean, mask)
        sums = torch.zeros(len(batch), dtype=torch.float64)
        sums.index_add_(0, mask.nonzero()[:, 0].cpu(), ce.double().cpu())
        for b, (j, r, *_rest) in enumerate(batch):
            row_loss[j, r] = sums[b]

    with eval_mode(model), tqdm(total=len(pairs) * mc_num, desc="loglikelihood (rows)", disable=not progress) as bar:
        batch: list[tuple] = []
        for row in rows():
            if batch and (len(batch) == batch_size or row[2].numel() != batch[0][2].numel()):
                score(batch)
                bar.update(len(batch))
                batch = []
            batch.append(row)
        if batch:
            score(batch)
            bar.update(len(batch))
    return (-(row_loss * weights).mean(dim=1)).tolist()
