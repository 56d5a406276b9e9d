"""``load_pretrained``: a model folder in; the model, its tokenizer, its family and config out.

The one loader of the package: every command and the lm-eval adapter load through it. The
code path is the one a user takes with a hub checkpoint (``from_pretrained(path)``), with
the family's in-memory repairs applied; the folder itself is never written to.
``config.json`` is read once per load (:func:`open_model_folder`) and the parsed dict is
handed to detection and to the family's loader.

:func:`check_model_folder` is everything about a folder that can be known without running
model code or reading tensors (config, family, weight files whole, custom code allowed);
commands call it before anything slow, and every load repeats it (it costs a few reads).
A weights file that still fails to load is one ``ValueError`` naming it.
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
from .mask_choice import set_mask_token_id
from .registry import detect_family, get_family
from .remote_code import builtin_model_type, check_custom_code, ignored_code_warning
from .weights_files import FIX, check_weight_files

__all__ = [
    "DTYPES",
    "LoadedModel",
    "ModelFolder",
    "check_model_folder",
    "load_pretrained",
    "load_tokenizer",
    "open_model_folder",
]

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
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; pass the model folder (the directory with config.json)")
    if not folder.exists():
        raise FileNotFoundError(f"model folder {folder} does not exist; pass the directory with config.json")
    config = read_config(folder)
    chosen = get_family(family) if family is not None else detect_family(config)
    return ModelFolder(folder, config, chosen)


def check_model_folder(
    path: str | Path | ModelFolder, family: str | ModelFamily | None = None, *, trust_remote_code: bool = False,
) -> ModelFolder:
    """:func:`open_model_folder`, then refuse broken weight files and code that may not run."""
    source = open_model_folder(path, family)
    check_weight_files(source.folder)
    check_custom_code(source.folder, source.config, trust_remote_code, source.family)
    return source


def _load_weights(source: ModelFolder, **kwargs) -> nn.Module:
    """``family.load_model``, with a file that cannot be read as one ``ValueError`` naming the fix."""
    from safetensors import SafetensorError

    try:
        return source.family.load_model(source.folder, source.config, **kwargs)
    except (OSError, SafetensorError) as err:
        raise ValueError(
            f"cannot load the weights of {source.folder} ({type(err).__name__}: {_one_line(err)}); {FIX}"
        ) from err


def _load_tokenizer(source: ModelFolder, trust_remote_code: bool):
    try:
        return source.family.load_tokenizer(source.folder, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot load the tokenizer of {source.folder} ({type(err).__name__}: {_one_line(err)}); pass a "
            f"model folder with its tokenizer files (tokenizer.json, tokenizer_config.json), or {FIX}"
        ) from err


def _one_line(err: BaseException, limit: int = 300) -> str:
    """A library's (often multi-line) message as one line of at most ``limit`` characters."""
    text = " ".join(str(err).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def load_pretrained(
    path: str | Path | ModelFolder,
    *,
    family: str | ModelFamily | None = None,
    dtype: Any = "auto",
    trust_remote_code: bool = False,
    quantized: bool | None = None,
    tokenizer: Any = None,
    mask_token_id: int | None = None,
) -> LoadedModel:
    """Load model and tokenizer of a folder; ``family`` overrides detection (``--family``).

    ``tokenizer``: the folder's tokenizer, already loaded (a command's checks load it before
    the model). ``mask_token_id`` (``--mask-token-id``) becomes the mask token the family finds,
    in the model's config and the tokenizer (see :mod:`.mask_choice`).

    A compressed-tensors checkpoint (``quantization_config`` in ``config.json``; ``quantized``
    forces either way) is decompressed at load with ``CompressedTensorsConfig(dequantize=True)``:
    int8/fp8/packed int4 weights come back in the model dtype, and the modules keep their
    quantization scheme, so a forward still applies the scheme's activation fake-quantization
    (e.g. dynamic per-token int8 for W8A8), like the in-memory model after ``oneshot``.
    """
    from loguru import logger

    source = check_model_folder(path, family, trust_remote_code=trust_remote_code)
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
        model = _load_weights(
            source, dtype=_dtype(dtype), trust_remote_code=trust_remote_code, quantization_config=compression,
        )
    if source.config.get("auto_map") and not trust_remote_code and builtin_model_type(source.config):
        warning = ignored_code_warning(source.folder, source.config, type(model))
        if warning:
            logger.warning(warning)
    if tokenizer is None:
        tokenizer = _load_tokenizer(source, trust_remote_code)
    if mask_token_id is not None:
        set_mask_token_id(source.family, tokenizer, model.config, mask_token_id)
    return LoadedModel(model=model.eval(), tokenizer=tokenizer, family=source.family, config=source.config,
                       folder=source.folder)


def load_tokenizer(
    path: str | Path | ModelFolder, *, family: str | ModelFamily | None = None, trust_remote_code: bool = False
):
    """The tokenizer alone, for folders whose model runs elsewhere (an ONNX export, lm-eval's
    ``tokenizer=`` argument)."""
    return _load_tokenizer(open_model_folder(path, family), trust_remote_code)
