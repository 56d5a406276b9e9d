"""A recipe's ``calibration:`` block: the calibration rows its settings were chosen with.

A shipped recipe's pruning settings were chosen together with the rows they are calibrated on
(``benchmarks/results/calibration_study.md``): e.g. Wanda 50% on low-timestep noised rows,
Wanda 2:4 on clean rows. So the recipe carries that choice, and ``sink-modifier prune --recipe R``
with no other option gets it::

    calibration:              # read by sink-modifier prune / sweep; llm-compressor skips it
      timesteps: [0.0025, 0.0225, 0.0625, 0.1225, 0.2025, 0.3025, 0.4225, 0.5625, 0.7225, 0.9025]
      num_samples: 32         # windows; rows = num_samples x len(timesteps)

llm-compressor's ``Recipe.from_dict`` reads only keys ending in ``_stage`` (and ``args``), so the
same file runs unchanged in ``oneshot(recipe=...)``; a Python user builds the rows with
:func:`recipe_calibration` and ``build_calibration(timesteps=...)``.

Precedence, one field at a time: ``--num-samples`` / ``--timesteps`` on the command line, then the
recipe's block, then the command's default (32 windows; the family's grid: LLaDA's for a
diffusion model, clean rows for a causal one). ``timesteps`` are diffusion timesteps: a causal
model calibrates on clean rows whatever the block says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sink_modifier.commands.recipe_yaml import read_recipe_yaml
from sink_modifier.commands.recipe_yaml import where as _where

__all__ = ["BLOCK", "CalibrationChoice", "RecipeCalibration", "parse_calibration_block", "recipe_calibration"]

BLOCK = "calibration"
DEFAULT_NUM_SAMPLES = 32
_FIELDS = {
    "timesteps": "a list of diffusion timesteps in [0, 1] (0 = clean rows), e.g. [0.1, 0.5, 1.0]",
    "num_samples": "calibration windows, a positive integer",
}


@dataclass(frozen=True)
class CalibrationChoice:
    """The calibration a command runs with, and where each setting came from."""

    num_samples: int
    timesteps: tuple[float, ...] | None  # None: the family's default grid
    origin: dict[str, str] = field(default_factory=dict)  # setting -> "--num-samples" | "recipe FILE:LINE" | "default"


@dataclass(frozen=True)
class RecipeCalibration:
    """A recipe's ``calibration:`` block (empty when the recipe has none)."""

    timesteps: tuple[float, ...] | None = None
    num_samples: int | None = None
    where: str | None = None  # FILE:LINE of the block

    def choose(self, *, num_samples: int | None = None, timesteps: tuple[float, ...] | None = None,
               diffusion: bool = True) -> CalibrationChoice:
        """Command-line values first, then this block, then the defaults (see the module docstring)."""
        origin = {}
        if num_samples is not None:
            origin["num_samples"] = "--num-samples"
        elif self.num_samples is not None:
            num_samples, origin["num_samples"] = self.num_samples, f"recipe {self.where}"
        else:
            num_samples, origin["num_samples"] = DEFAULT_NUM_SAMPLES, "default"
        if timesteps is not None:
            origin["timesteps"] = "--timesteps"
        elif self.timesteps is not None and diffusion:
            timesteps, origin["timesteps"] = self.timesteps, f"recipe {self.where}"
        else:
            origin["timesteps"] = "default"
        return CalibrationChoice(num_samples=num_samples, timesteps=timesteps, origin=origin)


def _node_of(node: Any, key: str) -> Any:
    for key_node, value_node in getattr(node, "value", None) or ():
        if getattr(key_node, "value", None) == key:
            return key_node
    return node


def parse_calibration_block(path: Path, value: Any, node: Any = None, key: Any = None) -> RecipeCalibration:
    """Check the ``calibration:`` mapping of ``path`` (``key``/``node``: its yaml nodes, for line numbers)."""
    where = _where(path, key if key is not None else node)
    if value is None:
        return RecipeCalibration(where=where)
    if not isinstance(value, dict):
        raise ValueError(f"{where}: the recipe's {BLOCK}: block is a {type(value).__name__}, not a mapping; "
                         f"give it {' and '.join(_FIELDS)} (or remove it)")
    unknown = sorted(set(value) - set(_FIELDS))
    if unknown:
        raise ValueError(f"{_where(path, _node_of(node, unknown[0]))}: unknown {BLOCK}: setting {unknown[0]!r}; "
                         f"the block takes {', '.join(_FIELDS)} (other calibration settings are prune options, "
                         "e.g. --seq-len, --seed)")
    timesteps = value.get("timesteps")
    if timesteps is not None:
        items = timesteps if isinstance(timesteps, list) else [timesteps]
        ok = bool(items) and all(isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t)
                                 and 0.0 <= t <= 1.0 for t in items)
        if not ok:
            raise ValueError(f"{_where(path, _node_of(node, 'timesteps'))}: {BLOCK}.timesteps must be "
                             f"{_FIELDS['timesteps']}; got {timesteps!r}")
        timesteps = tuple(float(t) for t in items)
    num_samples = value.get("num_samples")
    if num_samples is not None and not (isinstance(num_samples, int) and not isinstance(num_samples, bool)
                                        and num_samples >= 1):
        raise ValueError(f"{_where(path, _node_of(node, 'num_samples'))}: {BLOCK}.num_samples must be "
                         f"{_FIELDS['num_samples']}; got {num_samples!r}")
    return RecipeCalibration(timesteps=timesteps, num_samples=num_samples, where=where)


def recipe_calibration(recipe: str | Path) -> RecipeCalibration:
    """The ``calibration:`` block of a recipe file, for a Python user calling ``oneshot`` directly."""
    path = Path(recipe)
    _, root, data = read_recipe_yaml(path)
    data = data or {}
    key, node = next(((k, v) for k, v in getattr(root, "value", ()) if getattr(k, "value", None) == BLOCK),
                     (None, None))
    return parse_calibration_block(path, data.get(BLOCK) if isinstance(data, dict) else None, node, key)
