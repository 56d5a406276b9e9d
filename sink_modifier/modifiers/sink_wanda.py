"""``SinkAwareWandaPruningModifier``: Wanda whose activation statistic down-weights attention sinks.

The sink-mask lifecycle is shared with the other sink-aware modifiers
(:mod:`sink_modifier.modifiers.sink_base`); the maths is in
:mod:`sink_modifier.modifiers.wanda_scoring`.
"""

from __future__ import annotations

import torch
from compressed_tensors.utils import align_module_device, get_execution_device, update_offload_parameter
from llmcompressor.core import State, active_session
from loguru import logger
from pydantic import PrivateAttr

from sink_modifier.modifiers.data_parallel import (
    check_same_modules,
    gather_contributions,
    is_data_parallel,
    write_weight,
)
from sink_modifier.modifiers.settings import modifier_settings
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
from sink_modifier.sinks.mask_cache import batch_digest, loader_batch_digests, tensors_digest

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
        ``sum_of_norms`` (the paper code's sum of per-sample L2 norms). With ``timestep_weighting:
        elbo`` a row's weight multiplies its contribution in both: its squared norms (``rms``)
        or its norm (``sum_of_norms``).
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

    With ``sink_cache_dir`` in llm-compressor's ``basic`` pipeline (where no layer sees a pruned
    one, so the statistics do not depend on the sparsity) the column statistics of the whole
    run are cached too, keyed by every batch in loader order, and a later run on the same
    weights, rows and settings skips the sink passes and the accumulation (the pipeline's
    forward passes still run). Not in the sequential pipeline nor under ``torchrun``.
    """

    statistic: Statistic = "rms"

    _stats: dict[torch.nn.Module, torch.Tensor] = PrivateAttr(default_factory=dict)
    _num_samples: dict[torch.nn.Module, int] = PrivateAttr(default_factory=dict)
    # data-parallel only: this rank's per-batch contributions and row counts, in batch order
    _contributions: dict[torch.nn.Module, list[tuple[torch.Tensor, int]]] = PrivateAttr(default_factory=dict)
    # sink_cache_dir, basic pipeline: the statistics' cache key ("" = not cached), the batches it covers
    _stats_key: str | None = PrivateAttr(default=None)
    _stats_batches: list[str] = PrivateAttr(default_factory=list)
    _stats_reused: bool = PrivateAttr(default=False)

    def _start_batch(self, module, args):
        if not self._statistics_reused():
            super()._start_batch(module, args)

    def _statistics_reused(self) -> bool:
        """True when this run's statistics came from the cache (then no sink pass is needed)."""
        if self._stats_key is None:
            self._stats_key = self._look_up_statistics()
        if not self._stats_reused:
            return False
        batch_idx = active_session().state.current_batch_idx
        if batch_digest(self._pending_call or {}) != self._stats_batches[batch_idx]:
            raise RuntimeError(
                f"calibration batch {batch_idx} differs from the one the cached statistics were keyed by "
                "(the calibration DataLoader yielded other batches on a second pass); run without sink_cache_dir"
            )
        return True

    def _look_up_statistics(self) -> str:
        """The statistics' key in the basic pipeline (the whole model is called: ``_pending_call``); load a hit."""
        cache = self._cache
        if cache is None or self._pending_call is None or is_data_parallel() or self.sparsity_profile == "owl":
            return ""  # sequential pipeline (statistics depend on the sparsity), ranks, OWL (its own pass)
        batches = loader_batch_digests(getattr(active_session().state.data, "calib", None))
        if batches is None:
            return ""
        try:
            cache.model_digest
        except ValueError:
            return ""  # the sink pass says why the cache is off
        names = {name: module for module, name in self._module_names.items()}
        device = next(v for v in self._pending_call.values() if isinstance(v, torch.Tensor)).device
        # every setting but those that only act after the statistics (a new field is keyed by default)
        settings = modifier_settings(self, exclude={"sparsity", "mask_structure", "preserve_sparsity_mask",
                                                    "attention_chunk_size"})
        rows = None if self._rows is None else tensors_digest(  # timestep_weighting reads the rows' t
            {"window": self._rows.window_index, "timestep": self._rows.timestep})
        key = cache.statistics_key(device, batches, {"modifier": type(self).__name__, "pipeline": "basic",
                                                      "fields": settings, "modules": sorted(names), "rows": rows})
        self._stats_batches = batches
        found = cache.load_statistics(key)
        if found is not None and set(found) == {f"{kind}:{n}" for n in names for kind in ("stat", "count")}:
            for name, module in names.items():
                self._stats[module] = found[f"stat:{name}"].to(get_execution_device(module))
                self._num_samples[module] = int(found[f"count:{name}"])
            self._stats_reused = True
        return key

    def _row_weight_power(self) -> float:
        """``sum_of_norms`` adds per-row norms, so a row weight multiplies the row's inputs as is."""
        return 1.0 if self.statistic == "sum_of_norms" else 0.5

    def calibrate_module(self, module: torch.nn.Module, args, _output):
        if self._stats_reused:
            return
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
        if self._stats_key and not self._stats_reused:  # basic pipeline, cache on: keep them for the next run
            self._cache.store_statistics(self._stats_key, {
                f"{kind}:{self._module_names[m]}": value for m in modules
                for kind, value in (("stat", self._stats[m]), ("count", torch.tensor(self._num_samples[m])))
            })
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
        self._stats_key, self._stats_batches, self._stats_reused = None, [], False
        return True
