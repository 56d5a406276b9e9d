"""Find the mask token of a diffusion language model.

Masked-diffusion noising needs the id the model was trained to read as
"masked". Tokenizers usually carry it (``mask_token_id``); some checkpoints
only record it in the model config, so both are consulted.
"""

from __future__ import annotations

from typing import Any

__all__ = ["resolve_mask_token_id"]


def resolve_mask_token_id(tokenizer: Any = None, config: Any = None) -> int:
    """Return the mask token id: ``tokenizer.mask_token_id``, else ``config.mask_token_id``.

    Raises ``ValueError`` naming the fix when neither is set.
    """
    for holder in (tokenizer, config):
        value = getattr(holder, "mask_token_id", None) if holder is not None else None
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"{type(holder).__name__}.mask_token_id must be a non-negative int, "
                    f"got {value!r}"
                )
            return value
    raise ValueError(
        f"{_model_name(tokenizer, config)} has no mask token: neither tokenizer.mask_token_id "
        "nor config.mask_token_id is set; pass mask_token_id=... (e.g. 126336 for LLaDA, "
        "151666 for Dream) or add a mask token to the tokenizer"
    )


def _model_name(tokenizer: Any, config: Any) -> str:
    for holder, attr in ((tokenizer, "name_or_path"), (config, "_name_or_path")):
        name = getattr(holder, attr, None) if holder is not None else None
        if name:
            return f"model {name!r}"
    return "the model"
