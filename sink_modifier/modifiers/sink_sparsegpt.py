"""``SinkAwareSparseGPTModifier``: SparseGPT whose Hessians down-weight attention-sink tokens.

``H = (2/N) Σ_rows Xᵀ diag((1 − s)²) X``: each calibration row's inputs are scaled by its
per-token weights ``1 − s`` before llm-compressor's own Hessian accumulation, and the
pruning itself is llm-compressor's SparseGPT (OBS block updates, sequential: later layers
see pruned earlier layers). Sinks therefore count less both in the saliency
``w² / diag(H⁻¹)²`` and in the reconstruction objective.

Two ways to get ``s``:

* ``sink_mask_mode: per_row`` (default): each calibration row is one noised sequence at one
  timestep with its own mask, exactly like the sink-aware Wanda.
* ``sink_mask_mode: reference`` reproduces the paper's code (reference-spec §1.10): rows are
  *clean* windows; the modifier noises each at ``reference_timesteps`` with the mask-token
  forward process (:class:`~sink_modifier.process.forward.MaskTokenProcess`, the model's mask
  token, see :meth:`~.sink_base.SinkAwareSparsityBase.resolved_mask_token_id`), detects sinks on every
  noised copy with the dense model, and applies the timestep-averaged mask
  ``1 − mean_t s_t`` to the clean row's activations. (The paper's mismatch, noisy-sequence
  masks on clean-sequence activations, is kept on purpose so the two can be compared.)

Data-parallel (``torchrun``, see :mod:`sink_modifier.modifiers.data_parallel`): each rank
accumulates Hessians over its share of the rows; before pruning, each module's Hessian is
reduced (float64 ``Σ n_r H_r`` and ``Σ n_r``) to one rank, chosen by greedy bin packing on
Hessian size as llm-compressor's distributed GPTQ does; that rank runs the OBS solve and
broadcasts the pruned weight. Splitting the solves rather than repeating them on every rank
divides their cost (``O(d_in³)`` per module) by the number of ranks, frees the Hessians on the
other ranks early, and leaves every rank with bit-identical weights by construction. Sink
masks stay per row on the rank that holds the row. The result equals one process's up to
float32 rounding of the Hessians (a few flipped near-tied weights); ``hessian_dtype:
float64`` removes that difference (see the parameter).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.distributed as dist
from compressed_tensors.utils import align_module_device, get_execution_device, update_offload_parameter
from llmcompressor.core import State
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import (
    accumulate_hessian,
    make_empty_hessian,
    sparsify_weight,
)
from loguru import logger
from pydantic import Field, PrivateAttr, field_validator, model_validator

from sink_modifier.data.keyed_random import keyed_seed, tensor_bytes
from sink_modifier.modifiers.data_parallel import (
    broadcast_weight,
    check_same_modules,
    is_data_parallel,
    reduce_hessian_to,
    write_weight,
)
from sink_modifier.modifiers.sink_base import SinkAwareSparsityBase
from sink_modifier.modifiers.weighted_inputs import weighted_rows
from sink_modifier.process import LLADA_TIMESTEPS, MaskTokenProcess, row_generator
from sink_modifier.sinks import PAPER_COLLECTOR, global_attention_mass, soft_sink_mask

__all__ = ["SinkAwareSparseGPTModifier"]


class SinkAwareSparseGPTModifier(SinkAwareSparsityBase):
    """SparseGPT with attention-sink-aware Hessians (arXiv 2602.17664).

    ```yaml
    sparsity_stage:
      sparsity_modifiers:
        SinkAwareSparseGPTModifier:
          sparsity: 0.5
          mask_structure: "0:0"
          block_size: 128
          dampening_frac: 0.01
          sink_weighting: true
          sink_mask_mode: per_row
    ```

    Sparsity semantics are SparseGPT's: the unstructured threshold is per ``block_size``
    columns across all rows (not per row); N:M is per row. With ``sink_weighting: false`` it
    is llm-compressor's ``SparseGPTModifier`` bit for bit (same Hessian accumulation on the
    raw inputs, same solver), except that ``sparsity: 1.0`` zeroes the layer where upstream's
    threshold lookup fails with an IndexError.

    :param preserve_sparsity_mask: upstream's: zeros already in a weight form the base mask each block extends.
    :param block_size: columns pruned per OBS block (as llm-compressor's SparseGPT).
    :param dampening_frac: ``H += dampening_frac * mean(diag H) * I`` before inversion.
    :param offload_hessians: keep Hessians on the CPU between batches (less memory, slower).
    :param hessian_dtype: ``float32`` (upstream's running mean) or ``float64`` (exact sums: data-parallel = one process).
    :param sink_mask_mode: ``per_row`` or ``reference`` (see the module docstring).
    :param reference_timesteps: timesteps of the internal noising in ``reference`` mode.
    :param reference_eps: ``eps`` of the masking probability ``(1 − eps) t + eps``.
    :param seed: seed of the ``reference`` noise (each row's noise is keyed by its tokens).
    """

    block_size: int = 128
    dampening_frac: float | None = 0.01
    offload_hessians: bool = False
    hessian_dtype: Literal["float32", "float64"] = "float32"
    sink_mask_mode: Literal["per_row", "reference"] = "per_row"
    reference_timesteps: list[float] = Field(default_factory=lambda: list(LLADA_TIMESTEPS))
    reference_eps: float = 1e-3
    seed: int = 0

    _hessians: dict[torch.nn.Module, torch.Tensor] = PrivateAttr(default_factory=dict)
    _num_samples: dict[torch.nn.Module, int] = PrivateAttr(default_factory=dict)

    @field_validator("block_size")
    @classmethod
    def _check_block(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"block_size must be >= 1, got {value}")
        return value

    @field_validator("reference_timesteps")
    @classmethod
    def _check_timesteps(cls, value: list[float]) -> list[float]:
        if not value or any(not 0.0 < t <= 1.0 for t in value):
            raise ValueError(f"reference_timesteps must be a non-empty list of t in (0, 1], got {value}")
        return value

    @model_validator(mode="after")
    def _check_reference_rows(self):
        if self.sink_mask_mode != "reference":
            return self
        for name, on in (("timestep_weighting: elbo", self.timestep_weighting != "uniform"),
                         ("masked_position_weight", self.masked_position_weight is not None)):
            if on:
                raise ValueError(
                    f"{name} weights noised calibration rows, but sink_mask_mode 'reference' calibrates on "
                    "clean rows (t = 0, nothing masked; only the sink masks are noised); use sink_mask_mode "
                    f"'per_row' or leave {name.split(':')[0]} at its default"
                )
        return self

    # -- calibration -----------------------------------------------------------------
    def calibrate_module(self, module: torch.nn.Module, args, _output):
        inputs, weights = self.weights_for(module, args[0].detach())
        if module not in self._num_samples:
            self._hessians[module] = make_empty_hessian(module, device=get_execution_device(module))
            if self.hessian_dtype == "float64":
                self._hessians[module] = self._hessians[module].to(torch.float64)
            self._num_samples[module] = 0
        hessian = self._hessians[module]
        if self.offload_hessians:
            hessian = hessian.to(get_execution_device(module))
        x = weighted_rows(inputs, weights, in_input_dtype=self.sink_mask_mode == "reference")
        if self.hessian_dtype == "float64":  # a plain sum: exact products, float64 additions
            flat = x.reshape(-1, x.shape[-1]).to(device=hessian.device, dtype=torch.float64)
            hessian += 2.0 * (flat.T @ flat)
            self._num_samples[module] += x.shape[0]
        else:
            hessian, self._num_samples[module] = accumulate_hessian(x, module, hessian, self._num_samples[module])
        self._hessians[module] = hessian.cpu() if self.offload_hessians else hessian

    def _sink_mask_settings(self) -> dict:
        if self.sink_mask_mode == "per_row":
            return super()._sink_mask_settings()
        return {"sink_mask_mode": self.sink_mask_mode, "reference_timesteps": self.reference_timesteps,
                "reference_eps": self.reference_eps, "seed": self.seed}

    def batch_token_weights(self, input_ids: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
        if self.sink_mask_mode == "per_row":
            return super().batch_token_weights(input_ids, valid)
        process = MaskTokenProcess(self._reference_mask_token(), eps=self.reference_eps)
        if bool((input_ids == process.mask_token_id).any()):
            logger.warning(
                "sink_mask_mode=reference expects clean calibration rows (timesteps 0) but the "
                "rows contain mask tokens; they are noised again"
            )
        keys = [_row_key(row) for row in input_ids]
        per_timestep = []  # [K] of [B, T]
        for j, t in enumerate(self.reference_timesteps):
            noised = torch.stack([
                process.noise_row(row.cpu(), t, row_generator(self.seed, key, j))
                for row, key in zip(input_ids, keys)
            ]).to(input_ids.device)
            extra = self._family().sink_pass(self._model, noised, self._pending_call)  # as sink_mass, but
            mass = global_attention_mass(  # in the paper's reduction order and score formula
                self._model, noised, valid, chunk_size=self.attention_chunk_size, **extra, **PAPER_COLLECTOR
            )
            per_timestep.append(soft_sink_mask(mass, self.sink_std, self.sink_alpha, valid))
        sinks = torch.stack(per_timestep, dim=1)  # [B, K, T]
        if self.sink_policy != "all":
            sinks = torch.stack([self.policy_masks(sample) for sample in sinks])
        total = torch.zeros_like(sinks[:, 0])
        for j in range(sinks.shape[1]):  # in timestep order, as the paper's loop (mean(dim=1) sums in another)
            total += sinks[:, j]
        weights = 1.0 - total / float(sinks.shape[1])  # the paper's timestep-averaged mask
        return weights if valid is None else weights * valid.to(weights)

    def _reference_mask_token(self) -> int:
        mask_id = self.resolved_mask_token_id()
        if mask_id is None:
            raise ValueError(
                "sink_mask_mode=reference noises calibration rows itself and needs a mask token, but "
                "the model's family names none: set mask_token_id in the recipe (e.g. 126336 for "
                "LLaDA) or config.mask_token_id"
            )
        return int(mask_id)

    # -- pruning -----------------------------------------------------------------------
    def compress_modules(self):
        if is_data_parallel():
            self._compress_data_parallel()
            return
        for module in list(self._num_samples):
            num_samples = self._num_samples.pop(module)
            if self.hessian_dtype == "float64":
                self._hessians[module] = (self._hessians[module] / num_samples).to(torch.float32)
            loss, pruned = self._sparsify(module)
            update_offload_parameter(module, "weight", pruned)
            self._log_pruned(module, pruned, num_samples, _loss_text(loss))

    def _sparsify(self, module: torch.nn.Module) -> tuple[float | None, torch.Tensor]:
        sparsity = self._module_sparsities[module]
        if sparsity is None:  # N:M without a sparsity: N/M is what the preserved-mask check compares to
            sparsity = self._prune_n / self._prune_m if self._prune_n else 0.0
        with torch.no_grad(), align_module_device(module):
            if sparsity >= 1.0 and not self._prune_n:
                # Every weight is pruned, whatever the updates; upstream's threshold lookup
                # indexes one past the end of the sorted scores here (IndexError).
                del self._hessians[module]
                return None, torch.zeros_like(module.weight)
            self._hessians[module] = self._hessians[module].to(module.weight.device)
            return sparsify_weight(
                module=module,
                hessians_dict=self._hessians,  # sparsify_weight pops the module's entry
                sparsity=sparsity,
                prune_n=self._prune_n,
                prune_m=self._prune_m,
                block_size=self.block_size,
                dampening_frac=self.dampening_frac,
                preserve_sparsity_mask=self.preserve_sparsity_mask,
            )

    def _compress_data_parallel(self):
        """Reduce each Hessian to its owner rank, prune there, broadcast the weights (as upstream GPTQ)."""
        from compressed_tensors.distributed import greedy_bin_packing

        rank, world_size = dist.get_rank(), dist.get_world_size()
        modules = sorted(self._num_samples, key=lambda m: self._module_names[m])
        check_same_modules([self._module_names[m] for m in modules], "SinkAwareSparseGPTModifier")
        _, _, owner = greedy_bin_packing(
            list(modules), world_size, item_weight_fn=lambda m: self._hessians[m].shape[0]
        )
        totals = {}
        for module in modules:
            hessian = self._hessians.pop(module)
            reduced, totals[module] = reduce_hessian_to(
                hessian, self._num_samples.pop(module), owner[module], is_sum=self.hessian_dtype == "float64"
            )
            del hessian
            if reduced is not None:
                self._hessians[module] = reduced.cpu() if self.offload_hessians else reduced
        results = {module: self._sparsify(module) for module in modules if owner[module] == rank}
        for module in modules:
            here = module in results
            loss, pruned = results.pop(module, (None, None))
            received = broadcast_weight(pruned, module.weight, src=owner[module])
            write_weight(module, received, writer=owner[module])
            self._log_pruned(module, received, totals[module], _loss_text(loss) if here else "pruned on another rank")

    def _log_pruned(self, module: torch.nn.Module, pruned: torch.Tensor, num_samples: int, loss_text: str) -> None:
        name = self._record_sparsity(module, pruned)
        logger.debug(
            f"Sink-aware SparseGPT: pruned {name} to {self._achieved_sparsity[name]:.2%} "
            f"({num_samples} samples, {loss_text}, sink_weighting={self.sink_weighting}, "
            f"mode={self.sink_mask_mode})"
        )

    def on_finalize(self, state: State, **kwargs) -> bool:
        self._finalize_checks(state, self._num_samples)
        self._hessians = dict()
        return True


def _loss_text(loss: float | None) -> str:
    return "every weight pruned" if loss is None else f"loss {loss:.4g}"


def _row_key(row: torch.Tensor) -> int:
    """A stable integer per token sequence, so reference noise ignores batch size and order."""
    return keyed_seed(tensor_bytes(row)) >> 1
