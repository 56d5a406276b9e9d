"""``sink-modifier analyze``: measure how attention sinks move, write ``analysis.json`` and PNGs.

Wired into :mod:`sink_modifier.cli` with::

    from sink_modifier.commands.analyze import add_analyze_parser, run_analyze
    add_analyze_parser(commands)            # in build_parser()
    "analyze": run_analyze                  # in main()'s dispatch table

Heavy imports (models, matplotlib) happen inside :func:`run_analyze`, so building the
parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Sequence

__all__ = [
    "ANALYSIS_FILE",
    "add_analyze_parser",
    "analyze_models",
    "format_comparison",
    "format_summary",
    "run_analyze",
    "write_json_atomically",
]

ANALYSIS_FILE = "analysis.json"


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _timesteps(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--timesteps takes comma-separated floats in [0, 1], got {text!r}") from err
    if not values or any(not 0.0 <= t <= 1.0 for t in values):
        raise argparse.ArgumentTypeError(f"--timesteps takes comma-separated floats in [0, 1], got {text!r}")
    return values


def add_analyze_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to an ``add_subparsers()`` object; returns its parser."""
    from sink_modifier.diagnostics.trajectory import TRAJECTORY_TIMESTEPS

    default_steps = ",".join(f"{t:g}" for t in TRAJECTORY_TIMESTEPS)
    parser = subparsers.add_parser(
        "analyze",
        help="measure how attention sinks move along the trajectory (analysis.json + PNG figures)",
        description="For a diffusion model each step is the window noised at one timestep; for a causal "
        "model the steps are generation prefixes of growing length (round(T*k/K), k=1..K).",
    )
    parser.add_argument("--model", required=True, help="model folder (from_pretrained path)")
    parser.add_argument("--data", required=True, help="held-out text: .txt/.txt.gz (blank-line separated) or .jsonl")
    parser.add_argument("--output", required=True, help="folder for analysis.json and the PNGs (created)")
    parser.add_argument("--compare", default=None, help="a second model folder (e.g. the AR twin) drawn on the same figures")
    parser.add_argument("--num-windows", type=_positive, default=16, help="held-out windows (default 16)")
    parser.add_argument("--seq-len", type=_positive, default=None,
                        help="tokens per window (default: the smaller model maximum of --model/--compare)")
    parser.add_argument("--seed", type=int, default=0, help="seed for windows and noise (default 0)")
    parser.add_argument("--timesteps", type=_timesteps, default=TRAJECTORY_TIMESTEPS,
                        help=f"comma-separated timesteps, one step each (default {default_steps}); "
                        "a causal model gets as many prefixes")
    parser.add_argument("--top-k", type=_positive, default=3, help="strongest keys recorded per step (default 3)")
    parser.add_argument("--sink-std", type=float, default=2.0, help="k of the sink threshold mean + k*std (default 2.0)")
    parser.add_argument("--sink-alpha", type=float, default=5.0, help="slope of the soft sink mask (default 5.0)")
    parser.add_argument("--batch-size", type=_positive, default=16, help="rows per forward (default 16)")
    parser.add_argument("--max-chars", type=_positive, default=None, help="read at most this many characters of --data")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "auto"], default="float32")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")
    return parser


def write_json_atomically(path: str | Path, payload: Any) -> Path:
    """Write ``payload`` as strict JSON to ``path`` via a temporary file in the same folder + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, allow_nan=False, separators=(",", ":"))
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def analyze_models(
    model_paths: Sequence[str | Path],
    data,
    *,
    num_windows: int = 16,
    seq_len: int | None = None,
    seed: int = 0,
    timesteps: Sequence[float] | None = None,
    top_k: int = 3,
    sink_std: float = 2.0,
    sink_alpha: float = 5.0,
    batch_size: int = 16,
    max_chars: int | None = None,
    dtype: str = "float32",
    store_mass_samples: int | None = None,
    store_layer_samples: int = 2,
    progress: bool = True,
    trust_remote_code: bool = False,
) -> list[dict]:
    """Analyse each model on ``num_windows`` windows of ``data``, one model in memory at a time.

    Every model uses the same ``seq_len`` (default: the smallest positional limit among
    them, else 2048), ``seed`` and documents; windows are cut with each model's own
    tokenizer, so models sharing a tokenizer see identical tokens (compare their
    ``windows_digest``).
    """
    import torch
    from transformers import AutoConfig

    from sink_modifier.diagnostics.trajectory import TRAJECTORY_TIMESTEPS, analyze_sink_dynamics
    from sink_modifier.data import check_seq_len, load_documents, max_sequence_length, token_windows
    from sink_modifier.families import load_pretrained
    from sink_modifier.loading import _check_folder

    timesteps = tuple(TRAJECTORY_TIMESTEPS if timesteps is None else timesteps)
    configs = [
        AutoConfig.from_pretrained(_check_folder(path), trust_remote_code=trust_remote_code) for path in model_paths
    ]
    if seq_len is None:
        limits = [limit for limit in (max_sequence_length(c) for c in configs) if limit]
        seq_len = min(limits) if limits else 2048
    for config in configs:
        check_seq_len(seq_len, config)
    documents = load_documents(data, max_chars=max_chars)
    analyses = []
    for path in model_paths:
        loaded = load_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code)
        model, tokenizer = loaded.model, loaded.tokenizer
        windows = token_windows(documents, tokenizer, seq_len, num_windows, seed=seed)
        analysis = analyze_sink_dynamics(
            model, tokenizer, windows, timesteps=timesteps, seed=seed, sink_std=sink_std,
            diffusion=loaded.family.diffusion, mask_token_id=loaded.mask_token_id,
            sink_alpha=sink_alpha, top_k=top_k, progress=progress, batch_size=batch_size,
            store_mass_samples=store_mass_samples, store_layer_samples=store_layer_samples,
            model_name=str(path),
        )
        analysis["data"] = str(data)
        analyses.append(analysis)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return analyses


# -- tables ----------------------------------------------------------------------------
def _pm(stats: dict, digits: int = 2) -> str:
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _top_kinds(analysis: dict, n: int = 3) -> str:
    kinds = analysis["aggregate"]["kinds"]
    total = max(1, sum(kinds.values()))
    ranked = sorted(((c, k) for k, c in kinds.items() if c), reverse=True)[:n]
    return ", ".join(f"{k} {c / total:.0%}" for c, k in ranked)


def format_summary(analyses: Sequence[dict], labels: Sequence[str] | None = None) -> str:
    """One markdown row per model: sink movement, stay fraction, top kinds, ratio first -> last step."""
    if labels is None:
        from sink_modifier.diagnostics.figures import model_labels

        labels = model_labels(analyses)
    lines = [
        "| model | kind | dominant-sink position std (tokens) | stay fraction | distinct positions | "
        "max/mean first → last step | top sink kinds |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, a in zip(labels, analyses):
        agg = a["aggregate"]
        ratios = agg["ratio_per_step"]
        lines.append(
            f"| {label} | {a['kind']} | {_pm(agg['position_std'], 1)} | {_pm(agg['stay_fraction'])} | "
            f"{_pm(agg['distinct_positions'], 1)} | {ratios[0]['mean']:.2f} → {ratios[-1]['mean']:.2f} | "
            f"{_top_kinds(a)} |"
        )
    return "\n".join(lines)


def format_comparison(analyses: Sequence[dict], labels: Sequence[str] | None = None) -> str:
    """The summary plus a per-step table (ratio, dominant-sink kinds) and the stability counts."""
    if labels is None:
        from sink_modifier.diagnostics.figures import model_labels

        labels = model_labels(analyses)
    out = [format_summary(analyses, labels), ""]
    # -- global facts
    rows = [
        "| | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(analyses),
        "| windows × tokens, steps | " + " | ".join(
            f"{a['num_windows']} × {a['seq_len']}, {len(a['steps'])}" for a in analyses) + " |",
        "| position std, median [min, max] | " + " | ".join(
            f"{a['aggregate']['position_std']['median']:.1f} [{a['aggregate']['position_std']['min']:.1f}, "
            f"{a['aggregate']['position_std']['max']:.1f}]" for a in analyses) + " |",
        f"| position std without sinkless steps (max/mean < {analyses[0]['aggregate']['sinkless_ratio']:g}) | " + " | ".join(
            (_pm(a["aggregate"]["movement_with_sink"]["position_std"], 1)
             + f" over {a['aggregate']['movement_with_sink']['steps']['mean']:.1f} steps")
            if a["aggregate"]["movement_with_sink"]["position_std"]["mean"] is not None else "n/a"
            for a in analyses) + " |",
        "| stay fraction without sinkless steps | " + " | ".join(
            _pm(a["aggregate"]["movement_with_sink"]["stay_fraction"])
            if a["aggregate"]["movement_with_sink"]["stay_fraction"]["mean"] is not None else "n/a"
            for a in analyses) + " |",
        "| (uniform random position) | " + " | ".join(
            f"{a['aggregate']['uniform_position_std']:.1f}" for a in analyses) + " |",
        "| dominant sink at position 0 | " + " | ".join(
            f"{a['aggregate']['position0_share']:.0%}" for a in analyses) + " |",
        "| sink positions per window (soft mask > 0.5 at some step) | " + " | ".join(
            _pm(a["aggregate"]["stability"]["sink_positions"], 1) for a in analyses) + " |",
        "| stable / unstable sink positions per window | " + " | ".join(
            f"{a['aggregate']['stability']['stable']['mean']:.1f} / {a['aggregate']['stability']['unstable']['mean']:.1f}"
            for a in analyses) + " |",
        "| most frequent dominant tokens | " + " | ".join(
            ", ".join(f"{json.dumps(t)}×{n}" for t, n in a["aggregate"]["top_tokens"][:4]) for a in analyses) + " |",
    ]
    out += rows + [""]
    # -- per step
    header = "| step |"
    rule = "|---|"
    for label, a in zip(labels, analyses):
        if a["kind"] == "diffusion":
            header += f" {label}: t (mask rate) | max/mean | dominant-sink kinds |"
            rule += "---|---|---|"
        else:
            header += f" {label}: prefix | max/mean | dominant-sink kinds |"
            rule += "---|---|---|"
    out += [header, rule]
    for k in range(max(len(a["steps"]) for a in analyses)):
        row = f"| {k + 1} |"
        for a in analyses:
            if k >= len(a["steps"]):
                row += " | | |"
                continue
            step = a["aggregate"]["ratio_per_step"][k]
            where = (f"{step['timestep']:g} ({step['mask_rate']:.2f})" if a["kind"] == "diffusion"
                     else f"{step['prefix_len']}")
            kinds = a["aggregate"]["kinds_per_step"][k]
            total = max(1, sum(kinds.values()))
            kind_text = ", ".join(f"{kind} {c / total:.0%}" for kind, c in
                                  sorted(kinds.items(), key=lambda kv: -kv[1]) if c)
            row += f" {where} | {_pm(step)} | {kind_text} |"
        out.append(row)
    return "\n".join(out)


# -- the subcommand ----------------------------------------------------------------------
def run_analyze(args: argparse.Namespace) -> int:
    """Run ``analyze``: write ``analysis.json`` ({"models": [...]}) and the PNGs into ``--output``."""
    from sink_modifier.diagnostics.figures import model_labels, write_figures

    output = Path(args.output)
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output {output} exists and is not a folder; pass a folder path")
    paths = [args.model] + ([args.compare] if args.compare else [])
    analyses = analyze_models(
        paths, args.data, num_windows=args.num_windows, seq_len=args.seq_len, seed=args.seed,
        timesteps=args.timesteps, top_k=args.top_k, sink_std=args.sink_std, sink_alpha=args.sink_alpha,
        batch_size=args.batch_size, max_chars=args.max_chars, dtype=args.dtype,
        progress=not args.no_progress, trust_remote_code=args.trust_remote_code,
    )
    output.mkdir(parents=True, exist_ok=True)
    labels = model_labels(analyses)
    json_path = write_json_atomically(output / ANALYSIS_FILE, {
        "data": str(args.data), "seed": args.seed, "labels": labels, "models": analyses,
    })
    figures = write_figures(analyses, output, labels)
    print(format_summary(analyses, labels))
    print(f"wrote {json_path} and {len(figures)} figures: " + ", ".join(p.name for p in figures))
    return 0
