"""Prune the shipped tiny diffusion LM with the Wanda 50% recipe and compare it with the dense model.

Offline, a few minutes on 2 CPU cores:

    python examples/prune_tiny_dlm.py

1. calibration: 16 windows of ../shared/data/corpus.txt.gz, each noised at the recipe's 10
   timesteps (its ``calibration:`` block: the low-timestep grid; 160 rows of 256 tokens);
2. ``recipes/sink_wanda_50.yaml`` through llm-compressor's ``oneshot`` (sequential pipeline);
3. an atomic checkpoint in ``outputs/tiny-dlm-sink-wanda-50`` with ``sink_modifier.json``;
4. held-out NELBO and masked cross-entropy of dense and pruned, on identical windows and masks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sink_modifier.commands.evaluate import evaluate_checkpoint
from sink_modifier.commands.prune import prune_checkpoint

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "tiny-dlm"))
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "sink_wanda_50.yaml"))
    parser.add_argument("--output", default=str(REPO / "outputs" / "tiny-dlm-sink-wanda-50"))
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--eval-windows", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    result = prune_checkpoint(
        args.model, args.recipe, SHARED / "data" / "corpus.txt.gz", args.output,
        num_samples=args.num_samples, seed=args.seed, dtype="float32", overwrite=True,
    )
    heldout = SHARED / "data" / "heldout.txt.gz"
    scores = {
        name: evaluate_checkpoint(path, heldout, num_windows=args.eval_windows, seed=args.seed, batch_size=16)
        for name, path in (("dense", args.model), ("wanda 50%", result.output_dir))
    }

    print(f"\nsparsity of pruned Linear layers: {result.metadata['sparsity']['overall']:.2%} "
          f"({result.metadata['sparsity']['num_layers']} layers); pruning took {result.metadata['prune_seconds']:.0f} s")
    print(f"held-out: {args.eval_windows} windows x 256 tokens, seed {args.seed} (same masks for both)\n")
    print("| model | NELBO (nats/token) | masked CE @0.15 | @0.5 | @0.9 |")
    print("|---|---|---|---|---|")
    for name, s in scores.items():
        ce = s["masked_ce"]
        print(f"| {name} | {s['nelbo']:.3f} ± {s['nelbo_stderr']:.3f} | {ce['0.15']:.3f} | {ce['0.5']:.3f} | {ce['0.9']:.3f} |")
    print(f"\ncheckpoint: {result.output_dir}")


if __name__ == "__main__":
    main()
