"""A sweep's results as people read them: the markdown table (``sweep.md``) and the figure (``sweep.png``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:

    pass


def _pm(value: float | None, se: float | None, digits: int = 4, signed: bool = False) -> str:
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text if se is None else f"{text} ± {se:.{digits}f}"


def _cache_text(cache: dict) -> str:
    parts = []
    for kind, label in (("token_weights", "masks"), ("statistics", "stats")):
        if kind in cache:
            counts = cache[kind]
            parts.append(f"{label} {counts['hits']}/{counts['hits'] + counts['misses']}")
    return ", ".join(parts) or "—"


def _calibrations(result: dict) -> dict[str, dict]:
    """Each recipe's calibration (num_samples, timesteps), from its first point."""
    found: dict[str, dict] = {}
    for row in result["points"]:
        found.setdefault(row["name"], row["calibration"])
    return found


def markdown_table(result: dict) -> str:
    """The sweep as a Markdown table: one row per recipe × point, the dense model first."""
    metric = {"nelbo": "NELBO", "ce": "CE"}[result["metric"]]
    s = result["settings"]
    head = [
        f"# sink-modifier sweep: {result['model']} ({result['family']})",
        "",
        f"{metric} in nats/token on {s['num_windows']} held-out windows of {s['seq_len']} tokens of "
        f"{result['eval_data']}" + (f", {s['mc_samples']} Monte-Carlo masks each" if result["metric"] == "nelbo" else "")
        + f", seed {s['seed']}; identical windows and masks for every model. Δ is pruned − dense per window "
        f"(paired standard error). Calibration on {result['data']}, {s['pipeline']} pipeline: "
        + "; ".join(f"{name} {c['num_samples']} windows × {len(c['timesteps'])} timesteps"
                    for name, c in _calibrations(result).items())
        + ". Cache hits: calibration batches whose sink masks (and, basic pipeline, runs whose statistics) "
        "were reused from an earlier point.",
        "",
        f"| recipe | sparsity | measured | {metric} ± se | Δ vs dense ± paired se | prune s | cache hits |",
        "|---|---|---|---|---|---|---|",
        f"| dense | 0 | 0.0000 | {_pm(result['dense']['value'], result['dense']['stderr'])} | — | — | — |",
    ]
    for row in result["points"]:
        head.append(
            f"| {row['name']} | {row['point']} | {row['measured_sparsity']:.4f} | {_pm(row['value'], row['stderr'])} | "
            f"{_pm(row['delta'], row['delta_stderr'], signed=True)} | {row['prune_seconds']:.1f} | "
            f"{_cache_text(row['cache'])} |"
        )
    return "\n".join(head)


def draw_figure(result: dict):
    """Quality against sparsity (a matplotlib Figure): left the metric itself with the dense model as a
    dashed line, right the paired difference to the dense model ± its standard error. One curve per
    recipe over its unstructured points; an N:M point is its own marker (a diamond) at N/M."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    metric = {"nelbo": "NELBO", "ce": "CE"}[result["metric"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.axhline(result["dense"]["value"], color="0.4", linestyle="--", linewidth=1, label="dense")
    right.axhline(0.0, color="0.4", linestyle="--", linewidth=1)
    names = list(dict.fromkeys(row["name"] for row in result["points"]))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, name in enumerate(names):
        color = colors[i % len(colors)]
        rows = [r for r in result["points"] if r["name"] == name]
        curve = sorted((r for r in rows if r["mask_structure"] == "0:0"), key=lambda r: r["sparsity"])
        marked = [r for r in rows if r["mask_structure"] != "0:0"]
        for ax, value, error in ((left, "value", None), (right, "delta", "delta_stderr")):
            def bars(points):
                return None if error is None else [r[error] or 0.0 for r in points]

            if curve:
                ax.errorbar([r["sparsity"] for r in curve], [r[value] for r in curve], yerr=bars(curve),
                            color=color, marker="o", capsize=3, label=name)
            for r in marked:
                ax.errorbar([r["sparsity"]], [r[value]], yerr=bars([r]), color=color, marker="D", markersize=8,
                            linestyle="none", capsize=3, label=f"{name} {r['mask_structure']}")
    left.set_ylabel(f"held-out {metric} (nats/token, lower is better)")
    right.set_ylabel(f"{metric} − dense, per window (± paired se)")
    for ax in (left, right):
        ax.set_xlabel("sparsity (N:M at N/M)")
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    fig.suptitle(f"{Path(result['model']).name}: quality vs sparsity", fontsize=10)
    fig.tight_layout()
    return fig


def save_figure(result: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = draw_figure(result)
    try:
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
