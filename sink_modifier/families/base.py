"""What a model family knows: how to load it, what its mask token and noising rule are, how to run it.

A family is a small stateless object. The defaults here are the plain Hugging Face path
(``AutoModelForCausalLM``, ``model(input_ids).logits``, every position maskable); each
family module overrides only what its published checkpoints do differently, so family
differences live in one file each instead of ``if model_type == ...`` across the code.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from sink_modifier.process.calibration import CalibrationSet, build_calibration
from sink_modifier.process.forward import ForwardProcess, MaskTokenProcess
from sink_modifier.process.mask_token import resolve_mask_token_id
from sink_modifier.process.rows import CalibrationLoader

from .modules import output_head

__all__ = ["ModelFamily", "output_head_patterns"]


def output_head_patterns(model: nn.Module) -> list[str]:
    """``re:`` patterns matching exactly the module(s) ``get_output_embeddings()`` returns."""
    head = output_head(model)
    if head is None:
        return []
    # llm-compressor names Linear targets with a trailing dot ("lm_head."), hence "\.?$".
    return [f"re:^{re.escape(name)}\\.?$" for name, module in model.named_modules() if module is head and name]


class ModelFamily:
    """Per-family rules. Subclasses set the class attributes and override methods as needed.

    :cvar name: the ``--family`` name.
    :cvar diffusion: masked-diffusion model (noised calibration, NELBO) or causal (clean, perplexity).
    :cvar logit_shift: 1 when position ``i``'s logits predict token ``i + 1`` (Dream, AR models).
    :cvar remote_code: the published checkpoints need ``trust_remote_code=True``.
    :cvar examples: published checkpoints of the family, for messages and docs.
    :cvar pipeline: the llm-compressor pipeline this family must use (``None``: the caller's choice).
    :cvar uniform_noise: the forward process substitutes uniform random tokens (no mask token).
    :cvar objective: what the evaluation score of a diffusion model means, for result records.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    diffusion: ClassVar[bool] = True
    logit_shift: ClassVar[int] = 0
    remote_code: ClassVar[bool] = False
    examples: ClassVar[tuple[str, ...]] = ()
    pipeline: ClassVar[str | None] = None
    uniform_noise: ClassVar[bool] = False
    objective: ClassVar[str] = "masked-diffusion NELBO (upper bound on the NLL) and masked CE"

    # -- detection -------------------------------------------------------------------
    def matches(self, config: dict[str, Any]) -> bool:
        """Whether a parsed ``config.json`` belongs to this family."""
        raise NotImplementedError

    # -- loading ---------------------------------------------------------------------
    def load_model(
        self, folder: Path, config: dict[str, Any], *, dtype: Any, trust_remote_code: bool,
        quantization_config: Any = None,
    ) -> nn.Module:
        """The model of ``folder``; ``config`` is its parsed ``config.json`` (read once, by the loader)."""
        from transformers import AutoModelForCausalLM

        kwargs = {} if quantization_config is None else {"quantization_config": quantization_config}
        return AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
        )

    def load_tokenizer(self, folder: Path, *, trust_remote_code: bool):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code)

    def prepare_for_save(self, model: nn.Module) -> None:
        """Make ``model.save_pretrained`` work under the pinned transformers (in memory only)."""

    # -- tokens ------------------------------------------------------------------------
    def mask_token_id(self, tokenizer: Any, config: Any) -> int | None:
        """The mask token (``None`` for causal models)."""
        if not self.diffusion:
            return None
        return resolve_mask_token_id(tokenizer, config)

    def maskable(self, clean_ids: torch.LongTensor, tokenizer: Any, config: Any) -> torch.BoolTensor | None:
        """Which positions of clean windows ``[N, T]`` the forward process may noise (``None``: all)."""
        return None

    def scorable(self, clean_ids: torch.LongTensor, tokenizer: Any, config: Any) -> torch.BoolTensor | None:
        """Positions evaluation may mask and score: the maskable ones the logits can predict.

        With ``logit_shift = 1`` no logit predicts position 0, so it is never scored.
        """
        maskable = self.maskable(clean_ids, tokenizer, config)
        if self.logit_shift == 0:
            return maskable
        scorable = torch.ones_like(clean_ids, dtype=torch.bool) if maskable is None else maskable.clone()
        scorable[:, : self.logit_shift] = False
        return scorable

    # -- running ---------------------------------------------------------------------
    def model_inputs(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> dict:
        """Keyword arguments of one forward over token rows ``[B, T]``."""
        inputs = {"input_ids": input_ids}
        if attention_mask is not None and not bool(attention_mask.all()):
            inputs["attention_mask"] = attention_mask
        return inputs

    def logits(self, model: nn.Module, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]`` of a forward over ``input_ids``, as the model emits them (unshifted)."""
        return model(**self.model_inputs(input_ids, attention_mask)).logits

    # -- forward process / calibration ---------------------------------------------------
    def forward_process(self, tokenizer: Any, config: Any, seed: int) -> ForwardProcess | None:
        """How this family's models are noised (calibration) and what hidden positions hold
        (evaluation); ``None`` for a causal model (clean calibration rows, perplexity).

        The default is masked diffusion with the family's mask token. ``seed`` keys the
        evaluation replacements of processes that draw them (uniform substitution).
        """
        if not self.diffusion:
            return None
        return MaskTokenProcess(self.mask_token_id(tokenizer, config))

    def calibration_canvas(self, config: Any) -> int | None:
        """Canvas length of the prompt + canvas calibration layout; ``None``: whole windows are noised."""
        return None

    def build_calibration(
        self, data, tokenizer: Any, config: Any, *, seq_len: int, num_samples: int,
        timesteps: tuple[float, ...], seed: int, max_chars: int | None,
    ) -> CalibrationSet:
        """Calibration rows: clean windows noised at every timestep by :meth:`forward_process`,
        at the :meth:`maskable` positions, in the :meth:`calibration_canvas` layout (clean
        windows for a causal model, ``timesteps == (0.0,)``)."""
        return build_calibration(
            data, tokenizer, process=self.forward_process(tokenizer, config, seed),
            seq_len=seq_len, num_samples=num_samples, timesteps=timesteps, seed=seed,
            config=config, max_chars=max_chars,
            maskable=lambda clean: self.maskable(clean, tokenizer, config),
            canvas_length=self.calibration_canvas(config),
        )

    def calibration_loader(self, calibration: CalibrationSet, batch_size: int) -> CalibrationLoader:
        """The DataLoader of a :class:`CalibrationSet` in the columns this model's forward takes."""
        return calibration.dataloader(batch_size)

    def evaluation_corruption(self, tokenizer: Any, config: Any, seed: int) -> ForwardProcess | None:
        """What evaluation puts at hidden positions: the :meth:`forward_process`, called as
        ``corrupt(clean [B, T], mask [B, T], rows [B], stream) -> noisy``; ``None`` for causal models."""
        return self.forward_process(tokenizer, config, seed)

    # -- sink pass ---------------------------------------------------------------------
    def sink_embedding(self, model: nn.Module) -> nn.Module | None:
        """The embedding whose forward's first argument are the token ids the pruned Linears see."""
        getter = getattr(model, "get_input_embeddings", None)
        return getter() if callable(getter) else None

    def sink_pass(self, model: nn.Module, token_ids: torch.Tensor, call_kwargs: dict | None) -> dict:
        """Extra arguments of :func:`~sink_modifier.sinks.global_attention_mass` for one batch.

        ``token_ids`` are what :meth:`sink_embedding` received; ``call_kwargs`` the keyword
        arguments of the pipeline's whole-model call (``None`` where the pipeline calls
        subgraphs). The default forwards ``input_ids=token_ids`` and counts every attention module.
        """
        return {}

    # -- generation ------------------------------------------------------------------
    def native_generate(self, model: nn.Module, prompt_ids: torch.LongTensor, gen_length: int):
        """The family's own sampler, for families whose forward process is not masking; ``None``
        (the default) means :func:`sink_modifier.generation.generate` (LLaDA's remasking sampler)."""
        return None

    # -- pruning ---------------------------------------------------------------------
    def pruning_ignore(self, model: nn.Module) -> list[str]:
        """Modules every recipe must leave alone: the output head, and any text-blind modules.

        The head is found as ``get_output_embeddings()`` rather than by the name ``lm_head``
        (LLaDA's is ``model.transformer.ff_out``, and each block has an ``ff_out`` too).
        """
        return output_head_patterns(model)

    def dense_reasons(self, model: nn.Module) -> list[tuple[str, str]]:
        """``(module pattern, why it stays dense)`` for the coverage report (:mod:`sink_modifier.export.coverage`)."""
        return [(pattern, "output head (every recipe leaves it dense)") for pattern in output_head_patterns(model)]

    def after_oneshot(self, model: nn.Module) -> None:
        """Bring a model back to its own layout after ``oneshot`` (e.g. repack linearised experts)."""

    def after_save(self, folder: Path) -> None:
        """Repair a just-saved checkpoint folder before it is read back (e.g. drop duplicated tied weights)."""

    def sequential_targets(self, model: nn.Module) -> list[str] | None:
        """Decoder-block class names for llm-compressor's sequential pipeline (None: its default)."""
        return None

    def __repr__(self) -> str:
        return f"<family {self.name}>"
