"""The points of a sparsity sweep and each recipe set to a point (``sink-modifier sweep --sparsities``).

``0.5`` is unstructured at that sparsity, ``2:4`` is ``mask_structure: "2:4"``; :func:`point_recipe` writes a
recipe's copy with every pruning modifier set to the point (other settings untouched)."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:

    from sink_modifier.commands.recipe_check import CheckedRecipe


SPARSITIES_HELP = "comma-separated sparsities in [0, 1] and N:M structures, e.g. 0.5,0.6,0.7,2:4"


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
