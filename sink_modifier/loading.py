"""Loading a model folder the way a user's hub checkpoint is loaded: ``from_pretrained(path)``.

Thin entry points over :mod:`sink_modifier.families`, which detects the family from
``config.json`` (or takes ``family=``) and applies its loading repairs.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sink_modifier.families.loading import DTYPES, load_family_model, load_family_tokenizer
from sink_modifier.families.registry import detect_family, read_config

__all__ = ["DTYPES", "load_checkpoint", "load_model", "load_tokenizer", "quantization_config"]


def _check_folder(path: str | Path) -> Path:
    read_config(path)
    return Path(path)


def load_model(
    path: str | Path, dtype: str = "auto", trust_remote_code: bool = False, family: str | None = None
) -> nn.Module:
    """The model of ``path`` in eval mode (its family detected unless ``family`` names it)."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    model, _ = load_family_model(path, family=family, dtype=dtype, trust_remote_code=trust_remote_code, quantized=False)
    return model


def load_tokenizer(path: str | Path, trust_remote_code: bool = False, family: str | None = None):
    return load_family_tokenizer(path, detect_family(read_config(path), family), trust_remote_code)


def quantization_config(config: dict) -> dict | None:
    """The ``quantization_config`` of a parsed ``config.json``, if it has one."""
    quant = config.get("quantization_config")
    return quant if isinstance(quant, dict) else None


def load_checkpoint(
    path: str | Path, *, trust_remote_code: bool = False, quantized: bool | None = None, family: str | None = None
) -> nn.Module:
    """A saved (possibly compressed-tensors quantized) checkpoint in eval mode with readable float weights.

    A ``quantization_config`` in ``config.json`` loads through transformers'
    ``CompressedTensorsHfQuantizer`` with ``CompressedTensorsConfig(dequantize=True)``: int8/fp8/
    packed int4 weights are decompressed to the model dtype, and the modules keep their
    quantization scheme, so a forward still applies the scheme's activation fake-quantization
    (e.g. dynamic per-token int8 for W8A8), like the in-memory model after ``oneshot``.
    """
    model, _ = load_family_model(path, family=family, trust_remote_code=trust_remote_code, quantized=quantized)
    return model
