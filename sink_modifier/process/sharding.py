"""Split a calibration set across ``torch.distributed`` ranks, whole windows at a time.

Under ``torchrun`` every rank builds the same :class:`~.calibration.CalibrationSet` (same
data, seed, timesteps) and calibrates on its own share::

    cal = family.build_calibration(...)              # identical on every rank
    shard = shard_calibration(cal)                   # this rank's windows
    oneshot(model=..., dataset=shard.dataloader(batch_size=len(cal.timesteps)), recipe=...)

The sink-aware modifiers then combine the ranks' statistics before pruning
(:mod:`sink_modifier.modifiers.data_parallel`), so the masks are those of one process
calibrating on all rows.

Shares follow llm-compressor's own split of a dataset across ranks
(``llmcompressor.datasets.utils._get_partition_start_end``: rank ``r`` of ``W`` takes
``[floor(N r / W), floor(N (r+1) / W))``), but counted in *windows*, not rows: rows are
sample-major (window ``s`` at every timestep, then window ``s + 1``), so a share is a
contiguous block of rows holding every timestep of its windows. A batch of
``len(timesteps)`` rows is therefore still one window's noised copies, as
``sink_policy: unstable | stable`` requires, and concatenating the shares in rank order
gives back the full set in its original order. Like llm-compressor (which compares a
hash of each rank's dataset before splitting), :func:`shard_calibration` checks that all
ranks hold the same set and refuses otherwise.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.distributed as dist

from sink_modifier.data.keyed_random import keyed_seed, tensor_bytes

from .calibration import CalibrationSet

__all__ = ["all_gather_int64", "calibration_fingerprint", "comm_device", "shard_bounds", "shard_calibration"]


def shard_bounds(num_windows: int, rank: int, world_size: int) -> tuple[int, int]:
    """Window range ``[start, end)`` of ``rank`` among ``world_size`` (llm-compressor's split)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    if num_windows < world_size:
        raise ValueError(
            f"{num_windows} calibration windows cannot be shared by {world_size} ranks: every rank "
            "needs at least one window; use more samples or fewer processes"
        )
    start = math.floor(num_windows * rank / world_size)
    end = math.floor(num_windows * (rank + 1) / world_size)
    return start, end


def calibration_fingerprint(cal: CalibrationSet) -> int:
    """A 63-bit digest of the rows, timesteps, seed and process (equal sets give equal fingerprints)."""
    mask_token_id = -1 if cal.mask_token_id is None else cal.mask_token_id
    chunks = [
        tensor_bytes(cal.input_ids),
        tensor_bytes(cal.attention_mask),
        repr((cal.timesteps, cal.seed, cal.eps, mask_token_id)).encode(),
    ]
    if cal.prompt_length or (cal.process is not None and cal.mask_token_id is None):
        # Mask-token and clean sets keep the digest they always had; other layouts name theirs.
        chunks.append(repr((cal.prompt_length, cal.process)).encode())
    return keyed_seed(chunks)


def shard_calibration(
    cal: CalibrationSet,
    rank: int | None = None,
    world_size: int | None = None,
    *,
    check_identical: bool = True,
) -> CalibrationSet:
    """This rank's windows of ``cal`` (every timestep of each), as a new calibration set.

    ``rank``/``world_size`` default to the initialised process group; without one (or
    with ``world_size == 1``) ``cal`` is returned unchanged. ``window_index`` keeps the
    global window numbers. With a process group and ``check_identical``, the ranks'
    fingerprints are compared first (a collective: call it on every rank), and a rank
    whose set differs is an error naming the ranks, as the shares would then not add up
    to one calibration set.
    """
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    k = len(cal.timesteps)
    if len(cal) != cal.num_samples * k:
        raise ValueError(
            f"calibration set has {len(cal)} rows but {cal.num_samples} windows x {k} timesteps; "
            "it must be sample-major with every timestep of every window"
        )
    if initialised and check_identical and dist.get_world_size() > 1:
        _check_same_everywhere(calibration_fingerprint(cal))
    if world_size == 1:
        return cal
    start, end = shard_bounds(cal.num_samples, rank, world_size)
    rows = slice(start * k, end * k)
    return dataclasses.replace(
        cal,
        input_ids=cal.input_ids[rows].clone(),
        window_index=cal.window_index[rows].clone(),
        timestep=cal.timestep[rows].clone(),
        clean_ids=cal.clean_ids[start:end].clone(),
    )


def comm_device() -> torch.device:
    """Where collective buffers must live: the CPU for gloo, the current accelerator otherwise."""
    if dist.get_backend() == "gloo":
        return torch.device("cpu")
    accelerator = torch.accelerator.current_accelerator()
    return torch.device(accelerator.type, torch.accelerator.current_device_index())


def all_gather_int64(value: int) -> list[int]:
    """One integer from every rank, in rank order (also used by the modifiers' data parallelism)."""
    local = torch.tensor([value], dtype=torch.int64, device=comm_device())
    everyone = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, local)
    return [int(t.item()) for t in everyone]


def _check_same_everywhere(fingerprint: int) -> None:
    everyone = all_gather_int64(fingerprint)
    if len(set(everyone)) > 1:
        groups: dict[int, list[int]] = {}
        for r, value in enumerate(everyone):
            groups.setdefault(value, []).append(r)
        raise ValueError(
            "ranks built different calibration sets (fingerprints by rank: "
            f"{', '.join(f'ranks {g}' for g in groups.values())}); build it with the same data, "
            "seed, num_samples, seq_len and timesteps on every rank before sharding"
        )
