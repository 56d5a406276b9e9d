"""Calibration sets: clean windows times a grid of timesteps, noised by a model's forward process.

A diffusion LM is pruned on the inputs it actually sees at inference: noised sequences. Each
clean window is therefore copied once per timestep in the grid and noised by the forward
process (:mod:`.forward`) at that timestep. Rows are laid out sample-major (window 0 at every
timestep, then window 1, ...), so any prefix of rows covers whole windows across the full grid,
and row ``s * K + j`` is window ``s`` at ``timesteps[j]``, noised with ``row_generator(seed, s, j)``.

One type, two layouts (``prompt_length``):

* ``0``: the whole window is noised (LLaDA, Dream, any masked DLM; clean rows for causal models);
* ``P > 0``: a block-diffusion model (DiffusionGemma) reads a clean prompt (the first ``P``
  tokens) and denoises a canvas of ``C = T - P`` tokens after it; only the canvas is noised.
  :func:`canvas_size` is the split rule: ``C = min(canvas_length, T // 2)`` (at most the model's
  block, and never more than half the window, so every canvas has a prompt of at least ``C``
  tokens to condition on).

The set plugs into llm-compressor in either form::

    oneshot(model=..., recipe=..., dataset=cal.dataloader())
    oneshot(model=..., recipe=..., dataset=cal.to_dataset(),
            num_calibration_samples=len(cal), shuffle_calibration_samples=False)

The DataLoader form is passed through unchanged and carries each row's (window, timestep) to
the modifiers (:mod:`.rows`); the Dataset form goes through llm-compressor's own loader, which
by default shuffles and keeps only 512 rows, hence the two extra arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset

from sink_modifier.data.documents import DocumentSource, load_documents
from sink_modifier.data.windows import check_seq_len, token_windows

from .forward import ForwardProcess, row_generator
from .rows import CalibrationLoader, RowTable
from .schedule import DEFAULT_EPS, LLADA_TIMESTEPS, check_timesteps

__all__ = ["CalibrationSet", "build_calibration", "canvas_size", "noise_windows"]

WHOLE_WINDOW_COLUMNS: tuple[str, ...] = ("input_ids", "attention_mask")
PROMPT_CANVAS_COLUMNS: tuple[str, ...] = ("input_ids", "decoder_input_ids")


def canvas_size(seq_len: int, canvas_length: int) -> int:
    """Canvas tokens of a ``seq_len`` window: ``min(canvas_length, seq_len // 2)`` (>= 1)."""
    _check_int("seq_len", seq_len, minimum=2)
    _check_int("canvas_length", canvas_length, minimum=1)
    return min(canvas_length, seq_len // 2)


@dataclass(frozen=True, eq=False)
class CalibrationSet:
    """Noised calibration rows plus everything needed to reproduce and audit them.

    ``input_ids``/``window_index``/``timestep`` have one entry per row ``R = N * len(timesteps)``.
    ``process`` is ``None`` for clean rows (causal models: every timestep is 0).
    """

    input_ids: torch.LongTensor  # [R, T] whole windows, noised after the first prompt_length tokens
    window_index: torch.LongTensor  # [R] which clean window each row came from
    timestep: torch.Tensor  # [R] float64 t of each row
    clean_ids: torch.LongTensor  # [N, T] the un-noised windows
    timesteps: tuple[float, ...]
    process: ForwardProcess | None
    seed: int
    prompt_length: int = 0

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_samples(self) -> int:
        return int(self.clean_ids.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean_ids.shape[1])

    @property
    def canvas_length(self) -> int:
        """Noised tokens per row (the whole window when ``prompt_length == 0``)."""
        return self.seq_len - self.prompt_length

    @property
    def eps(self) -> float:
        return float(self.process.eps) if self.process is not None else DEFAULT_EPS

    @property
    def mask_token_id(self) -> int | None:
        """The mask token of a mask-token process; ``None`` for clean rows or uniform noise."""
        return getattr(self.process, "mask_token_id", None)

    @property
    def attention_mask(self) -> torch.LongTensor:
        """All ones ``[R, T]``: windows are full length."""
        return torch.ones_like(self.input_ids)

    def row_table(self, batch_size: int) -> RowTable:
        return RowTable(self.window_index, self.timestep, self.timesteps, batch_size)

    def columns(self, names: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
        """The model-input columns ``[R, ...]`` of this layout (default: all of them).

        Whole windows: ``input_ids`` and ``attention_mask``. Prompt + canvas:
        ``input_ids`` = the clean prompts ``[R, P]``, ``decoder_input_ids`` = the canvases ``[R, C]``.
        """
        allowed = PROMPT_CANVAS_COLUMNS if self.prompt_length else WHOLE_WINDOW_COLUMNS
        names = allowed if names is None else tuple(names)
        required = allowed if self.prompt_length else ("input_ids",)
        if set(names) - set(allowed) or set(required) - set(names):
            raise ValueError(
                f"columns must include {required} and be among {allowed} for this layout, got {names!r}"
            )
        p = self.prompt_length
        everything = (
            {"input_ids": self.input_ids[:, :p], "decoder_input_ids": self.input_ids[:, p:]}
            if p else {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        )
        return {name: everything[name] for name in allowed if name in names}

    def to_dataset(self, columns: tuple[str, ...] | None = None):
        """A ``datasets.Dataset`` of the model-input columns only (int64 lists).

        Only model inputs are included because llm-compressor passes every column to
        ``model.forward``. Pass ``num_calibration_samples=len(cal)`` and
        ``shuffle_calibration_samples=False`` to ``oneshot`` to use every row in order (its
        defaults shuffle and keep 512 rows).
        """
        import datasets

        chosen = self.columns(columns)
        list_type = getattr(datasets, "List", datasets.Sequence)
        features = datasets.Features({name: list_type(datasets.Value("int64")) for name in chosen})
        return datasets.Dataset.from_dict({name: t.tolist() for name, t in chosen.items()}, features=features)

    def dataloader(self, batch_size: int = 1, columns: tuple[str, ...] | None = None) -> CalibrationLoader:
        """Rows in order, ``batch_size`` at a time, as dicts of LongTensors; carries the :class:`RowTable`.

        llm-compressor's ``oneshot(dataset=...)`` uses a DataLoader as is, so this form avoids
        its default shuffle-and-subsample-to-512 of Datasets, and the modifiers read each batch's
        windows and timesteps off ``loader.rows``. ``columns`` picks the keys (see
        :meth:`columns`): ``("input_ids",)`` for models whose code cannot take a 2-D
        ``attention_mask`` (the rows are full windows, so nothing is lost).
        ``batch_size=len(timesteps)`` gives one window per batch, as ``sink_policy`` other than
        ``all`` requires.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        return CalibrationLoader(_Rows(self.columns(columns)), self.row_table(batch_size))

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary, including the expected and observed noise at each timestep."""
        head: dict[str, Any] = {"num_samples": self.num_samples, "seq_len": self.seq_len}
        if self.prompt_length:
            head.update(prompt_length=self.prompt_length, canvas_length=self.canvas_length)
        clean = self.clean_ids[:, self.prompt_length :].repeat_interleave(len(self.timesteps), dim=0)
        noised = self.input_ids[:, self.prompt_length :]
        if self.process is None:
            # Clean rows: recorded as a mask-token set whose (absent, -1) token never appears.
            settings: dict[str, Any] = {"mask_token_id": -1}
            rates: dict[str, Any] = {"mask_rate_per_timestep": [
                {"t": float(t), "expected_mask_rate": 0.0, "observed_mask_rate": 0.0 if len(self) else None}
                for t in self.timesteps
            ]}
        else:
            settings = self.process.describe()
            rates = self.process.describe_rates(clean, noised, self.timesteps)
        return {
            **head,
            **settings,
            "timesteps": [float(t) for t in self.timesteps],
            "seed": self.seed,
            "eps": self.eps,
            "rows": len(self),
            **rates,
        }


class _Rows(TorchDataset):
    """Map-style view of the rows; default collation stacks the dicts."""

    def __init__(self, columns: dict[str, torch.Tensor]) -> None:
        self.columns = columns
        self.length = int(next(iter(columns.values())).shape[0])

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: column[index] for name, column in self.columns.items()}


def noise_windows(
    clean_ids: torch.LongTensor,
    timesteps: Iterable[float],
    process: ForwardProcess | None,
    seed: int,
    maskable: torch.BoolTensor | None = None,
    prompt_length: int = 0,
) -> tuple[torch.LongTensor, torch.LongTensor, torch.Tensor]:
    """Noise every clean window at every timestep; the pure core of the builder.

    Returns ``(input_ids [N*K, T], window_index [N*K], timestep [N*K] float64)`` in sample-major
    order. Row ``(s, j)`` is ``process.noise_row`` of window ``s``'s tokens after
    ``prompt_length`` with ``row_generator(seed, s, j)``, so it is identical however many
    windows are noised together; ``t == 0`` rows are clean copies. ``maskable [N, T]`` (default:
    all true) marks the positions the process may noise (e.g. Dream keeps a leading BOS /
    trailing EOS). ``process=None`` gives clean copies and needs every timestep to be 0.
    """
    grid = check_timesteps(timesteps)
    if not isinstance(clean_ids, torch.Tensor) or clean_ids.dim() != 2:
        raise ValueError(
            "clean_ids must be a 2-D LongTensor [num_samples, seq_len], got "
            f"{type(clean_ids).__name__} {tuple(getattr(clean_ids, 'shape', ()))}"
        )
    if clean_ids.dtype != torch.long:
        raise ValueError(f"clean_ids must have dtype torch.long, got {clean_ids.dtype}")
    _check_int("seed", seed)
    _check_int("prompt_length", prompt_length, minimum=0)
    if prompt_length >= clean_ids.shape[1]:
        raise ValueError(f"prompt_length={prompt_length} leaves no canvas in windows of {clean_ids.shape[1]} tokens")
    if process is None and any(t != 0 for t in grid):
        raise ValueError(
            f"timesteps {grid} noise the rows but no forward process was given; pass the model's "
            "process (e.g. family.forward_process(...)) or timesteps (0.0,) for clean rows"
        )
    if maskable is not None and (maskable.shape != clean_ids.shape or maskable.dtype != torch.bool):
        raise ValueError(
            f"maskable must be a bool tensor shaped like clean_ids {tuple(clean_ids.shape)}, "
            f"got {maskable.dtype} {tuple(maskable.shape)}"
        )
    n, k, p = clean_ids.shape[0], len(grid), prompt_length
    if process is None:
        input_ids = clean_ids.repeat_interleave(k, dim=0)
    else:
        rows = [
            torch.cat([window[:p], process.noise_row(
                window[p:], t, row_generator(seed, s, j), None if maskable is None else maskable[s, p:],
            )])
            for s, window in enumerate(clean_ids)
            for j, t in enumerate(grid)
        ]
        input_ids = torch.stack(rows) if rows else clean_ids.new_empty((0, clean_ids.shape[1]))
    window_index = torch.arange(n, dtype=torch.long).repeat_interleave(k)
    timestep = torch.tensor(grid, dtype=torch.float64).repeat(n)
    return input_ids, window_index, timestep


def build_calibration(
    source: DocumentSource | torch.LongTensor,
    tokenizer: Any,
    *,
    process: ForwardProcess | None,
    seq_len: int,
    num_samples: int,
    timesteps: Iterable[float] = LLADA_TIMESTEPS,
    seed: int = 0,
    config: Any = None,
    max_chars: int | None = None,
    maskable: Callable[[torch.LongTensor], torch.BoolTensor | None] | None = None,
    canvas_length: int | None = None,
) -> CalibrationSet:
    """Build ``num_samples`` clean windows and noise each at every timestep with ``process``.

    ``source`` is anything ``load_documents`` accepts, or a LongTensor of ready windows
    ``[N, seq_len]`` (its first ``num_samples`` rows are used; ``tokenizer`` is then unused).
    ``max_chars`` bounds how much text is read. With ``config``, ``seq_len`` is checked against
    the model's maximum length and a mask token against its vocabulary. ``seed`` drives both the
    window choice and the noise. ``maskable(clean_ids) -> BoolTensor [N, T] | None`` restricts
    which positions may be noised (a family's rule, ``family.maskable``). ``canvas_length``
    (``None``: noise whole windows) selects the prompt + canvas layout with
    ``C = canvas_size(seq_len, canvas_length)``. ``family.build_calibration`` passes all of these
    for a model; use with llm-compressor as ``oneshot(dataset=cal.dataloader())``.
    """
    _check_int("num_samples", num_samples, minimum=1)
    _check_int("seq_len", seq_len, minimum=2)
    _check_int("seed", seed)
    grid = check_timesteps(timesteps)
    prompt_length = 0 if canvas_length is None else seq_len - canvas_size(seq_len, canvas_length)
    if config is not None:
        check_seq_len(seq_len, config)
    mask_token_id = getattr(process, "mask_token_id", None)
    vocab_size = getattr(config, "vocab_size", None) if config is not None else None
    if mask_token_id is not None and isinstance(vocab_size, int) and mask_token_id >= vocab_size:
        raise ValueError(
            f"mask_token_id={mask_token_id} is outside the model's vocabulary "
            f"(vocab_size={vocab_size}); pass the model's own mask token with --mask-token-id N "
            "(mask_token_id=N in Python)"
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
    input_ids, window_index, timestep = noise_windows(clean_ids, grid, process, seed, positions, prompt_length)
    return CalibrationSet(
        input_ids=input_ids,
        window_index=window_index,
        timestep=timestep,
        clean_ids=clean_ids,
        timesteps=grid,
        process=process,
        seed=seed,
        prompt_length=prompt_length,
    )


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


def _check_int(name: str, value: Any, minimum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
