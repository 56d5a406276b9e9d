"""Figures of sink dynamics (matplotlib, Agg backend): heatmaps, sink variance, sink kinds, ratios.

Every function takes analysis dicts from :func:`~sink_modifier.diagnostics.analyze_sink_dynamics`
(one or two: a DLM and, with ``--compare``, its AR twin) and an output folder, and returns
the paths of the PNGs it wrote; ``draw_heatmap`` and ``draw_ratio`` return the figure instead.
Steps without a sink (max/mean below the analysis' ``sink_floor``) are never circled and are
left out of the movement statistics drawn.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg", force=False)  # no display needed; a backend already chosen by the caller is kept
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from sink_modifier.diagnostics.trajectory import NO_SINK, STEP_KINDS  # noqa: E402
from sink_modifier.export.atomic import write_file_atomically  # noqa: E402

__all__ = [
    "draw_heatmap",
    "draw_ratio",
    "heatmap_figure",
    "kinds_figure",
    "model_labels",
    "ratio_figure",
    "variance_figure",
    "write_figures",
]

KIND_COLOURS = {
    "mask": "#7f7f7f",
    "eos": "#d62728",
    "bos": "#9467bd",
    "pad": "#c7c7c7",
    "punctuation": "#1f77b4",
    "first_position": "#ff7f0e",
    "other": "#2ca02c",
    NO_SINK: "#f4f4f4",  # drawn hatched: no dominant sink at that step
}
NO_SINK_HATCH = "///"
# x-axis of each kind of trajectory in the ratio figure (one panel per kind: the quantities differ)
STEP_AXIS = {
    "diffusion": "diffusion timestep t (mask probability per token)",
    "causal": "causal prefix fraction L / T (share of the window seen)",
}
MODEL_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
DPI = 120


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._") or "model"


def model_labels(analyses: Sequence[dict]) -> list[str]:
    """Short unique labels: the model folder's name (``tiny-dlm``), suffixed ``-2`` etc. on clashes."""
    labels: list[str] = []
    for analysis in analyses:
        base = _slug(Path(str(analysis.get("model", "model")).rstrip("/")).name)
        label, n = base, 2
        while label in labels:
            label, n = f"{base}-{n}", n + 1
        labels.append(label)
    return labels


def _step_labels(analysis: dict) -> list[str]:
    if analysis["kind"] == "diffusion":
        return [f"t={step['timestep']:g}" for step in analysis["steps"]]
    return [f"L={step['prefix_len']}" for step in analysis["steps"]]


def _step_x(analysis: dict) -> np.ndarray:
    """Timestep (diffusion) or prefix fraction L_k / T (causal): both in (0, 1]."""
    if analysis["kind"] == "diffusion":
        return np.array([step["timestep"] for step in analysis["steps"]], dtype=float)
    return np.array([step["prefix_len"] / analysis["seq_len"] for step in analysis["steps"]], dtype=float)


def _save(fig, path: Path) -> Path:
    write_file_atomically(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight"))
    plt.close(fig)
    return path


def _number(value: float | None, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def heatmap_figure(analysis: dict, output_dir: str | Path, label: str | None = None, max_samples: int = 3) -> Path:
    """``heatmap_<label>.png``: :func:`draw_heatmap`, saved."""
    label = label or model_labels([analysis])[0]
    return _save(draw_heatmap(analysis, label, max_samples), Path(output_dir) / f"heatmap_{label}.png")


def draw_heatmap(analysis: dict, label: str | None = None, max_samples: int = 3):
    """Position × step mass / mean mass of the step, for a few samples (a matplotlib Figure).

    Colour is on a log scale (1 = average key); the dominant sink of every step that has one
    is circled, and steps without one are labelled "no sink" on the y-axis. Causal prefixes
    leave the positions they do not reach blank.
    """
    label = label or model_labels([analysis])[0]
    samples = [s for s in analysis["samples"] if "mass" in s][:max_samples]
    if not samples:
        raise ValueError(f"analysis of {analysis.get('model')} stores no per-step mass; rerun with store_mass_samples >= 1")
    rows = []
    for sample in samples:
        mass = np.array([[np.nan if v is None else v for v in row] for row in sample["mass"]], dtype=float)
        rows.append(mass / np.nanmean(mass, axis=1, keepdims=True))
    vmax = max(4.0, float(np.nanmax([np.nanmax(r) for r in rows])))
    norm = LogNorm(vmin=0.25, vmax=vmax, clip=True)
    num_steps, seq_len = rows[0].shape
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 1.0 + 0.28 * num_steps * len(rows) + 0.4 * len(rows)),
                             squeeze=False, sharex=True, layout="constrained")
    cmap = plt.get_cmap("magma").with_extremes(bad="#f0f0f0")
    image = None
    for ax, sample, ratio in zip(axes[:, 0], samples, rows):
        image = ax.imshow(np.ma.masked_invalid(ratio), aspect="auto", interpolation="nearest", cmap=cmap,
                          norm=norm, origin="upper")
        sinks = [(p, k) for k, p in enumerate(sample["dominant_positions"]) if p is not None]
        ax.scatter([p for p, _ in sinks], [k for _, k in sinks], s=46, facecolors="none",
                   edgecolors="#00e5ff", linewidths=1.4)
        ax.set_yticks(np.arange(num_steps))
        ax.set_yticklabels([f"{text} · {NO_SINK}" if p is None else text
                            for text, p in zip(_step_labels(analysis), sample["dominant_positions"])], fontsize=7)
        mv = sample["movement"]
        ax.set_title(f"window {sample['index']}: dominant-sink position std {_number(mv['position_std'], 1)} tokens, "
                     f"stay fraction {_number(mv['stay_fraction'], 2)}, {mv['distinct_positions']} distinct "
                     f"positions over {mv['steps']} steps with a sink", fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("key position")
    fig.suptitle(f"{label} ({analysis['kind']}): attention mass received per key / mean of the step "
                 f"(cyan circle = dominant sink; {NO_SINK}: max/mean < {analysis['sink_floor']:g})", fontsize=11)
    bar = fig.colorbar(image, ax=axes[:, 0].tolist(), shrink=0.9, pad=0.01, label="mass / step mean (log scale)")
    ticks = [v for v in (0.25, 0.5, 1, 2, 4, 8, 16, 32, 64) if v <= vmax]
    bar.set_ticks(ticks)
    bar.set_ticklabels([f"{v:g}" for v in ticks])
    bar.minorticks_off()
    return fig


def variance_figure(analyses: Sequence[dict], output_dir: str | Path, labels: Sequence[str] | None = None) -> Path:
    """``sink_variance.png``: per-window dominant-sink position std and stay fraction, per model.

    Over each window's steps with a sink; a window with none (or, for the stay fraction, one)
    has no point.
    """
    labels = list(labels or model_labels(analyses))
    rng = np.random.default_rng(0)
    fig, (ax_std, ax_stay) = plt.subplots(1, 2, figsize=(4.0 + 2.2 * len(analyses), 4.2))
    for ax, key, title in (
        (ax_std, "position_std", "dominant-sink position std (tokens)"),
        (ax_stay, "stay_fraction", "stay fraction (same position at next step)"),
    ):
        data = [[s["movement"][key] for s in a["samples"] if s["movement"][key] is not None] for a in analyses]
        ax.boxplot(data, widths=0.5, showfliers=False, medianprops={"color": "black"})
        for i, values in enumerate(data):
            jitter = rng.uniform(-0.15, 0.15, len(values))
            ax.scatter(np.full(len(values), i + 1.0) + jitter, values, s=14, alpha=0.7,
                       color=MODEL_COLOURS[i % len(MODEL_COLOURS)], zorder=3)
        ax.set_xticks(range(1, len(analyses) + 1))
        ax.set_xticklabels([f"{lab}\n({a['kind']})\nmean {_number(float(np.mean(v)) if v else None, 2)}"
                            for lab, a, v in zip(labels, analyses, data)], fontsize=8)
        ax.set_title(title, fontsize=10)
    uniform = analyses[0]["aggregate"]["uniform_position_std"]
    ax_std.axhline(uniform, ls="--", lw=1, color="grey", label=f"uniform random position ({uniform:.0f})")
    ax_std.set_ylim(bottom=0, top=max(uniform * 1.3, ax_std.get_ylim()[1]))
    ax_std.legend(loc="upper right", fontsize=7, framealpha=0.9)
    ax_stay.set_ylim(-0.05, 1.12)
    first = analyses[0]
    fig.suptitle(f"How far the dominant sink moves over {len(first['steps'])} steps "
                 f"({first['num_windows']} windows × {first['seq_len']} tokens; per-window points)", fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(output_dir) / "sink_variance.png")


def _kind_style(kind: str) -> dict:
    if kind == NO_SINK:
        return {"facecolor": KIND_COLOURS[kind], "hatch": NO_SINK_HATCH, "edgecolor": "#9e9e9e"}
    return {"color": KIND_COLOURS[kind]}


def kinds_figure(analyses: Sequence[dict], output_dir: str | Path, labels: Sequence[str] | None = None) -> Path:
    """``sink_kinds.png``: share of dominant-sink token kinds (and of steps with no sink) per model, then per step."""
    labels = list(labels or model_labels(analyses))
    widths = [1.2 + 0.5 * len(analyses)] + [1.0 + 0.42 * len(a["steps"]) for a in analyses]
    fig, axes = plt.subplots(1, 1 + len(analyses), figsize=(sum(widths) + 1.5, 4.2),
                             gridspec_kw={"width_ratios": widths}, sharey=True)
    axes = np.atleast_1d(axes)

    def stacked(ax, columns: list[dict], names: list[str]):
        bottom = np.zeros(len(columns))
        for kind in STEP_KINDS:
            counts = np.array([c.get(kind, 0) for c in columns], dtype=float)
            totals = np.array([max(1, sum(c.values())) for c in columns], dtype=float)
            share = counts / totals
            if share.any():
                ax.bar(range(len(columns)), share, bottom=bottom, label=kind, width=0.75, **_kind_style(kind))
            bottom += share
        ax.set_xticks(range(len(columns)))
        ax.set_xticklabels(names, fontsize=7, rotation=0 if len(columns) <= 4 else 60)

    stacked(axes[0], [a["aggregate"]["kinds"] for a in analyses], [f"{lab}\n({a['kind']})" for lab, a in zip(labels, analyses)])
    axes[0].set_title("all steps", fontsize=10)
    axes[0].set_ylabel("share of (window, step) pairs")
    for ax, analysis, label in zip(axes[1:], analyses, labels):
        stacked(ax, analysis["aggregate"]["kinds_per_step"], _step_labels(analysis))
        ax.set_title(f"{label}: per step", fontsize=10)
    handles = [plt.Rectangle((0, 0), 1, 1, **_kind_style(k)) for k in STEP_KINDS]
    fig.legend(handles, STEP_KINDS, loc="lower center", ncol=len(STEP_KINDS), fontsize=8, frameon=False,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle("Which token is the dominant sink", fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, Path(output_dir) / "sink_kinds.png")


def ratio_figure(analyses: Sequence[dict], output_dir: str | Path, labels: Sequence[str] | None = None) -> Path:
    """``sink_ratio.png``: :func:`draw_ratio`, saved."""
    return _save(draw_ratio(analyses, labels), Path(output_dir) / "sink_ratio.png")


def draw_ratio(analyses: Sequence[dict], labels: Sequence[str] | None = None):
    """Max / mean attention mass per step (mean ± std over windows), per model (a matplotlib Figure).

    One panel per kind of trajectory, sharing the y-axis, because the x quantities differ: a
    diffusion model's steps are timesteps t, a causal model's are prefix fractions L / T
    (:data:`STEP_AXIS` names each axis). The dashed line is the sink floor: steps below it have no sink.
    """
    labels = list(labels or model_labels(analyses))
    kinds = list(dict.fromkeys(a["kind"] for a in analyses))  # in the order of the analyses
    fig, axes = plt.subplots(1, len(kinds), figsize=(1.0 + 5.5 * len(kinds), 4.0), sharey=True, squeeze=False)
    panels = dict(zip(kinds, axes[0]))
    for i, (analysis, label) in enumerate(zip(analyses, labels)):
        ax = panels[analysis["kind"]]
        per_step = analysis["aggregate"]["ratio_per_step"]
        x = _step_x(analysis)
        mean = np.array([r["mean"] for r in per_step])
        std = np.array([r["std"] for r in per_step])
        colour = MODEL_COLOURS[i % len(MODEL_COLOURS)]
        ax.plot(x, mean, "o-", color=colour, label=f"{label} ({analysis['kind']})")
        ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.15)
    for kind, ax in panels.items():
        for floor in sorted({a["sink_floor"] for a in analyses if a["kind"] == kind}):
            ax.axhline(floor, color="#b22222", lw=0.9, ls="--", label=f"sink floor {floor:g} (below: {NO_SINK})")
        ax.axhline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(STEP_AXIS.get(kind, "step"))
        ax.set_title(f"{kind} models", fontsize=10)
        ax.legend(fontsize=8)
    axes[0, 0].set_ylabel("max / mean mass of the step")
    fig.suptitle("Strength of the strongest sink along the trajectory", fontsize=10)
    fig.tight_layout()
    return fig


def write_figures(
    analyses: Sequence[dict], output_dir: str | Path, labels: Sequence[str] | None = None, max_samples: int = 3
) -> list[Path]:
    """Write every figure for ``analyses`` into ``output_dir``; returns the paths (heatmaps first)."""
    if not analyses:
        raise ValueError("no analyses to draw")
    labels = list(labels or model_labels(analyses))
    paths = [heatmap_figure(a, output_dir, lab, max_samples) for a, lab in zip(analyses, labels)]
    paths.append(variance_figure(analyses, output_dir, labels))
    paths.append(kinds_figure(analyses, output_dir, labels))
    paths.append(ratio_figure(analyses, output_dir, labels))
    return paths
