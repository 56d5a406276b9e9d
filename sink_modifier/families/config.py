"""Reading a model folder's ``config.json``: once per load, before any model code runs.

Its own module so that the registry and the family modules can all read a config without
importing each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["quantization_config", "read_config"]


def read_config(folder: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of ``folder``; a clear error for a folder that is not a model."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not a model folder (no config.json); pass the directory that from_pretrained would load"
        )
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not valid JSON ({err}); re-save or re-download the checkpoint"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(
            f"{path} holds a JSON {type(config).__name__}, not an object of model settings; "
            "re-save or re-download the checkpoint"
        )
    return config


def quantization_config(config: dict[str, Any]) -> dict | None:
    """The ``quantization_config`` of a parsed ``config.json``, if it has one."""
    quant = config.get("quantization_config")
    return quant if isinstance(quant, dict) else None
