"""Seeded, model-independent evaluation of diffusion (NELBO, masked CE) and causal (perplexity) LMs."""

from .causal_metrics import perplexity
from .diffusion_metrics import NelboResult, masked_cross_entropy, nelbo
from .evaluate import evaluate_model
from .masks import fixed_ratio_masks, nelbo_masks, stratified_counts, window_generator

__all__ = [
    "NelboResult",
    "evaluate_model",
    "fixed_ratio_masks",
    "masked_cross_entropy",
    "nelbo",
    "nelbo_masks",
    "perplexity",
    "stratified_counts",
    "window_generator",
]
