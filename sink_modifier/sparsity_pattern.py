"""N:M sparsity patterns: the ``mask_structure`` string and the check that weights keep it.

``"N:M"`` means N of every M consecutive input weights of a row are zero (``"2:4"``);
``"0:0"`` means unstructured. One parser for the modifiers' validator, ``verify`` and the
2:4 runtime; pure (torch only).
"""

from __future__ import annotations

import re

import torch

__all__ = ["UNSTRUCTURED", "is_n_m_sparse", "parse_mask_structure"]

UNSTRUCTURED = (0, 0)
_PATTERN = re.compile(r"^(\d+):(\d+)$")


def parse_mask_structure(value: object) -> tuple[int, int]:
    """``"N:M"`` → ``(N, M)`` with ``0 < N < M``, or ``(0, 0)``; ``ValueError`` otherwise.

    Spaces around the string and around the colon are tolerated (``" 2 : 4 "``).
    """
    match = _PATTERN.match(re.sub(r"\s+", "", str(value)))
    if not match:
        raise ValueError(f"mask_structure must look like 'N:M' (e.g. '2:4') or '0:0', got {value!r}")
    n, m = int(match[1]), int(match[2])
    if (n, m) != UNSTRUCTURED and not 0 < n < m:
        raise ValueError(
            f"mask_structure {value!r} is invalid: N of every M weights are pruned, so 0 < N < M "
            "(e.g. '2:4'); use '0:0' for unstructured sparsity"
        )
    return n, m


def is_n_m_sparse(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive inputs of every row has at least ``n`` zeros."""
    rows, cols = weight.shape
    if cols % m:
        return False
    return bool(((weight == 0).reshape(rows, cols // m, m).sum(-1) >= n).all())
