"""GPTQ that keeps a sparsity mask: pure maths, no modifier state.

llm-compressor 0.14's ``quantize_weight`` (``llmcompressor/modifiers/gptq/gptq_quantize.py``)
compensates each quantized column's rounding error by updating *every* not-yet-quantized
weight of the row, pruned zeros included, and then rounds those updated values like any
other weight: a 2:4 or 50% pruned layer comes out partly dense (the sparsity-preserving
variant was removed upstream). :func:`masked_quantize_weight` is the same algorithm with
the mask enforced inside the column loop. Two ways to do that (``compensation``):

``"redistribute"`` (default)
    Pruned weights are treated as SparseGPT treats the weights it prunes. While columns to
    their left are quantized they receive their share of the compensation in the working
    copy, like any other not-yet-quantized weight; when their own column is reached they
    are *set to 0* instead of being rounded, and the whole value they hold becomes that
    column's error, which the usual OBS update ``W[:, j>i] -= err_i * Hinv[i, j]`` pushes on
    to the weights to the right. Nothing is discarded: every bit of compensation ends up
    in a surviving weight (only the last column's error is dropped, as in plain GPTQ).
``"skip"``
    Compensation is never written into pruned positions (the updates are masked, in the
    block and across blocks), so pruned weights stay 0 throughout, their error is 0 and
    they propagate nothing. This is llm-compressor's former ``preserve_sparsity_mask``.
    The share of each update that would have gone to a pruned weight is simply dropped,
    never re-solved onto the survivors.

Both keep every pruned weight at exactly 0 and both are upstream GPTQ bit for bit when the
mask is all False. Measured on the 56 Linear layers of the shipped tiny-dlm after 2:4
sink-aware Wanda, with their calibration Hessians (int4, group 32, static actorder), the
mean relative output error ``tr(dW H dW^T) / tr(W H W^T)`` was: RTN 2.50e-3, upstream GPTQ
(refills 2:4) 0.61e-3, ``redistribute`` 0.77e-3, upstream then re-zeroed 0.94e-3, ``skip``
1.04e-3 (int3: 12.0e-3 / 2.83e-3 / 3.59e-3 / 4.40e-3 / 4.86e-3). So ``skip`` is worse even
than re-zeroing afterwards, and ``redistribute`` is the better mask-preserving option.

Why the mask is enforced in the column loop, not re-applied at the end
------------------------------------------------------------------------
GPTQ quantizes columns left to right and each later column is quantized *from its
updated value*. If a pruned position is rounded like a live weight, it may round to a
non-zero code; zeroing it afterwards throws away both that value and the compensation it
held, while the weights to its right were already adjusted for the rounded value, not for
0. The model then carries output error the algorithm never accounted for. Setting the
pruned weight to 0 at the moment its column is quantized (and propagating the difference)
keeps the algorithm's bookkeeping consistent with the weights that are actually stored.

Zero must quantize to zero
--------------------------
A pruned weight is stored as the code of 0. That dequantizes to exactly 0 for symmetric
schemes (int and float) and for asymmetric int schemes whose zero point is an integer in
range (compressed-tensors observers widen the range to include 0 and round the zero
point, so 0 maps to the code ``zero_point``). With a zero point where it does not (a
fractional zero point), forcing 0 would give a weight that is not on the quantization
grid and would come back non-zero after packing, so :func:`masked_quantize_weight`
raises :class:`SparsityMaskNotRepresentableError` instead.

Everything that is not mask-specific is upstream's: activation ordering, Hessian
dampening/factorization (with its RTN fallback and dead columns), the per-column scale
window and ``fake_quantize``. The loop below mirrors upstream's ``quantize_weight`` and
eager ``gptq_block_update`` line by line; the lines marked ``# MASK`` are the only
changes. The masked path always runs the eager torch loop (upstream's fused Triton block
kernel, used on CUDA for plain GPTQ, has no mask input).
"""

from __future__ import annotations

from copy import copy
from typing import Literal

import torch
from compressed_tensors.quantization import (
    ActivationOrdering,
    QuantizationArgs,
    QuantizationStrategy,
    fake_quantize,
)
from llmcompressor.modifiers.gptq.helpers import (
    GPTQ_PRECISION,
    apply_activation_ordering,
    column_scale_window,
    factorize_hessian,
)

__all__ = ["Compensation", "SparsityMaskNotRepresentableError", "masked_quantize_weight"]

Compensation = Literal["redistribute", "skip"]


class SparsityMaskNotRepresentableError(ValueError):
    """The quantization scheme cannot represent 0, so a pruned weight cannot stay pruned."""


def masked_quantize_weight(
    weights: torch.Tensor,
    hessians: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    global_scale: torch.Tensor | None,
    quant_args: QuantizationArgs,
    blocksize: int = 128,
    percdamp: float = 0.01,
    pruned: torch.Tensor | None = None,
    compensation: Compensation = "redistribute",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ-quantize a batch of weights, leaving ``pruned`` positions at exactly 0.

    Same arguments and return value as upstream ``quantize_weight``, plus:

    :param pruned: bool ``[batch, rows, columns]``, True where the weight is pruned and must
        end at 0; ``None`` means ``weights == 0``. Pruned weights must be 0 on entry.
    :param compensation: ``"redistribute"`` or ``"skip"`` (see the module docstring).
    :return: ``(quantized weights in the input dtype, loss per batch item, RTN-fallback
        flag per batch item)``. Like upstream, an fp32 ``weights`` and ``hessians`` are
        used as working buffers and overwritten.
    :raises SparsityMaskNotRepresentableError: when the scheme's qparams do not map 0 to 0
        at a pruned position.
    """
    if weights.ndim != 3 or hessians.ndim != 3:
        raise ValueError("weights and hessians must have shape [batch, ...]")
    if weights.shape[0] != hessians.shape[0]:
        raise ValueError("weights and hessians must have matching batch sizes")
    if compensation not in ("redistribute", "skip"):
        raise ValueError(f"compensation must be 'redistribute' or 'skip', got {compensation!r}")
    # MASK: the mask, on the working device, as bool; pruned weights must be 0 already.
    if pruned is None:
        pruned = weights == 0
    if pruned.shape != weights.shape:
        raise ValueError(f"pruned mask shape {tuple(pruned.shape)} != weights shape {tuple(weights.shape)}")
    pruned = pruned.to(device=weights.device, dtype=torch.bool)
    if bool((weights.masked_select(pruned) != 0).any()):
        raise ValueError("weights at pruned positions must be exactly 0 before quantization")
    skip = compensation == "skip"

    batch_size, num_rows, num_columns = weights.shape
    strategy = quant_args.strategy
    actorder = quant_args.actorder
    final_dtype = weights.dtype
    device = weights.device
    W = weights.to(device=device, dtype=GPTQ_PRECISION)
    H = hessians.to(device=device, dtype=GPTQ_PRECISION)
    del weights, hessians
    scale = scale.to(device=device)
    zero_point = zero_point.to(device=device)
    if global_scale is not None:
        global_scale = global_scale.to(device=device)

    W, H, perm = apply_activation_ordering(W, H, quant_args.actorder)
    # MASK: permute the mask's columns exactly like the weights'.
    if perm is not None:
        pruned = torch.gather(pruned, -1, perm.unsqueeze(-2).expand(-1, num_rows, -1))

    g_idx = None
    if strategy in (QuantizationStrategy.GROUP, QuantizationStrategy.TENSOR_GROUP, QuantizationStrategy.BLOCK):
        divisor = quant_args.group_size if strategy != QuantizationStrategy.BLOCK else quant_args.block_structure[1]
        g_idx = torch.arange(num_columns, device=device, dtype=torch.int) // divisor
        if actorder == ActivationOrdering.WEIGHT:
            g_idx = torch.gather(g_idx.unsqueeze(0).expand(batch_size, -1), 1, perm)

    losses = torch.zeros(batch_size, num_rows, device=device)
    used_rtn_fallback = torch.zeros(batch_size, dtype=torch.bool, device=device)
    Hinv = factorize_hessian(W, H, percdamp, used_rtn_fallback)
    for i1 in range(0, num_columns, blocksize):
        i2 = min(i1 + blocksize, num_columns)

        W1 = W[:, :, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[:, i1:i2, i1:i2]

        _masked_block_update(
            W1, Hinv1, Q1, Err1, losses1, pruned[:, :, i1:i2], skip,
            scale=scale, zero_point=zero_point, global_scale=global_scale,
            g_idx=g_idx, quant_args=quant_args, i1=i1,
        )

        W[:, :, i1:i2] = Q1
        losses += torch.sum(losses1, 2) / 2

        w_err = torch.bmm(Err1, Hinv[:, i1:i2, i2:])
        if skip:
            w_err.masked_fill_(pruned[:, :, i2:], 0)  # MASK (skip): later pruned weights get nothing
        W[:, :, i2:] -= w_err

    if perm is not None:
        del W1, Q1, Err1, losses1, Hinv1, w_err
        invperm = torch.argsort(perm, dim=-1)
        W = torch.gather(W, -1, invperm.unsqueeze(-2).expand(-1, num_rows, -1))

    return W.to(final_dtype), losses.sum(dim=1), used_rtn_fallback


def _masked_block_update(
    W1: torch.Tensor,
    Hinv1: torch.Tensor,
    Q1: torch.Tensor,
    Err1: torch.Tensor,
    losses1: torch.Tensor,
    pruned1: torch.Tensor,
    skip: bool,
    *,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    global_scale: torch.Tensor | None,
    g_idx: torch.Tensor | None,
    quant_args: QuantizationArgs,
    i1: int,
) -> None:
    """Upstream's eager ``gptq_block_update`` with pruned weights quantized to 0."""
    block_width = W1.shape[-1]
    altered_qargs = copy(quant_args)
    altered_qargs.strategy = QuantizationStrategy.CHANNEL
    eff, zp = column_scale_window(
        scale, zero_point, global_scale, g_idx, quant_args,
        num_rows=W1.shape[-2], i1=i1, i2=i1 + block_width,
    )
    for i in range(block_width):
        w = W1[:, :, i]
        q = fake_quantize(
            w.transpose(0, 1),
            eff[:, :, i].transpose(0, 1),
            None if zp is None else zp[:, :, i].transpose(0, 1),
            altered_qargs,
        ).transpose(0, 1)
        # MASK: a pruned weight is stored as the code of 0, so its quantized value is 0
        # (redistribute: whatever compensation it received becomes this column's error
        # and moves right; skip: it is still 0, its error is 0).
        p = pruned1[:, :, i]
        if zp is not None:
            _check_zero_representable(p, eff[:, :, i], zp[:, :, i], altered_qargs)
        q = q.masked_fill(p, 0)

        diagonal = Hinv1[:, i, i]
        error = (w - q) / diagonal[:, None]
        Q1[:, :, i] = q
        Err1[:, :, i] = error
        losses1[:, :, i] = error.square()
        update = error.unsqueeze(-1) * Hinv1[:, i, i:].unsqueeze(1)
        if skip:
            update.masked_fill_(pruned1[:, :, i:], 0)  # MASK (skip): never write into pruned positions
        W1[:, :, i:] -= update


def _check_zero_representable(
    pruned: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, args: QuantizationArgs
) -> None:
    """Raise unless 0 quantizes to exactly 0 at every pruned position of one column."""
    if not bool(pruned.any()):
        return
    zero = torch.zeros_like(scale)
    q0 = fake_quantize(zero.transpose(0, 1), scale.transpose(0, 1), zero_point.transpose(0, 1), args)
    if bool((q0.transpose(0, 1).masked_select(pruned) != 0).any()):
        raise SparsityMaskNotRepresentableError(
            f"the quantization parameters map 0 to a non-zero value (type={args.type}, "
            f"symmetric={args.symmetric}, non-integer zero point), so pruned weights cannot "
            "stay zero; use a symmetric scheme (symmetric: true) or preserve_sparsity_mask: false"
        )
