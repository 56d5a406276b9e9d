"""``sink-modifier analyze``: measure how attention sinks move, write ``analysis.json`` and PNGs.

Steps whose max/mean attention mass is below ``--sink-floor`` (default
:data:`sink_modifier.diagnostics.trajectory.SINK_FLOOR`) are "no sink": not circled, not
counted in the movement statistics. Heavy imports (models, matplotlib) happen inside
:func:`run`, so building the parser stays cheap.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

from sink_modifier.commands.arguments import (
    add_model_loading_arguments,
    finite_float,
    positive_int,
    timesteps,
)
from sink_modifier.console import show_progress

__all__ = [
    "ANALYSIS_FILE",
    "add_parser",
    "analyze_models",
    "format_comparison",
    "format_summary",
    "run",
]

ANALYSIS_FILE = "analysis.json"


def sink_floor(text: str) -> float:
    """``--sink-floor``: a max/mean mass ratio, a finite number >= 1."""
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}") from err
    if not 1.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 1 (a max/mean ratio), got {text}")
    return value


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``analyze`` subcommand to an ``add_subparsers()`` object; returns its parser."""
    from sink_modifier.diagnostics.trajectory import SINK_FLOOR, TRAJECTORY_TIMESTEPS

    default_steps = ",".join(f"{t:g}" for t in TRAJECTORY_TIMESTEPS)
    parser = subparsers.add_parser(
        "analyze",
        help="measure how attention sinks move along the trajectory (analysis.json + PNG figures)",
        description="For a diffusion model each step is the window noised at one timestep; for a causal "
        "model the steps are generation prefixes of growing length (round(T*k/K), k=1..K).",
    )
    parser.add_argument("--model", required=True, help="model folder (from_pretrained path)")
    parser.add_argument("--data", required=True, help="held-out text: .txt/.txt.gz (blank-line separated) or .jsonl")
    parser.add_argument("--output", required=True, help="folder for analysis.json and the PNGs; appears only when "
                        "complete")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder of analyze's")
    parser.add_argument("--compare", default=None, help="a second model folder (e.g. the AR twin) drawn on the same figures")
    parser.add_argument("--num-windows", type=positive_int, default=16, help="held-out windows (default 16)")
    parser.add_argument("--seq-len", type=positive_int, default=None,
                        help="tokens per window (default: the smaller model maximum of --model/--compare)")
    parser.add_argument("--seed", type=int, default=0, help="seed for windows and noise (default 0)")
    parser.add_argument("--timesteps", type=timesteps, default=TRAJECTORY_TIMESTEPS,
                        help=f"comma-separated timesteps in [0, 1], one step each (default {default_steps}); "
                        "a causal model gets as many prefixes")
    parser.add_argument("--top-k", type=positive_int, default=3, help="strongest keys recorded per step (default 3)")
    parser.add_argument("--sink-std", type=finite_float, default=2.0,
                        help="k of the sink threshold mean + k*std (default 2.0)")
    parser.add_argument("--sink-alpha", type=finite_float, default=5.0,
                        help="slope of the soft sink mask (default 5.0)")
    parser.add_argument("--sink-floor", type=sink_floor, default=SINK_FLOOR,
                        help=f"a step whose strongest key gets less than this many times the step's mean attention "
                        f"mass has no sink: labelled 'no sink', not circled, not counted in the movement statistics "
                        f"(default {SINK_FLOOR:g}: between the all-mask canvas, 1.04 on tiny-dlm, and the weakest "
                        f"real-token step, 1.51; 1 counts every step)")
    parser.add_argument("--batch-size", type=positive_int, default=16, help="rows per forward (default 16)")
    parser.add_argument("--max-chars", type=positive_int, default=None, help="read at most this many characters of --data")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_loading_arguments(parser, "float32")
    from sink_modifier.families import FAMILIES

    parser.add_argument("--compare-family", choices=list(FAMILIES), default=None,
                        help="family of --compare (default: detected from its config.json)")
    return parser


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
    sink_floor: float | None = None,
    batch_size: int = 16,
    max_chars: int | None = None,
    dtype: str = "float32",
    store_mass_samples: int | None = None,
    store_layer_samples: int = 2,
    progress: bool = True,
    trust_remote_code: bool = False,
    families: Sequence[str | None] | None = None,
    mask_token_id: int | None = None,
) -> list[dict]:
    """Analyse each model on ``num_windows`` windows of ``data``, one model in memory at a time.

    Every model uses the same ``seq_len`` (default: the smallest positional limit among
    them, else 2048), ``seed`` and documents; windows are cut with each model's own
    tokenizer, so models sharing a tokenizer see identical tokens (compare their
    ``windows_digest``). ``families`` names each model's family (``None``: detected), as ``--family``.
    ``sink_floor`` (``None``: ``SINK_FLOOR``) is ``--sink-floor``. ``mask_token_id``
    (``--mask-token-id``) is the first model's. Every model folder, the text, the tokenizers and
    the windows are checked before any weights are read (:mod:`sink_modifier.commands.preflight`).
    """
    import torch

    from sink_modifier.commands.preflight import check_model
    from sink_modifier.data import check_seq_len, load_documents, max_sequence_length, token_windows
    from sink_modifier.diagnostics.trajectory import (
        SINK_FLOOR,
        TRAJECTORY_TIMESTEPS,
        SinkDynamicsOptions,
        analyze_sink_dynamics,
    )

    timesteps = tuple(TRAJECTORY_TIMESTEPS if timesteps is None else timesteps)
    options = SinkDynamicsOptions(
        timesteps=timesteps, seed=seed, sink_std=sink_std, sink_alpha=sink_alpha, top_k=top_k,
        batch_size=batch_size, progress=progress, store_mass_samples=store_mass_samples,
        store_layer_samples=store_layer_samples, sink_floor=SINK_FLOOR if sink_floor is None else sink_floor,
    )
    families = list(families) if families is not None else [None] * len(model_paths)
    if len(families) != len(model_paths):
        raise ValueError(f"families names {len(families)} families for {len(model_paths)} models")
    checked = [check_model(path, family=family, trust_remote_code=trust_remote_code,
                           mask_token_id=mask_token_id if i == 0 else None)
               for i, (path, family) in enumerate(zip(model_paths, families))]
    configs = [model.config for model in checked]
    if seq_len is None:
        limits = [limit for limit in (max_sequence_length(c) for c in configs) if limit]
        seq_len = min(limits) if limits else 2048
    for config in configs:
        check_seq_len(seq_len, config)
    documents = load_documents(data, max_chars=max_chars)
    all_windows = [  # each model's tokenizer: the short-text check comes before any weights are read
        token_windows(documents, model.check_tokenizer(needs_mask_token=model.family.diffusion), seq_len,
                      num_windows, seed=seed)
        for model in checked
    ]
    analyses = []
    for path, checked_model, windows in zip(model_paths, checked, all_windows):
        loaded = checked_model.load(dtype=dtype)
        model, tokenizer = loaded.model, loaded.tokenizer
        analysis = analyze_sink_dynamics(model, tokenizer, windows, loaded.family, options, model_name=str(path))
        analysis["data"] = str(data)
        analyses.append(analysis)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return analyses


# -- tables ----------------------------------------------------------------------------
def _pm(stats: dict, digits: int = 2) -> str:
    """``mean ± std``, or ``n/a`` when no window had a value (e.g. no step with a sink)."""
    if stats["mean"] is None:
        return "n/a"
    return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _median_range(stats: dict) -> str:
    if stats["median"] is None:
        return "n/a"
    return f"{stats['median']:.1f} [{stats['min']:.1f}, {stats['max']:.1f}]"


def _top_kinds(analysis: dict, n: int = 3) -> str:
    kinds = analysis["aggregate"]["kinds"]
    total = max(1, sum(kinds.values()))
    ranked = sorted(((c, k) for k, c in kinds.items() if c), reverse=True)[:n]
    return ", ".join(f"{k} {c / total:.0%}" for c, k in ranked)


def format_summary(analyses: Sequence[dict], labels: Sequence[str] | None = None) -> str:
    """One markdown row per model: sink movement (steps with a sink), steps with a sink, top kinds, ratio first -> last."""
    if labels is None:
        from sink_modifier.diagnostics.figures import model_labels

        labels = model_labels(analyses)
    lines = [
        "| model | kind | dominant-sink position std (tokens) | stay fraction | distinct positions | "
        "steps with a sink | max/mean first → last step | top sink kinds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, a in zip(labels, analyses):
        agg = a["aggregate"]
        ratios = agg["ratio_per_step"]
        lines.append(
            f"| {label} | {a['kind']} | {_pm(agg['position_std'], 1)} | {_pm(agg['stay_fraction'])} | "
            f"{_pm(agg['distinct_positions'], 1)} | {_pm(agg['sink_steps'], 1)} of {len(a['steps'])} | "
            f"{ratios[0]['mean']:.2f} → {ratios[-1]['mean']:.2f} | "
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
        "| position std, median [min, max] | " + " | ".join(_median_range(a["aggregate"]["position_std"])
                                                           for a in analyses) + " |",
        "| sink floor: a step with max/mean below it has no sink | " + " | ".join(
            f"{a['sink_floor']:g}" for a in analyses) + " |",
        "| steps with a sink per window | " + " | ".join(
            f"{_pm(a['aggregate']['sink_steps'], 1)} of {len(a['steps'])}" for a in analyses) + " |",
        "| counting every step's strongest key (no floor): position std / stay fraction / distinct positions | "
        + " | ".join(" / ".join(_pm(a["aggregate"]["movement_all_steps"][key], digits) for key, digits in
                                (("position_std", 1), ("stay_fraction", 2), ("distinct_positions", 1)))
                     for a in analyses) + " |",
        "| (uniform random position) | " + " | ".join(
            f"{a['aggregate']['uniform_position_std']:.1f}" for a in analyses) + " |",
        "| dominant sink at position 0 | " + " | ".join(
            _share(a["aggregate"]["position0_share"]) for a in analyses) + " |",
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
def run(args: argparse.Namespace) -> int:
    """Run ``analyze``: write ``analysis.json`` ({"models": [...]}) and the PNGs into ``--output``.

    The folder is written as a whole (``analysis.json`` is its manifest, :mod:`sink_modifier.export.output_guard`):
    an existing one is replaced only with ``--overwrite``, never the model folders or the data.
    """
    from sink_modifier.diagnostics.figures import model_labels, write_figures
    from sink_modifier.export.atomic import json_text, write_atomically
    from sink_modifier.export.output_guard import claim_output

    protected = (args.model, args.compare, args.data)
    with claim_output(args.output, protected=protected, overwrite=args.overwrite) as claim:
        paths = [args.model] + ([args.compare] if args.compare else [])
        families = [args.family] + ([args.compare_family] if args.compare else [])
        analyses = analyze_models(
            paths, args.data, num_windows=args.num_windows, seq_len=args.seq_len, seed=args.seed,
            timesteps=args.timesteps, top_k=args.top_k, sink_std=args.sink_std, sink_alpha=args.sink_alpha,
            sink_floor=args.sink_floor, batch_size=args.batch_size, max_chars=args.max_chars, dtype=args.dtype,
            progress=not args.no_progress and show_progress(), trust_remote_code=args.trust_remote_code,
            families=families, mask_token_id=args.mask_token_id,
        )
        labels = model_labels(analyses)
        text = json_text({"data": str(args.data), "seed": args.seed, "labels": labels, "models": analyses})
        figures: list[Path] = []

        def write(folder: Path) -> None:
            (folder / ANALYSIS_FILE).write_text(text, encoding="utf-8")
            figures.extend(write_figures(analyses, folder, labels))

        write_atomically(claim.output, write)
    print(format_summary(analyses, labels))
    print(f"wrote {Path(args.output) / ANALYSIS_FILE} and {len(figures)} figures: " + ", ".join(p.name for p in figures))
    return 0
