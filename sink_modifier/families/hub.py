"""A model argument is a local folder, or a hub id (``org/name``) fetched once into the HF cache.

Everything downstream reads a local folder (the family is detected from its ``config.json``
before any model code runs), so a hub id is resolved to its snapshot folder first, exactly
the files ``from_pretrained`` would read. Without network access the error says so.
"""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["model_folder"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SNAPSHOT_FILES = ["*.json", "*.safetensors", "*.py", "*.model", "*.txt", "*.tiktoken", "*.jinja"]


def model_folder(name_or_path: str | Path) -> Path:
    """The local folder of ``name_or_path``, downloading a hub snapshot when it is an ``org/name`` id."""
    path = Path(name_or_path)
    if path.exists() or not _REPO_ID.match(str(name_or_path)):
        return path
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(name_or_path), allow_patterns=_SNAPSHOT_FILES))
    except Exception as err:  # noqa: BLE001 - offline, unknown repo, gated repo: one clear message
        raise FileNotFoundError(
            f"{name_or_path} is not a local folder and could not be fetched from the Hugging Face hub "
            f"({type(err).__name__}: {err}); download it where there is network access "
            f"(`huggingface-cli download {name_or_path} --local-dir DIR`) and pass DIR"
        ) from err
