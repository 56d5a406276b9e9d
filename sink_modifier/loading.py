"""Loading a model folder the way a user's hub checkpoint is loaded: ``from_pretrained(path)``.

One place to grow per-family loading fixes later; today every supported model is an
``AutoModelForCausalLM`` (bidirectional ones carry ``is_causal: false`` in config.json).
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

__all__ = ["DTYPES", "load_model", "load_tokenizer"]

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _check_folder(path: str | Path) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a model folder (no config.json); pass the directory that "
            "from_pretrained would load"
        )
    return folder


def load_model(path: str | Path, dtype: str = "auto", trust_remote_code: bool = False) -> PreTrainedModel:
    """``AutoModelForCausalLM.from_pretrained(path)`` in eval mode, with a clear error for a bad path."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    folder = _check_folder(path)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=DTYPES[dtype], trust_remote_code=trust_remote_code
    )
    return model.eval()


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    return AutoTokenizer.from_pretrained(_check_folder(path), trust_remote_code=trust_remote_code)
