"""Data-parallel calibration across ``torch.distributed`` ranks (``torchrun``).

Every rank loads the same model and calibrates on its own share of the rows
(:func:`sink_modifier.process.sharding.shard_calibration`). Before a module is pruned the
ranks' statistics are combined, so every rank prunes with the statistic of *all* rows,
following llm-compressor's distributed GPTQ (``modifiers/gptq/base.py``: Hessians and
sample counts reduced to the rank that compresses the module, results broadcast):

* **Sink masks** need nothing: a row's mask comes from the dense model's attention on that
  row alone (and, for ``sink_policy``, on the other timesteps of its window, which a
  window-wise share keeps on the same rank), so it is computed where the row lives.
* **Wanda** (:func:`gather_contributions`): each rank keeps its batches' column
  contributions; they are all-gathered and folded in global batch order on every rank, with
  the same running-mean arithmetic as one process. With contiguous shares in rank order
  (what ``shard_calibration`` gives) and the same batch size, the statistic is *bit-identical*
  to the single-process one, and every rank computes the same masks (sorting ``d_in`` scores
  per row is cheap, so no broadcast is needed). Cost: one ``d_in`` vector per batch and module.
* **SparseGPT** (:func:`reduce_hessian_to`, :func:`broadcast_weight`): ``d_in x d_in``
  Hessians are too big to gather per batch, so each rank's Hessian is reduced as a float64
  sum (``n_r H_r`` for llm-compressor's running mean ``H_r``), with the row counts, to the one
  rank that prunes the module (modules are spread over ranks by Hessian size, as upstream);
  the pruned weight is then broadcast to the others, so all ranks hold identical weights.
  With the default float32 running means the reduced Hessian differs from the
  single-process one by a few ulps; SparseGPT's sequential solve turns that into flips of
  near-tied weights in the first layer, which the sequential pipeline then propagates to
  later layers. With ``hessian_dtype: float64`` (float64 sums from the start) the ranks'
  sums round to the single-process float32 Hessian, so the result is that of one process
  running as many intra-op threads as each rank (float32 matmuls depend on the thread count).
  Measured per layer on tiny-dlm, 2 ranks vs 1 process: ``benchmarks/results/data_parallel.md``.

Nothing here runs unless a process group is initialised: without one the modifiers do
exactly what they do in one process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from compressed_tensors.offload import update_offload_parameter

from sink_modifier.data.keyed_random import keyed_seed
from sink_modifier.process.sharding import all_gather_int64, comm_device

__all__ = [
    "all_gather_int64",
    "broadcast_weight",
    "check_same_modules",
    "comm_device",
    "gather_contributions",
    "is_data_parallel",
    "reduce_hessian_to",
    "write_weight",
]


def is_data_parallel() -> bool:
    """True when a process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def check_same_modules(names: Sequence[str], what: str) -> None:
    """Fail clearly (instead of hanging in a collective) if ranks calibrated different modules."""
    everyone = all_gather_int64(keyed_seed("\n".join(names)))
    if len(set(everyone)) > 1:
        raise RuntimeError(
            f"{what}: ranks calibrated different modules ({len(names)} here on rank "
            f"{dist.get_rank()}); every rank needs at least one calibration batch and the same "
            "model and recipe"
        )


def gather_contributions(contributions: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' per-batch rows ``[b_r, d]`` and counts ``[b_r]``, concatenated in rank order.

    Ranks may hold different numbers of batches; the result is the same on every rank and
    keeps each rank's batches in their order, so with contiguous shares it is the global
    batch order.
    """
    device = comm_device()
    local = contributions.to(device)
    local_counts = counts.to(device=device, dtype=torch.int64)
    sizes = all_gather_int64(local.shape[0])
    longest = max(sizes)
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: local.shape[0]] = local
    padded_counts = torch.zeros(longest, dtype=torch.int64, device=device)
    padded_counts[: local.shape[0]] = local_counts
    rows = [torch.empty_like(padded) for _ in sizes]
    row_counts = [torch.empty_like(padded_counts) for _ in sizes]
    dist.all_gather(rows, padded)
    dist.all_gather(row_counts, padded_counts)
    return (
        torch.cat([r[:n] for r, n in zip(rows, sizes)]).to(contributions.device),
        torch.cat([c[:n] for c, n in zip(row_counts, sizes)]).cpu(),
    )


def reduce_hessian_to(
    hessian: torch.Tensor, num_samples: int, dst: int, *, is_sum: bool = False
) -> tuple[torch.Tensor | None, int]:
    """Combine the ranks' Hessians over ``n_r`` rows each into their mean over all rows, on ``dst``.

    ``hessian`` is rank ``r``'s running mean ``H_r`` (llm-compressor's accumulation; its sum
    is ``n_r H_r``) or, with ``is_sum``, already the sum ``Σ 2 Xᵀ X`` of its rows. Sums are
    added in float64. Returns ``(Σ sums / Σ n_r as float32, N)`` on ``dst``, ``(None, N)``
    elsewhere.
    """
    device = comm_device()
    total = torch.tensor([num_samples], dtype=torch.int64, device=device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    n = int(total.item())
    summed = hessian.to(device=device, dtype=torch.float64)
    if not is_sum:
        summed = summed * num_samples
    dist.reduce(summed, dst=dst, op=dist.ReduceOp.SUM)
    if dist.get_rank() != dst:
        return None, n
    return (summed / n).to(device=hessian.device, dtype=torch.float32), n


def broadcast_weight(weight: torch.Tensor | None, like: torch.Tensor, src: int) -> torch.Tensor:
    """``weight`` from rank ``src`` (where it is given) on every rank, shaped and typed as ``like``."""
    device = comm_device()
    if dist.get_rank() == src:
        buffer = weight.detach().to(device=device, dtype=like.dtype).contiguous()
    else:
        buffer = torch.empty(like.shape, dtype=like.dtype, device=device)
    dist.broadcast(buffer, src=src)
    return buffer


def _shared_across_ranks(module: torch.nn.Module) -> bool:
    """True when ``module``'s parameters live in one copy shared by all ranks (distributed offload)."""
    try:
        from compressed_tensors.offload.cache import DistributedCPUCache, DistributedDiskCache
    except ImportError:  # pragma: no cover - older compressed-tensors
        return False
    return isinstance(module._parameters, (DistributedCPUCache, DistributedDiskCache))


def write_weight(module: torch.nn.Module, weight: torch.Tensor, writer: int) -> None:
    """Store the pruned ``weight`` (identical on every rank) in ``module`` on every rank.

    Each rank writes its own copy, except where compressed-tensors' distributed offloading
    keeps one copy in shared CPU memory or on disk (what llm-compressor's sequential
    pipeline sets up under ``torchrun``): concurrent writes are not safe there, so only
    ``writer`` writes the shared copy, the other ranks refresh only their own onloaded
    copy (kept on the accelerator inside ``disable_offloading``, and used by the
    propagation pass), and the ranks wait for each other before and after.
    """
    if not _shared_across_ranks(module):
        update_offload_parameter(module, "weight", weight)
        return
    dist.barrier()  # every rank has finished reading the old weight
    if dist.get_rank() == writer:
        update_offload_parameter(module, "weight", weight)
    else:
        cache = module._parameters
        offloaded = cache.offloaded_values.get("weight")
        onloaded = cache.keep_onloaded_values.get(offloaded) if offloaded is not None else None
        if onloaded is not None and onloaded is not offloaded and onloaded.data_ptr() != offloaded.data_ptr():
            with torch.no_grad():
                onloaded.copy_(weight.to(device=onloaded.device, dtype=onloaded.dtype))
    dist.barrier()
