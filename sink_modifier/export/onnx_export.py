"""Export a (pruned, possibly quantized) diffusion LM to ONNX: ``input_ids [B, L] -> logits [B, L, V]``.

Uses ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript): shapes are traced
symbolically, so the dynamic batch and sequence axes are checked by ``torch.export`` rather
than silently specialised the way the deprecated TorchScript exporter can. The graph has
no KV cache and no attention-mask input: a masked diffusion LM attends bidirectionally over
the whole canvas at every step, and the export is verified against PyTorch with ONNX
Runtime (at two sequence lengths, which also catches a graph that turned causal).

A quantized compressed-tensors checkpoint keeps its own quantization where ONNX Runtime's
CPU provider can run it (:mod:`sink_modifier.export.onnx_quantization` decides from
``config.json``, before anything slow): a W8A8 int8 checkpoint becomes an int8 graph holding
the stored int8 weights and scales, with the recipe's dynamic per-token int8 activations
(:mod:`sink_modifier.export.onnx_int8`); the output head and every layer the recipe left
unquantized stay float. Other schemes (FP8, ...) are refused unless ``dequantize=True``
(``--dequantize``), which exports the float graph of the decompressed weights: weight
quantization and pruning zeros reproduced exactly, activation quantization not at all.
The float graph is always exported first; the int8 graph is a rewrite of it. It is
checked against the compressed-tensors model's own fake-quantized forward.

Output: a folder (``model.onnx`` with external weight data beside it when large, plus
``config.json``, the tokenizer files and ``onnx_export.json``), or a single ``.onnx`` file
(models under the 2 GB protobuf limit). Both appear complete or not at all.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sink_modifier.export.atomic import (
    write_atomically,
    write_file_atomically,
    write_json_atomically,
)
from sink_modifier.export.onnx_check import (
    DEFAULT_ATOL,
    OnnxCheckError,
    _check_ort,
    _example_ids,
)
from sink_modifier.export.onnx_metadata import (
    ONNX_FILE,
    ONNX_METADATA_FILE,
    _copy_tokenizer,
    _metadata,
    _opset_of,
    _runtime_facts,
    is_onnx_export,
)
from sink_modifier.export.onnx_model import (
    ExportModel,
    _LogitsOnly,
    _resolve_model,
    load_for_export,
)
from sink_modifier.export.onnx_quantization import (
    ExportPrecision,
    QuantizedExportPlan,
    plan_export,
)
from sink_modifier.export.output_guard import OutputKind, claim_output
from sink_modifier.families import LoadedModel

__all__ = [
    "DEFAULT_ATOL",
    "ONNX_FILE",
    "ONNX_METADATA_FILE",
    "ExportModel",
    "OnnxCheckError",
    "OnnxExportResult",
    "export_onnx",
    "is_onnx_export",
    "load_for_export",
]

_PROTOBUF_LIMIT = 2 * 1024**3




@dataclass(frozen=True)
class OnnxExportResult:
    path: Path  # the .onnx file
    opset: int | None
    seconds: float
    max_abs_diff: dict[str, float]  # ORT vs PyTorch logits, per checked shape "BxL"
    bidirectional: bool | None  # ORT logits at position 0 depend on the last token
    metadata: dict
















def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())






def export_onnx(
    model_or_dir: nn.Module | LoadedModel | str | Path,
    out_path: str | Path,
    *,
    dtype: str = "float32",
    opset: int | None = None,
    example_seq_len: int = 17,
    check_lengths: tuple[int, ...] = (8, 33),
    atol: float | None = None,
    check: bool = True,
    optimize: bool = True,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    tokenizer=None,
    dequantize: bool = False,
    int8_kernel: str = "matmul-integer-to-float",
    int8_operands: str = "auto",
    int8_head: bool = False,
) -> OnnxExportResult:
    """Export ``input_ids [B, L] -> logits [B, L, V]`` with dynamic ``B`` and ``L``; verify with ORT.

    ``model_or_dir`` is a model, one loaded by :func:`load_for_export` (its folder supplies the
    tokenizer files), or a model folder (loaded that way here; ``dtype`` and ``dequantize``
    apply only then). A W8A8 int8 checkpoint becomes an int8 graph; ``dequantize=True`` gives
    the float graph of its decompressed weights instead (see the module docstring).
    ``out_path`` ending in ``.onnx`` is written as one self-contained file (under 2 GB of
    weights); anything else is a folder with ``model.onnx``, external data if needed,
    ``config.json``, the tokenizer (copied from the source folder or ``tokenizer``) and
    ``onnx_export.json``. ``check`` runs ONNX Runtime at ``check_lengths`` (batch 2) and raises
    if any logit differs from PyTorch by more than ``atol`` (default :data:`DEFAULT_ATOL` for
    the graph's precision; an int8 graph is compared with the compressed-tensors model's
    fake-quantized forward). ``optimize`` runs onnxscript's graph optimizer (constant folding,
    redundant-op removal) after the export; turning it off saves export time and gives a
    larger, equally exact graph. ``int8_kernel``: an :class:`~sink_modifier.export.onnx_int8.Int8Kernel`
    value (for benchmarks; the default is the fastest that keeps the recipe's arithmetic).
    ``int8_operands`` (``--int8-operands``): the integer types of the int8 GEMMs, an
    :class:`~sink_modifier.export.onnx_int8.Int8Operands` value or ``"auto"`` (u8s8 where this
    CPU's U8S8 kernel is exact, u8u8 where it saturates; ``onnx_export.json`` records the choice,
    why, and the CPU). ``int8_head`` (``--int8-head``) rounds the float output head of a W8A8
    checkpoint to int8 too.
    """
    try:
        import onnxscript  # noqa: F401  (torch.onnx's dynamo exporter needs it)
    except ImportError as err:
        raise ImportError("ONNX export needs onnx and onnxscript (and onnxruntime to check it): "
                          "pip install 'sink-modifier[onnx]'") from err
    from sink_modifier.export.onnx_cpu import cpu_isa
    from sink_modifier.export.onnx_int8 import Int8Kernel, choose_operands

    kernel = Int8Kernel(int8_kernel)  # a bad value fails here, before any work
    operands, operands_why = choose_operands(int8_operands, cpu_isa())  # auto: this CPU decides
    out = Path(out_path)
    single_file = out.suffix == ".onnx"
    source_path = model_or_dir if isinstance(model_or_dir, (str, Path)) else getattr(model_or_dir, "folder", None)
    # claimed before the load: never the source checkpoint (or a folder around it), one writer at a time
    with claim_output(out, protected=(source_path,), overwrite=overwrite,
                      kind=OutputKind.FILE if single_file else OutputKind.FOLDER, recognise=is_onnx_export):
        resolved = _resolve_model(model_or_dir, dtype, trust_remote_code, dequantize, int8_head)
        model = resolved.model if isinstance(resolved, ExportModel) else resolved
        source = resolved.folder if isinstance(resolved, ExportModel) else None
        plan = resolved.plan if isinstance(resolved, ExportModel) else plan_export({})
        reference = resolved.reference if plan.precision is not ExportPrecision.FLOAT else model
        atol = DEFAULT_ATOL[plan.precision] if atol is None else atol
        config = getattr(model, "config", None)
        if getattr(config, "is_causal", None) is True:
            warnings.warn("config.is_causal is True: exporting a causal model; the diffusion sampler "
                          "needs bidirectional attention", stacklevel=2)
        max_positions = getattr(config, "max_position_embeddings", None)
        if single_file and _param_bytes(model) > _PROTOBUF_LIMIT * 0.95:
            raise ValueError(f"the model has {_param_bytes(model) / 1024**3:.1f} GiB of weights, over the 2 GB limit "
                             f"of a single .onnx file; pass a folder as out_path (weights go to external data)")
        lengths = tuple(n for n in check_lengths if max_positions is None or n <= max_positions)
        seq_len = min(example_seq_len, max_positions) if max_positions else example_seq_len
        wrapper = _LogitsOnly(model).eval()
        example = _example_ids(config, 2, seq_len, seed=0)
        batch_dim = torch.export.Dim("batch", min=1, max=4096)
        seq_dim = torch.export.Dim("seq_len", min=1, max=max_positions) if max_positions else torch.export.Dim(
            "seq_len", min=1)

        start = time.perf_counter()
        result: dict = {}

        def write(target: Path) -> None:
            onnx_path = target / ONNX_FILE if not single_file else target
            external = not single_file and _param_bytes(model) > _PROTOBUF_LIMIT * 0.5
            with torch.no_grad(), warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning)
                program = torch.onnx.export(
                    wrapper, (example,), None, dynamo=True, input_names=["input_ids"],
                    output_names=["logits"], dynamic_shapes={"input_ids": {0: batch_dim, 1: seq_dim}},
                    opset_version=opset, optimize=optimize, verbose=False,
                )
            result["opset"], result["optimize"] = _opset_of(program), optimize
            facts = _runtime_facts(config)
            if plan.precision is ExportPrecision.FLOAT:
                # the facts a runtime needs travel inside the .onnx file too (ORT: custom_metadata_map)
                for key, value in facts.items():
                    program.model.metadata_props[key] = value
                program.save(str(onnx_path), external_data=external)
            else:
                result["quantization"] = _save_quantized(program, onnx_path, resolved, plan, kernel,
                                                       (operands, operands_why), facts, external)
            wrapped_reference = _LogitsOnly(reference).eval()
            if check:
                int8 = operands.value if plan.precision is ExportPrecision.INT8 else None
                result["diffs"], result["bidirectional"] = _check_ort(onnx_path, wrapped_reference, config, lengths, atol,
                                                                      int8)
            else:
                result["diffs"], result["bidirectional"] = {}, None
            result["atol"] = atol if check else None
            result["metadata"] = _metadata(model, source, plan, result, time.perf_counter() - start)
            if not single_file:
                if config is not None:
                    config.save_pretrained(target)
                _copy_tokenizer(source, tokenizer, target)
                write_json_atomically(target / ONNX_METADATA_FILE, result["metadata"], pretty=True)

        if single_file:
            onnx_file = write_file_atomically(out, write)
        else:
            onnx_file = write_atomically(out, write, overwrite=overwrite) / ONNX_FILE
        return OnnxExportResult(path=onnx_file, opset=result["opset"], seconds=time.perf_counter() - start,
                                max_abs_diff=result["diffs"], bidirectional=result["bidirectional"],
                                metadata=result["metadata"])


def _save_quantized(program, onnx_path: Path, resolved: ExportModel, plan: QuantizedExportPlan, kernel, operands,
                    facts: dict[str, str], external: bool) -> dict:
    """Rewrite the float program into the int8 / int4 graph, save it; return what was quantized."""
    import onnx

    proto = program.model_proto
    plain = resolved.model
    layers = resolved.quantized_linears
    dequantized = {name: plain.get_submodule(name).weight.detach().float().numpy() for name in layers}
    if plan.precision is ExportPrecision.INT8:
        from sink_modifier.export.onnx_cpu import cpu_info
        from sink_modifier.export.onnx_int8 import (
            OPERANDS_NOTE,
            ActivationGranularity,
            Int8Kernel,
            Int8Operands,
            quantize_graph_int8,
        )

        granularity = ActivationGranularity((plan.input_activations or {}).get("strategy", "token"))
        operands, why = operands  # (Int8Operands, why it was chosen)
        rewrite = quantize_graph_int8(proto, layers, dequantized, activations=granularity, kernel=kernel,
                                      operands=operands)
        count, others = len(rewrite.int8_layers), rewrite.float_matmuls
        activation = (f"dynamic symmetric int8 per {granularity.value} (compressed-tensors arithmetic)"
                      if kernel is not Int8Kernel.DYNAMIC_PER_TENSOR else "dynamic asymmetric uint8 per tensor (ORT)")
        if operands is Int8Operands.U8S8_7BIT:
            activation = f"dynamic symmetric 7-bit per {granularity.value} (not the recipe's int8)"
        details = {"kernel": kernel.value, "weights_from": "the checkpoint's stored int8 values and scales"
                   + (" (stored as uint8 w + 128, zero point 128)" if operands is Int8Operands.U8U8 else ""),
                   "int8_operands": {"form": operands.value, "chosen": why, "what": OPERANDS_NOTE[operands],
                                     "export_cpu": cpu_info().describe()}}
        facts = {**facts, "sink_modifier.int8_operands": operands.value}
        if resolved.int8_head:
            from sink_modifier.export.onnx_int8_head import HEAD_NOTE

            details["output_head"] = HEAD_NOTE
    else:
        from sink_modifier.export.onnx_int4 import quantize_graph_int4

        block = int(plan.weights["group_size"])
        rewrite = quantize_graph_int4(proto, layers, dequantized, block_size=block)
        count, others, activation = len(rewrite.int4_layers), rewrite.float_matmuls, "float (W4A16)"
        details = {"kernel": f"com.microsoft MatMulNBits (4 bits, block {block})",
                   "weights_from": "the checkpoint's stored int4 values and group scales"}
    precision = plan.precision.value
    summary = {
        **plan.describe(),
        f"{precision}_layers": count,
        "float_layers": sorted(n for n, m in plain.named_modules() if isinstance(m, nn.Linear) and n not in layers),
        "float_weight_matmuls": len(others),
        "activations": activation,
        **details,
    }
    facts = {**facts, "sink_modifier.precision": precision,
             "sink_modifier.quantization": f"{precision}: {count} layers, activations {activation}"}
    for key, value in facts.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save_model(proto, str(onnx_path), save_as_external_data=external,
                    location=f"{onnx_path.name}.data" if external else None)
    return summary















