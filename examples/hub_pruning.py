"""The shared body of the hub-model examples: prune with a recipe, then score dense vs pruned.

Each ``prune_<family>.py`` names its checkpoints and recipe and calls :func:`run`; the model
argument is a hub id (downloaded once into the Hugging Face cache) or a local folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sink_modifier.commands.evaluate import evaluate_checkpoint
from sink_modifier.commands.prune import prune_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def parse_args(doc: str, model: str, recipe: str, seq_len: int, output: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--model", default=model, help=f"hub id or local folder (default {model})")
    parser.add_argument("--recipe", default=str(REPO / "recipes" / recipe))
    parser.add_argument("--data", default=str(SHARED / "data" / "corpus.txt.gz"), help="calibration text")
    parser.add_argument("--heldout", default=str(SHARED / "data" / "heldout.txt.gz"), help="evaluation text")
    parser.add_argument("--output", default=str(REPO / "outputs" / output))
    parser.add_argument("--num-samples", type=int, default=128, help="calibration windows (x 10 timesteps)")
    parser.add_argument("--seq-len", type=int, default=seq_len)
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16")
    return parser.parse_args()


def run(args: argparse.Namespace, *, trust_remote_code: bool) -> None:
    result = prune_checkpoint(
        args.model, args.recipe, args.data, args.output, num_samples=args.num_samples, seq_len=args.seq_len,
        dtype=args.dtype, overwrite=True, trust_remote_code=trust_remote_code,
    )
    sparsity = result.metadata["sparsity"]
    print(f"{result.output_dir}: {result.metadata['family']} model, {sparsity['num_layers']} Linear layers, "
          f"overall sparsity {sparsity['overall']:.2%}, pruning took {result.metadata['prune_seconds']:.0f} s")
    for name, path in (("dense", args.model), ("pruned", result.output_dir)):
        scores = evaluate_checkpoint(
            path, args.heldout, num_windows=args.eval_windows, seq_len=args.seq_len, dtype=args.dtype,
            trust_remote_code=trust_remote_code,
        )
        value = scores.get("nelbo", scores.get("ppl"))
        print(f"{name:7s} {'NELBO' if 'nelbo' in scores else 'perplexity'} {value:.4f}")
