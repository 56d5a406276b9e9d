"""The one exception type that means "a check of the result failed" (exit code 1), not "bad input" (2)."""

from __future__ import annotations

__all__ = ["CheckFailedError"]


class CheckFailedError(Exception):
    """A command's own check of what it produced failed; nothing was published."""
