"""What an ONNX export does with a compressed-tensors checkpoint, decided from ``config.json`` alone.

:func:`plan_export` reads ``quantization_config`` (no tensor, no model code) and says which
graph the checkpoint becomes, or refuses before any slow work starts:

* W8A8 int (``int-quantized``: int8 symmetric weights per output channel or per tensor,
  dynamic symmetric int8 activations per token or per tensor) -> :attr:`ExportPrecision.INT8`,
  a graph of integer matmuls holding the checkpoint's own int8 weights
  (:mod:`sink_modifier.export.onnx_int8`).
* W4A16 int (``pack-quantized``: int4 symmetric group-wise weights, float activations,
  group size a power of two >= 16) -> :attr:`ExportPrecision.INT4`, ``MatMulNBits`` holding the
  checkpoint's own int4 values (:mod:`sink_modifier.export.onnx_int4`).
* anything else (FP8, asymmetric or static activation schemes, sparse-compressed weights...)
  is refused with a ``ValueError`` naming ``--dequantize``: ONNX Runtime's CPU provider has no
  kernel that runs it as stored, and a silently dequantized float graph would hide that.

With ``dequantize=True`` every quantized checkpoint exports as a float graph (the weights
decompressed, no activation quantization), as asked.

:func:`read_quantized_linears` then reads the stored integer weights and their scales from the
checkpoint's safetensors files, exactly as written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEQUANTIZE_HINT",
    "ExportPrecision",
    "QuantizedExportPlan",
    "QuantizedLinear",
    "plan_export",
    "read_quantized_linears",
    "refuse_non_finite_scales",
]

DEQUANTIZE_HINT = "pass --dequantize (dequantize=True) to export it as a float graph instead"


class ExportPrecision(str, Enum):
    """The arithmetic of the exported graph's quantized Linear layers."""

    FLOAT = "float"  # not quantized, or dequantized on request
    INT8 = "int8"  # W8A8: dynamic int8 activations x the checkpoint's int8 weights
    INT4 = "int4"  # W4A16: float activations x the checkpoint's int4 weights (MatMulNBits)


@dataclass(frozen=True)
class QuantizedExportPlan:
    """Which graph a checkpoint becomes. ``weights`` / ``input_activations``: the scheme's
    quantization args as ``config.json`` records them (``None`` for a float checkpoint)."""

    precision: ExportPrecision
    quantized_checkpoint: bool
    weights: dict[str, Any] | None = None
    input_activations: dict[str, Any] | None = None
    ignore: tuple[str, ...] = ()

    @property
    def dequantized(self) -> bool:
        """A quantized checkpoint exported as a float graph (``--dequantize``)."""
        return self.quantized_checkpoint and self.precision is ExportPrecision.FLOAT

    def describe(self) -> dict[str, Any]:
        """The scheme for ``onnx_export.json``."""
        return {
            "precision": self.precision.value,
            "dequantized": self.dequantized,
            "weights": _short_args(self.weights),
            "input_activations": _short_args(self.input_activations),
            "ignore": list(self.ignore),
        }


@dataclass(frozen=True)
class QuantizedLinear:
    """One quantized Linear as stored: ``values`` int8 ``[out, in]`` (int4 values in ``[-8, 7]``
    for W4A16), ``scale`` float32 (``[out]`` per channel, ``[out, in / group]`` per group)."""

    name: str
    values: np.ndarray = field(repr=False)
    scale: np.ndarray = field(repr=False)


def refuse_non_finite_scales(layer: QuantizedLinear) -> None:
    """A stored NaN / infinite weight scale is a broken checkpoint: refuse it rather than export garbage."""
    bad = int((~np.isfinite(layer.scale)).sum())
    if bad:
        raise ValueError(f"{layer.name}: {bad} of its {layer.scale.size} stored weight scales are NaN or infinite; "
                         "the checkpoint is broken there: quantize it again, or leave the layer out (ignore)")


_ARG_KEYS = ("num_bits", "type", "symmetric", "strategy", "group_size", "dynamic")


def _short_args(args: dict | None) -> dict | None:
    return None if args is None else {k: args.get(k) for k in _ARG_KEYS}


def plan_export(config: dict[str, Any], *, dequantize: bool = False) -> QuantizedExportPlan:
    """The export plan for a parsed ``config.json``; ``ValueError`` for a scheme no ORT CPU kernel runs."""
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return QuantizedExportPlan(ExportPrecision.FLOAT, quantized_checkpoint=False)
    if dequantize:  # recorded, not checked: the float graph runs whatever the scheme was
        groups = [g for g in (quant.get("config_groups") or {}).values() if isinstance(g, dict)]
        first = groups[0] if groups else {}
        return QuantizedExportPlan(ExportPrecision.FLOAT, quantized_checkpoint=True, weights=first.get("weights"),
                                   input_activations=first.get("input_activations"),
                                   ignore=tuple(quant.get("ignore") or ()))
    method = quant.get("quant_method")
    if method != "compressed-tensors":
        raise ValueError(f"config.json's quantization_config has quant_method {method!r}; only compressed-tensors "
                         f"checkpoints (llm-compressor) export with their own quantization; {DEQUANTIZE_HINT}")
    groups = quant.get("config_groups") or {}
    if not isinstance(groups, dict) or not groups:
        raise ValueError(f"config.json's quantization_config has no config_groups; {DEQUANTIZE_HINT}")
    sparsity = quant.get("sparsity_config") or {}
    if sparsity.get("format") not in (None, "dense"):
        raise ValueError(f"the weights are stored sparse-compressed ({sparsity.get('format')!r}); the int export "
                         f"reads dense quantized weights; {DEQUANTIZE_HINT}")
    if quant.get("kv_cache_scheme"):
        raise ValueError("the checkpoint quantizes the KV cache, which the export does not reproduce; "
                         f"{DEQUANTIZE_HINT}")
    schemes = {json.dumps(_scheme_of(group, quant.get("format")), sort_keys=True) for group in groups.values()}
    if len(schemes) != 1:
        raise ValueError(f"the checkpoint has {len(schemes)} different quantization schemes across its config_groups; "
                         f"the export supports one; {DEQUANTIZE_HINT}")
    scheme = json.loads(schemes.pop())
    precision = _precision_of(scheme)
    return QuantizedExportPlan(precision, quantized_checkpoint=True, weights=scheme["weights"],
                               input_activations=scheme["input_activations"], ignore=tuple(quant.get("ignore") or ()))


def _scheme_of(group: dict, default_format: str | None) -> dict:
    return {
        "format": group.get("format") or default_format,
        "weights": group.get("weights"),
        "input_activations": group.get("input_activations"),
        "output_activations": group.get("output_activations"),
    }


def _precision_of(scheme: dict) -> ExportPrecision:
    weights, acts, fmt = scheme["weights"] or {}, scheme["input_activations"], scheme["format"]
    described = _describe(scheme)
    if weights.get("type") == "float" or (acts or {}).get("type") == "float":
        raise ValueError(f"the checkpoint is float-quantized ({described}); ONNX Runtime's CPU provider has no FP8 "
                         f"matmul kernels; {DEQUANTIZE_HINT}")
    if scheme["output_activations"]:
        raise ValueError(f"the checkpoint quantizes output activations ({described}), which the export does not "
                         f"reproduce; {DEQUANTIZE_HINT}")
    if weights.get("type") != "int" or not weights.get("symmetric") or weights.get("dynamic"):
        raise ValueError(f"unsupported weight quantization ({described}): the int export needs static symmetric "
                         f"int weights; {DEQUANTIZE_HINT}")
    bits, strategy = weights.get("num_bits"), weights.get("strategy")
    if bits == 8 and fmt == "int-quantized" and strategy in ("channel", "tensor"):
        if not acts:
            raise ValueError(f"int8 weights with float activations ({described}) have no int8 kernel with float "
                             f"inputs in ONNX Runtime; {DEQUANTIZE_HINT}")
        if not (acts.get("type") == "int" and acts.get("num_bits") == 8 and acts.get("symmetric")
                and acts.get("dynamic") is True and acts.get("strategy") in ("token", "tensor")):
            raise ValueError(f"unsupported activation quantization ({described}): the int8 export reproduces "
                             f"dynamic symmetric int8 activations per token or per tensor; {DEQUANTIZE_HINT}")
        return ExportPrecision.INT8
    if bits == 4 and fmt == "pack-quantized" and strategy == "group":
        group = weights.get("group_size") or 0
        if acts:
            raise ValueError(f"int4 weights with quantized activations ({described}) are not supported; "
                             f"{DEQUANTIZE_HINT}")
        if group < 16 or group & (group - 1):
            raise ValueError(f"int4 group size {group} ({described}): ONNX Runtime's MatMulNBits needs a power of "
                             f"two >= 16; {DEQUANTIZE_HINT}")
        return ExportPrecision.INT4
    raise ValueError(f"unsupported quantization scheme ({described}): the export runs W8A8 int8 (int-quantized, "
                     f"per-channel weights) and W4A16 int4 (pack-quantized, group-wise); {DEQUANTIZE_HINT}")


def _describe(scheme: dict) -> str:
    def args(a: dict | None) -> str:
        if not a:
            return "none"
        text = f"{a.get('type')}{a.get('num_bits')} {a.get('strategy')}"
        text += f" group {a.get('group_size')}" if a.get("group_size") else ""
        text += " symmetric" if a.get("symmetric") else " asymmetric"
        return text + (" dynamic" if a.get("dynamic") else "")

    return (f"format {scheme['format']}, weights {args(scheme['weights'])}, "
            f"activations {args(scheme['input_activations'])}")


def read_quantized_linears(folder: str | Path, plan: QuantizedExportPlan) -> dict[str, QuantizedLinear]:
    """The quantized Linear layers of a checkpoint, keyed by module name, exactly as stored.

    int8 (``int-quantized``): ``<name>.weight`` int8 and ``<name>.weight_scale``. int4
    (``pack-quantized``): ``<name>.weight_packed`` (int4 values packed into int32 words),
    ``<name>.weight_shape`` and ``<name>.weight_scale``.
    """
    import torch
    from safetensors import safe_open

    from sink_modifier.families.weights_files import weight_files

    files = [p for p in weight_files(Path(folder)) if p.suffix == ".safetensors"]
    if not files:
        raise ValueError(f"{folder} has no .safetensors files; the int export reads the quantized weights from them; "
                         f"{DEQUANTIZE_HINT}")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                if key.endswith((".weight_scale", ".weight", ".weight_packed", ".weight_shape", ".weight_g_idx")):
                    tensors[key] = handle.get_tensor(key)
    found: dict[str, QuantizedLinear] = {}
    for key in sorted(k for k in tensors if k.endswith(".weight_scale")):
        name = key.removesuffix(".weight_scale")
        scale = tensors[key].to(torch.float32).numpy()  # bf16/fp16 -> fp32 is exact
        if plan.precision is ExportPrecision.INT8:
            values = tensors.get(f"{name}.weight")
            if values is None or values.dtype != torch.int8:
                raise ValueError(f"{name}.weight in {folder} is {None if values is None else values.dtype}, not the "
                                 f"int8 tensor an int-quantized checkpoint stores; {DEQUANTIZE_HINT}")
            found[name] = QuantizedLinear(name, values.numpy(), scale.reshape(-1))
        else:
            if f"{name}.weight_g_idx" in tensors:
                raise ValueError(f"{name} has a weight_g_idx (GPTQ actorder 'group': groups out of column order), "
                                 f"which MatMulNBits cannot express; {DEQUANTIZE_HINT}")
            found[name] = QuantizedLinear(name, _unpack_int4(name, tensors, folder), scale)
    if not found:
        raise ValueError(f"{folder}'s config.json says it is quantized but its weights hold no *.weight_scale; "
                         f"{DEQUANTIZE_HINT}")
    return found


def _unpack_int4(name: str, tensors: dict, folder) -> np.ndarray:
    """compressed-tensors' own unpacking (values back in ``[-8, 7]``), so the layout is the library's."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    packed, shape = tensors.get(f"{name}.weight_packed"), tensors.get(f"{name}.weight_shape")
    if packed is None or shape is None:
        raise ValueError(f"{name} in {folder} lacks weight_packed / weight_shape, which a pack-quantized checkpoint "
                         f"stores; {DEQUANTIZE_HINT}")
    return unpack_from_int32(packed, 4, torch.Size(int(v) for v in shape.tolist())).numpy()
