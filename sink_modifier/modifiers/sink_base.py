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
false`` (with ``timestep_weighting``, ``masked_position_weight`` and ``sparsity_profile`` at
their defaults) hangs no such hook and skips the sink pass: the modifier is then upstream's
(``WandaPruningModifier`` / ``SparseGPTModifier``) bit for bit, on any module tree.

The same hook serves the diffusion-aware options, which need each batch's token ids or
index: ``masked_position_weight`` and ``timestep_weighting`` multiply the batch's token
weights by per-position and per-row factors (:mod:`sink_modifier.modifiers.row_weighting`;
each row's timestep from the rows' table), so they work per row in either pipeline and do
not depend on the batch size. OWL (``sparsity_profile: owl``) runs one more dense forward of
the batch there, collecting every pruned Linear's column sums of its (weighted) squared
inputs with plain torch hooks; before the first layer is pruned (the first sequential epoch
end, when every batch has passed the embedding) the per-layer sparsities are computed from
them with upstream's formula (:mod:`sink_modifier.modifiers.owl`), the ranks' sums gathered
in rank order under ``torchrun``.

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
from compressed_tensors.utils import align_module_device
from loguru import logger
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator

from llmcompressor.core import State, active_session
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_base import SparsityModifierBase
from llmcompressor.modifiers.utils.hooks import HooksMixin

from sink_modifier.modifiers.data_parallel import check_same_modules, gather_contributions, is_data_parallel
from sink_modifier.modifiers.finite_fields import check_finite
from sink_modifier.modifiers.owl import (
    activation_norms,
    batch_square_sums,
    layer_scores,
    outlier_ratio,
    owl_layer_sparsities,
)
from sink_modifier.modifiers.row_weighting import (
    elbo_row_weights,
    masked_position_weights,
    mean_inverse_timestep,
    token_input_factors,
)
from sink_modifier.modifiers.weighted_inputs import SCORING_DTYPE, weighted_rows
from sink_modifier.process.calibration import CalibrationSet
from sink_modifier.process.rows import RowTable
from sink_modifier.sinks import global_attention_mass, soft_sink_mask
from sink_modifier.sinks.mask_cache import CalibrationCache
from sink_modifier.sinks.onload import onload_one_module_at_a_time
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
    :param sink_cache_dir: a folder where each calibration batch's sink weights are kept and
        reused by later runs on the same dense weights, rows and sink settings (a sparsity
        sweep runs the sink pass once); entries are verified and recomputed when they do not
        match (:mod:`sink_modifier.sinks.mask_cache`). ``None`` (default): no cache. Results are
        bit-identical with or without it; it is not written into the saved recipe.
    :param timestep_weighting: ``uniform`` (default): every calibration row counts the same.
        ``elbo``: row ``r``'s contribution to the statistic (Wanda's squared column norms,
        SparseGPT's Hessian term) is multiplied by the ELBO weight ``1 / t_r``, normalised to mean
        1 over the calibration rows (:mod:`sink_modifier.modifiers.row_weighting`); clean rows
        (``t = 0``) are refused. A row's timestep comes from the calibration rows' table, so the
        DataLoader must be :meth:`CalibrationSet.dataloader(...)
        <sink_modifier.process.calibration.CalibrationSet.dataloader>` (or the set attached).
    :param masked_position_weight: ``None`` (default): off. ``λ`` in ``[0, 1]``: each row's
        statistic is ``n * (λ * mean over masked positions + (1 - λ) * mean over visible
        positions)`` of the (sink-weighted) squared inputs, ``n`` its tokens, so masked positions
        (the token ids equal to the mask token, :meth:`resolved_mask_token_id`) supply the share
        ``λ`` of it; ``λ`` equal to a row's masked fraction leaves it unchanged. Needs a model
        whose forward process masks (refused for uniform substitution, e.g. DiffusionGemma).
    :param sparsity_profile: ``"owl"`` with ``owl_m`` and ``owl_lmbda`` (all three or none, as
        upstream): per-layer sparsities from OWL's outlier ratios, computed during calibration
        from the same rows, weighted like the statistic, and applied before the first layer is
        pruned (:mod:`sink_modifier.modifiers.owl`); they average to ``sparsity`` over the
        layers (the pipeline's sequential targets, e.g. decoder blocks) and are reported by
        :attr:`owl_layer_sparsity`. Unstructured only (``mask_structure: "0:0"``), one ``sparsity``.
    :param owl_m: OWL's outlier threshold ``M``: a weight is an outlier when its score
        ``|W| * ||X||`` exceeds ``M`` times its layer's mean score (> 0; the paper uses 5).
    :param owl_lmbda: OWL's ``λ``: layer sparsities lie within ``sparsity ± 2 * owl_lmbda`` (>= 0).
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
    _achieved_sparsity: dict[str, float] = PrivateAttr(default_factory=dict)
    _mean_inverse_timestep: float | None = PrivateAttr(default=None)
    _masked_token: int | None = PrivateAttr(default=None)
    _owl_layers: dict[str, torch.nn.Module] = PrivateAttr(default_factory=dict)
    _owl_sums: dict[torch.nn.Module, list[torch.Tensor]] = PrivateAttr(default_factory=dict)
    _owl_sparsity: dict[str, float] | None = PrivateAttr(default=None)
    _cache: CalibrationCache | None = PrivateAttr(default=None)
    _cache_counts: dict[str, dict[str, int]] = PrivateAttr(default_factory=dict)

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

    @field_validator("masked_position_weight")
    @classmethod
    def _check_masked_weight(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError(
                f"masked_position_weight must be in [0, 1] or null (off), got {value}; e.g. 0.75 gives "
                "the masked positions three quarters of each row's statistic"
            )
        return value

    @model_validator(mode="after")
    def _check_owl(self):
        if self.sparsity_profile != "owl" or self.owl_m is None or self.owl_lmbda is None:
            return self  # upstream's validator refuses an incomplete OWL setting
        if self.mask_structure != "0:0":
            raise ValueError(
                f"sparsity_profile 'owl' sets one sparsity per layer, which mask_structure "
                f"{self.mask_structure!r} ignores (N:M prunes N of every M weights in every layer); "
                "use mask_structure '0:0' or drop sparsity_profile, owl_m and owl_lmbda"
            )
        if not isinstance(self.sparsity, float):
            raise ValueError(
                f"sparsity_profile 'owl' needs one target sparsity (a number), got {self.sparsity!r}; "
                "OWL derives the per-layer values itself"
            )
        if self.owl_m <= 0:
            raise ValueError(
                f"owl_m must be > 0 (outlier threshold, a multiple of the layer's mean score), got {self.owl_m}"
            )
        if self.owl_lmbda < 0:
            raise ValueError(
                f"owl_lmbda must be >= 0 (layer sparsities span sparsity ± 2 * owl_lmbda), got {self.owl_lmbda}"
            )
        return self

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
        self._mean_inverse_timestep = self._elbo_normaliser() if self.timestep_weighting == "elbo" else None
        self._masked_token = self._masked_position_token() if self.masked_position_weight is not None else None
        if self._needs_batch_hook() and self._input_embedding() is None:
            raise ValueError(
                f"{type(state.model).__name__} has no input embedding (get_input_embeddings() "
                f"returned None); {self._batch_hook_reason()} needs it to see each batch's token ids"
            )
        return True

    def _weights_rows(self) -> bool:
        """Whether the Linears' input rows are weighted (else: upstream's statistic on the raw inputs)."""
        return self.sink_weighting or self.timestep_weighting != "uniform" or self.masked_position_weight is not None

    def _needs_batch_hook(self) -> bool:
        """Whether each batch's token ids must be seen (the input embedding's pre-hook)."""
        return self._weights_rows() or self.sparsity_profile == "owl"

    def _batch_hook_reason(self) -> str:
        reasons = [name for name, on in (
            ("sink weighting", self.sink_weighting),
            (f"timestep_weighting={self.timestep_weighting!r}", self.timestep_weighting != "uniform"),
            ("masked_position_weight", self.masked_position_weight is not None),
            ("sparsity_profile='owl'", self.sparsity_profile == "owl"),
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

    def on_calibration_start(self, state: State, event, **kwargs):
        super().on_calibration_start(state, event, **kwargs)  # Linear hooks
        self._warn_if_head_pruned()
        self._owl_sums, self._owl_sparsity = dict(), None
        if not self._needs_batch_hook():  # upstream's algorithm: the Linear hooks are all it needs
            return
        self.register_hook(self._model, self._capture_attention_mask, "forward_pre", with_kwargs=True)
        self.register_hook(self._input_embedding(), self._start_batch, "forward_pre")
        self._cache = self._open_cache()

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
        if self._cache is not None:
            self._cache_counts, self._cache = self._cache.counts, None

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
            sinks = self._cached_token_weights(input_ids, valid) if self.sink_weighting else None
            self._token_weights[batch_idx] = self.diffusion_weights(batch_idx, input_ids, valid, sinks)
            if self.sparsity_profile == "owl":
                self._owl_batch(input_ids, valid, self._token_weights[batch_idx])

    # -- the sink cache (sink_cache_dir) -------------------------------------------------
    def _open_cache(self) -> CalibrationCache | None:
        if self.sink_cache_dir is None or not self.sink_weighting:
            return None
        mode = getattr(self, "sink_mask_mode", "per_row")  # SparseGPT's; Wanda's masks are per_row
        settings = {name: getattr(self, name) for name in
                    ("sink_std", "sink_alpha", "sink_policy", "policy_unstable_std", "policy_stable_mean")}
        settings.update(sink_mask_mode=mode, family=self._family().name, mask_token_id=self.resolved_mask_token_id())
        # The query-block size changes the last bits of the mass once it splits the sequence, and the
        # summation order / score dtype differ between modes (sinks.mass: reference = the paper's
        # collector); both are keyed so a hit always equals the run it replaces bit for bit.
        settings.update(attention_chunk_size=self.attention_chunk_size,
                        mass_collector="paper" if mode == "reference" else "default")
        if mode != "per_row":
            settings.update({name: getattr(self, name) for name in ("reference_timesteps", "reference_eps", "seed")})
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

    # -- OWL layer sparsities (sparsity_profile: owl) ------------------------------------
    def _infer_owl_layer_sparsity(self, model, layers, dataloader):
        """Upstream runs a calibration pass here, inside ``on_initialize`` (which 0.14 refuses); this
        modifier only notes the layers and computes their sparsities during calibration."""
        self._owl_layers = dict(layers)
        return self.sparsity

    @property
    def owl_layer_sparsity(self) -> dict[str, float]:
        """OWL's target sparsity of each layer (empty without ``sparsity_profile: owl``, or before pruning)."""
        return dict(self._owl_sparsity or {})

    def _owl_batch(self, input_ids: torch.Tensor, valid: torch.Tensor | None, weights: torch.Tensor | None) -> None:
        """One dense forward of this batch collecting each pruned module's ``Σ (w x)²`` per input column."""
        sums: dict[torch.nn.Module, torch.Tensor] = {}

        def collect(module, args):
            inputs, aligned = self._aligned(module, args[0].detach(), weights)
            contribution = batch_square_sums(weighted_rows(inputs, aligned))
            sums[module] = contribution if module not in sums else sums[module] + contribution

        extra = self._family().sink_pass(self._model, input_ids, self._pending_call)
        call = dict(extra.get("forward_kwargs") or {})
        call.update(extra.get("forward_inputs") or {"input_ids": input_ids})
        if valid is not None:
            call["attention_mask"] = valid
        handles = [module.register_forward_pre_hook(collect) for module in self._module_names]
        try:
            with torch.no_grad(), onload_one_module_at_a_time():
                self._model(**call)
        finally:
            for handle in handles:
                handle.remove()
        for module in self._module_names:
            found = sums.get(module)
            if found is None:  # not run on this batch (an expert no token was routed to)
                found = torch.zeros(module.weight.shape[-1], dtype=SCORING_DTYPE)
            self._owl_sums.setdefault(module, []).append(found.cpu())

    def _resolve_owl(self) -> None:
        """Set every pruned module's sparsity to its layer's OWL sparsity (once, before the first prune)."""
        if self.sparsity_profile != "owl" or self._owl_sparsity is not None:
            return
        modules = sorted(self._module_names, key=lambda m: self._module_names[m])
        if not modules:
            self._owl_sparsity = {}
            return
        if any(not self._owl_sums.get(m) for m in modules):
            raise RuntimeError("sparsity_profile 'owl': no calibration batch reached the input embedding")
        per_batch = {m: torch.stack(self._owl_sums.pop(m)) for m in modules}  # [batches, d_in]
        if is_data_parallel():  # every rank's batches, in rank order: the sums of one process
            check_same_modules([self._module_names[m] for m in modules], type(self).__name__)
            widths = [per_batch[m].shape[1] for m in modules]
            stacked, _ = gather_contributions(
                torch.cat([per_batch[m] for m in modules], dim=1),
                torch.zeros(per_batch[modules[0]].shape[0], dtype=torch.long),
            )
            per_batch = dict(zip(modules, torch.split(stacked, widths, dim=1)))
        norms = {m: activation_norms(list(per_batch[m])) for m in modules}
        groups: dict[str, list[torch.nn.Module]] = {}  # layer -> its pruned modules, in the layer's order
        placed: set[int] = set()
        pruned = {id(m) for m in modules}
        for name, layer in self._owl_layers.items():
            members = [m for m in layer.modules() if id(m) in pruned and id(m) not in placed]
            placed.update(id(m) for m in members)
            if members:
                groups[name] = members
        ratios = {}
        with onload_one_module_at_a_time():  # not the whole model onloaded at once (sequential pipeline)
            for name, members in groups.items():
                weights = []
                for module in members:
                    with align_module_device(module):
                        weights.append(module.weight.detach().cpu().clone())
                ratios[name] = outlier_ratio(layer_scores(weights, [norms[m] for m in members]), self.owl_m)
        targets = owl_layer_sparsities(ratios, self.sparsity, self.owl_lmbda)
        outside = [n for n, s in targets.items() if not 0.0 <= s <= 1.0]
        if outside:
            raise ValueError(
                f"sparsity_profile 'owl' gives layer {outside[0]} sparsity {targets[outside[0]]:.4f}, outside "
                f"[0, 1] (target {self.sparsity}, owl_lmbda {self.owl_lmbda}): lower owl_lmbda (layer "
                "sparsities lie within sparsity ± 2 * owl_lmbda)"
            )
        for name, members in groups.items():
            for module in members:
                self._module_sparsities[module] = targets[name]
        self._owl_sparsity = targets
        logger.info(
            f"{type(self).__name__}: OWL layer sparsities (mean {sum(targets.values()) / max(len(targets), 1):.4f}, "
            f"target {self.sparsity}): " + ", ".join(f"{k} {v:.4f}" for k, v in targets.items())
        )

    def on_sequential_epoch_end(self, state: State, event, **kwargs):
        self._resolve_owl()  # every batch has passed the embedding: the sums are complete
        super().on_sequential_epoch_end(state, event, **kwargs)
