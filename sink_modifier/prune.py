"""The prune workflow behind ``sink-modifier prune``: load → DLM calibration → oneshot → atomic save.

A diffusion model (``config.is_causal`` false) is calibrated on noised copies of each
window at the LLaDA timestep grid; a causal model on the clean windows. The written
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

from sink_modifier.diffusion import (
    LLADA_TIMESTEPS,
    build_diffusion_calibration,
    is_diffusion_config,
    max_sequence_length,
)
from sink_modifier.export import check_output_dir, sparsity_report, write_atomically
from sink_modifier.loading import load_checkpoint, load_model, load_tokenizer

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


def _policy_needs_windows(recipe_path: Path) -> bool:
    """True when a modifier's sink_policy compares a window's timesteps (batches = one window)."""
    from llmcompressor.recipe import Recipe

    modifiers = Recipe.create_instance(str(recipe_path)).modifiers
    return any(getattr(m, "sink_policy", "all") != "all" for m in modifiers)


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
) -> PruneResult:
    """Prune ``model_path`` with the YAML ``recipe`` calibrated on ``data``; write ``output_dir``.

    ``batch_size`` defaults to 1 row, or to one window's noised copies (``len(timesteps)``)
    when a modifier's ``sink_policy`` compares timesteps; results do not depend on it otherwise.
    """
    import sink_modifier  # noqa: F401  (registers our modifiers for the YAML recipe)
    from llmcompressor import oneshot

    check_output_dir(output_dir, overwrite)
    recipe_path = Path(recipe)
    if not recipe_path.is_file():
        raise FileNotFoundError(f"recipe {recipe_path} not found")
    torch.manual_seed(seed)

    tokenizer = load_tokenizer(model_path, trust_remote_code)
    model = load_model(model_path, dtype, trust_remote_code)
    diffusion = is_diffusion_config(model.config)
    timesteps = tuple(timesteps) if timesteps is not None else (LLADA_TIMESTEPS if diffusion else (0.0,))
    seq_len = seq_len or max_sequence_length(model.config) or 2048
    calibration = build_diffusion_calibration(
        data,
        tokenizer,
        seq_len=seq_len,
        num_samples=num_samples,
        timesteps=timesteps,
        seed=seed,
        config=model.config,
        max_chars=max_chars,
    )
    if batch_size is None:
        batch_size = len(timesteps) if _policy_needs_windows(recipe_path) else 1
    logger.info(
        f"Calibrating on {len(calibration)} rows: {num_samples} windows x {len(timesteps)} timesteps "
        f"of {seq_len} tokens ({'diffusion' if diffusion else 'causal'} model)"
    )

    start = time.perf_counter()
    oneshot(
        model=model,
        processor=tokenizer,
        dataset=calibration.dataloader(batch_size),
        recipe=str(recipe_path),
        pipeline=pipeline,
    )
    seconds = time.perf_counter() - start

    metadata = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source_model": str(model_path),
        "recipe": recipe_path.read_text(),
        "modifiers": _modifier_settings(),
        "sparsity": None,  # measured from the checkpoint as written, below
        "calibration": {**calibration.describe(), "data": str(data), "batch_size": batch_size,
                        "pipeline": pipeline, "diffusion": diffusion},
        "seed": seed,
        "prune_seconds": round(seconds, 2),
        "versions": package_versions(),
        "command": sys.argv,
    }

    def write(folder: Path) -> None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        # Record the zeros of the weights as saved: quantization can round small kept
        # weights to zero, so the in-memory float weights would under-count them.
        metadata["sparsity"] = sparsity_report(load_checkpoint(folder, trust_remote_code=trust_remote_code))

    output = write_atomically(output_dir, write, metadata=metadata, overwrite=overwrite)
    logger.info(f"Wrote {output} (overall sparsity {metadata['sparsity']['overall']:.2%})")
    return PruneResult(model=model, output_dir=output, metadata=metadata)
