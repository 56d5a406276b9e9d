"""Masked-diffusion calibration sets: clean windows times a grid of timesteps.

A DLM is pruned on the inputs it actually sees at inference: partially masked
sequences. Each clean window is therefore copied once per timestep in the grid
and noised by the forward process at that timestep. Rows are laid out
sample-major (sample 0 at every timestep, then sample 1, ...), so any prefix
of rows covers whole samples across the full grid.

The set plugs into llm-compressor in either form::

    oneshot(model=..., recipe=..., dataset=cal.dataloader())
    oneshot(model=..., recipe=..., dataset=cal.to_dataset(),
            num_calibration_samples=len(cal), shuffle_calibration_samples=False)

The DataLoader form is passed through unchanged; the Dataset form goes through
llm-compressor's own loader, which by default shuffles and keeps only 512 rows,
hence the two extra arguments.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from sink_modifier.data.documents import DocumentSource, load_documents
from .mask_token import resolve_mask_token_id
from .noising import LLADA_TIMESTEPS, mask_probability, noise_tokens, row_generator
from sink_modifier.data.windows import check_seq_len, token_windows

__all__ = ["DiffusionCalibrationSet", "build_diffusion_calibration", "noise_windows"]

MODEL_INPUT_COLUMNS: tuple[str, ...] = ("input_ids", "attention_mask")


@dataclass(frozen=True, eq=False)
class DiffusionCalibrationSet:
    """Noised calibration rows plus everything needed to reproduce and audit them.

    ``input_ids``/``attention_mask``/``sample_index``/``timestep`` have one entry
    per row ``R = N * len(timesteps)``; row ``s * len(timesteps) + j`` is clean
    window ``s`` noised at ``timesteps[j]``.
    """

    input_ids: torch.LongTensor  # [R, T] noised rows, sample-major
    attention_mask: torch.LongTensor  # [R, T] all ones (windows are full length)
    sample_index: torch.LongTensor  # [R] which clean window each row came from
    timestep: torch.Tensor  # [R] float64 t of each row
    clean_ids: torch.LongTensor  # [N, T] the un-noised windows
    timesteps: tuple[float, ...]
    mask_token_id: int
    seed: int
    eps: float = 1e-3

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean_ids.shape[1])

    def to_dataset(self) -> datasets.Dataset:
        """A ``datasets.Dataset`` with only ``input_ids`` and ``attention_mask`` (int64 lists).

        Only model inputs are included because llm-compressor passes every
        column to ``model.forward``. Pass ``num_calibration_samples=len(cal)``
        and ``shuffle_calibration_samples=False`` to ``oneshot`` to use every
        row in order (its defaults shuffle and keep 512 rows).
        """
        list_type = getattr(datasets, "List", datasets.Sequence)
        features = datasets.Features(
            {name: list_type(datasets.Value("int64")) for name in MODEL_INPUT_COLUMNS}
        )
        return datasets.Dataset.from_dict(
            {
                "input_ids": self.input_ids.tolist(),
                "attention_mask": self.attention_mask.tolist(),
            },
            features=features,
        )

    def dataloader(self, batch_size: int = 1, columns: tuple[str, ...] = MODEL_INPUT_COLUMNS) -> DataLoader:
        """Rows in order, batched as ``{"input_ids": LongTensor, "attention_mask": LongTensor}``.

        llm-compressor's ``oneshot(dataset=...)`` uses a DataLoader as is, so
        this form avoids its default shuffle-and-subsample-to-512 of Datasets.
        ``columns`` picks the keys: ``("input_ids",)`` for models whose code cannot take
        a 2-D ``attention_mask`` (the rows are full windows, so nothing is lost).
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        unknown = set(columns) - set(MODEL_INPUT_COLUMNS)
        if "input_ids" not in columns or unknown:
            raise ValueError(f"columns must include 'input_ids' and be among {MODEL_INPUT_COLUMNS}, got {columns!r}")
        return DataLoader(
            _Rows(self.input_ids, self.attention_mask if "attention_mask" in columns else None),
            batch_size=batch_size,
            shuffle=False,
        )

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary, including the observed mask rate at each timestep.

        The observed rate counts positions turned into the mask token among
        those whose clean token was not already the mask token.
        """
        k = len(self.timesteps)
        clean = self.clean_ids.repeat_interleave(k, dim=0)
        maskable = clean != self.mask_token_id
        newly_masked = (self.input_ids == self.mask_token_id) & maskable
        per_timestep = []
        for j, t in enumerate(self.timesteps):
            total = int(maskable[j::k].sum())
            per_timestep.append(
                {
                    "t": float(t),
                    "expected_mask_rate": mask_probability(t, self.eps),
                    "observed_mask_rate": (
                        int(newly_masked[j::k].sum()) / total if total else None
                    ),
                }
            )
        return {
            "num_samples": self.num_samples,
            "seq_len": self.seq_len,
            "timesteps": [float(t) for t in self.timesteps],
            "seed": self.seed,
            "eps": self.eps,
            "mask_token_id": self.mask_token_id,
            "rows": len(self),
            "mask_rate_per_timestep": per_timestep,
        }


class _Rows(TorchDataset):
    """Map-style view of the rows; default collation stacks the dicts."""

    def __init__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        self.input_ids = input_ids
        self.attention_mask = attention_mask

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if self.attention_mask is None:
            return {"input_ids": self.input_ids[index]}
        return {"input_ids": self.input_ids[index], "attention_mask": self.attention_mask[index]}


def noise_windows(
    clean_ids: torch.LongTensor,
    timesteps: Iterable[float],
    mask_token_id: int,
    seed: int,
    eps: float = 1e-3,
    maskable: torch.BoolTensor | None = None,
) -> tuple[torch.LongTensor, torch.LongTensor, torch.Tensor]:
    """Noise every clean window at every timestep; the pure core of the builder.

    Returns ``(input_ids [N*K, T], sample_index [N*K], timestep [N*K] float64)``
    in sample-major order. Row ``(s, j)`` uses ``row_generator(seed, s, j)``, so
    it is identical however many windows are noised together; ``t == 0`` rows
    are clean copies. ``maskable [N, T]`` (default: all true) marks the positions the
    forward process may mask (e.g. Dream keeps a leading BOS / trailing EOS).
    """
    grid = _validate_timesteps(timesteps)
    if not isinstance(clean_ids, torch.Tensor) or clean_ids.dim() != 2:
        raise ValueError(
            "clean_ids must be a 2-D LongTensor [num_samples, seq_len], got "
            f"{type(clean_ids).__name__} {tuple(getattr(clean_ids, 'shape', ()))}"
        )
    if clean_ids.dtype != torch.long:
        raise ValueError(f"clean_ids must have dtype torch.long, got {clean_ids.dtype}")
    # -1 is allowed only for clean-only grids (causal models have no mask token).
    _check_int("mask_token_id", mask_token_id, minimum=-1 if all(t == 0 for t in grid) else 0)
    _check_int("seed", seed)
    mask_probability(0.5, eps)  # validates eps once, before the loop
    if maskable is not None and (maskable.shape != clean_ids.shape or maskable.dtype != torch.bool):
        raise ValueError(
            f"maskable must be a bool tensor shaped like clean_ids {tuple(clean_ids.shape)}, "
            f"got {maskable.dtype} {tuple(maskable.shape)}"
        )
    rows = [
        noise_tokens(
            window, t, mask_token_id, row_generator(seed, s, j), eps=eps,
            maskable=None if maskable is None else maskable[s],
        )
        for s, window in enumerate(clean_ids)
        for j, t in enumerate(grid)
    ]
    n, k = clean_ids.shape[0], len(grid)
    input_ids = torch.stack(rows) if rows else clean_ids.new_empty((0, clean_ids.shape[1]))
    sample_index = torch.arange(n, dtype=torch.long).repeat_interleave(k)
    timestep = torch.tensor(grid, dtype=torch.float64).repeat(n)
    return input_ids, sample_index, timestep


def build_diffusion_calibration(
    source: DocumentSource | torch.LongTensor,
    tokenizer: Any,
    *,
    seq_len: int,
    num_samples: int,
    timesteps: Iterable[float] = LLADA_TIMESTEPS,
    seed: int = 0,
    mask_token_id: int | None = None,
    config: Any = None,
    eps: float = 1e-3,
    max_chars: int | None = None,
    maskable: Callable[[torch.LongTensor], torch.BoolTensor | None] | None = None,
) -> DiffusionCalibrationSet:
    """Build ``num_samples`` clean windows and noise each at every timestep.

    ``source`` is anything ``load_documents`` accepts, or a LongTensor of
    ready windows ``[N, seq_len]`` (its first ``num_samples`` rows are used and
    ``tokenizer`` is only consulted for the mask token). ``max_chars`` bounds
    how much text is read. ``mask_token_id`` defaults to
    ``resolve_mask_token_id(tokenizer, config)``; with ``config``, ``seq_len``
    is checked against the model's maximum length. ``seed`` drives both the
    window choice and the noise.

    Use with llm-compressor as ``oneshot(dataset=cal.dataloader())`` (rows used
    as is) or ``oneshot(dataset=cal.to_dataset(), num_calibration_samples=len(cal),
    shuffle_calibration_samples=False)``; without those two arguments a
    Dataset is shuffled and cut to 512 rows by llm-compressor.
    ``maskable(clean_ids) -> BoolTensor [N, T] | None`` restricts which positions may be
    masked (a family's noising rule, e.g. ``family.maskable``).
    """
    _check_int("num_samples", num_samples, minimum=1)
    _check_int("seq_len", seq_len, minimum=2)
    _check_int("seed", seed)
    grid = _validate_timesteps(timesteps)
    mask_probability(0.5, eps)  # validate eps before any expensive work
    if config is not None:
        check_seq_len(seq_len, config)
    clean_only = all(t == 0 for t in grid)
    if mask_token_id is None and clean_only:
        # Clean rows never use the mask token; causal models usually have none.
        mask_token_id = -1 if _no_mask_token(tokenizer, config) else resolve_mask_token_id(tokenizer, config)
    elif mask_token_id is None:
        mask_token_id = resolve_mask_token_id(tokenizer, config)
    _check_int("mask_token_id", mask_token_id, minimum=-1 if clean_only else 0)
    vocab_size = getattr(config, "vocab_size", None) if config is not None else None
    if isinstance(vocab_size, int) and mask_token_id >= vocab_size:
        raise ValueError(
            f"mask_token_id={mask_token_id} is outside the model's vocabulary "
            f"(vocab_size={vocab_size}); pass the model's own mask token id"
        )

    if isinstance(source, torch.Tensor):
        clean_ids = _given_windows(source, seq_len, num_samples)
    else:
        if tokenizer is None:
            raise ValueError(
                "tokenizer is required to tokenize text sources; pass the model's tokenizer"
            )
        documents = load_documents(source, max_chars=max_chars)
        clean_ids = token_windows(documents, tokenizer, seq_len, num_samples, seed=seed)

    positions = maskable(clean_ids) if maskable is not None else None
    input_ids, sample_index, timestep = noise_windows(clean_ids, grid, mask_token_id, seed, eps, positions)
    return DiffusionCalibrationSet(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        sample_index=sample_index,
        timestep=timestep,
        clean_ids=clean_ids,
        timesteps=grid,
        mask_token_id=int(mask_token_id),
        seed=seed,
        eps=float(eps),
    )


def _no_mask_token(tokenizer: Any, config: Any) -> bool:
    try:
        resolve_mask_token_id(tokenizer, config)
    except ValueError:
        return True
    return False


def _given_windows(windows: torch.Tensor, seq_len: int, num_samples: int) -> torch.LongTensor:
    if windows.dim() != 2 or windows.dtype != torch.long:
        raise ValueError(
            "a tensor source must be a LongTensor of windows [N, seq_len], got "
            f"{windows.dtype} {tuple(windows.shape)}"
        )
    if windows.shape[1] != seq_len:
        raise ValueError(
            f"tensor source has windows of length {windows.shape[1]} but seq_len={seq_len}; "
            "pass matching seq_len"
        )
    if windows.shape[0] < num_samples:
        raise ValueError(
            f"tensor source has {windows.shape[0]} windows but num_samples={num_samples}; "
            "pass more windows or a smaller num_samples"
        )
    return windows[:num_samples].detach().cpu().clone()


def _validate_timesteps(timesteps: Iterable[float]) -> tuple[float, ...]:
    if isinstance(timesteps, (str, bytes)) or not isinstance(timesteps, Iterable):
        raise ValueError(f"timesteps must be a sequence of floats in [0, 1], got {timesteps!r}")
    grid = tuple(timesteps)
    if not grid:
        raise ValueError("timesteps is empty; pass at least one t in [0, 1], e.g. LLADA_TIMESTEPS")
    for t in grid:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not 0 <= t <= 1:
            raise ValueError(f"timesteps must all lie in [0, 1], got {t!r} in {grid!r}")
    return tuple(float(t) for t in grid)


def _check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
