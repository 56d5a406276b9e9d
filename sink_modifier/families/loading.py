"""``load_pretrained``: a model folder in; the model, its tokenizer, its family and config out.

The one loader of the package: every command and the lm-eval adapter load through it. The
code path is the one a user takes with a hub checkpoint (``from_pretrained(path)``), with
the family's in-memory repairs applied; the folder itself is never written to.
``config.json`` is read once per load (:func:`open_model_folder`) and the parsed dict is
handed to detection and to the family's loader.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .base import ModelFamily
from .config import quantization_config, read_config
from .hub import model_folder
from .registry import detect_family, get_family

__all__ = ["DTYPES", "LoadedModel", "ModelFolder", "load_pretrained", "load_tokenizer", "open_model_folder"]

DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ModelFolder:
    """A local model folder with its parsed ``config.json`` and the family that will load it."""

    folder: Path
    config: dict[str, Any]
    family: ModelFamily

    @property
    def quantized(self) -> bool:
        """Whether ``config.json`` has a (compressed-tensors) ``quantization_config``."""
        return quantization_config(self.config) is not None


@dataclass
class LoadedModel:
    """What a command works on: the model (eval mode), its tokenizer and family, the parsed
    ``config.json`` it was loaded from, and the local folder (for files beside the weights)."""

    model: nn.Module
    tokenizer: Any
    family: ModelFamily
    config: dict[str, Any]
    folder: Path

    @property
    def mask_token_id(self) -> int | None:
        return self.family.mask_token_id(self.tokenizer, self.model.config)


def _dtype(dtype: Any) -> Any:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def open_model_folder(path: str | Path | ModelFolder, family: str | ModelFamily | None = None) -> ModelFolder:
    """Resolve ``path`` (a folder or hub id), read its ``config.json`` once, choose the family.

    ``family`` overrides detection (``--family``); an already opened folder is returned as is
    unless ``family`` names another one.
    """
    if isinstance(path, ModelFolder):
        return path if family is None else ModelFolder(path.folder, path.config, get_family(family))
    folder = model_folder(path)
    config = read_config(folder)
    chosen = get_family(family) if family is not None else detect_family(config)
    return ModelFolder(folder, config, chosen)


def load_pretrained(
    path: str | Path | ModelFolder,
    *,
    family: str | ModelFamily | None = None,
    dtype: Any = "auto",
    trust_remote_code: bool = False,
    quantized: bool | None = None,
) -> LoadedModel:
    """Load model and tokenizer of a folder; ``family`` overrides detection (``--family``).

    A compressed-tensors checkpoint (``quantization_config`` in ``config.json``; ``quantized``
    forces either way) is decompressed at load with ``CompressedTensorsConfig(dequantize=True)``:
    int8/fp8/packed int4 weights come back in the model dtype, and the modules keep their
    quantization scheme, so a forward still applies the scheme's activation fake-quantization
    (e.g. dynamic per-token int8 for W8A8), like the in-memory model after ``oneshot``.
    """
    source = open_model_folder(path, family)
    if quantized is None:
        quantized = source.quantized
    compression = None
    if quantized:
        from transformers.utils.quantization_config import CompressedTensorsConfig

        compression = CompressedTensorsConfig(dequantize=True)
    with warnings.catch_warnings():
        # "You passed `quantization_config` ... already has a `quantization_config`": expected;
        # only the loading attribute (dequantize) of ours is used.
        warnings.filterwarnings("ignore", message=".*quantization_config.*", category=UserWarning)
        model = source.family.load_model(
            source.folder, source.config, dtype=_dtype(dtype), trust_remote_code=trust_remote_code,
            quantization_config=compression,
        )
    tokenizer = source.family.load_tokenizer(source.folder, trust_remote_code=trust_remote_code)
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, family=source.family, config=source.config,
                       folder=source.folder)


def load_tokenizer(
    path: str | Path | ModelFolder, *, family: str | ModelFamily | None = None, trust_remote_code: bool = False
):
    """The tokenizer alone, for folders whose model runs elsewhere (an ONNX export, lm-eval's
    ``tokenizer=`` argument)."""
    source = open_model_folder(path, family)
    return source.family.load_tokenizer(source.folder, trust_remote_code=trust_remote_code)
