"""Which (window, timestep) each calibration row is, carried by the DataLoader to whoever needs it.

llm-compressor hands the calibration DataLoader to the modifiers unchanged (``oneshot(dataset=
loader)`` puts it in ``state.data.calib``) and numbers the batches it runs
(``state.current_batch_idx``). A :class:`CalibrationLoader` is a plain ``DataLoader`` that also
carries the :class:`RowTable` of its rows, so a modifier maps a batch index to the windows and
timesteps of its rows instead of guessing them from the tokens::

    loader = cal.dataloader(batch_size=len(cal.timesteps))   # one window per batch
    oneshot(model=..., recipe=..., dataset=loader)
    # in the modifier: loader.rows.batch(state.current_batch_idx) -> (windows, timesteps)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

__all__ = ["CalibrationLoader", "RowTable"]


@dataclass(frozen=True, eq=False)
class RowTable:
    """Window index and timestep of every row, and how the loader batches them (in order, unshuffled)."""

    window_index: torch.LongTensor  # [R] global window number of each row
    timestep: torch.Tensor  # [R] float64 t of each row
    timesteps: tuple[float, ...]  # the set's grid: each window appears once at each
    batch_size: int

    def __len__(self) -> int:
        return int(self.window_index.shape[0])

    @property
    def num_batches(self) -> int:
        return -(-len(self) // self.batch_size)

    def batch(self, batch_idx: int) -> tuple[torch.LongTensor, torch.Tensor]:
        """``(window_index [B], timestep [B])`` of batch ``batch_idx``'s rows."""
        if not 0 <= batch_idx < self.num_batches:
            raise IndexError(f"batch {batch_idx} is outside the loader's {self.num_batches} batches")
        rows = slice(batch_idx * self.batch_size, (batch_idx + 1) * self.batch_size)
        return self.window_index[rows], self.timestep[rows]

    def one_window_problem(self, batch_idx: int) -> str | None:
        """Why batch ``batch_idx`` is not every timestep of one window, or ``None`` when it is."""
        windows, times = self.batch(batch_idx)
        if windows.numel() < 2:
            return f"batch {batch_idx} holds {windows.numel()} row"
        distinct = sorted(set(windows.tolist()))
        if len(distinct) > 1:
            return f"batch {batch_idx} mixes windows {distinct}"
        if sorted(times.tolist()) != sorted(self.timesteps):
            return (
                f"batch {batch_idx} holds window {distinct[0]} at timesteps {sorted(times.tolist())}, "
                f"not at each of {list(self.timesteps)}"
            )
        return None


class CalibrationLoader(DataLoader):
    """A ``DataLoader`` over calibration rows in order, with their :class:`RowTable` as ``rows``."""

    def __init__(self, dataset, rows: RowTable) -> None:
        super().__init__(dataset, batch_size=rows.batch_size, shuffle=False)
        self.rows = rows
