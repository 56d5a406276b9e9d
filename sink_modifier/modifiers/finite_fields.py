"""Refusing NaN and infinity in a modifier's numeric settings, at recipe load, naming the field.

Pydantic accepts ``.nan`` / ``.inf`` from YAML as floats, and nothing downstream notices: a NaN
``sink_std`` makes every soft sink mask NaN, a NaN ``dampening_frac`` a NaN Hessian, and the
value ends up written into ``sink_modifier.json``. Every modifier validates all its fields with
:func:`check_finite`.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_finite"]


def _non_finite(value: Any) -> list[float]:
    """The non-finite floats in ``value``, looking into lists, tuples and dict values."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [value]
    if isinstance(value, (list, tuple)):
        return [bad for item in value for bad in _non_finite(item)]
    if isinstance(value, dict):
        return [bad for item in value.values() for bad in _non_finite(item)]
    return []


def check_finite(field: str, value: Any) -> Any:
    """``value`` unchanged, or ``ValueError`` naming ``field`` if it is or holds NaN / ±inf."""
    bad = _non_finite(value)
    if not bad:
        return value
    if isinstance(value, float):
        raise ValueError(f"{field} must be a finite number, got {value}")
    raise ValueError(f"{field} must hold finite numbers only, got {bad[0]} in {value}")
