"""What an export folder says about itself: its file names, the facts a runtime reads inside the ``.onnx``
(``custom_metadata_map``), ``onnx_export.json``, the tokenizer copied beside it, and whether a file is ours."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from sink_modifier.export.onnx_quantization import (
    ExportPrecision,
    QuantizedExportPlan,
)

ONNX_FILE = "model.onnx"


ONNX_METADATA_FILE = "onnx_export.json"


_OUR_METADATA_KEY = "sink_modifier.logits"  # every graph export_onnx writes carries it (_runtime_facts)


def is_onnx_export(path: Path) -> bool:
    """Whether ``path`` is an ``.onnx`` file :func:`export_onnx` wrote (``--overwrite`` replaces only those)."""
    import onnx

    if not path.is_file():
        return False
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 (any unreadable file is simply not one of ours)
        return False
    return any(entry.key == _OUR_METADATA_KEY for entry in proto.metadata_props)


def _runtime_facts(config) -> dict[str, str]:
    from sink_modifier.process import resolve_mask_token_id

    facts = {_OUR_METADATA_KEY: "input_ids [batch, seq_len] -> logits [batch, seq_len, vocab]"}
    try:
        facts["mask_token_id"] = str(resolve_mask_token_id(None, config))
    except ValueError:
        pass
    for key in ("max_position_embeddings", "vocab_size"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            facts[key] = str(value)
    return facts


def _opset_of(program) -> int | None:
    imports = getattr(getattr(program, "model", None), "opset_imports", {}) or {}
    value = imports.get("", imports.get("ai.onnx"))
    return int(value) if value is not None else None


def _metadata(model: nn.Module, source: Path | None, plan: QuantizedExportPlan, result: dict,
              seconds: float) -> dict:
    import onnx
    import onnxscript

    from sink_modifier.process import resolve_mask_token_id

    config = getattr(model, "config", None)
    try:
        mask_token_id = resolve_mask_token_id(None, config)
    except ValueError:
        mask_token_id = None
    float_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {
        "source": str(source) if source is not None else None,
        "inputs": {"input_ids": ["batch", "seq_len"]},
        "outputs": {"logits": ["batch", "seq_len", "vocab"]},
        "mask_token_id": mask_token_id,
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "vocab_size": getattr(config, "vocab_size", None),
        "dtype": float_dtype,  # of the float parts (all of a float graph)
        "precision": float_dtype if plan.precision is ExportPrecision.FLOAT else plan.precision.value,
        "quantization": result.get("quantization") or (plan.describe() if plan.quantized_checkpoint else None),
        "opset": result.get("opset"),
        "check_max_abs_diff": result.get("diffs"),
        "check_atol": result.get("atol"),
        # the CPU whose ONNX Runtime gave check_max_abs_diff (int8 kernels differ by ISA)
        "check_cpu": _check_cpu() if result.get("atol") is not None else None,
        "check_reference": ("compressed-tensors fake-quantized PyTorch forward"
                            if plan.precision is not ExportPrecision.FLOAT else "PyTorch forward"),
        "bidirectional": result.get("bidirectional"),
        "export_seconds": round(seconds, 2),
        "exporter": "torch.onnx.export(dynamo=True)" + (f" + {plan.precision.value} rewrite"
                                                         if result.get("quantization") else ""),
        "optimized": result.get("optimize"),
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__},
    }


def _check_cpu() -> dict:
    from sink_modifier.export.onnx_cpu import cpu_info

    return cpu_info().describe()


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "generation_config.json")


def _copy_tokenizer(source: Path | None, tokenizer, target: Path) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(target)
        return
    if source is None:
        return
    for name in _TOKENIZER_FILES:
        if (source / name).is_file():
            (target / name).write_bytes((source / name).read_bytes())
