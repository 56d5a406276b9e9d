"""What a sink pass raises when the model ran but its attention could not be observed."""

from __future__ import annotations

__all__ = ["SinkObservationError"]


class SinkObservationError(ValueError):
    """The model ran, but no attention layer could be observed."""
