"""GPTQ that keeps a sparsity mask: pure maths, no modifier state.

llm-compressor 0.14's ``quantize_weight`` (``llmcompressor/modifiers/gptq/gptq_quantize.py``)
compensates each quantized column's error by updating *every* not-yet-quantized weight of
the row, pruned zeros included, so a 2:4 or 50% pruned layer comes out partly dense (the
sparsity-preserving variant was removed upstream). :func:`masked_quantize_weight` is the
same algorithm with one change: the OBS error-compensation updates skip pruned positions,
inside the block (column by column) and across blocks.

Why the mask is applied during the column updates, not re-applied at the end
------------------------------------------------------------------------------
GPTQ quantizes columns left to right; the rounding error of column ``i`` is pushed onto the
columns ``j > i`` through ``Hinv[i, j]`` so that the layer output stays close to the
original. Each later column is then *quantized from its updated value*, and its own error
is computed and propagated in turn. If pruned positions take part and are zeroed only
afterwards, (a) the share of the compensation that went into them is thrown away, so the
output error the algorithm accounted for is no longer the one the model gets, and (b) the
non-zero values they held were rounded and their rounding errors were propagated onto
the remaining weights: the unpruned weights were adjusted for perturbations that the
final model does not have. Masking the updates keeps every pruned weight at exactly 0
throughout, so its rounding error is ``(0 - q(0)) / d = 0``, it propagates nothing, and
all compensation is carried by the weights that survive.

This masked update is the one llm-compressor's former ``preserve_sparsity_mask`` used. It
is not the exact constrained OBS solution (that would need, for every row, the inverse
Hessian restricted to the row's own support, a different matrix per row); it is the
standard, cheap approximation, and with an all-False mask it is upstream GPTQ exactly.

Zero must quantize to zero
--------------------------
Pruned weights stay exactly 0 before rounding, so their quantized value is
``fake_quantize(0)``. That is 0 for symmetric schemes (int and float) and for asymmetric
int schemes whose zero point is an integer inside the range (compressed-tensors
observers widen the range to include 0 and round the zero point, so 0 maps to the code
``zero_point`` and dequantizes to exactly 0). A scheme where it is not (a fractional zero
point) cannot store a pruned weight at all: :func:`masked_quantize_weight` raises
:class:`SparsityMaskNotRepresentableError` rather than silently re-zeroing values that
would not lie on the quantization grid (the saved checkpoint stores codes, so a re-zeroed
weight would come back non-zero after packing).

Everything that is not mask-specific is upstream's: activation ordering, Hessian
dampening/factorization (including the RTN fallback and dead columns), the per-column
scale window and ``fake_quantize``. The block loop below mirrors upstream's eager
``gptq_block_update`` line by line; the lines marked ``# MASK`` are the only changes.
The masked path always runs the eager torch loop (upstream's fused Triton block kernel,
used on CUDA for plain GPTQ, has no mask input).
"""

from __future__ import annotations

from copy import copy

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

__all__ = ["SparsityMaskNotRepresentableError", "masked_quantize_weight"]


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ-quantize a batch of weights, keeping ``pruned`` positions at exactly 0.

    Same arguments and return value as upstream ``quantize_weight`` plus ``pruned``.

    :param weights: ``[batch, rows, columns]``; like upstream, an fp32 tensor is used as
        the working buffer and overwritten (pass a copy if you need it afterwards).
    :param hessians: normalized Hessians ``[batch, columns, columns]`` (overwritten).
    :param pruned: bool ``[batch, rows, columns]``, True where the weight is pruned and must
        end at 0; ``None`` means ``weights == 0``. Pruned weights must be 0 on entry.
    :return: ``(quantized weights in the input dtype, loss per batch item, RTN-fallback
        flag per batch item)``.
    :raises SparsityMaskNotRepresentableError: when the scheme maps 0 to a non-zero value.
    """
    if weights.ndim != 3 or hessians.ndim != 3:
        raise ValueError("weights and hessians must have shape [batch, ...]")
    if weights.shape[0] != hessians.shape[0]:
        raise ValueError("weights and hessians must have matching batch sizes")
    # MASK: the mask, on the working device, as bool.
    if pruned is None:
        pruned = weights == 0
    if pruned.shape != weights.shape:
        raise ValueError(f"pruned mask shape {tuple(pruned.shape)} != weights shape {tuple(weights.shape)}")
    pruned = pruned.to(device=weights.device, dtype=torch.bool)
    if bool((weights.masked_select(pruned) != 0).any()):
        raise ValueError("weights at pruned positions must be exactly 0 before quantization")

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
            W1, Hinv1, Q1, Err1, losses1, pruned[:, :, i1:i2],
            scale=scale, zero_point=zero_point, global_scale=global_scale,
            g_idx=g_idx, quant_args=quant_args, i1=i1,
        )

        W[:, :, i1:i2] = Q1
        losses += torch.sum(losses1, 2) / 2

        w_err = torch.bmm(Err1, Hinv[:, i1:i2, i2:])
        w_err.masked_fill_(pruned[:, :, i2:], 0)  # MASK: later pruned weights get no compensation
        W[:, :, i2:] -= w_err

    # MASK: 0 must have quantized to 0 (see module docstring); checked before un-permuting.
    if bool((W.masked_select(pruned) != 0).any()):
        raise SparsityMaskNotRepresentableError(
            f"the quantization scheme maps 0 to a non-zero value (type={quant_args.type}, "
            f"symmetric={quant_args.symmetric}, strategy={quant_args.strategy}), so pruned weights "
            "cannot stay zero; use a symmetric scheme (symmetric: true) or set "
            "preserve_sparsity_mask: false"
        )

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
    *,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    global_scale: torch.Tensor | None,
    g_idx: torch.Tensor | None,
    quant_args: QuantizationArgs,
    i1: int,
) -> None:
    """Upstream's eager ``gptq_block_update`` with the in-block updates masked."""
    block_width = W1.shape[-1]
    altered_qargs = copy(quant_args)
    altered_qargs.strategy = QuantizationStrategy.CHANNEL
    eff, zp = column_scale_window(
        scale, zero_point, global_scale, g_idx, quant_args,
        num_rows=W1.shape[-2], i1=i1, i2=i1 + block_width,
    )
    for i in range(block_width):
        # MASK: pruned entries of w are still exactly 0 (no update ever reached them), so
        # q = fake_quantize(0) there, their error is 0 and they propagate nothing.
        w = W1[:, :, i]
        q = fake_quantize(
            w.transpose(0, 1),
            eff[:, :, i].transpose(0, 1),
            None if zp is None else zp[:, :, i].transpose(0, 1),
            altered_qargs,
        ).transpose(0, 1)

        diagonal = Hinv1[:, i, i]
        error = (w - q) / diagonal[:, None]
        Q1[:, :, i] = q
        Err1[:, :, i] = error
        losses1[:, :, i] = error.square()
        update = error.unsqueeze(-1) * Hinv1[:, i, i:].unsqueeze(1)
        update.masked_fill_(pruned1[:, :, i:], 0)  # MASK: never write into pruned positions
        W1[:, :, i:] -= update
