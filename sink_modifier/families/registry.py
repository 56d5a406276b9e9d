"""Which family a checkpoint belongs to: detected from ``config.json``, or named with ``--family``.

Detection reads ``model_type``, ``architectures`` and ``auto_map``, most specific family
first; the generic bidirectional family catches any other ``is_causal: false`` model and the
causal family everything else.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .base import ModelFamily
from .config import read_config
from .diffusion_gemma import DiffusionGemmaFamily
from .dream import DreamFamily
from .generic import BidirectionalFamily, CausalFamily
from .llada import LLaDAFamily

__all__ = ["FAMILIES", "detect_family", "family_of_model", "get_family"]

# Most specific first: detection takes the first match.
FAMILIES: dict[str, ModelFamily] = {
    family.name: family
    for family in (LLaDAFamily(), DreamFamily(), DiffusionGemmaFamily(), BidirectionalFamily(), CausalFamily())
}


def get_family(name: str | ModelFamily) -> ModelFamily:
    if isinstance(name, ModelFamily):
        return name
    try:
        return FAMILIES[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; choose one of {', '.join(FAMILIES)}") from None


def detect_family(config: dict[str, Any] | str | Path, override: str | None = None) -> ModelFamily:
    """The family of a parsed ``config.json`` (or a model folder); ``override`` names it outright."""
    if override is not None:
        return get_family(override)
    if not isinstance(config, dict):
        config = read_config(config)
    for family in FAMILIES.values():
        if family.matches(config):
            return family
    raise AssertionError("the causal family matches every config")  # pragma: no cover


def family_of_model(model) -> ModelFamily:
    """The family of a loaded model, detected from its config (how a modifier finds its rules)."""
    config = getattr(model, "config", None)
    to_dict = getattr(config, "to_dict", None)
    return detect_family(to_dict() if callable(to_dict) else {})
