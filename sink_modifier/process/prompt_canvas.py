"""Prompt + canvas calibration rows for block-diffusion models (DiffusionGemma).

A block-diffusion model reads a clean prompt and denoises a canvas of ``canvas_length``
tokens after it. A calibration window of ``T`` tokens is therefore split at a fixed rule:

* the canvas is the last ``C = min(canvas_length, T // 2)`` tokens (at most the model's
  block, and never more than half the window, so every canvas has a prompt of at least
  ``T - C >= C`` tokens to condition on);
* the prompt is the first ``P = T - C`` tokens and stays clean, as at inference;
* the canvas is noised at every timestep of the grid with uniform substitution
  (:mod:`.uniform_noise`), the model's own forward process.

Row ``s * K + j`` is window ``s`` at ``timesteps[j]`` (sample-major, like
:class:`~sink_modifier.process.calibration.DiffusionCalibrationSet`), noised with
``row_generator(seed, s, j)``: a row's noise depends only on its coordinates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .calibration import _check_int, _given_windows, _validate_timesteps
from sink_modifier.data.documents import DocumentSource, load_documents
from .noising import LLADA_TIMESTEPS, mask_probability, row_generator
from .uniform_noise import uniform_noise_tokens
from sink_modifier.data.windows import check_seq_len, token_windows

__all__ = ["PromptCanvasCalibrationSet", "build_prompt_canvas_calibration", "canvas_size", "split_prompt_canvas"]


def canvas_size(seq_len: int, canvas_length: int) -> int:
    """Canvas tokens of a ``seq_len`` window: ``min(canvas_length, seq_len // 2)`` (>= 1)."""
    _check_int("seq_len", seq_len, minimum=2)
    _check_int("canvas_length", canvas_length, minimum=1)
    return min(canvas_length, seq_len // 2)


def split_prompt_canvas(windows: torch.Tensor, canvas_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``windows [N, T]`` -> ``(prompt [N, T - C], canvas [N, C])`` with ``C = canvas_size(T, canvas_length)``."""
    if windows.dim() != 2:
        raise ValueError(f"windows must be [N, T], got shape {tuple(windows.shape)}")
    size = canvas_size(int(windows.shape[1]), canvas_length)
    return windows[:, :-size], windows[:, -size:]


@dataclass(frozen=True, eq=False)
class PromptCanvasCalibrationSet:
    """Clean prompts and uniformly noised canvases, one row per (window, timestep)."""

    prompt_ids: torch.LongTensor  # [R, P] clean
    canvas_ids: torch.LongTensor  # [R, C] noised
    sample_index: torch.LongTensor  # [R]
    timestep: torch.Tensor  # [R] float64
    clean_ids: torch.LongTensor  # [N, T]
    timesteps: tuple[float, ...]
    vocab_size: int
    seed: int
    eps: float = 1e-3

    def __len__(self) -> int:
        return int(self.canvas_ids.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean_ids.shape[1])

    @property
    def canvas_length(self) -> int:
        return int(self.canvas_ids.shape[1])

    def dataloader(self, batch_size: int = 1) -> DataLoader:
        """Rows in order as ``{"input_ids": prompt [B, P], "decoder_input_ids": canvas [B, C]}``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        return DataLoader(_PromptCanvasRows(self.prompt_ids, self.canvas_ids), batch_size=batch_size, shuffle=False)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: the split and the observed share of changed canvas tokens per timestep."""
        k = len(self.timesteps)
        clean_canvas = self.clean_ids[:, -self.canvas_length :].repeat_interleave(k, dim=0)
        changed = self.canvas_ids != clean_canvas
        per_timestep = [
            {
                "t": float(t),
                "expected_noise_rate": mask_probability(t, self.eps),
                "expected_changed_rate": mask_probability(t, self.eps) * (1 - 1 / self.vocab_size),
                "observed_changed_rate": float(changed[j::k].float().mean()) if len(self) else None,
            }
            for j, t in enumerate(self.timesteps)
        ]
        return {
            "num_samples": self.num_samples,
            "seq_len": self.seq_len,
            "prompt_length": self.seq_len - self.canvas_length,
            "canvas_length": self.canvas_length,
            "noise": "uniform",
            "vocab_size": self.vocab_size,
            "timesteps": [float(t) for t in self.timesteps],
            "seed": self.seed,
            "eps": self.eps,
            "rows": len(self),
            "noise_rate_per_timestep": per_timestep,
        }


class _PromptCanvasRows(Dataset):
    def __init__(self, prompt_ids: torch.Tensor, canvas_ids: torch.Tensor) -> None:
        self.prompt_ids, self.canvas_ids = prompt_ids, canvas_ids

    def __len__(self) -> int:
        return int(self.canvas_ids.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.prompt_ids[index], "decoder_input_ids": self.canvas_ids[index]}


def noise_canvases(
    clean_ids: torch.LongTensor,
    timesteps: Iterable[float],
    *,
    canvas_length: int,
    vocab_size: int,
    seed: int,
    eps: float = 1e-3,
) -> PromptCanvasCalibrationSet:
    """The pure core: split every clean window and noise its canvas at every timestep."""
    grid = _validate_timesteps(timesteps)
    if not isinstance(clean_ids, torch.Tensor) or clean_ids.dim() != 2 or clean_ids.dtype != torch.long:
        raise ValueError(f"clean_ids must be a LongTensor [N, T], got {getattr(clean_ids, 'dtype', type(clean_ids))}")
    _check_int("seed", seed)
    prompts, canvases = split_prompt_canvas(clean_ids, canvas_length)
    noised = [
        uniform_noise_tokens(canvas, t, vocab_size, row_generator(seed, s, j), eps=eps)
        for s, canvas in enumerate(canvases)
        for j, t in enumerate(grid)
    ]
    k = len(grid)
    return PromptCanvasCalibrationSet(
        prompt_ids=prompts.repeat_interleave(k, dim=0).clone(),
        canvas_ids=torch.stack(noised) if noised else canvases.new_empty((0, canvases.shape[1])),
        sample_index=torch.arange(clean_ids.shape[0]).repeat_interleave(k),
        timestep=torch.tensor(grid, dtype=torch.float64).repeat(clean_ids.shape[0]),
        clean_ids=clean_ids,
        timesteps=grid,
        vocab_size=int(vocab_size),
        seed=seed,
        eps=float(eps),
    )


def build_prompt_canvas_calibration(
    source: DocumentSource | torch.LongTensor,
    tokenizer: Any,
    *,
    seq_len: int,
    num_samples: int,
    canvas_length: int,
    vocab_size: int,
    timesteps: Iterable[float] = LLADA_TIMESTEPS,
    seed: int = 0,
    config: Any = None,
    eps: float = 1e-3,
    max_chars: int | None = None,
) -> PromptCanvasCalibrationSet:
    """``num_samples`` windows of ``seq_len`` tokens of ``source``, split and noised (see the module doc)."""
    _check_int("num_samples", num_samples, minimum=1)
    canvas_size(seq_len, canvas_length)  # validates both
    if config is not None:
        check_seq_len(seq_len, config)
    if isinstance(source, torch.Tensor):
        clean_ids = _given_windows(source, seq_len, num_samples)
    else:
        if tokenizer is None:
            raise ValueError("tokenizer is required to tokenize text sources; pass the model's tokenizer")
        clean_ids = token_windows(load_documents(source, max_chars=max_chars), tokenizer, seq_len, num_samples, seed=seed)
    return noise_canvases(clean_ids, timesteps, canvas_length=canvas_length, vocab_size=vocab_size, seed=seed, eps=eps)
