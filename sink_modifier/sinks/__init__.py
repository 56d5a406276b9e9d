"""Sink detection: attention mass (pure), thresholds (pure), and observation of a model."""

from sink_modifier.sinks.detection import sink_threshold, soft_sink_mask, token_weights
from sink_modifier.sinks.mass import (
    PAPER_COLLECTOR,
    mass_from_probabilities,
    mass_from_query_key,
    query_chunk_size,
)
from sink_modifier.sinks.observe import (
    AttentionMassObserver,
    SinkObservationError,
    global_attention_mass,
)

__all__ = [
    "PAPER_COLLECTOR",
    "AttentionMassObserver",
    "SinkObservationError",
    "global_attention_mass",
    "mass_from_probabilities",
    "mass_from_query_key",
    "query_chunk_size",
    "sink_threshold",
    "soft_sink_mask",
    "token_weights",
]
