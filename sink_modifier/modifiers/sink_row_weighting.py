"""The calibration rows' input weights, per batch: what every sink-aware modifier multiplies its inputs by.

A modifier that scores weights from its Linears' inputs (Wanda's column norms, the SparseGPT and
GPTQ Hessians) takes this mixin's settings and calls its three lifecycle steps:

* ``_initialize_row_weighting(state)`` in ``on_initialize``: the model, its family (attached by
  ``sink-modifier prune`` or detected once), the rows' (window, timestep) table, the ELBO
  normaliser and the mask token the options need (refused early when they cannot apply);
* ``_register_batch_hooks()`` in ``on_calibration_start``: a forward-pre hook on the input
  embedding (every pipeline runs it first for each batch) computes the batch's token factors
  ``[B, T]`` once: the sink weights ``1 - s`` from one dense forward (``sink_weighting``, through
  ``sink_cache_dir`` when set), times the masked-position and timestep weights
  (:mod:`.row_weighting`); ``_after_batch_weights`` lets a modifier use the same batch (OWL);
* ``_end_row_weighting()`` in ``on_calibration_end``.

Its Linear hooks then call :meth:`weights_for` to get their inputs and the current batch's
factors aligned. With every option off no hook is hung and ``weights_for`` returns the inputs
untouched: the modifier is its upstream counterpart bit for bit. See
:mod:`sink_modifier.modifiers.sink_base` for how the masks fit llm-compressor's lifecycle.
"""

from __future__ import annotations

from typing import Literal

import torch
from llmcompressor.core import State, active_session
from llmcompressor.modifiers.utils.hooks import HooksMixin
from loguru import logger
from pydantic import BaseModel, Field, PrivateAttr, ValidationInfo, field_validator

from sink_modifier.modifiers.finite_fields import check_finite
from sink_modifier.modifiers.row_weighting import (
    elbo_row_weights,
    masked_position_weights,
    mean_inverse_timestep,
    token_input_factors,
)
from sink_modifier.process.calibration import CalibrationSet
from sink_modifier.process.rows import RowTable
from sink_modifier.sinks import global_attention_mass, soft_sink_mask
from sink_modifier.sinks.mask_cache import CalibrationCache
from sink_modifier.sinks.stability import apply_sink_policy

__all__ = ["SinkRowWeighting"]


class SinkRowWeighting(BaseModel):
    """Settings and per-batch input factors of the calibration rows (mixed into a Modifier).

    What each option does, with its constraints: ``docs/recipes.md`` (sink policies,
    diffusion-aware options) and ``docs/scaling.md`` (the sink pass's query blocks).

    :param sink_std: ``k`` of the sink threshold ``mean + k * std`` of the attention mass.
    :param sink_alpha: slope of the soft sink mask ``sigmoid(alpha * (mass - threshold))``.
    :param sink_weighting: down-weight each row's sink tokens by ``1 - s``; false: upstream's algorithm, bit for bit.
    :param attention_chunk_size: queries per block of the sink pass; ``None``: about 64 MiB of float32 scores.
    :param sink_policy: which sink occurrences count: ``all`` (the paper's), ``unstable`` or ``stable``.
    :param policy_unstable_std: std over timesteps above which a position's sinkness is unstable.
    :param policy_stable_mean: mean over timesteps from which a steady position counts as a stable sink.
    :param mask_token_id: the mask token (this field > the attached family's > ``config.mask_token_id``).
    :param sink_cache_dir: folder reusing each batch's sink weights across runs (bit-identical; not saved).
    :param timestep_weighting: ``uniform`` (default) or ``elbo`` (row ``r`` weighted by ``1 / t_r``, mean 1).
    :param masked_position_weight: ``λ`` in ``[0, 1]``: share of each row's statistic from masked positions.
    """

    sink_std: float = 2.0
    sink_alpha: float = 5.0
    sink_weighting: bool = True
    attention_chunk_size: int | None = None
    sink_policy: Literal["all", "unstable", "stable"] = "all"
    policy_unstable_std: float = 0.2
    policy_stable_mean: float = 0.5
    mask_token_id: int | None = None
    sink_cache_dir: str | None = Field(default=None, exclude=True)
    timestep_weighting: Literal["uniform", "elbo"] = "uniform"
    masked_position_weight: float | None = None

    _model: torch.nn.Module | None = PrivateAttr(default=None)
    _token_weights: dict[int, torch.Tensor | None] = PrivateAttr(default_factory=dict)
    _pending_attention_mask: torch.Tensor | None = PrivateAttr(default=None)
    _pending_call: dict | None = PrivateAttr(default=None)
    _model_family: object | None = PrivateAttr(default=None)
    _attached_family: object | None = PrivateAttr(default=None)
    _attached_calibration: CalibrationSet | None = PrivateAttr(default=None)
    _rows: RowTable | None = PrivateAttr(default=None)
    _mean_inverse_timestep: float | None = PrivateAttr(default=None)
    _masked_token: int | None = PrivateAttr(default=None)
    _cache: CalibrationCache | None = PrivateAttr(default=None)
    _cache_counts: dict[str, dict[str, int]] = PrivateAttr(default_factory=dict)

    # -- validation (fails at recipe load, naming the field) ------------------------
    @field_validator("*", mode="after")
    @classmethod
    def _check_finite(cls, value, info: ValidationInfo):
        return check_finite(info.field_name, value)

    @field_validator("sink_alpha")
    @classmethod
    def _check_alpha(cls, value: float) -> float:
        if value <= 0:
            raise ValueError(f"sink_alpha must be > 0 (slope of the sink sigmoid), got {value}")
        return value

    @field_validator("attention_chunk_size")
    @classmethod
    def _check_chunk(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError(f"attention_chunk_size must be >= 1 or null, got {value}")
        return value

    @field_validator("masked_position_weight")
    @classmethod
    def _check_masked_weight(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(
                f"masked_position_weight must be in [0, 1] or null (off), got {value}; e.g. 0.75 gives "
                "the masked positions three quarters of each row's statistic"
            )
        return value

    # -- what the caller resolved ---------------------------------------------------
    def attach(self, *, family=None, calibration: CalibrationSet | None = None) -> None:
        """Hand down what the caller already resolved, before ``oneshot``.

        ``family`` (a :class:`~sink_modifier.families.ModelFamily`) replaces detection from
        ``model.config``; ``calibration`` supplies the rows' (window, timestep) table when the
        calibration DataLoader carries none, and the mask token of its forward process.
        """
        if family is not None:
            self._attached_family = family
        if calibration is not None:
            self._attached_calibration = calibration

    # -- lifecycle steps (called from the modifier's own hooks) ----------------------
    def _initialize_row_weighting(self, state: State) -> None:
        """``on_initialize``: the model, family, row table and what the options need; refuse what cannot apply."""
        self._model = state.model
        self._model_family = self._attached_family  # None: detected on first use, for this model
        self._rows = self._row_table(getattr(getattr(state, "data", None), "calib", None))
        self._mean_inverse_timestep = self._elbo_normaliser() if self.timestep_weighting == "elbo" else None
        self._masked_token = self._masked_position_token() if self.masked_position_weight is not None else None
        if self._needs_batch_hook() and self._input_embedding() is None:
            raise ValueError(
                f"{type(state.model).__name__} has no input embedding (get_input_embeddings() "
                f"returned None); {self._batch_hook_reason()} needs it to see each batch's token ids"
            )

    def _register_batch_hooks(self) -> None:
        """``on_calibration_start``: the input embedding's pre-hook that computes each batch's factors."""
        if not self._needs_batch_hook():  # upstream's algorithm: the Linear hooks are all it needs
            return
        self.register_hook(self._model, self._capture_attention_mask, "forward_pre", with_kwargs=True)
        self.register_hook(self._input_embedding(), self._start_batch, "forward_pre")
        self._cache = self._open_cache()

    def _end_row_weighting(self) -> None:
        """``on_calibration_end``: drop the batches' factors, keep what the cache counted."""
        self._token_weights = dict()
        if self._cache is not None:
            self._cache_counts, self._cache = self._cache.counts, None

    def _after_batch_weights(self, input_ids: torch.Tensor, valid: torch.Tensor | None,
                             weights: torch.Tensor | None) -> None:
        """Called once per batch with its factors, hooks disabled (OWL's dense pass overrides it)."""

    def _sink_mask_settings(self) -> dict:
        """How this modifier derives its masks (``sink_mask_mode`` and its settings), keyed in the sink cache."""
        return {"sink_mask_mode": "per_row"}

    def _weights_rows(self) -> bool:
        """Whether the Linears' input rows are weighted (else: upstream's statistic on the raw inputs)."""
        return self.sink_weighting or self.timestep_weighting != "uniform" or self.masked_position_weight is not None

    def _needs_batch_hook(self) -> bool:
        """Whether each batch's token ids must be seen (the input embedding's pre-hook)."""
        return self._weights_rows()

    def _batch_hook_reason(self) -> str:
        reasons = [name for name, on in (
            ("sink weighting", self.sink_weighting),
            (f"timestep_weighting={self.timestep_weighting!r}", self.timestep_weighting != "uniform"),
            ("masked_position_weight", self.masked_position_weight is not None),
        ) if on]
        return " and ".join(reasons)

    def _elbo_normaliser(self) -> float:
        """``mean(1 / t)`` over the calibration rows (refused without their row table, or with clean rows)."""
        if self._rows is None:
            raise ValueError(
                "timestep_weighting 'elbo' weights each calibration row by its timestep, but this "
                "calibration DataLoader carries no row table (the window and timestep of each row): "
                "calibrate on CalibrationSet.dataloader(...) (sink-modifier prune does this), or attach "
                "the set with modifier.attach(calibration=...)"
            )
        return mean_inverse_timestep(self._rows.timestep)

    def check_calibration_plan(self, *, family=None, timesteps=None, calibration: CalibrationSet | None = None) -> None:
        """Refuse, before any weight is read, what ``on_initialize`` would refuse for this model family,
        timestep grid or calibration set: ``masked_position_weight`` where the forward process masks
        nothing (uniform substitution, clean rows of a causal model), ``timestep_weighting: elbo``
        with clean rows (``t = 0``). Raises ``ValueError``; a no-op with both options off."""
        if self.masked_position_weight is not None:
            uniform = family is not None and getattr(family, "uniform_noise", False)
            substitutes = calibration is not None and calibration.process is not None and calibration.mask_token_id is None
            if uniform or substitutes:
                name = f"the {family.name} family's" if family is not None else "the calibration set's"
                raise ValueError(
                    f"masked_position_weight weights the positions the forward process masks, but {name} "
                    "forward process substitutes uniform random tokens (no position holds a mask token); "
                    "leave masked_position_weight unset"
                )
            causal = family is not None and not getattr(family, "diffusion", True)
            if causal or (calibration is not None and calibration.process is None):
                raise ValueError(
                    "masked_position_weight weights masked positions, but the calibration rows of a causal model "
                    "are clean (nothing is masked); leave masked_position_weight unset"
                )
        if self.timestep_weighting == "elbo":
            for grid in (timesteps, getattr(calibration, "timesteps", None)):
                if grid is not None:
                    mean_inverse_timestep(torch.tensor(list(grid), dtype=torch.float64))

    def _masked_position_token(self) -> int:
        """The mask token whose positions ``masked_position_weight`` weights; refused where nothing masks."""
        self.check_calibration_plan(family=self._family(), calibration=self._attached_calibration)
        mask_id = self.resolved_mask_token_id()
        if mask_id is None:
            raise ValueError(
                "masked_position_weight needs the model's mask token, and neither the family nor "
                "config.mask_token_id names one: set mask_token_id in the recipe (e.g. 126336 for LLaDA)"
            )
        return int(mask_id)

    def _row_table(self, loader) -> RowTable | None:
        """The calibration rows' table: the loader's own, else the attached set's batched like the loader."""
        rows = getattr(loader, "rows", None)
        if isinstance(rows, RowTable):
            return rows
        cal = self._attached_calibration
        batch_size = getattr(loader, "batch_size", None)
        dataset = getattr(loader, "dataset", None)
        if cal is not None and isinstance(batch_size, int) and dataset is not None and len(dataset) == len(cal):
            return cal.row_table(batch_size)
        return None

    # -- sink weights per batch -------------------------------------------------------
    def _family(self):
        """The model family's rules (:mod:`sink_modifier.families`): the attached one, else detected
        once per model from its config (direct ``oneshot()`` users)."""
        if self._model_family is None:
            from sink_modifier.families import family_of_model

            self._model_family = family_of_model(self._model)
        return self._model_family

    def _input_embedding(self) -> torch.nn.Module | None:
        # Default get_input_embeddings(); DiffusionGemma: the decoder's (canvas) embedding.
        return self._family().sink_embedding(self._model)

    def _capture_attention_mask(self, _module, _args, kwargs):
        # Fires only where the pipeline calls the whole model (basic); the sequential
        # pipeline calls traced subgraphs, and its rows are unpadded windows.
        self._pending_attention_mask = kwargs.get("attention_mask")
        self._pending_call = kwargs  # a family's sink pass may need other inputs (a prompt)

    def _start_batch(self, _module, args):
        batch_idx = active_session().state.current_batch_idx
        if batch_idx in self._token_weights:
            return
        input_ids = args[0]
        valid = self._pending_attention_mask
        self._pending_attention_mask = None
        if valid is not None and (valid.shape != input_ids.shape or bool(valid.all())):
            valid = None
        with HooksMixin.disable_hooks():
            sinks = self._cached_token_weights(input_ids, valid) if self.sink_weighting else None
            self._token_weights[batch_idx] = self.diffusion_weights(batch_idx, input_ids, valid, sinks)
            self._after_batch_weights(input_ids, valid, self._token_weights[batch_idx])

    # -- the sink cache (sink_cache_dir) -------------------------------------------------
    def _open_cache(self) -> CalibrationCache | None:
        if self.sink_cache_dir is None or not self.sink_weighting:
            return None
        mode_settings = self._sink_mask_settings()
        mode = mode_settings.pop("sink_mask_mode")
        settings = {name: getattr(self, name) for name in
                    ("sink_std", "sink_alpha", "sink_policy", "policy_unstable_std", "policy_stable_mean")}
        settings.update(sink_mask_mode=mode, family=self._family().name, mask_token_id=self.resolved_mask_token_id())
        # The query-block size changes the last bits of the mass once it splits the sequence, and the
        # summation order / score dtype differ between modes (sinks.mass: reference = the paper's
        # collector); both are keyed so a hit always equals the run it replaces bit for bit.
        settings.update(attention_chunk_size=self.attention_chunk_size,
                        mass_collector="paper" if mode == "reference" else "default")
        settings.update(mode_settings)
        return CalibrationCache(self.sink_cache_dir, self._model, settings)

    @property
    def cache_counts(self) -> dict[str, dict[str, int]]:
        """What the last calibration took from ``sink_cache_dir``: ``{"token_weights": {"hits", "misses"}, ...}``."""
        counts = self._cache.counts if self._cache is not None else self._cache_counts
        return {kind: dict(outcomes) for kind, outcomes in counts.items()}

    def _cached_token_weights(self, input_ids: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """:meth:`batch_token_weights`, through the cache when there is one (keyed by this batch's inputs)."""
        if self._cache is not None:
            try:
                self._cache.model_digest  # the dense weights, read once per run
            except ValueError as err:  # no readable copy of some weight (meta): run without the cache
                logger.warning(f"sink_cache_dir {self.sink_cache_dir} is not used: {err}")
                self._cache = None
        if self._cache is None:
            return self.batch_token_weights(input_ids, valid)
        call = {f"call.{k}": v for k, v in (self._pending_call or {}).items() if isinstance(v, torch.Tensor)}
        return self._cache.token_weights(
            {"input_ids": input_ids, "valid": valid, **call}, lambda: self.batch_token_weights(input_ids, valid)
        )

    def sink_mass(self, input_ids: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Global attention mass ``[B, T]`` of ``input_ids`` under the (dense) model."""
        extra = self._family().sink_pass(self._model, input_ids, self._pending_call)
        return global_attention_mass(self._model, input_ids, valid, chunk_size=self.attention_chunk_size, **extra)

    def batch_token_weights(self, input_ids: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        """Per-token weights ``1 - s`` of one calibration batch (the paper: one mask per row)."""
        sinks = soft_sink_mask(self.sink_mass(input_ids, valid), self.sink_std, self.sink_alpha, valid)
        if self.sink_policy != "all":
            self._check_one_window_per_batch()
            sinks = self.policy_masks(sinks)
        weights = 1.0 - sinks
        return weights if valid is None else weights * valid.to(weights)

    def policy_masks(self, sinks: torch.Tensor) -> torch.Tensor:
        """Apply ``sink_policy`` to the soft masks ``[K timesteps, T]`` of one sample."""
        return apply_sink_policy(
            sinks, self.sink_policy, unstable_std=self.policy_unstable_std, stable_mean=self.policy_stable_mean
        )

    def resolved_mask_token_id(self) -> int | None:
        """The mask token: the ``mask_token_id`` field > the attached calibration set's process
        (the attached family's) > the family's (attached, else detected) from ``model.config``."""
        if self.mask_token_id is not None:
            return self.mask_token_id
        attached = getattr(self._attached_calibration, "mask_token_id", None)
        if attached is not None:
            return attached
        try:
            return self._family().mask_token_id(None, getattr(self._model, "config", None))
        except ValueError:  # a diffusion family whose config names no mask token
            return None

    def _check_one_window_per_batch(self) -> None:
        """A policy compares a window's timesteps, so a batch must be every timestep of one window."""
        hint = (
            f"sink_policy={self.sink_policy!r} compares the sink masks of one window across timesteps, so "
            "each calibration batch must hold the noised copies of one window at every timestep: calibrate on "
            "CalibrationSet.dataloader(batch_size=len(timesteps)) (sink-modifier prune does this)"
        )
        if self._rows is None:
            raise ValueError(
                f"{hint}; this calibration DataLoader carries no row table (window and timestep of each row), "
                "so its batches cannot be checked"
            )
        problem = self._rows.one_window_problem(active_session().state.current_batch_idx)
        if problem is not None:
            raise ValueError(f"{hint}; {problem}")

    def weights_for(self, module: torch.nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The current batch's token weights aligned with a Linear's ``inputs``: ``([B,T,d], [B,T] | None)``.

        With ``sink_weighting`` off and the row weightings at their defaults: ``(inputs, None)``,
        the inputs as upstream sees them (any layer type, padding included).
        """
        if not self._weights_rows():
            return inputs, None
        batch_idx = active_session().state.current_batch_idx
        if batch_idx not in self._token_weights:
            raise RuntimeError(
                f"no token weights for calibration batch {batch_idx} at {self._module_names[module]}: "
                "the model's input embedding did not run before this layer"
            )
        return self._aligned(module, inputs, self._token_weights[batch_idx])

    def _aligned(
        self, module: torch.nn.Module, inputs: torch.Tensor, weights: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``inputs`` as ``[B, T, d]`` and ``weights`` as ``[B, T]``, or a ValueError when they do not line up."""
        if inputs.dim() == 2:
            inputs = inputs.unsqueeze(0)
            if weights is not None and weights.numel() == inputs.shape[1]:
                weights = weights.reshape(1, -1)  # token-flattened inputs
        if weights is not None and tuple(inputs.shape[:-1]) != tuple(weights.shape):
            raise ValueError(
                f"{self._module_names[module]} receives inputs of shape {tuple(inputs.shape)}, "
                f"which do not line up with the batch's tokens {tuple(weights.shape)}; add it to `ignore`"
            )
        return inputs, weights

    # -- diffusion-aware row weights (timestep_weighting, masked_position_weight) --------
    def _row_weight_power(self) -> float:
        """How a row's weight enters its inputs: 0.5 for statistics of squared inputs (Hessians, Wanda rms)."""
        return 0.5

    def diffusion_weights(
        self, batch_idx: int, input_ids: torch.Tensor, valid: torch.Tensor | None, sinks: torch.Tensor | None
    ) -> torch.Tensor | None:
        """One batch's token input factors ``[B, T]``: the sink weights ``sinks`` (or ``None``) times the
        masked-position and timestep weights that are on (:mod:`sink_modifier.modifiers.row_weighting`).
        With both off: ``sinks`` itself."""
        if self.timestep_weighting == "uniform" and self.masked_position_weight is None:
            return sinks
        positions = rows = None
        if self.masked_position_weight is not None:
            positions = masked_position_weights(input_ids == self._masked_token, valid, self.masked_position_weight)
        if self.timestep_weighting == "elbo":
            _, timesteps = self._rows.batch(batch_idx)
            if timesteps.shape[0] != input_ids.shape[0]:
                raise ValueError(
                    f"calibration batch {batch_idx} holds {input_ids.shape[0]} rows but the row table lists "
                    f"{timesteps.shape[0]}: the DataLoader is not the one its row table describes"
                )
            rows = elbo_row_weights(timesteps, self._mean_inverse_timestep)
        factors = token_input_factors(
            tuple(input_ids.shape), sinks, positions, rows, row_power=self._row_weight_power()
        )
        return factors.to(input_ids.device)
