"""The prune workflow behind ``sink-modifier prune``: load → DLM calibration → oneshot → atomic save.

The model's family (:mod:`sink_modifier.families`, detected from ``config.json`` or named)
decides loading, the mask token and the noising rule: a diffusion model is calibrated on
noised copies of each window at the LLaDA timestep grid; a causal model on the clean windows. The written
folder is the checkpoint llm-compressor writes (dense weights with zeros in place,
``recipe.yaml``) plus ``sink_modifier.json``: measured sparsity per layer and overall, the
recipe, the calibration set and seeds, and package versions.
"""

from __future__ import annotations

import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch
from loguru import logger

from sink_modifier.process import LLADA_TIMESTEPS
from sink_modifier.data import max_sequence_length
from sink_modifier.export import check_output_dir, sparsity_report, write_atomically
from sink_modifier.families import ModelFamily, load_pretrained
from sink_modifier.loading import load_checkpoint

__all__ = ["PruneResult", "package_versions", "prune_checkpoint"]

# Read at most this much text for calibration windows by default: enough for thousands of
# 256-token windows, and it keeps tokenization of a large corpus to seconds.
DEFAULT_MAX_CHARS = 8_000_000


@dataclass
class PruneResult:
    model: torch.nn.Module
    output_dir: Path
    metadata: dict


def package_versions() -> dict[str, str]:
    names = ("sink-modifier", "torch", "transformers", "llmcompressor", "compressed-tensors")
    found = {name: version(name) for name in names}
    found["python"] = platform.python_version()
    return found


def _modifier_settings() -> list[dict]:
    from llmcompressor.core import active_session

    modifiers = active_session().lifecycle.recipe.modifiers
    return [
        {"type": type(m).__name__, **m.model_dump(exclude={"index", "group", "start", "end", "update",
                                                           "initialized_", "finalized_", "started_", "ended_"})}
        for m in modifiers
    ]


def _recipe_modifiers(recipe_path: Path) -> list:
    from llmcompressor.recipe import Recipe

    return list(Recipe.create_instance(str(recipe_path)).modifiers)


def _policy_needs_windows(modifiers: list) -> bool:
    """True when a modifier's sink_policy compares a window's timesteps (batches = one window)."""
    return any(getattr(m, "sink_policy", "all") != "all" for m in modifiers)


def _add_family_ignores(modifiers: list, family: ModelFamily, model: torch.nn.Module) -> list[str]:
    """Add the family's ignores (output head, text-blind modules such as a vision tower) to every modifier."""
    extra = family.pruning_ignore(model)
    for modifier in modifiers:
        current = getattr(modifier, "ignore", None)
        if extra and isinstance(current, list):
            modifier.ignore = current + [name for name in extra if name not in current]
    return extra


def prune_checkpoint(
    model_path: str | Path,
    recipe: str | Path,
    data,
    output_dir: str | Path,
    *,
    num_samples: int = 32,
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
) -> PruneResult:
    """Prune ``model_path`` with the YAML ``recipe`` calibrated on ``data``; write ``output_dir``.

    ``batch_size`` defaults to 1 row, or to one window's noised copies (``len(timesteps)``)
    when a modifier's ``sink_policy`` compares timesteps; results do not depend on it otherwise.
    ``family`` overrides the family detected from ``config.json`` (see ``sink-modifier families``).
    """
    import sink_modifier  # noqa: F401  (registers our modifiers for the YAML recipe)
    from llmcompressor import oneshot

    check_output_dir(output_dir, overwrite)
    recipe_path = Path(recipe)
    if not recipe_path.is_file():
        raise FileNotFoundError(f"recipe {recipe_path} not found")
    torch.manual_seed(seed)

    loaded = load_pretrained(model_path, family=family, dtype=dtype, trust_remote_code=trust_remote_code)
    model, tokenizer, chosen = loaded.model, loaded.tokenizer, loaded.family
    diffusion = chosen.diffusion
    timesteps = tuple(timesteps) if timesteps is not None else (LLADA_TIMESTEPS if diffusion else (0.0,))
    seq_len = seq_len or max_sequence_length(model.config) or 2048
    calibration = chosen.build_calibration(
        data, tokenizer, model.config, seq_len=seq_len, num_samples=num_samples, timesteps=timesteps,
        seed=seed, max_chars=max_chars,
    )
    if chosen.pipeline is not None and pipeline != chosen.pipeline:
        logger.info(f"{chosen.name} models calibrate with the {chosen.pipeline!r} pipeline (asked: {pipeline!r})")
        pipeline = chosen.pipeline
    modifiers = _recipe_modifiers(recipe_path)
    ignored = _add_family_ignores(modifiers, chosen, model)
    if batch_size is None:
        batch_size = len(timesteps) if _policy_needs_windows(modifiers) else 1
    logger.info(
        f"Calibrating {chosen.name} model on {len(calibration)} rows: {num_samples} windows x "
        f"{len(timesteps)} timesteps of {seq_len} tokens ({'diffusion' if diffusion else 'causal'})"
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
    chosen.after_oneshot(model)
    seconds = time.perf_counter() - start

    metadata = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_model": str(model_path),
        "recipe": recipe_path.read_text(),
        "modifiers": _modifier_settings(),
        "sparsity": None,  # measured from the checkpoint as written, below
        "family": chosen.name,
        "calibration": {**calibration.describe(), "data": str(data), "batch_size": batch_size,
                        "pipeline": pipeline, "diffusion": diffusion, "family_ignore": ignored},
        "seed": seed,
        "prune_seconds": round(seconds, 2),
        "versions": package_versions(),
        "command": sys.argv,
    }

    def write(folder: Path) -> None:
        chosen.prepare_for_save(model)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # Record the zeros of the weights as saved: quantization can round small kept
        # weights to zero, so the in-memory float weights would under-count them.
        reloaded = load_checkpoint(folder, trust_remote_code=trust_remote_code, family=chosen.name)
        metadata["sparsity"] = sparsity_report(reloaded)

    output = write_atomically(output_dir, write, metadata=metadata, overwrite=overwrite)
    logger.info(f"Wrote {output} (overall sparsity {metadata['sparsity']['overall']:.2%})")
    return PruneResult(model=model, output_dir=output, metadata=metadata)
