"""``sink-modifier export-onnx``: write an ONNX graph ``input_ids -> logits`` checked against PyTorch.

Heavy imports happen inside :func:`run`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sink_modifier.commands.arguments import add_model_loading_arguments, non_negative_float

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export-onnx", help="export a (pruned / quantized) diffusion LM to ONNX and check it with ONNX Runtime",
        description="Writes input_ids [batch, seq_len] -> logits [batch, seq_len, vocab] with dynamic batch and "
                    "sequence axes. OUTPUT ending in .onnx is one file; otherwise a folder with model.onnx, "
                    "config.json, the tokenizer and onnx_export.json (usable with `generate --onnx`). "
                    "A W8A8 int8 checkpoint exports as an int8 graph holding its own int8 weights and scales, "
                    "with dynamic per-token int8 activations as the recipe quantized them (ONNX Runtime int8 "
                    "kernels); a W4A16 int4 checkpoint as MatMulNBits holding its int4 values and group scales. "
                    "The output head and unquantized layers stay float. Schemes ONNX Runtime's CPU provider "
                    "cannot run as stored (FP8, ...) are refused unless --dequantize.",
    )
    parser.add_argument("--model", required=True, help="model folder (from_pretrained path)")
    parser.add_argument("--output", required=True, help="folder, or a file ending in .onnx")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--atol", type=non_negative_float, default=None,
                        help="largest ORT-vs-PyTorch logit difference accepted (default 1e-3 for float and int4 "
                             "graphs; 1.0 for an int8 graph, compared with the compressed-tensors fake-quantized "
                             "forward)")
    parser.add_argument("--dequantize", action="store_true",
                        help="export a quantized checkpoint as a float graph of its decompressed weights "
                             "(no activation quantization) instead of keeping its quantization")
    parser.add_argument("--int8-head", action="store_true",
                        help="W8A8 checkpoints: round the output head (which recipes leave float) to int8 too, "
                             "per channel at export; on tiny-dlm 1.99x instead of 1.42x ORT fp32, NELBO within 1e-4")
    parser.add_argument("--int8-operands", choices=("auto", "u8u8", "u8s8"), default="auto",
                        help="W8A8 checkpoints: the int8 GEMM's operand types. auto (default): u8s8 where this CPU "
                             "multiplies it exactly (VNNI, AMX, ARM; fastest), u8u8 where it saturates (x86 without "
                             "VNNI); u8u8: exact on every CPU and runtime (slower with VNNI: tiny-dlm forward 1.18x "
                             "instead of 1.65x ORT fp32); u8s8: fast, saturates on x86 CPUs without VNNI")
    parser.add_argument("--no-optimize", action="store_true", help="skip onnxscript's graph optimizer (faster export)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_loading_arguments(parser, "float32", "weights dtype (default float32)")
    return parser


def run(args: argparse.Namespace) -> int:
    from sink_modifier.export.onnx_export import is_onnx_export
    from sink_modifier.export.output_guard import OutputKind, claim_output

    # the output is claimed (checked against the model folder, locked) before the (slow) load
    kind = OutputKind.FILE if Path(args.output).suffix == ".onnx" else OutputKind.FOLDER
    with claim_output(args.output, protected=(args.model,), overwrite=args.overwrite, kind=kind,
                      recognise=is_onnx_export):
        return _export(args)


def _export(args: argparse.Namespace) -> int:
    from sink_modifier.commands.preflight import check_model
    from sink_modifier.export.onnx_export import export_onnx, load_for_export
    from sink_modifier.export.onnx_quantization import ExportPrecision, plan_export
    from sink_modifier.families.mask_choice import set_mask_token_id

    model = check_model(args.model, family=args.family, trust_remote_code=args.trust_remote_code,
                        mask_token_id=args.mask_token_id)
    # a quantization scheme the export cannot keep is refused from config.json, before any load
    plan = plan_export(model.source.config, dequantize=args.dequantize)
    if plan.precision is not ExportPrecision.FLOAT and args.dtype not in ("float32", "auto"):
        raise ValueError(f"an {plan.precision.value} export computes its float parts in float32; drop --dtype "
                         f"{args.dtype}, or pass --dequantize for a float graph in {args.dtype}")
    if args.int8_head and plan.precision is not ExportPrecision.INT8:
        raise ValueError(f"--int8-head rounds the output head into an int8 graph; {args.model} exports as "
                         f"{plan.precision.value} (it needs a W8A8 int-quantized checkpoint, without --dequantize); "
                         "drop --int8-head")
    tokenizer = model.check_tokenizer(needs_mask_token=False)
    loaded = load_for_export(model.source, dtype=args.dtype, trust_remote_code=args.trust_remote_code,
                             dequantize=args.dequantize, int8_head=args.int8_head)
    if args.mask_token_id is not None:  # recorded in the export's config.json and onnx_export.json
        set_mask_token_id(loaded.family, tokenizer, loaded.model.config, args.mask_token_id)
        loaded.tokenizer = tokenizer
    result = export_onnx(loaded, args.output, opset=args.opset, atol=args.atol, check=not args.no_check,
                         optimize=not args.no_optimize, overwrite=args.overwrite, int8_operands=args.int8_operands)
    if args.json:
        print(json.dumps({"path": str(result.path), "opset": result.opset, "seconds": result.seconds,
                          "precision": result.metadata["precision"], "max_abs_diff": result.max_abs_diff,
                          "bidirectional": result.bidirectional}))
    else:
        checked = (f"; ONNX Runtime vs PyTorch max |Δlogit| {max(result.max_abs_diff.values()):.2e} "
                   f"at {', '.join(result.max_abs_diff)}, bidirectional: {result.bidirectional}"
                   if result.max_abs_diff else " (not checked)")
        print(f"wrote {result.path} ({result.metadata['precision']}, opset {result.opset}) "
              f"in {result.seconds:.1f} s{checked}")
    return 0
