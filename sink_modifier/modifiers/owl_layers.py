"""OWL's per-layer sparsities from the calibration rows, gathered while llm-compressor calibrates.

Upstream computes them with a calibration pass of its own inside ``on_initialize``, which
llm-compressor 0.14 refuses (events cannot fire before the session starts). Here the sink-aware
modifiers feed :class:`OwlLayerSparsity` one dense forward per batch from their input-embedding hook
(the rows weighted like the statistic), and :meth:`OwlLayerSparsity.resolve` turns the sums into
layer sparsities before the first layer is pruned (the first sequential epoch end), with upstream's
formula (:mod:`sink_modifier.modifiers.owl`); under ``torchrun`` the ranks' sums are gathered in rank
order first, so every rank computes the sparsities of one process.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from compressed_tensors.utils import align_module_device
from loguru import logger
from torch import nn

from sink_modifier.modifiers.data_parallel import check_same_modules, gather_contributions, is_data_parallel
from sink_modifier.modifiers.owl import (
    activation_norms,
    batch_square_sums,
    layer_scores,
    outlier_ratio,
    owl_layer_sparsities,
)
from sink_modifier.modifiers.weighted_inputs import SCORING_DTYPE, weighted_rows
from sink_modifier.sinks.onload import onload_one_module_at_a_time

__all__ = ["OwlLayerSparsity"]

Align = Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


class OwlLayerSparsity:
    """The layers OWL sets one sparsity for, each pruned module's ``Σ (w x)²`` per batch, and the result."""

    def __init__(self, layers: dict[str, nn.Module]) -> None:
        self.layers = dict(layers)
        self.sums: dict[nn.Module, list[torch.Tensor]] = {}
        self.layer_sparsity: dict[str, float] | None = None

    def reset(self) -> None:
        self.sums, self.layer_sparsity = {}, None

    def add_batch(self, model: nn.Module, modules: list[nn.Module], call: dict, align: Align) -> None:
        """One dense forward ``model(**call)`` collecting each of ``modules``' weighted squared input sums.

        ``align(module, inputs)`` gives the inputs ``[B, T, d]`` and the batch's token factors beside them.
        """
        sums: dict[nn.Module, torch.Tensor] = {}

        def collect(module, args):
            inputs, weights = align(module, args[0].detach())
            contribution = batch_square_sums(weighted_rows(inputs, weights))
            sums[module] = contribution if module not in sums else sums[module] + contribution

        handles = [module.register_forward_pre_hook(collect) for module in modules]
        try:
            with torch.no_grad(), onload_one_module_at_a_time():
                model(**call)
        finally:
            for handle in handles:
                handle.remove()
        for module in modules:
            found = sums.get(module)
            if found is None:  # not run on this batch (an expert no token was routed to)
                found = torch.zeros(module.weight.shape[-1], dtype=SCORING_DTYPE)
            self.sums.setdefault(module, []).append(found.cpu())

    def resolve(self, names: dict[nn.Module, str], target: float, owl_m: float, owl_lmbda: float,
                owner: str) -> dict[nn.Module, float]:
        """Each pruned module's sparsity (its layer's); sets :attr:`layer_sparsity`. ``names``: module -> name."""
        modules = sorted(names, key=lambda m: names[m])
        if not modules:
            self.layer_sparsity = {}
            return {}
        if any(not self.sums.get(m) for m in modules):
            raise RuntimeError("sparsity_profile 'owl': no calibration batch reached the input embedding")
        per_batch = {m: torch.stack(self.sums.pop(m)) for m in modules}  # [batches, d_in]
        if is_data_parallel():  # every rank's batches, in rank order: the sums of one process
            check_same_modules([names[m] for m in modules], owner)
            widths = [per_batch[m].shape[1] for m in modules]
            stacked, _ = gather_contributions(
                torch.cat([per_batch[m] for m in modules], dim=1),
                torch.zeros(per_batch[modules[0]].shape[0], dtype=torch.long),
            )
            per_batch = dict(zip(modules, torch.split(stacked, widths, dim=1)))
        norms = {m: activation_norms(list(per_batch[m])) for m in modules}
        groups: dict[str, list[nn.Module]] = {}  # layer -> its pruned modules, in the layer's order
        placed: set[int] = set()
        pruned = {id(m) for m in modules}
        for name, layer in self.layers.items():
            members = [m for m in layer.modules() if id(m) in pruned and id(m) not in placed]
            placed.update(id(m) for m in members)
            if members:
                groups[name] = members
        ratios = {}
        with onload_one_module_at_a_time():  # not the whole model onloaded at once (sequential pipeline)
            for name, members in groups.items():
                weights = []
                for module in members:
                    with align_module_device(module):
                        weights.append(module.weight.detach().cpu().clone())
                ratios[name] = outlier_ratio(layer_scores(weights, [norms[m] for m in members]), owl_m)
        targets = owl_layer_sparsities(ratios, target, owl_lmbda)
        outside = [n for n, s in targets.items() if not 0.0 <= s <= 1.0]
        if outside:
            raise ValueError(
                f"sparsity_profile 'owl' gives layer {outside[0]} sparsity {targets[outside[0]]:.4f}, outside "
                f"[0, 1] (target {target}, owl_lmbda {owl_lmbda}): lower owl_lmbda (layer "
                "sparsities lie within sparsity ± 2 * owl_lmbda)"
            )
        self.layer_sparsity = targets
        logger.info(
            f"{owner}: OWL layer sparsities (mean {sum(targets.values()) / max(len(targets), 1):.4f}, "
            f"target {target}): " + ", ".join(f"{k} {v:.4f}" for k, v in targets.items())
        )
        return {module: targets[name] for name, members in groups.items() for module in members}
