"""The diffusion forward process: schedule, mask-token and uniform noise, calibration sets.

:mod:`.schedule` (timestep grids, the ``(1 - eps) t + eps`` rate), :mod:`.forward` (one
:class:`ForwardProcess` per kind of noise: :class:`MaskTokenProcess`, :class:`UniformSubstitution`),
:mod:`.calibration` (the one :class:`CalibrationSet` type and its builder), :mod:`.rows` (each
row's window and timestep, carried by the DataLoader to the modifiers), :mod:`.sharding`
(whole windows per ``torch.distributed`` rank), :mod:`.mask_token` (finding a model's mask token).
Pure: no llm-compressor, no transformers.
"""

from .calibration import CalibrationSet, build_calibration, canvas_size, noise_windows
from .forward import ForwardProcess, MaskTokenProcess, UniformSubstitution, row_generator
from .mask_token import resolve_mask_token_id
from .rows import CalibrationLoader, RowTable
from .schedule import DEFAULT_EPS, LLADA_TIMESTEPS, check_timesteps, mask_probability, noise_rate, timestep_grid

__all__ = [
    "DEFAULT_EPS",
    "LLADA_TIMESTEPS",
    "CalibrationLoader",
    "CalibrationSet",
    "ForwardProcess",
    "MaskTokenProcess",
    "RowTable",
    "UniformSubstitution",
    "build_calibration",
    "canvas_size",
    "check_timesteps",
    "mask_probability",
    "noise_rate",
    "noise_windows",
    "resolve_mask_token_id",
    "row_generator",
    "timestep_grid",
]
