"""Loading a model folder the way a user's hub checkpoint is loaded: ``from_pretrained(path)``.

One place to grow per-family loading fixes later; today every supported model is an
``AutoModelForCausalLM`` (bidirectional ones carry ``is_causal: false`` in config.json).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

__all__ = ["DTYPES", "load_checkpoint", "load_model", "load_tokenizer", "quantization_config"]

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


def quantization_config(config: dict) -> dict | None:
    """The ``quantization_config`` of a parsed ``config.json``, if it has one."""
    quant = config.get("quantization_config")
    return quant if isinstance(quant, dict) else None


def load_checkpoint(path: str | Path, *, trust_remote_code: bool = False, quantized: bool | None = None):
    """``AutoModelForCausalLM.from_pretrained(path)`` in eval mode with readable float weights.

    A compressed-tensors checkpoint (``quantization_config`` in ``config.json``) goes through
    transformers' ``CompressedTensorsHfQuantizer`` with ``CompressedTensorsConfig(dequantize=True)``:
    int8/fp8/packed int4 weights are decompressed to the model dtype at load time, and the
    modules keep their quantization scheme, so a forward pass still applies the scheme's
    activation fake-quantization (e.g. dynamic per-token int8 for W8A8), like the in-memory
    model after ``oneshot``. (``run_compressed=False`` is the deprecated spelling of the same.)
    """
    from transformers import AutoModelForCausalLM

    folder = Path(path)
    if quantized is None:
        config = json.loads((folder / "config.json").read_text())
        quantized = quantization_config(config) is not None
    kwargs = {}
    if quantized:
        from transformers.utils.quantization_config import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    with warnings.catch_warnings():
        # "You passed `quantization_config` ... already has a `quantization_config`": expected,
        # only the loading attributes (dequantize) of ours are used, which is what we want.
        warnings.filterwarnings("ignore", message=".*quantization_config.*", category=UserWarning)
        model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=trust_remote_code, **kwargs)
    return model.eval()
