"""What kind of token a dominant sink is: mask, EOS, BOS, pad, punctuation, the first position, or other.

Tested in that order (:data:`SINK_KINDS`); the special ids come from the tokenizer, else the config.
"""

from __future__ import annotations

import string
import unicodedata
from typing import Any

__all__ = ["SINK_KINDS", "classify_sink_token", "is_punctuation", "special_token_ids"]


#: Token kinds of a dominant sink, in the order they are tested.
SINK_KINDS: tuple[str, ...] = ("mask", "eos", "bos", "pad", "punctuation", "first_position", "other")


def is_punctuation(text: str | None) -> bool:
    """True iff ``text`` has a non-space character and every non-space one is punctuation.

    Punctuation is ``string.punctuation`` or a Unicode ``P*`` category character, so
    ``"."``, ``" ,"``, ``"..."``, ``"—"`` qualify and ``"\\n"``, ``" a."`` or ``"�"`` do not.
    """
    if not text:
        return False
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and all(
        c in string.punctuation or unicodedata.category(c).startswith("P") for c in chars
    )


def classify_sink_token(
    token_id: int,
    position: int,
    *,
    mask_token_id: int | None = None,
    eos_token_id: int | None = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    text: str | None = None,
) -> str:
    """The kind of the token a sink sits on; the first match of :data:`SINK_KINDS` wins.

    ``mask`` / ``eos`` / ``bos`` / ``pad``: the token id equals that special id (``None``
    ids never match); ``punctuation``: the decoded ``text`` is punctuation only (see
    :func:`is_punctuation`); ``first_position``: position 0 and none of the above; ``other``.
    """
    token_id = int(token_id)
    for kind, special in (
        ("mask", mask_token_id),
        ("eos", eos_token_id),
        ("bos", bos_token_id),
        ("pad", pad_token_id),
    ):
        if special is not None and token_id == int(special):
            return kind
    if is_punctuation(text):
        return "punctuation"
    if int(position) == 0:
        return "first_position"
    return "other"


def special_token_ids(tokenizer: Any, config: Any = None) -> dict[str, int | None]:
    """``mask``/``eos``/``bos``/``pad`` ids from the tokenizer, else the model config."""
    ids: dict[str, int | None] = {}
    for kind in ("mask", "eos", "bos", "pad"):
        value = None
        for holder in (tokenizer, config):
            candidate = getattr(holder, f"{kind}_token_id", None) if holder is not None else None
            if isinstance(candidate, (list, tuple)):  # some configs list several eos ids
                candidate = candidate[0] if candidate else None
            if isinstance(candidate, int) and not isinstance(candidate, bool):
                value = candidate
                break
        ids[kind] = value
    return ids
