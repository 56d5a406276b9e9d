"""The diffusion forward process: noise schedule, mask-token and uniform noise, calibration sets."""

from .calibration import DiffusionCalibrationSet, build_diffusion_calibration, noise_windows
from .mask_token import is_diffusion_config, resolve_mask_token_id
from .noising import LLADA_TIMESTEPS, mask_probability, noise_tokens, row_generator, timestep_grid

__all__ = [
    "LLADA_TIMESTEPS",
    "DiffusionCalibrationSet",
    "build_diffusion_calibration",
    "is_diffusion_config",
    "mask_probability",
    "noise_tokens",
    "noise_windows",
    "resolve_mask_token_id",
    "row_generator",
    "timestep_grid",
]
