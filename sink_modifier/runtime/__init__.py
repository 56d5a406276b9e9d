"""Running pruned models fast: 2:4 semi-structured sparse kernels (PyTorch, NVIDIA sm80+)."""

from sink_modifier.runtime.semi_structured import (
    DEFAULT_MIN_FEATURES,
    AccelerationReport,
    accelerate_2of4,
    eligible_2of4_linears,
)

__all__ = ["DEFAULT_MIN_FEATURES", "AccelerationReport", "accelerate_2of4", "eligible_2of4_linears"]
