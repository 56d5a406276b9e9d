"""Paired per-window differences: the one comparison every study, sweep and benchmark reports.

Two models scored on the same windows with the same masks differ window by window; the mean of
those differences and its standard error (sample standard deviation / sqrt(n)) say whether one
is better, with the window-to-window variation both share taken out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["paired_difference"]


def paired_difference(a: Sequence[float], b: Sequence[float],
                      weights: Sequence[float] | None = None) -> tuple[float, float | None]:
    """Mean of ``w_i (a_i - b_i)`` and its standard error (``None`` for a single window).

    ``weights`` (default 1 each) weight the windows as the metric does (e.g. by scored tokens).
    """
    if len(a) != len(b) or (weights is not None and len(weights) != len(a)):
        raise ValueError(f"paired windows differ in number: {len(a)} vs {len(b)}"
                         + ("" if weights is None else f" ({len(weights)} weights)"))
    if not a:
        raise ValueError("no windows to compare")
    w = [1.0] * len(a) if weights is None else list(weights)
    d = [float(wi) * (float(x) - float(y)) for wi, x, y in zip(w, a, b)]
    mean = math.fsum(d) / len(d)
    if len(d) < 2:
        return mean, None
    variance = math.fsum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, math.sqrt(variance / len(d))
