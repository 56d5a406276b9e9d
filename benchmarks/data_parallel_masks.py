"""Does pruning on 2 ranks give the single-process checkpoint? Mask agreement per decoder layer.

Prunes tiny-dlm with ``examples/prune_distributed.py`` (its defaults: 4 windows x 10 LLaDA
timesteps, T=256, seed 0) once in one process and once under ``torchrun --nproc_per_node 2``
(gloo on CPU), one intra-op thread per process, for the sink-aware Wanda recipe and the
sink-aware SparseGPT recipe with ``hessian_dtype`` float32 (the default: llm-compressor's
running-mean Hessians, which the ranks reduce only up to a few ulps) and float64. For each pair it counts, per decoder layer, the
weights that are zero in one checkpoint and not in the other, and whether every tensor is
bit-identical. ``sink_modifier/modifiers/data_parallel.py`` links here for these numbers.

Writes ``benchmarks/results/data_parallel.json`` and ``data_parallel.md``.

    python benchmarks/data_parallel_masks.py            # ~3 min on 2 CPU cores
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml
from bench_paths import REPO, RESULTS  # noqa: E402
from safetensors.torch import load_file

EXAMPLE = REPO / "examples" / "prune_distributed.py"

# name -> (recipe, SparseGPT hessian_dtype override or None)
CASES = {
    "sink_wanda_50": ("sink_wanda_50.yaml", None),
    "sink_sparsegpt_50 (hessian_dtype float32)": ("sink_sparsegpt_50.yaml", None),
    "sink_sparsegpt_50 (hessian_dtype float64)": ("sink_sparsegpt_50.yaml", "float64"),
}


def recipe_path(work: Path, recipe: str, hessian_dtype: str | None) -> Path:
    """The shipped recipe, or a copy of it whose SparseGPT modifier sets ``hessian_dtype``."""
    shipped = REPO / "recipes" / recipe
    if hessian_dtype is None:
        return shipped
    spec = yaml.safe_load(shipped.read_text())
    spec["sparsity_stage"]["sparsity_modifiers"]["SinkAwareSparseGPTModifier"]["hessian_dtype"] = hessian_dtype
    path = work / f"{shipped.stem}_{hessian_dtype}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def prune(launcher: list[str], recipe: Path, output: Path) -> None:
    """Run the example under ``launcher``; its log goes next to ``output`` (kept on failure)."""
    log = output.with_suffix(".log")
    # one intra-op thread everywhere (torchrun's default per rank): float32 matmul results depend
    # on the thread count, which would flip near-tied weights on its own
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with log.open("w") as f:
        done = subprocess.run([*launcher, str(EXAMPLE), "--recipe", str(recipe), "--output", str(output)],
                              cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(launcher)} {EXAMPLE.name} failed ({done.returncode}); log: {log}")


def checkpoint_weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def compare(single: dict[str, torch.Tensor], ranks: dict[str, torch.Tensor]) -> dict:
    """Flipped mask entries per decoder layer (Linear weights), and whether all tensors are equal."""
    per_layer: dict[int, list[int]] = {}
    for name, weight in single.items():
        if ".layers." in name and name.endswith("_proj.weight"):
            layer = int(name.split(".layers.")[1].split(".")[0])
            counts = per_layer.setdefault(layer, [0, 0])
            counts[0] += int(((weight == 0) != (ranks[name] == 0)).sum())
            counts[1] += weight.numel()
    flipped = sum(f for f, _ in per_layer.values())
    total = sum(n for _, n in per_layer.values())
    return {
        "bit_identical": single.keys() == ranks.keys() and all(torch.equal(v, ranks[k]) for k, v in single.items()),
        "flipped": flipped,
        "total": total,
        "per_layer": [{"layer": i, "flipped": f, "total": n} for i, (f, n) in sorted(per_layer.items())],
    }


def markdown(report: dict) -> str:
    lines = [
        "# Data-parallel pruning vs one process (tiny-dlm, 2 ranks)",
        "",
        f"Generated {report['date']} by `{report['command']}` ({report['cpu_count']} CPUs; torch "
        f"{report['torch']}). Each case prunes tiny-dlm with `examples/prune_distributed.py` in one process "
        "and under `torchrun --nproc_per_node 2` (gloo); a flipped entry is a weight that is zero in one "
        "checkpoint and not in the other.",
        "",
        "| case | bit-identical | flipped mask entries | " + " | ".join(
            f"layer {e['layer']}" for e in next(iter(report["cases"].values()))["per_layer"]) + " |",
        "|---|---|---|" + "---|" * len(next(iter(report["cases"].values()))["per_layer"]),
    ]
    for name, c in report["cases"].items():
        layers = " | ".join(f"{e['flipped']:,} ({e['flipped'] / e['total']:.3%})" for e in c["per_layer"])
        lines.append(f"| {name} | {'yes' if c['bit_identical'] else 'no'} | "
                     f"{c['flipped']:,} of {c['total']:,} ({c['flipped'] / c['total']:.3%}) | {layers} |")
    lines += [
        "",
        "Every process runs one intra-op thread. Wanda's per-batch statistic is gathered and folded in "
        "global batch order; SparseGPT's Hessians are reduced across ranks as float64 sums, and its OBS "
        "solve turns ulp-level Hessian differences into flips of near-tied weights. A flip in one layer "
        "changes the inputs the sequential pipeline hands to the next, so differences grow layer by layer.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    report = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cases": {},
    }
    work = Path(tempfile.mkdtemp(prefix="sink_dp_"))  # left in place if a run fails, for its log
    for i, (name, (recipe, hessian_dtype)) in enumerate(CASES.items()):
        path = recipe_path(work, recipe, hessian_dtype)
        single, ranks = work / f"case{i}_single", work / f"case{i}_ranks"
        prune([sys.executable], path, single)
        prune([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"], path, ranks)
        result = compare(checkpoint_weights(single), checkpoint_weights(ranks))
        override = {"hessian_dtype": hessian_dtype} if hessian_dtype else {}
        report["cases"][name] = {"recipe": recipe, "recipe_override": override, **result}
        print(f"{name}: bit-identical {result['bit_identical']}, {result['flipped']} of {result['total']} "
              "mask entries flipped", file=sys.stderr, flush=True)
    shutil.rmtree(work)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "data_parallel.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out_dir / "data_parallel.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
