"""Keep a sink pass's weight onloading bounded inside llm-compressor's sequential pipeline.

llm-compressor runs each traced subgraph inside ``compressed_tensors.offload.disable_offloading()``:
every offloaded tensor read in that context is onloaded once and *kept* (in
``OffloadCache.keep_onloaded_values``) until the context ends, so that the many batches of
one subgraph do not move the same weights again. The sink pass runs a whole-model forward
from the embedding's pre-hook, which is inside the first subgraph's context, so under it
every decoder layer's weights would be onloaded and held until the embedding subgraph
finishes: the entire model resident on the onload device at once, which is exactly what
sequential onloading exists to avoid.

:func:`onload_one_module_at_a_time` lifts ``disable_offloading`` for the duration of the
sink pass: a weight read then is onloaded for the op that reads it and released after,
so at most the tensors of the module running (plus whatever the pipeline had already
kept) are onloaded. Tensors the pipeline had kept stay kept and are still served from
its cache. The price is one transfer of each weight per calibration batch in the sink
pass (nothing at all when onload and offload device are the same, e.g. CPU).
"""

from __future__ import annotations

import contextlib

__all__ = ["onload_one_module_at_a_time"]


@contextlib.contextmanager
def onload_one_module_at_a_time():
    """Within this context, offloaded weights are not kept onloaded after use (no-op when they would not be anyway)."""
    try:
        from compressed_tensors.offload.cache.base import OffloadCache
    except ImportError:  # pragma: no cover - compressed-tensors is a dependency of llm-compressor
        yield
        return
    if not OffloadCache.offloading_disabled:
        yield
        return
    OffloadCache.offloading_disabled = False
    try:
        yield
    finally:
        OffloadCache.offloading_disabled = True
