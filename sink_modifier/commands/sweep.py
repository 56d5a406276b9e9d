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
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sink_modifier.commands.arguments import (
    add_calibration_arguments,
    add_max_chars_argument,
    add_model_loading_arguments,
    positive_int,
)
from sink_modifier.commands.prune import DEFAULT_MAX_CHARS
from sink_modifier.commands.sweep_points import (
    SPARSITIES_HELP,
    SweepPoint,
    _recipe_names,
    point_recipe,
    sparsity_points,
)
from sink_modifier.commands.sweep_report import markdown_table, save_figure

if TYPE_CHECKING:
    import torch

    from sink_modifier.families import LoadedModel

__all__ = ["SweepPoint", "add_parser", "point_recipe", "run", "sparsity_points", "sweep"]

FILES = ("sweep.json", "sweep.md", "sweep.png")






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
    import llmcompressor  # noqa: F401
    from loguru import logger

    import sink_modifier  # noqa: F401  (modifiers registered before the model loads, as in prune)
    from sink_modifier.commands.preflight import check_model
    from sink_modifier.commands.prune import package_versions, prune_model
    from sink_modifier.commands.recipe_check import check_recipe
    from sink_modifier.data import load_documents, token_windows
    from sink_modifier.export import write_atomically
    from sink_modifier.export.atomic import json_text
    from sink_modifier.export.output_guard import claim_output

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










