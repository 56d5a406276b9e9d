"""``load_pretrained``: a model folder in, the model, its tokenizer and its family out.

The code path is the one a user takes with a hub checkpoint (``from_pretrained(path)``),
with the family's in-memory repairs applied; the folder itself is never written to.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import ModelFamily
from .hub import model_folder
from .registry import detect_family, read_config

__all__ = ["DTYPES", "LoadedModel", "load_pretrained", "load_family_model", "load_family_tokenizer"]

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any
    family: ModelFamily

    @property
    def mask_token_id(self) -> int | None:
        return self.family.mask_token_id(self.tokenizer, self.model.config)


def _dtype(dtype: Any) -> Any:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def load_family_model(
    path: str | Path,
    *,
    family: str | ModelFamily | None = None,
    dtype: Any = "auto",
    trust_remote_code: bool = False,
    quantized: bool | None = None,
) -> tuple[nn.Module, ModelFamily]:
    """The model of ``path`` in eval mode, and its family.

    A compressed-tensors checkpoint (``quantization_config`` in ``config.json``; ``quantized``
    forces either way) is decompressed at load with ``CompressedTensorsConfig(dequantize=True)``:
    weights come back in the model dtype and modules keep their quantization scheme.
    """
    folder = model_folder(path)
    config = read_config(folder)
    chosen = detect_family(config, family if not isinstance(family, ModelFamily) else None)
    if isinstance(family, ModelFamily):
        chosen = family
    if quantized is None:
        quantized = isinstance(config.get("quantization_config"), dict)
    quantization_config = None
    if quantized:
        from transformers.utils.quantization_config import CompressedTensorsConfig

        quantization_config = CompressedTensorsConfig(dequantize=True)
    with warnings.catch_warnings():
        # "You passed `quantization_config` ... already has a `quantization_config`": expected;
        # only the loading attribute (dequantize) of ours is used.
        warnings.filterwarnings("ignore", message=".*quantization_config.*", category=UserWarning)
        model = chosen.load_model(
            folder, dtype=_dtype(dtype), trust_remote_code=trust_remote_code, quantization_config=quantization_config
        )
    return model.eval(), chosen


def load_family_tokenizer(path: str | Path, family: ModelFamily, trust_remote_code: bool = False):
    folder = model_folder(path)
    read_config(folder)  # a clear error for a folder that is not a model
    return family.load_tokenizer(folder, trust_remote_code=trust_remote_code)


def load_pretrained(
    path: str | Path,
    *,
    family: str | ModelFamily | None = None,
    dtype: Any = "auto",
    trust_remote_code: bool = False,
    quantized: bool | None = None,
) -> LoadedModel:
    """Load model and tokenizer of a folder; ``family`` overrides detection (``--family``)."""
    model, chosen = load_family_model(
        path, family=family, dtype=dtype, trust_remote_code=trust_remote_code, quantized=quantized
    )
    tokenizer = load_family_tokenizer(path, chosen, trust_remote_code)
    return LoadedModel(model=model, tokenizer=tokenizer, family=chosen)

