"""``sink-modifier``: prune, evaluate, verify and analyze diffusion LMs from the command line.

Argument parsing and wiring only; the work is in :mod:`sink_modifier.commands.prune`,
:mod:`sink_modifier.commands.evaluate` and :mod:`sink_modifier.export.verify`.
Exit codes: 0 success, 1 ``verify`` found a problem, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import json
import sys

from sink_modifier.commands.analyze import add_analyze_parser, run_analyze
from sink_modifier.commands.export_onnx import add_export_onnx_parser, run_export_onnx
from sink_modifier.commands.generate import add_generate_parser, run_generate
from sink_modifier.loading import DTYPES

__all__ = ["main"]


def _timesteps(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--timesteps takes comma-separated floats in [0, 1], got {text!r}") from err


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _add_family_argument(parser: argparse.ArgumentParser) -> None:
    from sink_modifier.families import FAMILIES

    parser.add_argument("--family", choices=list(FAMILIES), default=None,
                        help="model family (default: detected from config.json; see `sink-modifier families`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sink-modifier", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    prune = commands.add_parser("prune", help="prune a model with a YAML recipe on DLM calibration data")
    prune.add_argument("--model", required=True, help="model folder (from_pretrained path)")
    prune.add_argument("--recipe", required=True, help="llm-compressor YAML recipe")
    prune.add_argument("--data", required=True, help="calibration text: .txt/.txt.gz (blank-line separated) or .jsonl")
    prune.add_argument("--output", required=True, help="folder to write; appears only when complete")
    prune.add_argument("--num-samples", type=_positive, default=32, help="calibration windows (default 32)")
    prune.add_argument("--seq-len", type=_positive, default=None, help="tokens per window (default: model maximum)")
    prune.add_argument("--seed", type=int, default=0, help="seed for windows and noise (default 0)")
    prune.add_argument("--timesteps", type=_timesteps, default=None,
                       help="comma-separated diffusion timesteps (default: LLaDA grid 0.1..1.0; 0 = clean rows)")
    prune.add_argument("--batch-size", type=_positive, default=None,
                       help="calibration rows per batch (default 1, or one window's timesteps for sink_policy)")
    prune.add_argument("--dtype", choices=sorted(DTYPES), default="auto", help="weights dtype while pruning")
    prune.add_argument("--pipeline", choices=["sequential", "basic"], default="sequential",
                       help="llm-compressor calibration pipeline (basic = paper's one-shot statistics)")
    prune.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    prune.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")
    _add_family_argument(prune)

    evaluate = commands.add_parser("eval", help="evaluate a model on held-out text")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--data", required=True, help="held-out text (.txt/.txt.gz/.jsonl)")
    evaluate.add_argument("--num-windows", type=_positive, default=64)
    evaluate.add_argument("--seq-len", type=_positive, default=None)
    evaluate.add_argument("--seed", type=int, default=0, help="seed for windows and masks (same for every model)")
    evaluate.add_argument("--mc-samples", type=_positive, default=8, help="Monte-Carlo rows per window for the NELBO")
    evaluate.add_argument("--batch-size", type=_positive, default=8)
    evaluate.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")
    _add_family_argument(evaluate)

    verify = commands.add_parser(
        "verify", help="check a pruned checkpoint against its sink_modifier.json (exit 1 on any mismatch)"
    )
    verify.add_argument("dir", help="checkpoint folder written by `sink-modifier prune`")
    verify.add_argument("--json", action="store_true", help="print one JSON object")
    verify.add_argument("--tolerance", type=float, default=1e-6,
                        help="allowed difference of each layer's zero fraction from the recorded one (default 1e-6)")
    verify.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")
    _add_family_argument(verify)
    commands.add_parser("families", help="list the supported model families and how each is detected")
    add_analyze_parser(commands)
    add_generate_parser(commands)
    add_export_onnx_parser(commands)
    return parser


def _run_prune(args) -> int:
    from sink_modifier.commands.prune import prune_checkpoint

    result = prune_checkpoint(
        args.model, args.recipe, args.data, args.output,
        num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed, timesteps=args.timesteps,
        batch_size=args.batch_size, dtype=args.dtype, pipeline=args.pipeline,
        overwrite=args.overwrite, trust_remote_code=args.trust_remote_code, family=args.family,
    )
    sparsity = result.metadata["sparsity"]
    print(f"wrote {result.output_dir}: {sparsity['num_layers']} layers, overall sparsity {sparsity['overall']:.4f}")
    return 0


def _run_eval(args) -> int:
    from sink_modifier.commands.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(
        args.model, args.data, num_windows=args.num_windows, seq_len=args.seq_len, seed=args.seed,
        mc_samples=args.mc_samples, batch_size=args.batch_size, dtype=args.dtype,
        progress=not args.json, trust_remote_code=args.trust_remote_code, family=args.family,
    )
    if args.json:
        print(json.dumps(result))
    elif result["kind"] == "diffusion":
        ce = ", ".join(f"{r}: {v:.4f}" for r, v in result["masked_ce"].items())
        print(f"NELBO {result['nelbo']:.4f} ± {result['nelbo_stderr']:.4f} nats/token; masked CE {ce}")
    else:
        print(f"perplexity {result['ppl']:.3f} (CE {result['ce']:.4f} nats/token)")
    return 0


def _run_verify(args) -> int:
    from sink_modifier.export.verify import verify_checkpoint

    report = verify_checkpoint(
        args.dir, tolerance=args.tolerance, trust_remote_code=args.trust_remote_code, family=args.family
    )
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        for check in report.checks:
            print(f"ok       {check}")
        for problem in report.problems:
            print(f"PROBLEM  {problem}")
    if report.ok:
        if not args.json:
            print(f"{args.dir}: verified ({len(report.checks)} checks passed)")
        return 0
    where = "in the JSON above" if args.json else "listed above"
    print(f"sink-modifier verify: {args.dir} failed verification: {len(report.problems)} problem(s) {where}",
          file=sys.stderr)
    return 1


def _run_families(args) -> int:
    from sink_modifier.families import FAMILIES

    for family in FAMILIES.values():
        kind = "diffusion" if family.diffusion else "causal"
        remote = ", remote code" if family.remote_code else ""
        print(f"{family.name:16s} {kind}{remote}: {family.description}")
        if family.examples:
            print(f"{'':16s} e.g. {', '.join(family.examples)}")
    return 0


def _root_cause(err: BaseException) -> BaseException:
    """llm-compressor's sequential pipeline re-raises a layer's error as RuntimeError from it."""
    while isinstance(err, RuntimeError) and err.__cause__ is not None:
        err = err.__cause__
    return err


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    commands = {"prune": _run_prune, "eval": _run_eval, "verify": _run_verify, "families": _run_families, "analyze": run_analyze}
    commands.update({"generate": run_generate, "export-onnx": run_export_onnx})
    try:
        return commands[args.command](args)
    except (*USER_ERRORS, RuntimeError) as err:
        cause = _root_cause(err)
        if not isinstance(cause, USER_ERRORS):
            raise
        print(f"sink-modifier {args.command}: error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
