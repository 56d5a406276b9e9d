"""``sink-modifier prune``: load → DLM calibration → oneshot → atomic save.

The model's family (:mod:`sink_modifier.families`, detected from ``config.json`` or named
with ``--family``) decides loading, the mask token and the forward process, and is handed
to the sink-aware modifiers (``modifier.attach(family=...)``) rather than re-detected: a
diffusion model is calibrated on noised copies of each window at the LLaDA timestep grid; a
causal model on the clean windows. The written folder is the checkpoint llm-compressor
writes (dense weights with zeros in place, ``recipe.yaml``) plus ``sink_modifier.json``:
measured sparsity per layer and overall, the recipe, the calibration set and seeds, and
package versions.

llm-compressor, torch and the model code are imported inside the functions, so building the
parser stays cheap.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sink_modifier.commands.arguments import (
    add_calibration_arguments,
    add_max_chars_argument,
    add_model_loading_arguments,
)

if TYPE_CHECKING:
    from sink_modifier.commands.recipe_check import CheckedRecipe
    from sink_modifier.families import LoadedModel, ModelFamily

__all__ = ["PruneResult", "add_parser", "package_versions", "prune_checkpoint", "prune_model", "run"]

# Read at most this much text for calibration windows by default: enough for thousands of
# 256-token windows, and it keeps tokenization of a large corpus to seconds.
DEFAULT_MAX_CHARS = 8_000_000


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "prune", aliases=["compress"],
        help="prune and/or quantize a model with a YAML recipe on DLM calibration data (alias: compress)")
    parser.add_argument("--model", required=True, help="model folder (from_pretrained path)")
    parser.add_argument("--recipe", required=True, help="llm-compressor YAML recipe")
    parser.add_argument("--data", required=True,
                        help="calibration text: .txt/.txt.gz (blank-line separated) or .jsonl")
    parser.add_argument("--output", required=True, help="folder to write; appears only when complete")
    add_calibration_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_max_chars_argument(parser, DEFAULT_MAX_CHARS)
    add_model_loading_arguments(parser, "auto", "weights dtype while pruning")
    return parser


def run(args: argparse.Namespace) -> int:
    result = prune_checkpoint(
        args.model, args.recipe, args.data, args.output,
        num_samples=args.num_samples, seq_len=args.seq_len, seed=args.seed, timesteps=args.timesteps,
        batch_size=args.batch_size, dtype=args.dtype, pipeline=args.pipeline, max_chars=args.max_chars,
        overwrite=args.overwrite, trust_remote_code=args.trust_remote_code, family=args.family,
        mask_token_id=args.mask_token_id,
    )
    sparsity = result.metadata["sparsity"]
    print(f"wrote {result.output_dir}: {sparsity['num_layers']} layers, overall sparsity {sparsity['overall']:.4f}")
    return 0


@dataclass
class PruneResult:
    model: Any  # the pruned torch.nn.Module, in memory
    output_dir: Path
    metadata: dict


def package_versions() -> dict[str, str]:
    names = ("sink-modifier", "torch", "transformers", "llmcompressor", "compressed-tensors")
    found = {name: version(name) for name in names}
    found["python"] = platform.python_version()
    return found


def _modifier_settings() -> list[dict]:
    from llmcompressor.core import active_session

    from sink_modifier.modifiers.settings import modifier_settings

    return [{"type": type(m).__name__, **modifier_settings(m)} for m in active_session().lifecycle.recipe.modifiers]


def _attach_family(modifiers: list, family: ModelFamily, calibration) -> None:
    """Hand the family chosen for this command (and the calibration rows) to every sink-aware modifier,
    so none re-detects it from ``model.config`` (detection stays the fallback of direct ``oneshot`` use)."""
    for modifier in modifiers:
        if hasattr(modifier, "attach"):
            modifier.attach(family=family, calibration=calibration)


def _pruned_modules(model, modifiers: list) -> list[str]:
    """The modules a pruning modifier of the recipe targeted (its targets minus its ignore), sorted."""
    from compressed_tensors.utils import match_named_modules

    from sink_modifier.commands.recipe_check import modifier_role

    names: set[str] = set()
    for modifier in modifiers:
        if modifier_role(modifier) != "pruning":
            continue
        targets = getattr(modifier, "resolved_targets", None) or getattr(modifier, "targets", None) or ["Linear"]
        targets = [targets] if isinstance(targets, str) else list(targets)
        names.update(name for name, _ in match_named_modules(model, targets, getattr(modifier, "ignore", None) or []))
    return sorted(names)


def _recipe_ignores(modifiers: list) -> list[str]:
    found: list[str] = []
    for modifier in modifiers:
        for pattern in getattr(modifier, "ignore", None) or []:
            if pattern not in found:
                found.append(pattern)
    return found


def _policy_needs_windows(modifiers: list) -> bool:
    """True when a modifier's sink_policy compares a window's timesteps (batches = one window)."""
    return any(getattr(m, "sink_policy", "all") != "all" for m in modifiers)


def _add_family_ignores(modifiers: list, family: ModelFamily, model) -> list[str]:
    """Add the family's ignores (output head, text-blind modules such as a vision tower) to every modifier."""
    extra = family.pruning_ignore(model)
    for modifier in modifiers:
        current = getattr(modifier, "ignore", None)
        if extra and isinstance(current, list):
            modifier.ignore = current + [name for name in extra if name not in current]
            # A quantization modifier caches the config it resolved from `ignore` when it was built
            # (check_recipe builds it). Left stale, that config gives the head quantization
            # parameters while calibration skips it: its weight scales stay uninitialised memory
            # (NaN, 0, 1e38 in the saved checkpoint). Resolve again with the new ignore list.
            if getattr(modifier, "_resolved_config", None) is not None:
                modifier._resolved_config = None
    return extra


def prune_checkpoint(
    model_path: str | Path,
    recipe: str | Path,
    data,
    output_dir: str | Path,
    *,
    num_samples: int | None = None,
    seq_len: int | None = None,
    seed: int = 0,
    timesteps: tuple[float, ...] | None = None,
    batch_size: int | None = None,
    dtype: str = "auto",
    pipeline: str = "sequential",
    max_chars: int | None = DEFAULT_MAX_CHARS,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    family: str | None = None,
    mask_token_id: int | None = None,
) -> PruneResult:
    """Load ``model_path``, build its calibration set from ``data``, and :func:`prune_model` it.

    ``family`` overrides the family detected from ``config.json`` (see ``sink-modifier families``).
    ``num_samples`` and ``timesteps`` default to the recipe's ``calibration:`` block
    (:mod:`~sink_modifier.commands.recipe_calibration`), else to 32 windows at the LLaDA grid for a
    diffusion family and ``(0.0,)`` (clean rows) for a causal one. ``mask_token_id`` (``--mask-token-id``) names the mask token of a model whose
    tokenizer and config name none; the written ``config.json`` records it.

    Every input is checked before the weights are read (:mod:`sink_modifier.commands.preflight`):
    output (claimed for the run: :mod:`sink_modifier.export.output_guard`), recipe, model folder,
    text, tokenizer and mask token, then the windows.
    """
    import llmcompressor  # noqa: F401
    import torch
    from loguru import logger

    # llm-compressor (and our modifiers' registration) before the model loads, as for any
    # oneshot user: loading then sees the same library state as the recipe run.
    import sink_modifier  # noqa: F401
    from sink_modifier.commands.preflight import check_model
    from sink_modifier.commands.recipe_check import check_recipe
    from sink_modifier.data import load_documents, token_windows
    from sink_modifier.export.output_guard import claim_output

    # the output is claimed (checked against the inputs, locked) before anything else is read
    with claim_output(output_dir, protected=(model_path, recipe, data), overwrite=overwrite):
        checked_recipe = check_recipe(recipe)
        model = check_model(model_path, family=family, trust_remote_code=trust_remote_code,
                            mask_token_id=mask_token_id)
        chosen = model.family
        choice = checked_recipe.calibration.choose(num_samples=num_samples, timesteps=timesteps,
                                                   diffusion=chosen.diffusion)
        num_samples, timesteps = choice.num_samples, model.calibration_timesteps(choice.timesteps)
        for modifier in checked_recipe.modifiers:  # a modifier option this family or grid cannot serve
            if hasattr(modifier, "check_calibration_plan"):
                modifier.check_calibration_plan(family=chosen, timesteps=timesteps)
        seq_len = model.seq_len(seq_len)
        # Text is read and decoded once, here; the windows go to the calibration builder as they are.
        documents = None if isinstance(data, torch.Tensor) else load_documents(data, max_chars=max_chars)
        tokenizer = model.check_tokenizer(needs_mask_token=chosen.diffusion)
        windows = data if documents is None else token_windows(documents, tokenizer, seq_len, num_samples, seed=seed)
        torch.manual_seed(seed)

        logger.info(f"Loading {model_path}")
        loaded = model.load(dtype=dtype)
        calibration = chosen.build_calibration(
            windows, loaded.tokenizer, loaded.model.config, seq_len=seq_len, num_samples=num_samples,
            timesteps=timesteps, seed=seed, max_chars=max_chars,
        )
        return prune_model(
            loaded, checked_recipe, calibration, output_dir, batch_size=batch_size, pipeline=pipeline,
            overwrite=overwrite, trust_remote_code=trust_remote_code, seed=seed,
            provenance={"source_model": str(model_path), "data": str(data)}, calibration_origin=choice.origin,
        )


def prune_model(
    loaded: LoadedModel,
    recipe: str | Path | CheckedRecipe,
    calibration,
    output_dir: str | Path,
    *,
    batch_size: int | None = None,
    pipeline: str = "sequential",
    overwrite: bool = False,
    trust_remote_code: bool = False,
    seed: int = 0,
    provenance: dict[str, str] | None = None,
    calibration_origin: dict[str, str] | None = None,
) -> PruneResult:
    """Prune the loaded model with the YAML ``recipe`` on ``calibration``; write ``output_dir``.

    ``batch_size`` defaults to 1 row, or to one window's noised copies (``len(timesteps)``)
    when a modifier's ``sink_policy`` compares timesteps; results do not depend on it otherwise.
    ``provenance`` (``source_model``, ``data``) and ``calibration_origin`` (where ``num_samples``
    and ``timesteps`` came from: command line, recipe or default) go into ``sink_modifier.json``. ``recipe`` is a
    YAML file (checked by :func:`~sink_modifier.commands.recipe_check.check_recipe`) or what that
    check returned. The output is claimed for the whole run (:mod:`sink_modifier.export.output_guard`):
    never the loaded model's folder, one writer at a time.
    """
    from sink_modifier.export.output_guard import claim_output

    with claim_output(output_dir, protected=(loaded.folder,), overwrite=overwrite):
        return _prune_claimed(loaded, recipe, calibration, output_dir, batch_size=batch_size, pipeline=pipeline,
                              overwrite=overwrite, trust_remote_code=trust_remote_code, seed=seed,
                              provenance=provenance, calibration_origin=calibration_origin)


def _prune_claimed(loaded, recipe, calibration, output_dir, *, batch_size, pipeline, overwrite, trust_remote_code,
                   seed, provenance, calibration_origin) -> PruneResult:
    from llmcompressor import oneshot
    from loguru import logger

    from sink_modifier.commands.recipe_check import CheckedRecipe, check_recipe
    from sink_modifier.errors import CheckFailedError
    from sink_modifier.export import sparsity_report, write_atomically
    from sink_modifier.export.coverage import checkpoint_coverage
    from sink_modifier.families import load_pretrained

    checked_recipe = recipe if isinstance(recipe, CheckedRecipe) else check_recipe(recipe)
    model, tokenizer, chosen = loaded.model, loaded.tokenizer, loaded.family
    provenance = {"source_model": str(loaded.folder), "data": None, **(provenance or {})}
    timesteps = tuple(calibration.timesteps)
    if chosen.pipeline is not None and pipeline != chosen.pipeline:
        logger.info(f"{chosen.name} models calibrate with the {chosen.pipeline!r} pipeline (asked: {pipeline!r})")
        pipeline = chosen.pipeline
    modifiers = checked_recipe.modifiers
    ignored = _add_family_ignores(modifiers, chosen, model)
    _attach_family(modifiers, chosen, calibration)
    if batch_size is None:
        batch_size = len(timesteps) if _policy_needs_windows(modifiers) else 1
    logger.info(
        f"Calibrating {chosen.name} model on {len(calibration)} rows: {calibration.num_samples} windows x "
        f"{len(timesteps)} timesteps of {calibration.seq_len} tokens "
        f"({'diffusion' if chosen.diffusion else 'causal'})"
    )

    start = time.perf_counter()
    oneshot(
        model=model,
        processor=tokenizer,
        dataset=chosen.calibration_loader(calibration, batch_size),
        recipe=modifiers,
        pipeline=pipeline,
        trust_remote_code_model=trust_remote_code,
        **({"sequential_targets": chosen.sequential_targets(model)} if chosen.sequential_targets(model) else {}),
    )
    pruned_modules = _pruned_modules(model, modifiers)  # before after_oneshot: the names the modifiers matched
    chosen.after_oneshot(model)
    seconds = time.perf_counter() - start

    metadata = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_model": provenance["source_model"],
        "recipe": checked_recipe.text,
        "modifiers": _modifier_settings(),
        "sparsity": None,  # measured from the checkpoint as written, below
        "family": chosen.name,
        "calibration": {**calibration.describe(), "data": provenance["data"], "batch_size": batch_size,
                        "pipeline": pipeline, "diffusion": chosen.diffusion, "family_ignore": ignored,
                        **({"origin": calibration_origin} if calibration_origin else {})},
        "seed": seed,
        "prune_seconds": round(seconds, 2),
        "versions": package_versions(),
        "command": sys.argv,
    }

    def write(folder: Path) -> None:
        chosen.prepare_for_save(model)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        chosen.after_save(folder)
        # Record the zeros of the weights as saved: quantization can round small kept
        # weights to zero, so the in-memory float weights would under-count them.
        reloaded = load_pretrained(folder, family=chosen, trust_remote_code=trust_remote_code)
        metadata["sparsity"] = sparsity_report(reloaded.model)
        coverage = checkpoint_coverage(folder, reloaded.model, dense_reasons=chosen.dense_reasons(reloaded.model),
                                       recipe_ignore=_recipe_ignores(modifiers), pruned_modules=pruned_modules)
        metadata["coverage"] = {**coverage.to_dict(), "pruned_modules": pruned_modules}
        if coverage.problems:  # a "quantized" checkpoint that is not: never published
            raise CheckFailedError(coverage.problems[0])

    logger.info(f"Saving {output_dir}")
    output = write_atomically(output_dir, write, metadata=metadata, overwrite=overwrite)
    logger.info(f"Wrote {output} (overall sparsity {metadata['sparsity']['overall']:.2%})")
    return PruneResult(model=model, output_dir=output, metadata=metadata)
