"""OWL (outlier-weighted layerwise sparsity, arXiv 2310.05175) from activation statistics: pure functions.

llm-compressor's ``SparsityModifierBase`` computes OWL's layer sparsities in
``on_initialize`` by running a calibration pass of its own, which 0.14 refuses ("Cannot
invoke event before initializing"). The sink-aware modifiers instead collect the activations
during calibration, from the same rows, weighted as their statistic is
(:mod:`.sink_base`), and apply upstream's formula (``sgpt_base._infer_owl_layer_sparsity``)
before the first layer is pruned. The formula, for layers ``ℓ`` (decoder blocks: the pipeline's
sequential targets) holding the pruned Linears ``j``:

* scores ``z = |W_j| * a_j`` for every weight of the layer, ``a_j[c]`` the activation norm of
  input column ``c`` of Linear ``j`` (:func:`activation_norms`);
* outlier ratio ``D_ℓ = 100 * #(z > M * mean(z)) / #z`` (:func:`outlier_ratio`, ``M = owl_m``);
* ratios rescaled to ``[0, 2λ]`` (``λ = owl_lmbda``) and layer sparsity
  ``s_ℓ = s - (D'_ℓ - mean(D'))`` (:func:`owl_layer_sparsities`): layers with more outliers are
  pruned less, and the ``s_ℓ`` average to the target ``s`` exactly.

The activation norm is over *all* calibration tokens, ``a_j[c] = sqrt(Σ_rows Σ_t x_t[c]²)``
(OWL's and Wanda's ``||X_c||₂``; upstream's ``_get_activations`` sums per-batch norms, which is
this when the calibration is one batch, and depends on the batch size otherwise). Where every
layer has the same ratio (or there is a single layer), upstream's rescaling divides by zero;
here every layer then gets the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy
import torch

__all__ = ["activation_norms", "batch_square_sums", "layer_scores", "outlier_ratio", "owl_layer_sparsities"]


def batch_square_sums(inputs: torch.Tensor) -> torch.Tensor:
    """One batch's ``Σ_rows Σ_t x[c]²`` per input column ``[d_in]`` (float32), from weighted rows ``[B, T, d]``."""
    return inputs.pow(2).sum(dim=tuple(range(inputs.dim() - 1)))


def activation_norms(batch_sums: Sequence[torch.Tensor]) -> torch.Tensor:
    """``a[c] = sqrt(Σ_batches sums[c])`` (sums added in float64, in the given order), as float32."""
    total = torch.zeros_like(batch_sums[0], dtype=torch.float64)
    for sums in batch_sums:
        total = total + sums.to(torch.float64)
    return total.sqrt().to(torch.float32)


def layer_scores(weights: Sequence[torch.Tensor], activations: Sequence[torch.Tensor]) -> torch.Tensor:
    """Every weight's score ``|W| * a`` of one layer's Linears, flattened and concatenated (upstream's order)."""
    z = [w.abs() * a.to(w.device).unsqueeze(0) for w, a in zip(weights, activations)]
    return torch.cat([item.flatten().cpu() for item in z])


def outlier_ratio(scores: torch.Tensor, owl_m: float) -> float:
    """Percentage of ``scores`` above ``owl_m`` times their mean (upstream's operations)."""
    threshold = torch.mean(scores) * owl_m
    return 100 * (scores > threshold).sum().item() / scores.numel()


def owl_layer_sparsities(ratios: Mapping[str, float], sparsity: float, owl_lmbda: float) -> dict[str, float]:
    """Upstream's OWL layer sparsities from the layers' outlier ratios; they average to ``sparsity``.

    Ratios are rescaled to ``[0, 2 * owl_lmbda]`` by min-max and ``s_ℓ = sparsity - (r_ℓ - mean r)``;
    equal ratios (a single layer included) give every layer ``sparsity``.
    """
    names = list(ratios)
    if not names:
        return {}
    values = numpy.array([ratios[k] for k in names])
    spread = values.max() - values.min()
    if spread == 0:
        return {k: float(sparsity) for k in names}
    scaled = {k: (ratios[k] - values.min()) * (1 / spread * owl_lmbda * 2) for k in names}
    scaled_arr = numpy.array([scaled[k] for k in names])
    return {k: float(1 - (scaled[k] - numpy.mean(scaled_arr) + (1 - float(sparsity)))) for k in names}
