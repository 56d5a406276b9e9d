"""What every sink-aware pruning modifier shares: settings, validation, and the sink-mask lifecycle.

How the global sink masks fit llm-compressor's lifecycle
--------------------------------------------------------
The paper's mask for a calibration row is computed from the attention mass summed over
*all* layers of the dense model, but llm-compressor's sequential pipeline calibrates
layer 0 on every batch before layer 1 has seen any. So the masks must exist before the
first Linear of the first decoder layer runs, without a calibration pass of our own in
``on_initialize`` (that is what breaks OWL in llm-compressor 0.14: events cannot fire
before the session is initialised).

We hang a forward-pre hook on the input embedding. Every pipeline (basic and sequential)
runs the embedding first for each batch and sets ``state.current_batch_idx``. When the
hook sees a batch for the first time it runs one forward of the still-dense model on that
batch's token ids with all modifier hooks disabled, reads the attention mass
(:mod:`sink_modifier.sinks.observe`), and stores per-token weights ``1 - s`` under the
batch index. The Linear hooks then look the weights up by ``current_batch_idx``. In the
sequential pipeline the embedding subgraph runs for all batches before any decoder
layer, so every mask comes from the dense model, as in the paper. ``sink_weighting:
false`` hangs no such hook and skips the sink pass: the modifier is then upstream's
(``WandaPruningModifier`` / ``SparseGPTModifier``) bit for bit, on any module tree.

What the sink pass costs (:func:`sink_modifier.sinks.global_attention_mass`):

* It ends as soon as every attention module has run: the last layer's MLP, the final norm
  and the LM head are skipped (llm-compressor already replaces the LM head by a meta stub
  during calibration). What remains is one dense forward up to the last attention per
  batch, which upstream Wanda does not pay; measured against upstream Wanda in
  ``benchmarks/results/cost.md``.
* Attention memory is ``O(chunk * T)`` per layer, never ``[B, H, T, T]``: llm-compressor
  forces eager attention, so the pass swaps in the model's own eager function run on
  blocks of ``attention_chunk_size`` queries (SDPA models recompute mass from ``q, k`` in
  blocks).
* Offloaded models: the embedding subgraph runs inside ``disable_offloading()``, which
  would keep every weight the pass reads onloaded until that subgraph ends, i.e. the whole
  model at once. The pass lifts it, so weights are onloaded one module at a time and
  released after use (:mod:`sink_modifier.sinks.onload`); each batch's pass then moves
  every weight once (free when onload and offload device are both the CPU).

What the modifier is told, and what it finds out itself
-------------------------------------------------------
``sink-modifier prune`` resolves the model family and builds the calibration set once, and
hands both down with :meth:`SinkAwareSparsityBase.attach` before ``oneshot``. A direct
``oneshot()`` user need not: the family is then detected from ``model.config`` (once per
model), and the rows' (window, timestep) are read off the calibration DataLoader in
``state.data.calib`` when it is a :meth:`CalibrationSet.dataloader
<sink_modifier.process.calibration.CalibrationSet.dataloader>` (its
:class:`~sink_modifier.process.rows.RowTable`); ``state.current_batch_idx`` picks a batch's rows.
"""

from __future__ import annotations

from typing import Literal

import torch
from loguru import logger
from pydantic import PrivateAttr, ValidationInfo, field_validator, model_validator

from llmcompressor.core import State, active_session
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase
from llmcompressor.modifiers.utils.hooks import HooksMixin

from sink_modifier.modifiers.finite_fields import check_finite
from sink_modifier.process.calibration import CalibrationSet
from sink_modifier.process.rows import RowTable
from sink_modifier.sinks import global_attention_mass, soft_sink_mask
from sink_modifier.sinks.stability import apply_sink_policy
from sink_modifier.sparsity_pattern import parse_mask_structure

__all__ = ["SinkAwareSparsityBase"]


class SinkAwareSparsityBase(SparsityModifierBase):
    """Base of the sink-aware modifiers; subclasses implement ``calibrate_module`` and ``compress_modules``.

    :param sparsity: fraction of weights to prune, in [0, 1] (ignored for N:M, where it is N/M);
        a list gives one value per matched target, as upstream.
    :param mask_structure: ``"0:0"`` unstructured, or ``"N:M"``: N of every M consecutive
        input weights of a row are pruned (``"2:4"``).
    :param targets: modules to prune, as upstream (default ``["Linear"]``).
    :param ignore: modules left alone, as upstream; the default ``[]`` prunes the output head
        too when ``targets`` match it (a warning says so): list it, e.g. ``"re:.*lm_head"``
        (the shipped recipes do; ``sink-modifier prune`` adds the family's head itself).
    :param preserve_sparsity_mask: keep the weights that are already exactly zero pruned, as
        part of the target (see each modifier for how they count); false: upstream's default,
        earlier zeros may be refilled.
    :param sink_std: ``k`` of the sink threshold ``mean + k * std`` of the attention mass.
    :param sink_alpha: slope of the soft sink mask ``sigmoid(alpha * (mass - threshold))``.
    :param sink_weighting: false is upstream's algorithm on the raw inputs, bit for bit (padding
        included, as upstream): no sink pass, no family detection, no input embedding needed, so
        it runs on any module tree upstream's modifier runs on (the ablation of the weighting).
    :param attention_chunk_size: queries per block in the sink pass (eager attention run
        in blocks, or mass recomputed from q and k for SDPA models); ``None`` picks a block
        of about 64 MiB of float32 scores.
    :param sink_policy: which sink occurrences are down-weighted: ``all`` (the paper's code:
        every sink at every timestep), ``unstable`` (only at positions whose sinkness varies
        across the timesteps of a sample, std > ``policy_unstable_std``), ``stable`` (only at
        positions that are sinks at most timesteps and do not vary; an ablation). Policies
        other than ``all`` need each calibration batch to hold every timestep of one window,
        checked against the rows' (window, timestep) table: calibrate on
        ``CalibrationSet.dataloader(batch_size=len(timesteps))`` (the CLI does this itself).
    :param policy_unstable_std: std over timesteps above which a position's sinkness is unstable.
    :param policy_stable_mean: mean over timesteps from which a steady position counts as a stable sink.
    :param mask_token_id: the model's mask token, for SparseGPT's reference mode. Precedence:
        this field (for ``oneshot()`` users without a family) > the attached family's (its
        forward process, as in the attached calibration set) > the family detected from
        ``model.config`` (``config.mask_token_id``).
    """

    sparsity: float | list[float] | None = None
    preserve_sparsity_mask: bool = False
    sink_std: float = 2.0
    sink_alpha: float = 5.0
    sink_weighting: bool = True
    attention_chunk_size: int | None = None
    sink_policy: Literal["all", "unstable", "stable"] = "all"
    policy_unstable_std: float = 0.2
    policy_stable_mean: float = 0.5
    mask_token_id: int | None = None

    _model: torch.nn.Module | None = PrivateAttr(default=None)
    _token_weights: dict[int, torch.Tensor | None] = PrivateAttr(default_factory=dict)
    _pending_attention_mask: torch.Tensor | None = PrivateAttr(default=None)
    _pending_call: dict | None = PrivateAttr(default=None)
    _model_family: object | None = PrivateAttr(default=None)
    _attached_family: object | None = PrivateAttr(default=None)
    _attached_calibration: CalibrationSet | None = PrivateAttr(default=None)
    _rows: RowTable | None = PrivateAttr(default=None)
    _achieved_sparsity: dict[str, float] = PrivateAttr(default_factory=dict)

    # -- validation (fails at recipe load, naming the field) ------------------------
    @field_validator("*", mode="after")
    @classmethod
    def _check_finite(cls, value, info: ValidationInfo):
        return check_finite(info.field_name, value)

    @field_validator("sparsity", mode="after")
    @classmethod
    def _check_sparsity(cls, value):
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is not None and not 0.0 <= float(v) <= 1.0:  # NaN fails too
                raise ValueError(f"sparsity must be in [0, 1], got {v}; e.g. 0.5 prunes half the weights")
        return value

    @field_validator("mask_structure", mode="before")
    @classmethod
    def _check_mask_structure(cls, value):
        n, m = parse_mask_structure(value)
        return f"{n}:{m}"

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

    @model_validator(mode="after")
    def _check_sparsity_given(self):
        if self.sparsity is None and self.mask_structure == "0:0":
            raise ValueError("sparsity is required for unstructured pruning (mask_structure '0:0'); e.g. sparsity: 0.5")
        n, m = (int(p) for p in self.mask_structure.split(":"))
        if n and isinstance(self.sparsity, float) and abs(self.sparsity - n / m) > 1e-6:
            logger.warning(
                f"mask_structure {self.mask_structure} prunes exactly {n / m:.0%} of weights; "
                f"sparsity={self.sparsity} is ignored"
            )
        return self

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

    # -- lifecycle -----------------------------------------------------------------
    def on_initialize(self, state: State, **kwargs) -> bool:
        super().on_initialize(state, **kwargs)
        self._model = state.model
        self._model_family = self._attached_family  # None: detected on first use, for this model
        self._rows = self._row_table(getattr(getattr(state, "data", None), "calib", None))
        if self.sink_weighting and self._input_embedding() is None:
            raise ValueError(
                f"{type(state.model).__name__} has no input embedding (get_input_embeddings() "
                "returned None); sink-aware pruning needs it to see each batch's token ids"
            )
        return True

    def on_calibration_start(self, state: State, event, **kwargs):
        super().on_calibration_start(state, event, **kwargs)  # Linear hooks
        self._warn_if_head_pruned()
        if not self.sink_weighting:  # upstream's algorithm: the Linear hooks are all it needs
            return
        self.register_hook(self._model, self._capture_attention_mask, "forward_pre", with_kwargs=True)
        self.register_hook(self._input_embedding(), self._start_batch, "forward_pre")

    def _warn_if_head_pruned(self) -> None:
        """Say so when the output head is among the pruned modules.

        Upstream warns only where a matched name ends in ``lm_head``; with ``targets:
        ["Linear"]`` its names end in ``"."`` and nothing is said. Here the head is also found
        as ``get_output_embeddings()`` (LLaDA's is ``model.transformer.ff_out``).
        """
        get_head = getattr(self._model, "get_output_embeddings", None)
        head = get_head() if callable(get_head) else None
        for module, name in self._module_names.items():
            if name.endswith("lm_head"):
                continue  # upstream has warned
            short = name.rstrip(".")
            if module is head or short.endswith("lm_head"):
                logger.warning(
                    f"{type(self).__name__} prunes the output head {short} (targets match it and ignore "
                    f'does not list it); to keep it dense add "{short}" to ignore'
                )

    def on_calibration_end(self, state: State, event, **kwargs):
        super().on_calibration_end(state, event, **kwargs)
        self._token_weights = dict()

    def _finalize_checks(self, state: State, pending: dict) -> None:
        if not self.ended_:
            self.on_end(state, None)
        if pending:
            raise ValueError(f"Failed to compress {len(pending)} modules")
        self._token_weights = dict()
        self._module_names = dict()
        self._module_sparsities = dict()

    @property
    def achieved_sparsity(self) -> dict[str, float]:
        """Fraction of zeros in each pruned module's weight, by module name."""
        return dict(self._achieved_sparsity)

    def _record_sparsity(self, module: torch.nn.Module, weight: torch.Tensor) -> str:
        name = self._module_names[module].rstrip(".")  # upstream names Linear targets "x.q_proj."
        self._achieved_sparsity[name] = float((weight == 0).float().mean())
        return name

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
            self._token_weights[batch_idx] = self.batch_token_weights(input_ids, valid)

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

        With ``sink_weighting`` off: ``(inputs, None)``, the inputs as upstream sees them (any
        layer type, padding included).
        """
        if not self.sink_weighting:
            return inputs, None
        batch_idx = active_session().state.current_batch_idx
        if batch_idx not in self._token_weights:
            raise RuntimeError(
                f"no sink weights for calibration batch {batch_idx} at {self._module_names[module]}: "
                "the model's input embedding did not run before this layer"
            )
        weights = self._token_weights[batch_idx]
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
