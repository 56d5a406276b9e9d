"""Masked-diffusion calibration data: text -> token windows -> one noised copy per timestep."""

from .calibration import DiffusionCalibrationSet, build_diffusion_calibration, noise_windows
from .documents import SUPPORTED_EXTENSIONS, load_documents
from .mask_token import is_diffusion_config, resolve_mask_token_id
from .noising import LLADA_TIMESTEPS, mask_probability, noise_tokens, row_generator, timestep_grid
from .windows import check_seq_len, max_sequence_length, token_windows

__all__ = [
    "LLADA_TIMESTEPS",
    "SUPPORTED_EXTENSIONS",
    "DiffusionCalibrationSet",
    "build_diffusion_calibration",
    "check_seq_len",
    "is_diffusion_config",
    "load_documents",
    "mask_probability",
    "max_sequence_length",
    "noise_tokens",
    "noise_windows",
    "resolve_mask_token_id",
    "row_generator",
    "timestep_grid",
    "token_windows",
]
