"""Cut documents into full-length token windows for calibration.

Masked-diffusion models are trained on fixed-length, fully packed sequences
(documents joined by EOS, no padding), so calibration windows are built the
same way: every window has exactly ``seq_len`` real tokens and the attention
mask is all ones. Windows never overlap, so no token is counted twice in the
calibration statistics.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["check_seq_len", "max_sequence_length", "token_windows"]

# Config attributes that name a model's positional limit, in lookup order
# (Llama/Dream/most HF models, LLaDA, GPT-2 style).
_LENGTH_ATTRIBUTES: tuple[str, ...] = (
    "max_position_embeddings",
    "max_sequence_length",
    "n_positions",
)

_TOKENIZE_BATCH = 512
# What to do about too little text, in the commands' terms (the keywords for Python callers).
_MORE_TEXT = (
    "pass more text with --data (or a larger --max-chars, max_chars=, if reading stopped there)"
)


def token_windows(
    documents: Sequence[str],
    tokenizer: Any,
    seq_len: int,
    num_windows: int,
    seed: int = 0,
    separator_token_id: int | None = None,
) -> torch.LongTensor:
    """Return ``num_windows`` random, non-overlapping windows ``[num_windows, seq_len]``.

    Each document is tokenized without special tokens and followed by
    ``separator_token_id`` (default: ``tokenizer.eos_token_id``; when that is
    also ``None`` documents are joined directly). The resulting stream is cut
    into consecutive windows of exactly ``seq_len`` tokens (the tail that does
    not fill a window is dropped) and ``num_windows`` of them are chosen
    without replacement by ``torch.randperm`` under a generator seeded with
    ``seed``. The random order is kept: it is deterministic for a seed, and
    the first ``k`` windows for a seed are the same whatever ``num_windows >= k``
    is, so a larger calibration set extends a smaller one.

    All given documents are tokenized so the choice is uniform over the whole
    source; bound the cost by passing a prefix (``load_documents(max_chars=...)``).
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
    if isinstance(num_windows, bool) or not isinstance(num_windows, int) or num_windows < 1:
        raise ValueError(f"num_windows must be an int >= 1, got {num_windows!r}")
    if isinstance(documents, str):
        raise ValueError("documents must be a list of strings, not a single str")
    if separator_token_id is None:
        separator_token_id = getattr(tokenizer, "eos_token_id", None)

    stream = _token_stream(list(documents), tokenizer, separator_token_id)
    available = stream.numel() // seq_len
    if available == 0:
        raise ValueError(
            f"found only {stream.numel()} tokens in {len(documents)} document{'s' if len(documents) != 1 else ''}, not "
            f"enough for one window of {seq_len} tokens; {_MORE_TEXT} or a smaller --seq-len (seq_len=)"
        )
    if num_windows > available:
        raise ValueError(
            f"requested {num_windows} windows but only {available} windows of {seq_len} tokens "
            f"are available ({stream.numel()} tokens); {_MORE_TEXT}, fewer windows (--num-samples of "
            "prune, --num-windows of eval/analyze) or a smaller --seq-len"
        )
    windows = stream[: available * seq_len].view(available, seq_len)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    order = torch.randperm(available, generator=generator)[:num_windows]
    return windows[order].clone()


def _token_stream(
    documents: list[str], tokenizer: Any, separator_token_id: int | None
) -> torch.LongTensor:
    """Tokenize in batches and join the documents, each followed by the separator."""
    suffix = [] if separator_token_id is None else [int(separator_token_id)]
    ids: list[int] = []
    for start in range(0, len(documents), _TOKENIZE_BATCH):
        batch = documents[start : start + _TOKENIZE_BATCH]
        # verbose=False: documents are longer than model_max_length on purpose;
        # they are cut into windows below, so the length warning is noise.
        encoded = tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]
        for doc_ids in encoded:
            ids.extend(doc_ids)
            ids.extend(suffix)
    return torch.tensor(ids, dtype=torch.long)


def max_sequence_length(config: Any) -> int | None:
    """The model's positional limit from its config, or ``None`` if it names none."""
    for name in _LENGTH_ATTRIBUTES:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def check_seq_len(seq_len: int, config: Any) -> None:
    """Raise ``ValueError`` if ``seq_len`` exceeds the model's maximum length.

    Positions beyond the trained range silently produce garbage activations,
    which would corrupt the calibration statistics rather than fail, so this
    is checked up front. Configs that declare no limit pass unchecked.
    """
    limit = max_sequence_length(config)
    if limit is not None and seq_len > limit:
        raise ValueError(
            f"seq_len={seq_len} exceeds the model's maximum sequence length {limit}; "
            f"pass --seq-len {limit} (seq_len={limit}) or smaller"
        )
