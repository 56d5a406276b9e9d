"""The model an ONNX export traces: a float module, or a compressed-tensors checkpoint decompressed beside the
quantization it keeps (:func:`load_for_export`, :class:`ExportModel`), wrapped as ``input_ids -> logits``."""

from __future__ import annotations

import copy
import dataclasses
import inspect
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sink_modifier.export.onnx_quantization import (
    DEQUANTIZE_HINT,
    ExportPrecision,
    QuantizedExportPlan,
    QuantizedLinear,
    plan_export,
    read_quantized_linears,
)
from sink_modifier.families import (
    DTYPES,
    LoadedModel,
    ModelFamily,
    load_pretrained,
    open_model_folder,
)


class _LogitsOnly(nn.Module):
    """``input_ids -> logits`` with no cache, so the graph has one input and one output."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        params = inspect.signature(model.forward).parameters
        self._kwargs = {"use_cache": False} if "use_cache" in params else {}

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, **self._kwargs).logits


@dataclass
class ExportModel(LoadedModel):
    """A :class:`LoadedModel` ready to export: ``model`` is a plain float model (a quantized
    checkpoint's weights decompressed); ``plan`` says which graph it becomes; for an integer
    export, ``reference`` is the compressed-tensors model whose fake-quantized forward the ORT
    check compares with, and ``quantized_linears`` holds the checkpoint's stored weights."""

    plan: QuantizedExportPlan = dataclasses.field(
        default_factory=lambda: QuantizedExportPlan(ExportPrecision.FLOAT, quantized_checkpoint=False))
    reference: nn.Module | None = None
    quantized_linears: dict[str, QuantizedLinear] = dataclasses.field(default_factory=dict, repr=False)
    int8_head: bool = False  # the output head was rounded to int8 at export (--int8-head)


def load_for_export(
    path: str | Path, *, family: str | ModelFamily | None = None, dtype: str = "float32",
    trust_remote_code: bool = False, dequantize: bool = False, int8_head: bool = False,
) -> ExportModel:
    """Load a model folder for :func:`export_onnx`.

    A float checkpoint loads as it is. A quantized one is planned from ``config.json`` first
    (:func:`plan_export`: a ``ValueError`` naming ``--dequantize`` for a scheme that cannot be
    exported as stored, before any weight is read); an integer plan loads the compressed-tensors
    model in float32 (the reference) and a plain model sharing its decompressed weights;
    ``dequantize=True`` gives the plain model alone, in ``dtype``, with a warning that the
    graph will be float. ``int8_head=True`` (an int8 plan only) rounds the float output head to
    int8 as well (:mod:`sink_modifier.export.onnx_int8_head`).
    """
    from loguru import logger

    source = open_model_folder(path, family)
    plan = plan_export(source.config, dequantize=dequantize)
    if int8_head and plan.precision is not ExportPrecision.INT8:
        raise ValueError(f"--int8-head rounds the output head into an int8 graph; {source.folder} exports as "
                         f"{plan.precision.value} (it needs a W8A8 int-quantized checkpoint, without --dequantize)")
    if not source.quantized:
        loaded = load_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code, quantized=False)
        return ExportModel(**_fields(loaded), plan=plan)
    if plan.dequantized:
        logger.warning(f"exporting {source.folder} dequantized: the graph holds float weights and runs float "
                       "activations, not the checkpoint's quantization")
        loaded = load_pretrained(source, trust_remote_code=trust_remote_code, quantized=True)
        return ExportModel(**{**_fields(loaded), "model": _dequantized_plain(loaded.model, dtype)}, plan=plan)
    if dtype not in ("float32", "auto"):
        raise ValueError(f"an {plan.precision.value} export computes its float parts in float32, not {dtype}; "
                         f"drop --dtype, or {DEQUANTIZE_HINT}")
    linears = read_quantized_linears(source.folder, plan)
    loaded = load_pretrained(source, dtype="float32", trust_remote_code=trust_remote_code, quantized=True)
    plain = _dequantized_plain(loaded.model, "float32", share_weights=True)
    if int8_head:
        from sink_modifier.export.onnx_int8_head import round_head_to_int8

        head = round_head_to_int8(plain)
        linears = {**linears, head.name: head}
    return ExportModel(**{**_fields(loaded), "model": plain}, plan=plan, reference=loaded.model,
                       quantized_linears=linears, int8_head=int8_head)


def _fields(loaded: LoadedModel) -> dict:
    return {f.name: getattr(loaded, f.name) for f in dataclasses.fields(LoadedModel)}


def _dequantized_plain(quantized: nn.Module, dtype: str, *, share_weights: bool = False) -> nn.Module:
    """A model of the same config without quantization modules, holding the dequantized weights
    (``share_weights``: the very tensors of ``quantized``, no copy; both must be in ``dtype``)."""
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    torch_dtype = torch.float32 if DTYPES[dtype] == "auto" else DTYPES[dtype]
    plain = type(quantized)._from_config(config, dtype=torch_dtype)
    wanted = plain.state_dict()
    state = {k: v for k, v in quantized.state_dict().items() if k in wanted}
    missing = plain.load_state_dict(state, strict=False, assign=share_weights).missing_keys
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    if set(missing) - tied:
        raise RuntimeError(f"the dequantized checkpoint lacks weights {sorted(set(missing) - tied)[:5]} "
                           "of the plain model; it cannot be exported as a float graph")
    if share_weights and tied:
        plain.tie_weights()  # assign=True replaced the embedding the head was tied to
    return plain.to(torch_dtype).eval()


def _resolve_model(model_or_dir, dtype: str, trust_remote_code: bool, dequantize: bool,
                   int8_head: bool = False) -> ExportModel | nn.Module:
    """An :class:`ExportModel`, or a bare module (exported as the float graph it is)."""
    if int8_head and not isinstance(model_or_dir, (str, Path)) and not getattr(model_or_dir, "int8_head", False):
        raise ValueError("int8_head needs the checkpoint folder (or load_for_export(folder, int8_head=True))")
    if isinstance(model_or_dir, nn.Module):
        return model_or_dir.eval()
    if isinstance(model_or_dir, ExportModel):
        return model_or_dir
    if isinstance(model_or_dir, LoadedModel):
        plan = plan_export(model_or_dir.config, dequantize=True)
        if not plan.quantized_checkpoint:
            return ExportModel(**_fields(model_or_dir), plan=plan)
        if not dequantize:
            raise ValueError("this LoadedModel holds a quantized checkpoint as load_pretrained decompresses it; pass "
                             "its folder (or load_for_export(folder)) to keep its quantization, or dequantize=True "
                             "for a float graph")
        return ExportModel(**{**_fields(model_or_dir), "model": _dequantized_plain(model_or_dir.model, dtype)},
                           plan=plan)
    return load_for_export(model_or_dir, dtype=dtype, trust_remote_code=trust_remote_code, dequantize=dequantize,
                           int8_head=int8_head)
