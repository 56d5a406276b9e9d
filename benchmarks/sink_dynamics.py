"""Do sinks move in a diffusion LM and stay put in its AR twin? (the paper's central observation)

Runs :func:`sink_modifier.diagnostics.analyze_sink_dynamics` on the shipped tiny-dlm (steps =
the same held-out window noised at t = 0, 0.1, ..., 1.0) and tiny-ar (steps = 11 growing
generation prefixes of the same window), same windows (same tokenizer), seed 0, and writes

* ``benchmarks/results/sink_dynamics.json``  ({"models": [dlm, ar]}, per-step mass kept for 4 windows),
* ``benchmarks/results/sink_dynamics/*.png``  (heatmaps, sink_variance, sink_kinds, sink_ratio),
* ``benchmarks/results/sink_dynamics.md``     (the comparison tables printed below).

    python benchmarks/sink_dynamics.py [--num-windows 32] [--seq-len 256] [--seed 0] [--sink-floor 1.25]
    python benchmarks/sink_dynamics.py --reuse-json [--sink-floor X]

About 7 s per window and model on 2 busy CPU cores (≈ 8 min for the defaults). Steps whose
max/mean mass is below the sink floor have no sink (see ``SINK_FLOOR`` in
``sink_modifier/diagnostics/trajectory.py``). ``--reuse-json`` runs no model: it re-applies the
floor to the stored ``--json`` (every floor-dependent statistic derives from the stored
per-step ratios and strongest keys; the heatmaps from the stored mass) and rewrites the
figures and the table in seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")

from bench_paths import RESULTS, SHARED  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dlm", default=str(SHARED / "models" / "tiny-dlm"))
    parser.add_argument("--ar", default=str(SHARED / "models" / "tiny-ar"))
    parser.add_argument("--data", default=str(SHARED / "data" / "heldout.txt.gz"))
    parser.add_argument("--num-windows", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=str(RESULTS / "sink_dynamics"), help="folder for the PNGs")
    parser.add_argument("--json", default=str(RESULTS / "sink_dynamics.json"))
    parser.add_argument("--sink-floor", type=float, default=None,
                        help="max/mean below which a step has no sink (default: SINK_FLOOR of the package)")
    parser.add_argument("--reuse-json", action="store_true",
                        help="run no model: re-apply the sink floor to the stored --json and rewrite the "
                        "figures and the table (the other options are read from the stored run)")
    args = parser.parse_args(argv)

    from sink_modifier.commands.analyze import format_comparison
    from sink_modifier.diagnostics.figures import model_labels, write_figures
    from sink_modifier.diagnostics.trajectory import SINK_FLOOR, TRAJECTORY_TIMESTEPS
    from sink_modifier.export.atomic import write_json_atomically

    floor = SINK_FLOOR if args.sink_floor is None else args.sink_floor
    if args.reuse_json:
        analyses, seconds, provenance = _reuse(args, floor)
    else:
        analyses, seconds = _measure(args, floor)
        provenance = ""
    labels = model_labels(analyses)
    if analyses[0]["windows_digest"] != analyses[1]["windows_digest"]:
        print("note: the two models saw different windows (different tokenizers)", file=sys.stderr)
    write_json_atomically(args.json, {
        "data": args.data, "seed": args.seed, "labels": labels, "wall_seconds": round(seconds, 1),
        "models": analyses,
    })
    figures = write_figures(analyses, args.output, labels)
    table = format_comparison(analyses, labels)
    header = (
        f"# Sink dynamics: {labels[0]} vs {labels[1]}\n\n"
        f"`python benchmarks/sink_dynamics.py` — {args.num_windows} held-out windows × {args.seq_len} tokens, "
        f"seed {args.seed}; {labels[0]}: the window noised at t = "
        + ", ".join(f"{t:g}" for t in TRAJECTORY_TIMESTEPS)
        + f"; {labels[1]}: prefixes of {', '.join(str(s['prefix_len']) for s in analyses[1]['steps'])} tokens. "
        "Mass = attention received per key, summed over layers, heads and queries; max/mean per step; "
        "position std = population std of the dominant key's position over the steps of a window "
        "(mean ± std over windows), counted over the steps with a sink: a step whose max/mean is below the "
        f"sink floor {floor:g} has no sink (`SINK_FLOOR`, `sink-modifier analyze --sink-floor`). "
        f"Wall time {seconds:.0f} s.{provenance}\n\n"
        "Figures: " + ", ".join(f"[{p.name}](sink_dynamics/{p.name})" for p in figures) + "\n\n"
    )
    md = RESULTS / "sink_dynamics.md"
    md.write_text(header + table + "\n")
    print(table)
    print(f"\n{seconds:.0f} s; wrote {args.json}, {md} and {len(figures)} figures in {args.output}")
    return 0


def _measure(args, floor: float) -> tuple[list[dict], float]:
    import torch

    from sink_modifier.commands.analyze import analyze_models
    from sink_modifier.diagnostics.trajectory import TRAJECTORY_TIMESTEPS

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    start = time.perf_counter()
    analyses = analyze_models(
        [args.dlm, args.ar], args.data, num_windows=args.num_windows, seq_len=args.seq_len,
        seed=args.seed, timesteps=TRAJECTORY_TIMESTEPS, store_mass_samples=4, store_layer_samples=1,
        progress=False, sink_floor=floor,
    )
    return analyses, time.perf_counter() - start


# written by versions before the sink floor; apply_sink_floor derives their successors
_LEGACY_SAMPLE_KEYS = ("movement_with_sink",)
_LEGACY_AGGREGATE_KEYS = ("movement_with_sink", "sinkless_ratio")


def _reuse(args, floor: float) -> tuple[list[dict], float, str]:
    """The stored run's analyses with ``floor`` applied, its wall time, and a note saying so."""
    import json

    from sink_modifier.diagnostics.trajectory import apply_sink_floor

    stored = json.loads(Path(args.json).read_text())
    analyses = []
    for analysis in stored["models"]:
        for sample in analysis["samples"]:
            for key in _LEGACY_SAMPLE_KEYS:
                sample.pop(key, None)
        for key in _LEGACY_AGGREGATE_KEYS:
            analysis["aggregate"].pop(key, None)
        analyses.append(apply_sink_floor(analysis, floor))
    args.num_windows, args.seq_len, args.seed = analyses[0]["num_windows"], analyses[0]["seq_len"], stored["seed"]
    args.data = stored["data"]
    note = (f" Statistics re-derived with `--reuse-json` from the stored per-step ratios and strongest keys "
            f"of that run (sink floor {floor:g}; no model run).")
    return analyses, float(stored["wall_seconds"]), note


if __name__ == "__main__":
    sys.exit(main())
