"""A modifier's settings: its fields minus llm-compressor's own bookkeeping, read off upstream's class."""

from __future__ import annotations

from typing import Any

__all__ = ["LIFECYCLE_FIELDS", "modifier_settings"]


def _lifecycle_fields() -> frozenset[str]:
    # Derived, not listed: whatever the pinned llm-compressor's base Modifier declares (index,
    # group, start, end, update, the *_ state flags, ...) is bookkeeping, not a recipe setting.
    from llmcompressor.modifiers import Modifier

    return frozenset(Modifier.model_fields)


LIFECYCLE_FIELDS = _lifecycle_fields()


def modifier_settings(modifier: Any, *, exclude: set[str] | frozenset[str] = frozenset()) -> dict:
    """``modifier.model_dump()`` without the lifecycle fields (and ``exclude``)."""
    return modifier.model_dump(exclude={*LIFECYCLE_FIELDS, *exclude})
