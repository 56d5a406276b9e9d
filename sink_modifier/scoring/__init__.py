"""Seeded, model-independent scoring of diffusion (NELBO, masked CE, lm-eval ELBO) and causal (perplexity) LMs.

:mod:`.denoiser` is the one core (logit alignment, classifier-free guidance, masked CE) under
evaluation (:mod:`.diffusion_metrics`), the lm-eval ELBO (:mod:`.elbo`) and the sampler
(:mod:`sink_modifier.generation.sampler`); :mod:`.masks` draws every evaluation mask.
"""

from .causal_metrics import perplexity
from .denoiser import aligned_logits, denoiser_logits, guided_logits, masked_token_ce, model_logits
from .diffusion_metrics import NelboResult, masked_cross_entropy, nelbo
from .elbo import mc_loglikelihood, request_key
from .evaluate import evaluate_model
from .masks import elbo_masks, fixed_ratio_masks, nelbo_masks, stratified_counts, stratified_masks, window_generator

__all__ = [
    "NelboResult",
    "aligned_logits",
    "denoiser_logits",
    "elbo_masks",
    "evaluate_model",
    "fixed_ratio_masks",
    "guided_logits",
    "masked_cross_entropy",
    "masked_token_ce",
    "mc_loglikelihood",
    "model_logits",
    "nelbo",
    "nelbo_masks",
    "perplexity",
    "request_key",
    "stratified_counts",
    "stratified_masks",
    "window_generator",
]
