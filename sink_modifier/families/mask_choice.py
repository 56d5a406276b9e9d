"""The mask token a command works with: the family's, or the one the user names (``--mask-token-id``).

A masked-diffusion model needs the id it was trained to read as "masked". The family finds
it (tokenizer, then ``config.mask_token_id``, then a family rule such as LLaDA's 126336);
when nothing names one, or names the wrong one, the user's id is written into the in-memory
config (and the tokenizer, where that names another), so every later reader (calibration,
evaluation, the sampler, a checkpoint saved by ``prune``) finds the same token.
"""

from __future__ import annotations

from typing import Any

__all__ = ["require_mask_token", "set_mask_token_id", "uses_mask_token"]

_OPTION = "--mask-token-id N (mask_token_id=N in Python)"


def _vocab_size(config: Any) -> int | None:
    for holder in (config, getattr(config, "text_config", None)):
        value = getattr(holder, "vocab_size", None) if holder is not None else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def uses_mask_token(family: Any) -> bool:
    """Whether the family's forward process puts a mask token at hidden positions."""
    return bool(family.diffusion) and not getattr(family, "uniform_noise", False)


def set_mask_token_id(family: Any, tokenizer: Any, config: Any, mask_token_id: int) -> None:
    """Make ``mask_token_id`` the token ``family.mask_token_id(tokenizer, config)`` returns (in memory)."""
    if not uses_mask_token(family):
        reason = ("an autoregressive model has none" if not family.diffusion
                  else "its forward process substitutes random tokens instead")
        raise ValueError(
            f"--mask-token-id {mask_token_id}: the {family.name} family uses no mask token ({reason}); "
            "leave out --mask-token-id, or name a masked-diffusion family with --family"
        )
    vocab = _vocab_size(config)
    if vocab is not None and not 0 <= mask_token_id < vocab:
        raise ValueError(
            f"--mask-token-id {mask_token_id} is outside the model's vocabulary (vocab_size={vocab} in "
            f"config.json); pass an id in 0..{vocab - 1}"
        )
    config.mask_token_id = mask_token_id
    current = getattr(tokenizer, "mask_token_id", None)
    if current is not None and current != mask_token_id:
        token = tokenizer.convert_ids_to_tokens(mask_token_id)
        if token is None:
            raise ValueError(
                f"--mask-token-id {mask_token_id} is not in the tokenizer's vocabulary, and the tokenizer "
                f"declares mask token {current}; leave out --mask-token-id to use {current}"
            )
        tokenizer.mask_token = token


def require_mask_token(family: Any, tokenizer: Any, config: Any, model: str) -> int | None:
    """The family's mask token (``None`` when it uses none); refused, naming ``--mask-token-id``, when missing."""
    if not uses_mask_token(family):
        return None
    named = any(getattr(holder, "mask_token_id", None) is not None for holder in (tokenizer, config))
    try:
        return family.mask_token_id(tokenizer, config)
    except ValueError:
        if named:
            raise  # a malformed id: the family's message says which
        raise ValueError(
            f"{model} is a {family.name} (masked-diffusion) model with no mask token: neither its tokenizer "
            f"(mask_token) nor config.json (mask_token_id) names one; pass {_OPTION}, e.g. 126336 for LLaDA, "
            "151666 for Dream, or add a mask token to the tokenizer"
        ) from None
