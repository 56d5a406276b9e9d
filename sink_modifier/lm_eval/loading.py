"""What ``sink_dlm``'s model args name: their string forms read, and the model they load.

``pretrained=`` is a model folder (loaded through :func:`sink_modifier.families.load_pretrained`), an
ONNX export folder (run in ONNX Runtime) or an already loaded model; :func:`use_onnx` decides which
runtime, :func:`load_model_args` returns ``(model, tokenizer, family)``.
"""

from __future__ import annotations

from pathlib import Path

import torch

__all__ = ["as_bool", "load_model_args", "optional_int", "use_onnx"]


def as_bool(value) -> bool:
    """A model arg as lm-eval passes it (a string from ``--model_args``, or a value) read as a boolean."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no", "none", ""):
            return False
        raise ValueError(f"expected a boolean, got {value!r}")
    return bool(value)


def optional_int(value) -> int | None:
    """A model arg read as an int, ``None`` for an empty or ``none`` string."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    return int(value)


def use_onnx(pretrained, onnx) -> bool:
    """``onnx=`` as given, else whether ``pretrained`` is an ONNX export folder."""
    from sink_modifier.commands.onnx_preflight import is_onnx_export

    export = not isinstance(pretrained, torch.nn.Module) and bool(pretrained) and is_onnx_export(pretrained)
    if onnx is None or (isinstance(onnx, str) and onnx.strip().lower() in ("", "none")):
        return export
    onnx = as_bool(onnx)
    if not onnx and export:
        raise ValueError(f"{pretrained} is an ONNX export (model.onnx, no PyTorch weights); pass onnx=True "
                         "(or leave onnx out) to run it in ONNX Runtime")
    if onnx and isinstance(pretrained, torch.nn.Module):
        raise ValueError("onnx=True needs pretrained=<folder written by `sink-modifier export-onnx`>, "
                         "not a loaded model")
    return onnx


def load_model_args(pretrained, tokenizer, dtype: str, trust_remote_code: bool, family: str | None, *,
                    onnx: bool = False, threads: int | None = None):
    """(model, tokenizer, family); a folder loads through :func:`sink_modifier.families.load_pretrained`
    (family detected from ``config.json`` unless named; quantized checkpoints dequantized), an
    ONNX export folder (``onnx``) through :func:`sink_modifier.commands.onnx_preflight.check_onnx_export`,
    a loaded model keeps the family named, else the one its config shows."""
    from sink_modifier.commands.onnx_preflight import check_onnx_export
    from sink_modifier.families import family_of_model, get_family, load_pretrained, load_tokenizer

    if isinstance(pretrained, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("pass tokenizer=... together with an already loaded model")
        model, chosen = pretrained, get_family(family) if family is not None else family_of_model(pretrained)
    else:
        if not pretrained:
            raise ValueError("sink_dlm needs pretrained=<model folder>")
        if onnx:
            loaded = check_onnx_export(pretrained, family=family, trust_remote_code=trust_remote_code,
                                       threads=threads).load()
        else:
            loaded = load_pretrained(pretrained, family=family, dtype=dtype, trust_remote_code=trust_remote_code)
        model, chosen = loaded.model, loaded.family
        if tokenizer is None:
            tokenizer = loaded.tokenizer
    if isinstance(tokenizer, (str, Path)):
        tokenizer = load_tokenizer(tokenizer, trust_remote_code=trust_remote_code)
    return model, tokenizer, chosen
