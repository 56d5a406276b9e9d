"""``SinkAwareWandaPruningModifier``: Wanda whose activation statistic down-weights attention sinks.

The sink-mask lifecycle is shared with the other sink-aware modifiers
(:mod:`sink_modifier.modifiers.sink_base`); the maths is in
:mod:`sink_modifier.modifiers.wanda_scoring`.
"""

from __future__ import annotations

import torch
from compressed_tensors.utils import align_module_device, update_offload_parameter
from loguru import logger
from pydantic import PrivateAttr

from llmcompressor.core import State

from sink_modifier.modifiers.data_parallel import (
    check_same_modules,
    gather_contributions,
    is_data_parallel,
    write_weight,
)
from sink_modifier.modifiers.sink_base import SinkAwareSparsityBase
from sink_modifier.modifiers.wanda_scoring import (
    Statistic,
    accumulate_statistic,
    batch_contribution,
    column_scale,
    count_over_target,
    fold_contribution,
    prune_mask,
)

__all__ = ["SinkAwareWandaPruningModifier"]


class SinkAwareWandaPruningModifier(SinkAwareSparsityBase):
    """Wanda pruning with attention-sink-aware activation statistics (arXiv 2602.17664).

    ```yaml
    sparsity_stage:
      sparsity_modifiers:
        SinkAwareWandaPruningModifier:
          sparsity: 0.5
          mask_structure: "0:0"
          targets: ["Linear"]
          ignore: ["re:.*lm_head"]
          sink_std: 2.0
          sink_alpha: 5.0
          sink_weighting: true
          statistic: rms
    ```

    Every output row keeps exactly ``d_in - int(d_in * sparsity)`` weights (or N:M per row).
    See :class:`SinkAwareSparsityBase` for the shared sink settings. With ``sink_weighting:
    false`` and ``statistic: rms`` it is llm-compressor's ``WandaPruningModifier`` bit for bit
    (ties of equal scores inside an N:M group aside: ours resolve by column order).

    :param statistic: ``rms`` (llm-compressor's Wanda statistic on weighted inputs) or
        ``sum_of_norms`` (the paper code's sum of per-sample L2 norms).
    :param preserve_sparsity_mask: (upstream Wanda has no such field; this is SparseGPT's
        meaning carried over) weights already exactly zero stay pruned and count towards
        each row's quota ``int(d_in * sparsity)`` (for N:M, towards each group's N); the
        remaining quota goes to the lowest scores. A row or group that already holds more
        zeros than the target keeps them all, with a warning. Wanda only ever zeroes weights,
        so off, the old zeros stay zero too and, scoring 0, normally fill the quota first as
        well; on, they fill it first by rule (also against other weights scoring 0).

    Under ``torchrun`` (an initialised process group with several ranks) each rank keeps its
    batches' column contributions; before pruning a module they are all-gathered and folded
    in rank order on every rank, so with contiguous shares
    (:func:`sink_modifier.process.sharding.shard_calibration`) the statistic is
    bit-identical to one process calibrating on all rows, and every rank computes the same
    masks. Sink masks are per row and computed on the rank that holds the row: nothing to
    combine. See :mod:`sink_modifier.modifiers.data_parallel`.
    """

    statistic: Statistic = "rms"

    _stats: dict[torch.nn.Module, torch.Tensor] = PrivateAttr(default_factory=dict)
    _num_samples: dict[torch.nn.Module, int] = PrivateAttr(default_factory=dict)
    # data-parallel only: this rank's per-batch contributions and row counts, in batch order
    _contributions: dict[torch.nn.Module, list[tuple[torch.Tensor, int]]] = PrivateAttr(default_factory=dict)

    def calibrate_module(self, module: torch.nn.Module, args, _output):
        inputs, weights = self.weights_for(module, args[0].detach())
        if is_data_parallel():
            contribution, added = batch_contribution(self.statistic, inputs, weights)
            self._contributions.setdefault(module, []).append((contribution, added))
            self._num_samples[module] = self._num_samples.get(module, 0) + added
            return
        self._stats[module], self._num_samples[module] = accumulate_statistic(
            self.statistic, self._stats.get(module), self._num_samples.get(module, 0), inputs, weights
        )

    def _combine_ranks(self) -> list[torch.nn.Module]:
        """Fold every rank's contributions, in rank order, into ``_stats`` (identical on all ranks)."""
        modules = sorted(self._num_samples, key=lambda m: self._module_names[m])
        check_same_modules([self._module_names[m] for m in modules], "SinkAwareWandaPruningModifier")
        for module in modules:
            local = self._contributions.pop(module)
            rows, counts = gather_contributions(
                torch.stack([c for c, _ in local]), torch.tensor([n for _, n in local])
            )
            state, total = None, 0
            for contribution, added in zip(rows, counts.tolist()):
                state, total = fold_contribution(self.statistic, state, total, contribution, added)
            self._stats[module], self._num_samples[module] = state, total
        return modules

    def compress_modules(self):
        modules = self._combine_ranks() if is_data_parallel() else list(self._num_samples)
        for module in modules:
            scale = column_scale(self.statistic, self._stats.pop(module))
            num_samples = self._num_samples.pop(module)
            with torch.no_grad(), align_module_device(module):
                weight = module.weight.data
                sparsity = self._module_sparsities[module] or 0.0
                mask = prune_mask(
                    weight, scale, sparsity, self._prune_n, self._prune_m, preserve_zeros=self.preserve_sparsity_mask
                )
                if self.preserve_sparsity_mask:
                    self._warn_over_target(module, weight, sparsity)
                pruned = weight.masked_fill(mask.to(weight.device), 0)
            if is_data_parallel():  # every rank computed the same mask; one writes a shared copy
                write_weight(module, pruned, writer=0)
            else:
                update_offload_parameter(module, "weight", pruned)
            name = self._record_sparsity(module, pruned)
            logger.debug(
                f"Sink-aware Wanda: pruned {name} to {self._achieved_sparsity[name]:.2%} "
                f"({num_samples} samples, statistic={self.statistic}, sink_weighting={self.sink_weighting})"
            )

    def _warn_over_target(self, module: torch.nn.Module, weight: torch.Tensor, sparsity: float) -> None:
        over = count_over_target(weight, sparsity, self._prune_n, self._prune_m)
        if over:
            unit = f"groups of {self._prune_m}" if self._prune_n else "rows"
            target = self.mask_structure if self._prune_n else f"{sparsity:.2%}"
            logger.warning(
                f"preserve_sparsity_mask: {over} {unit} of {self._module_names[module].rstrip('.')} already "
                f"hold more zeros than the target {target}; their zeros are kept, so the layer ends "
                "sparser than the target"
            )

    def on_finalize(self, state: State, **kwargs) -> bool:
        self._finalize_checks(state, self._num_samples)
        self._stats = dict()
        self._contributions = dict()
        return True
