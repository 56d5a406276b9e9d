"""The eval workflow behind ``sink-modifier eval``: a model folder and a text file in, one dict out.

Held-out windows and evaluation masks depend only on ``(data, seq_len, num_windows, seed)``,
never on the model, so a dense checkpoint and its pruned copies evaluated with the same
arguments are scored on identical tokens and masks.
"""

from __future__ import annotations

from pathlib import Path

from sink_modifier.data import load_documents, max_sequence_length, token_windows
from sink_modifier.scoring.evaluate import evaluate_model
from sink_modifier.families import load_pretrained

__all__ = ["evaluate_checkpoint"]


def evaluate_checkpoint(
    model_path: str | Path,
    data,
    *,
    num_windows: int = 64,
    seq_len: int | None = None,
    seed: int = 0,
    mc_samples: int = 8,
    batch_size: int = 8,
    dtype: str = "float32",
    max_chars: int | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    family: str | None = None,
) -> dict:
    """Evaluate a saved model on ``num_windows`` windows of ``data``; see ``evaluate_model``.

    The model's family decides the score: NELBO / masked CE for diffusion models (with Dream's
    shifted logits and DiffusionGemma's clean prompt + scored canvas), perplexity for causal ones.
    """
    loaded = load_pretrained(model_path, family=family, dtype=dtype, trust_remote_code=trust_remote_code)
    model, tokenizer, chosen = loaded.model, loaded.tokenizer, loaded.family
    seq_len = seq_len or max_sequence_length(model.config) or 2048
    windows = token_windows(load_documents(data, max_chars=max_chars), tokenizer, seq_len, num_windows, seed=seed)
    diffusion = chosen.diffusion
    result = evaluate_model(
        model,
        windows,
        diffusion=diffusion,
        mask_token_id=loaded.mask_token_id if diffusion else None,
        seed=seed,
        mc_samples=mc_samples,
        batch_size=batch_size,
        progress=progress,
        logit_shift=chosen.logit_shift if diffusion else 0,
        maskable=chosen.scorable(windows, tokenizer, model.config) if diffusion else None,
        logits_fn=(lambda ids: chosen.logits(model, ids)) if diffusion else None,
        corrupt=chosen.evaluation_corruption(tokenizer, model.config, seed) if diffusion else None,
    )
    return {
        "model": str(model_path),
        "data": str(data),
        "family": chosen.name,
        "kind": "diffusion" if diffusion else "causal",
        "objective": chosen.objective,
        **result,
    }
