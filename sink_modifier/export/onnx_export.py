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

import copy
import dataclasses
import inspect
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
from sink_modifier.errors import CheckFailedError
from sink_modifier.export.output_guard import OutputKind, claim_output
from sink_modifier.export.onnx_quantization import (
    DEQUANTIZE_HINT,
    ExportPrecision,
    QuantizedExportPlan,
    QuantizedLinear,
    plan_export,
    read_quantized_linears,
)
from sink_modifier.families import DTYPES, LoadedModel, ModelFamily, load_pretrained, open_model_folder

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

ONNX_FILE = "model.onnx"
ONNX_METADATA_FILE = "onnx_export.json"
_PROTOBUF_LIMIT = 2 * 1024**3
_OUR_METADATA_KEY = "sink_modifier.logits"  # every graph export_onnx writes carries it (_runtime_facts)
# Largest ORT-vs-PyTorch |Δlogit| accepted by default. Float graphs reproduce PyTorch to float
# rounding, and so do W4A16 int4 graphs (float activations; 1.3e-5 on tiny-dlm). An int8
# graph computes the same activation integers as the compressed-tensors fake-quantized
# forward, but a last-bit difference in a layer's input moves a value across a rounding
# boundary now and then, and dynamic int8 amplifies that through the layers: on tiny-dlm
# W8A8 ORT vs PyTorch differ by at most 0.25 over 48 random batches (lengths 8 to 256;
# logits of magnitude ~13), as PyTorch's own fake-quant forward does in float32 vs float64
# (0.30). 1.0 is four times that; a wrong scale or transposed weight lands far above.
DEFAULT_ATOL = {ExportPrecision.FLOAT: 1e-3, ExportPrecision.INT8: 1.0, ExportPrecision.INT4: 1e-3}


class OnnxCheckError(CheckFailedError, RuntimeError):
    """ONNX Runtime's logits differ from the PyTorch reference by more than ``atol``: the export
    was written to nowhere. The message is one line naming the difference, ``--atol`` and the
    likely cause (the CLI prints it and exits 1, the convention for a failed check)."""

    def __init__(self, worst: float, atol: float, diffs: dict[str, float], cause: str):
        self.worst, self.atol, self.diffs, self.cause = worst, atol, dict(diffs), cause
        at = ", ".join(f"{shape} {diff:.3g}" for shape, diff in diffs.items())
        super().__init__(f"ONNX Runtime logits differ from the PyTorch reference by {worst:.3g}, over --atol {atol} "
                         f"(max |Δlogit| at batch x length {at}); {cause}; nothing was written")


@dataclass(frozen=True)
class OnnxExportResult:
    path: Path  # the .onnx file
    opset: int | None
    seconds: float
    max_abs_diff: dict[str, float]  # ORT vs PyTorch logits, per checked shape "BxL"
    bidirectional: bool | None  # ORT logits at position 0 depend on the last token
    metadata: dict


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


def _example_ids(config, batch: int, seq_len: int, seed: int) -> torch.Tensor:
    vocab = int(getattr(config, "vocab_size", 32) or 32)
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, seq_len), generator=g)


def _param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _check_ort(onnx_path: Path, wrapper: _LogitsOnly, config, lengths: tuple[int, ...], atol: float,
               operands: str | None = None):
    """Compare ORT with PyTorch at each length (batch 2); return max diffs and bidirectionality.

    ``operands``: the int8 graph's GEMM operand types (``None`` for a float / int4 graph), so that
    a failure can name its likely cause."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    diffs: dict[str, float] = {}
    bidirectional = None
    for i, length in enumerate(lengths):
        ids = _example_ids(config, 2, length, seed=100 + i)
        with torch.no_grad():
            expected = wrapper(ids).float()
        got = torch.from_numpy(session.run(["logits"], {"input_ids": ids.numpy()})[0]).float()
        if got.shape != expected.shape:
            raise RuntimeError(f"ONNX logits have shape {tuple(got.shape)} for input {tuple(ids.shape)}, "
                               f"PyTorch {tuple(expected.shape)}: the dynamic axes were not exported")
        diffs[f"2x{length}"] = float((got - expected).abs().max())
        if length > 1 and bidirectional is None:
            changed = ids.clone()
            changed[:, -1] = (changed[:, -1] + 1) % int(getattr(config, "vocab_size", 32) or 32)
            other = torch.from_numpy(session.run(["logits"], {"input_ids": changed.numpy()})[0])
            bidirectional = bool((other[:, 0] - got[:, 0]).abs().max() > 0)
    worst = max(diffs.values())
    if not worst <= atol:
        raise OnnxCheckError(worst, atol, diffs, _likely_cause(operands))
    return diffs, bidirectional


def _likely_cause(operands: str | None) -> str:
    from sink_modifier.export.onnx_cpu import cpu_isa
    from sink_modifier.export.onnx_int8 import Int8Operands

    isa = cpu_isa()
    if operands == Int8Operands.U8S8.value and isa.u8s8_saturates:
        return (f"cause: this CPU ({isa.value}, no VNNI) runs u8s8 int8 GEMMs with saturating int16 pair sums; "
                "export with --int8-operands auto (the default: u8u8 on such a CPU) or u8u8 (exact on every CPU)")
    if operands is not None:
        return (f"the int8 graph ({operands} GEMMs, CPU {isa.value}) does not reproduce the compressed-tensors "
                "model: the checkpoint's weights, scales and config.json may not belong together; raise --atol "
                "only if this difference is expected")
    return "the exported graph does not reproduce the model (export in float32, or raise --atol if this is expected)"


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

