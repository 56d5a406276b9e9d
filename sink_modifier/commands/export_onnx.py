"""``sink-modifier export-onnx``: write an ONNX graph ``input_ids -> logits`` checked against PyTorch.

Wired into :mod:`sink_modifier.cli` with ``add_export_onnx_parser(commands)`` and
``"export-onnx": run_export_onnx``; heavy imports happen inside :func:`run_export_onnx`.
"""

from __future__ import annotations

import json

__all__ = ["add_export_onnx_parser", "run_export_onnx"]


def add_export_onnx_parser(subparsers):
    from sink_modifier.loading import DTYPES

    parser = subparsers.add_parser(
        "export-onnx", help="export a (pruned / quantized) diffusion LM to ONNX and check it with ONNX Runtime",
        description="Writes input_ids [batch, seq_len] -> logits [batch, seq_len, vocab] with dynamic batch and "
                    "sequence axes. OUTPUT ending in .onnx is one file; otherwise a folder with model.onnx, "
                    "config.json, the tokenizer and onnx_export.json (usable with `generate --onnx`). "
                    "Quantized checkpoints are exported dequantized (float weights).",
    )
    parser.add_argument("--model", required=True, help="model folder (from_pretrained path)")
    parser.add_argument("--output", required=True, help="folder, or a file ending in .onnx")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="weights dtype (default float32)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: the exporter's)")
    parser.add_argument("--atol", type=float, default=1e-3,
                        help="largest ORT-vs-PyTorch logit difference accepted (default 1e-3)")
    parser.add_argument("--no-optimize", action="store_true", help="skip onnxscript's graph optimizer (faster export)")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime comparison")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")
    return parser


def run_export_onnx(args) -> int:
    from sink_modifier.export.onnx_export import export_onnx

    result = export_onnx(args.model, args.output, dtype=args.dtype, opset=args.opset, atol=args.atol,
                         check=not args.no_check, optimize=not args.no_optimize, overwrite=args.overwrite,
                         trust_remote_code=args.trust_remote_code)
    if args.json:
        print(json.dumps({"path": str(result.path), "opset": result.opset, "seconds": result.seconds,
                          "max_abs_diff": result.max_abs_diff, "bidirectional": result.bidirectional}))
    else:
        checked = (f"; ONNX Runtime vs PyTorch max |Δlogit| {max(result.max_abs_diff.values()):.2e} "
                   f"at {', '.join(result.max_abs_diff)}, bidirectional: {result.bidirectional}"
                   if result.max_abs_diff else " (not checked)")
        print(f"wrote {result.path} (opset {result.opset}) in {result.seconds:.1f} s{checked}")
    return 0
