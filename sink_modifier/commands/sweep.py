"""``sink-modifier sweep``: one model, recipes × sparsities, one calibration per recipe, one table.

For each recipe and each point of ``--sparsities`` (``0.5`` → ``mask_structure "0:0"`` and that
sparsity; ``2:4`` → ``mask_structure "2:4"``), the recipe's pruning modifiers (those with
``sparsity`` and ``mask_structure`` fields, upstream's included) get the point's values and the
dense model is pruned with :func:`~sink_modifier.commands.prune.prune_model` on the recipe's
calibration set (chosen as ``prune`` chooses it: options, then the recipe's ``calibration:``
block), built once and shared by the recipes that choose the same rows. The sink-aware modifiers run with ``sink_cache_dir`` in the output folder
(:mod:`sink_modifier.sinks.mask_cache`), so the sink pass of every calibration batch runs once
for the whole sweep (and in the ``basic`` pipeline the Wanda statistics are computed once);
results are bit-identical to separate ``prune`` runs.

The dense model and every pruned checkpoint are then scored like ``sink-modifier eval``
scores them, loaded from the written checkpoint with ``--eval-dtype``, on identical held-out
windows and evaluation masks (they depend only on ``--seed`` and the text): the NELBO for a
diffusion model, next-token CE for a causal one, per window, so each pruned model's
difference to the dense one is reported with its paired standard error.

Written atomically into ``--output``: ``sweep.json`` (everything), ``sweep.md`` (the table),
``sweep.png`` (quality against sparsity, one curve per recipe, N:M as its own marker),
``cache/`` (the sink cache; reused by a later ``--overwrite`` of the same folder) and, with
``--keep-checkpoints``, each pruned checkpoint under ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import gc
import math
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sink_modifier.commands.arguments import (
    add_calibration_arguments,
    add_max_chars_argument,
    add_model_loading_arguments,
    positive_int,
)
from sink_modifier.commands.prune import DEFAULT_MAX_CHARS

if TYPE_CHECKING:
    import torch

    from sink_modifier.commands.recipe_check import CheckedRecipe
    from sink_modifier.families import LoadedModel

__all__ = ["SweepPoint", "add_parser", "point_recipe", "run", "sparsity_points", "sweep"]

SPARSITIES_HELP = "comma-separated sparsities in [0, 1] and N:M structures, e.g. 0.5,0.6,0.7,2:4"
FILES = ("sweep.json", "sweep.md", "sweep.png")


@dataclass(frozen=True)
class SweepPoint:
    """One point of ``--sparsities``: what the pruning modifiers are given."""

    label: str  # as shown: "0.5", "2:4"
    sparsity: float  # the fraction pruned (N/M for N:M)
    mask_structure: str  # "0:0" or "N:M"

    @property
    def structured(self) -> bool:
        return self.mask_structure != "0:0"

    @property
    def slug(self) -> str:
        return self.label.replace(":", "of")


def sparsity_points(text: str) -> tuple[SweepPoint, ...]:
    """Parse ``--sparsities`` (an argparse type: a bad list is exit 2 naming the fix)."""
    from sink_modifier.sparsity_pattern import parse_mask_structure

    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"expected {SPARSITIES_HELP}; got {text!r}")
    points: list[SweepPoint] = []
    for item in items:
        if ":" in item:
            try:
                n, m = parse_mask_structure(item)
            except ValueError as err:
                raise argparse.ArgumentTypeError(f"{err} (in {text!r})") from None
            if n == 0:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is unstructured; give an unstructured point as its sparsity, e.g. 0.5 (in {text!r})"
                )
            point = SweepPoint(f"{n}:{m}", n / m, f"{n}:{m}")
        else:
            try:
                value = float(item)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{item!r} is neither a sparsity nor an N:M structure; expected {SPARSITIES_HELP}"
                ) from None
            if not (math.isfinite(value) and 0.0 <= value <= 1.0):
                raise argparse.ArgumentTypeError(
                    f"sparsity {item} is outside [0, 1]: it is the fraction of weights pruned, e.g. 0.5 prunes half"
                )
            point = SweepPoint(f"{value:g}", value, "0:0")
        if any(p.label == point.label for p in points):
            raise argparse.ArgumentTypeError(f"{item} is listed twice in {text!r}; list each point once")
        points.append(point)
    return tuple(points)


def add_parser(subparsers) -> argparse.ArgumentParser:
    from sink_modifier.families import DTYPES

    parser = subparsers.add_parser(
        "sweep", help="prune at several sparsities (one calibration, cached sink masks) and evaluate each")
    parser.add_argument("--model", required=True, help="dense model folder")
    parser.add_argument("--recipe", required=True, action="append",
                        help="llm-compressor YAML recipe; repeat for several (one curve each)")
    parser.add_argument("--sparsities", required=True, type=sparsity_points, metavar="LIST", help=SPARSITIES_HELP)
    parser.add_argument("--data", required=True, help="calibration text (.txt/.txt.gz/.jsonl)")
    parser.add_argument("--eval-data", required=True, help="held-out text for the evaluation")
    parser.add_argument("--output", required=True, help="folder to write; appears only when complete")
    add_calibration_arguments(
        parser, seq_len_help="tokens per window, calibration and evaluation (default: model maximum)",
        seed_help="seed for calibration windows and noise, and for evaluation windows and masks (default 0)",
        pipeline_help="llm-compressor calibration pipeline (basic: statistics computed once for the sweep)",
    )
    parser.add_argument("--num-windows", type=positive_int, default=64, help="evaluation windows (default 64)")
    parser.add_argument("--mc-samples", type=positive_int, default=8,
                        help="Monte-Carlo rows per window for the NELBO (default 8)")
    parser.add_argument("--eval-batch-size", type=positive_int, default=8, help="evaluation rows per forward (default 8)")
    parser.add_argument("--eval-dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype the dense and pruned checkpoints are evaluated in (default float32, as eval)")
    parser.add_argument("--eval-max-chars", type=positive_int, default=None, metavar="N",
                        help="read at most this many characters of --eval-data (default all of it, as eval)")
    parser.add_argument("--keep-checkpoints", action="store_true", help="keep every pruned checkpoint under checkpoints/")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--json", action="store_true", help="print sweep.json on stdout")
    add_max_chars_argument(parser, DEFAULT_MAX_CHARS)
    add_model_loading_arguments(parser, "auto", "weights dtype while pruning")
    return parser


def run(args: argparse.Namespace) -> int:
    from sink_modifier.console import show_progress
    from sink_modifier.export.atomic import json_text

    result = sweep(
        args.model, args.recipe, args.sparsities, args.data, args.eval_data, args.output,
        num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed, timesteps=args.timesteps,
        batch_size=args.batch_size, pipeline=args.pipeline, num_windows=args.num_windows,
        mc_samples=args.mc_samples, eval_batch_size=args.eval_batch_size, dtype=args.dtype,
        eval_dtype=args.eval_dtype, max_chars=args.max_chars, eval_max_chars=args.eval_max_chars,
        keep_checkpoints=args.keep_checkpoints, overwrite=args.overwrite,
        trust_remote_code=args.trust_remote_code, family=args.family, mask_token_id=args.mask_token_id,
        progress=show_progress(),
    )
    if args.json:
        print(json_text(result), end="")
    else:
        print(markdown_table(result))
        print(f"wrote {result['output']}")
    return 0


# -- recipes ------------------------------------------------------------------------------------------
def _pruning_settings(modifier: Any) -> bool:
    fields = getattr(type(modifier), "model_fields", {})
    return "sparsity" in fields and "mask_structure" in fields


def point_recipe(checked: CheckedRecipe, point: SweepPoint, folder: Path) -> CheckedRecipe:
    """``checked`` with its pruning modifiers set to ``point``, written under ``folder`` and checked again."""
    import yaml

    from sink_modifier.commands.recipe_check import check_recipe

    data = yaml.safe_load(checked.text)
    modifiers = iter(checked.modifiers)  # check_recipe built them in file order, from these mappings
    changed = 0
    for stage_key, stage in data.items():
        if not (str(stage_key).endswith("_stage") and isinstance(stage, dict)):
            continue
        for group in stage.values():
            for mod_type, settings in group.items():
                if _pruning_settings(next(modifiers)):
                    group[mod_type] = {**(settings or {}), "sparsity": point.sparsity,
                                       "mask_structure": point.mask_structure}
                    changed += 1
    if not changed:
        types = ", ".join(type(m).__name__ for m in checked.modifiers)
        raise ValueError(
            f"recipe {checked.path} has no pruning modifier with sparsity and mask_structure settings ({types}), "
            "so sweep has nothing to set; pass a pruning recipe such as recipes/sink_wanda_50.yaml"
        )
    path = folder / f"{checked.path.stem}-{point.slug}.yaml"
    header = f"# {checked.path} at sparsity {point.label} (sink-modifier sweep)\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    try:
        return check_recipe(path)
    except ValueError as err:
        message = str(err).replace(str(path), f"{checked.path} (as {point.label})")
        raise ValueError(f"recipe {checked.path} at --sparsities point {point.label}: {message}") from None


def _recipe_names(recipes: list[CheckedRecipe]) -> list[str]:
    stems = [r.path.stem for r in recipes]
    return stems if len(set(stems)) == len(stems) else [f"{i + 1}-{s}" for i, s in enumerate(stems)]


# -- scoring ------------------------------------------------------------------------------------------
def score(loaded: LoadedModel, windows: torch.LongTensor, *, seed: int, mc_samples: int, batch_size: int,
          progress: bool = False) -> dict:
    """Per-window quality of ``loaded`` on ``windows``, with ``eval``'s family rules.

    Diffusion: the NELBO (nats/token, :func:`~sink_modifier.scoring.diffusion_metrics.nelbo`, the
    value ``eval`` reports) and its per-window values and weights; causal: next-token CE per window.
    """
    import torch

    model, tokenizer, chosen = loaded.model, loaded.tokenizer, loaded.family
    if not chosen.diffusion:
        from sink_modifier.scoring.causal_metrics import perplexity

        per_window = [perplexity(model, windows[i : i + 1], batch_size=1)["ce"] for i in range(windows.shape[0])]
        return _summary("ce", per_window, [1.0] * len(per_window))
    from sink_modifier.scoring.diffusion_metrics import nelbo

    maskable = chosen.scorable(windows, tokenizer, model.config)
    result = nelbo(
        model, windows, loaded.mask_token_id, mc_samples=mc_samples, seed=seed, batch_size=batch_size,
        logit_shift=chosen.logit_shift, maskable=maskable, progress=progress,
        logits_fn=lambda ids: chosen.logits(model, ids),
        corrupt=chosen.evaluation_corruption(tokenizer, model.config, seed),
    )
    lengths = (torch.full((windows.shape[0],), float(windows.shape[1])) if maskable is None
               else maskable.sum(-1).double().cpu())
    summary = _summary("nelbo", result.per_window, (lengths / lengths.mean()).tolist())
    summary["value"] = result.nelbo  # nelbo's own float: identical to what eval prints
    return summary


def _summary(metric: str, per_window: list[float], weights: list[float]) -> dict:
    n = len(per_window)
    value = sum(w * v for w, v in zip(weights, per_window)) / n
    return {"metric": metric, "value": value, "stderr": _stderr([w * v for w, v in zip(weights, per_window)]),
            "per_window": list(per_window), "weights": list(weights)}


def _stderr(values: list[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n * (n - 1)))


def paired_difference(pruned: dict, dense: dict) -> tuple[float, float | None]:
    """Mean per-window difference (pruned − dense, length-weighted as the metric) and its standard error."""
    from sink_modifier.scoring.paired import paired_difference as paired

    return paired(pruned["per_window"], dense["per_window"], dense["weights"])


# -- the sweep ------------------------------------------------------------------------------------------
def sweep(
    model_path: str | Path,
    recipes: list[str | Path],
    points: tuple[SweepPoint, ...] | str,
    data,
    eval_data,
    output_dir: str | Path,
    *,
    num_samples: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    timesteps: tuple[float, ...] | None = None,
    batch_size: int | None = None,
    pipeline: str = "sequential",
    num_windows: int = 64,
    mc_samples: int = 8,
    eval_batch_size: int = 8,
    dtype: str = "auto",
    eval_dtype: str = "float32",
    max_chars: int | None = DEFAULT_MAX_CHARS,
    eval_max_chars: int | None = None,
    keep_checkpoints: bool = False,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    family: str | None = None,
    mask_token_id: int | None = None,
    progress: bool = False,
) -> dict:
    """Prune ``model_path`` with every recipe at every point, evaluate each, write ``output_dir``; the sweep.json dict.

    Everything is checked before the weights load: output folder, recipes (also as set to each
    point), model folder, both texts, tokenizer and mask token, the windows.

    Each recipe is calibrated as ``prune`` would calibrate it: ``num_samples`` / ``timesteps`` when
    given, else the recipe's ``calibration:`` block, else the defaults. Recipes that share a
    calibration share its rows (and the sink-mask cache across their points).
    """
    import sink_modifier  # noqa: F401  (modifiers registered before the model loads, as in prune)
    import llmcompressor  # noqa: F401
    from loguru import logger

    from sink_modifier.commands.preflight import check_model
    from sink_modifier.commands.prune import package_versions, prune_model
    from sink_modifier.commands.recipe_check import check_recipe
    from sink_modifier.data import load_documents, token_windows
    from sink_modifier.export import write_atomically
    from sink_modifier.export.output_guard import claim_output
    from sink_modifier.export.atomic import json_text

    if isinstance(points, str):
        points = sparsity_points(points)
    with claim_output(output_dir, protected=(model_path, data, eval_data, *recipes), overwrite=overwrite) as claim:
        output = claim.output
        if not recipes:
            raise ValueError("sweep needs at least one --recipe")
        checked = [check_recipe(r) for r in recipes]
        seen = [c.path.resolve() for c in checked]
        if len(set(seen)) < len(seen):
            raise ValueError("a --recipe is given twice; list each recipe once")
        scratch = tempfile.TemporaryDirectory(prefix="sink-sweep-recipes-")
        with scratch:
            names = _recipe_names(checked)
            plan = [(name, recipe, point, point_recipe(recipe, point, Path(scratch.name)))
                    for name, recipe in zip(names, checked) for point in points]

            model = check_model(model_path, family=family, trust_remote_code=trust_remote_code, mask_token_id=mask_token_id)
            chosen = model.family
            # one (num_samples, timesteps) per recipe, as prune would choose it
            choices = [c.calibration.choose(num_samples=num_samples, timesteps=timesteps, diffusion=chosen.diffusion)
                       for c in checked]
            plans = [(c.num_samples, model.calibration_timesteps(c.timesteps)) for c in choices]
            seq_len = model.seq_len(seq_len)
            documents = load_documents(data, max_chars=max_chars)
            eval_documents = load_documents(eval_data, max_chars=eval_max_chars)
            tokenizer = model.check_tokenizer(needs_mask_token=chosen.diffusion)
            windows = {n: token_windows(documents, tokenizer, seq_len, n, seed=seed) for n in dict.fromkeys(n for n, _ in plans)}
            eval_windows = token_windows(eval_documents, tokenizer, seq_len, num_windows, seed=seed)
            del documents, eval_documents

            start = time.perf_counter()
            logger.info(f"Loading {model_path}")
            loaded = model.load(dtype=dtype)
            calibrations = {
                plan: chosen.build_calibration(
                    windows[plan[0]], loaded.tokenizer, loaded.model.config, seq_len=seq_len, num_samples=plan[0],
                    timesteps=plan[1], seed=seed, max_chars=max_chars,
                )
                for plan in dict.fromkeys(plans)
            }
            calibration_of = {name: calibrations[plan] for name, plan in zip(names, plans)}
            scoring = dict(seed=seed, mc_samples=mc_samples, batch_size=eval_batch_size, progress=progress)

            def evaluate(folder_or_model) -> dict:
                checked_model = (folder_or_model if not isinstance(folder_or_model, Path) else
                                 check_model(folder_or_model, family=chosen, trust_remote_code=trust_remote_code))
                if checked_model.tokenizer is None:
                    checked_model.check_tokenizer(needs_mask_token=chosen.diffusion)
                evaluated = checked_model.load(dtype=eval_dtype)
                try:
                    return score(evaluated, eval_windows, **scoring)
                finally:
                    del evaluated

            result: dict[str, Any] = {}

            def write(tmp: Path) -> None:
                nonlocal loaded
                cache_dir = tmp / "cache"
                if overwrite and (output / "cache").is_dir():  # a previous sweep's entries: checked on use
                    shutil.copytree(output / "cache", cache_dir)
                logger.info(f"Evaluating the dense model on {eval_windows.shape[0]} windows")
                t0 = time.perf_counter()
                dense = evaluate(model)
                dense_seconds = time.perf_counter() - t0
                rows = []
                for index, (name, recipe, point, modifiers) in enumerate(plan):
                    logger.info(f"Sweep {index + 1}/{len(plan)}: {name} at sparsity {point.label}")
                    target = loaded if loaded is not None else model.load(dtype=dtype)
                    loaded = None  # the first point prunes the model loaded for the calibration set
                    for modifier in modifiers.modifiers:
                        if "sink_cache_dir" in type(modifier).model_fields:
                            modifier.sink_cache_dir = str(cache_dir)
                    folder = (tmp / "checkpoints" if keep_checkpoints else tmp / ".scratch") / f"{name}-{point.slug}"
                    cpu = time.process_time()
                    pruned = prune_model(target, modifiers, calibration_of[name], folder, batch_size=batch_size,
                                         pipeline=pipeline, trust_remote_code=trust_remote_code, seed=seed,
                                         provenance={"source_model": str(model_path), "data": str(data)},
                                         calibration_origin=choices[names.index(name)].origin).metadata
                    cpu = time.process_time() - cpu  # this process's CPU seconds: calibration, pruning, saving
                    del target
                    gc.collect()
                    t0 = time.perf_counter()
                    quality = evaluate(folder)
                    eval_seconds = time.perf_counter() - t0
                    if not keep_checkpoints:
                        shutil.rmtree(folder)
                    delta, delta_se = paired_difference(quality, dense)
                    rows.append({
                        "recipe": str(recipe.path), "name": name, "point": point.label,
                        "sparsity": point.sparsity, "mask_structure": point.mask_structure,
                        "measured_sparsity": pruned["sparsity"]["overall"],
                        "value": quality["value"], "stderr": quality["stderr"], "delta": delta, "delta_stderr": delta_se,
                        "per_window": quality["per_window"],
                        "calibration": {"num_samples": calibration_of[name].num_samples,
                                        "timesteps": [float(t) for t in calibration_of[name].timesteps],
                                        "origin": choices[names.index(name)].origin},
                        "prune_seconds": pruned["prune_seconds"], "prune_cpu_seconds": round(cpu, 2),
                        "eval_seconds": round(eval_seconds, 2),
                        "cache": _cache_counts(modifiers.modifiers),
                        "checkpoint": str(folder.relative_to(tmp)) if keep_checkpoints else None,
                    })
                shutil.rmtree(tmp / ".scratch", ignore_errors=True)
                result.update({
                    "output": str(output.resolve()),
                    "model": str(model_path), "family": chosen.name, "data": str(data), "eval_data": str(eval_data),
                    "metric": dense["metric"], "unit": "nats/token",
                    "settings": {"num_samples": num_samples, "seq_len": seq_len, "seed": seed,
                                 "timesteps": None if timesteps is None else [float(t) for t in timesteps],
                                 "batch_size": batch_size,
                                 "pipeline": pipeline, "dtype": dtype, "eval_dtype": eval_dtype,
                                 "num_windows": int(eval_windows.shape[0]), "mc_samples": mc_samples,
                                 "sparsities": [p.label for p in points], "recipes": [str(r.path) for r in checked]},
                    "calibration": {name: calibration_of[name].describe() for name in names},
                    "dense": {**{k: v for k, v in dense.items() if k != "weights"}, "eval_seconds": round(dense_seconds, 2)},
                    "points": rows,
                    "seconds": round(time.perf_counter() - start, 2),
                    "versions": package_versions(),
                })
                (tmp / "sweep.md").write_text(markdown_table(result) + "\n", encoding="utf-8")
                (tmp / "sweep.json").write_text(json_text(result, pretty=True), encoding="utf-8")
                save_figure(result, tmp / "sweep.png")

            written = write_atomically(output, write, overwrite=overwrite)
            logger.info(f"Wrote {written}")
            return result


def _cache_counts(modifiers: list) -> dict[str, dict[str, int]]:
    total: dict[str, dict[str, int]] = {}
    for modifier in modifiers:
        for kind, counts in getattr(modifier, "cache_counts", {}).items():
            into = total.setdefault(kind, {"hits": 0, "misses": 0})
            for outcome, n in counts.items():
                into[outcome] = into.get(outcome, 0) + n
    return total


# -- the table and the figure ----------------------------------------------------------------------
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
