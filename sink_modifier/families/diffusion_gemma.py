"""DiffusionGemma (``DiffusionGemmaForBlockDiffusion``, native in transformers ≥ 5.12).

A causal prompt encoder plus a bidirectional canvas decoder that attends to the prompt's
keys and values (a read-only KV cache) and to the canvas; MoE experts; a vision tower. It
loads with ``AutoModelForImageTextToText``; ``forward(input_ids=prompt,
decoder_input_ids=canvas)`` returns logits over the canvas only. The rules here:

* **Split.** A window of ``T`` tokens is a clean prompt (first ``T - C``) and a canvas
  (last ``C = min(config.canvas_length, T // 2)``): the prompt + canvas layout of
  :class:`~sink_modifier.process.calibration.CalibrationSet` (:func:`~sink_modifier.process.canvas_size`).
* **Noise.** DiffusionGemma has no mask token: its forward process substitutes uniform random
  tokens (:class:`~sink_modifier.process.forward.UniformSubstitution`). Calibration noises the
  canvas that way at every timestep (prompt clean); evaluation hides the same stratified canvas
  positions as the masked metrics and fills them with uniform tokens from the same process. The
  "NELBO" of this family is therefore a *denoising cross-entropy* weighted like the LLaDA
  ELBO, not a likelihood bound.
* **What is pruned.** The encoder's text layers and the decoder's layers share every weight,
  so the shared Linears are pruned once, by the decoder (canvas) statistics: the encoder's
  text model is ignored. Left dense: the output head (tied to the embedding), the vision
  tower and its projector (they never see text), the routers (``E x H``, tiny, and pruning
  them reroutes tokens), and ``self_conditioning`` (its input is exactly zero at the first
  denoising step, which is what calibration rows are, so no statistic can rank its weights:
  Wanda would prune by tie order, SparseGPT zeroes every dead column). Experts are pruned
  per expert, after llm-compressor linearises them.
* **Pipeline.** ``basic`` only: the traced sequential pipeline captures the encoder's output
  as a constant and appends the DynamicCache twice.
* **Sink pass.** Pruned Linears see canvas tokens, so sink weights are per canvas token:
  the pass hooks the decoder's embedding, forwards the batch's prompt with the canvas, and
  counts only the decoder's attention, keeping the canvas key columns (``K = P + C``).
* **Save.** ``after_oneshot`` repacks the linearised experts into the 3-D parameters and
  re-ties the encoder's experts to the decoder's, so the checkpoint reloads exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from torch import nn

from sink_modifier.process.calibration import canvas_size
from sink_modifier.process.forward import UniformSubstitution

from .base import ModelFamily, output_head_patterns
from .modules import attention_modules

__all__ = ["DiffusionGemmaFamily", "retie_encoder_to_decoder"]

ENCODER_TEXT = r"re:^model\.encoder\.language_model\..*"
ENCODER_PREFIX = "model.encoder.language_model."
TEXT_BLIND = [r"re:.*vision_tower.*", r"re:.*embed_vision.*"]
KEPT_DENSE = [r"re:.*\.router\..*", r"re:.*self_conditioning.*"]


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else getattr(config, "text_config", config)


def _canvas(config: Any, seq_len: int) -> int:
    return canvas_size(seq_len, int(getattr(config, "canvas_length", seq_len // 2) or seq_len // 2))


def _tied_encoder_patterns() -> list[re.Pattern]:
    """Full-name regexes of the encoder tensors transformers ties to the decoder's (its ``_tied_weights_keys``)."""
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaModel

    patterns = [re.compile(r"^model\." + key + r"$") for key in DiffusionGemmaModel._tied_weights_keys]
    # and their per-expert / quantization companions (weight_scale, ...), written beside a tied weight
    patterns.append(re.compile(r"^model\.encoder\.language_model\.layers\..*\.experts\.\d+\..*$"))
    patterns.append(re.compile(r"^model\.encoder\.language_model\.layers\..*\.weight_(scale|zero_point|global_scale|packed|shape)$"))
    return patterns


def retie_encoder_to_decoder(model: nn.Module) -> int:
    """Point every parameter of the encoder's text layers at the decoder's same-named one.

    They are one set of weights in DiffusionGemma; llm-compressor's expert linearisation
    unties the experts. Returns the number of parameters re-tied.
    """
    encoder = model.model.encoder.language_model.layers
    decoder = model.model.decoder.layers
    tied = 0
    for enc_layer, dec_layer in zip(encoder, decoder):
        enc_params = dict(enc_layer.named_parameters())
        for name, param in dec_layer.named_parameters():
            if name in enc_params and enc_params[name] is not param:
                owner, _, leaf = name.rpartition(".")
                setattr(enc_layer.get_submodule(owner) if owner else enc_layer, leaf, param)
                tied += 1
    return tied


class DiffusionGemmaFamily(ModelFamily):
    name = "diffusion_gemma"
    description = "DiffusionGemma block diffusion (native transformers; prompt encoder + canvas decoder, MoE)"
    examples = ("google/diffusiongemma-26B-A4B-it",)
    pipeline = "basic"
    uniform_noise = True
    objective = (
        "canvas denoising cross-entropy under uniform token substitution (prompt clean), weighted like "
        "the LLaDA ELBO; not a likelihood bound"
    )

    def matches(self, config: dict[str, Any]) -> bool:
        architectures = config.get("architectures") or []
        return config.get("model_type") == "diffusion_gemma" or any(
            str(a).startswith("DiffusionGemma") for a in architectures
        )

    def load_model(self, folder: Path, config: dict, *, dtype, trust_remote_code: bool, quantization_config=None) -> nn.Module:
        from transformers import AutoModelForImageTextToText

        from .expert_layout import fill_fused_experts, per_expert_layers

        kwargs = {} if quantization_config is None else {"quantization_config": quantization_config}
        per_expert = per_expert_layers(Path(folder))
        if not per_expert:
            return AutoModelForImageTextToText.from_pretrained(
                folder, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
            )
        # A quantized checkpoint keeps one Linear per expert (expert_layout.py): transformers loads
        # everything else and leaves the fused expert parameters unset, saying so at length; they are
        # filled from the per-expert tensors right after, decompressed.
        from transformers.utils import logging as hf_logging

        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            model = AutoModelForImageTextToText.from_pretrained(
                folder, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs
            )
        finally:
            hf_logging.set_verbosity(level)
        fill_fused_experts(model, Path(folder), config.get("quantization_config"))
        retie_encoder_to_decoder(model)
        return model

    # -- tokens ------------------------------------------------------------------------
    def mask_token_id(self, tokenizer: Any, config: Any) -> int | None:
        """Unused by the uniform forward process; reported when the config or tokenizer names one."""
        for source in (config, _text_config(config)):
            value = getattr(source, "mask_token_id", None)
            if isinstance(value, int):
                return value
        return getattr(tokenizer, "mask_token_id", None)

    def maskable(self, clean_ids: torch.LongTensor, tokenizer: Any, config: Any) -> torch.BoolTensor:
        """Only the canvas (last ``C`` tokens of each window) is noised; the prompt stays clean."""
        maskable = torch.zeros_like(clean_ids, dtype=torch.bool)
        maskable[:, -_canvas(config, clean_ids.shape[1]) :] = True
        return maskable

    # -- running ---------------------------------------------------------------------
    def model_inputs(self, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None, *, config=None) -> dict:
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("DiffusionGemma windows are scored unpadded; padded rows are not supported")
        size = _canvas(config, input_ids.shape[1])
        return {"input_ids": input_ids[:, :-size], "decoder_input_ids": input_ids[:, -size:]}

    def logits(self, model: nn.Module, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[B, T, V]`` aligned with the window: canvas rows from the model, prompt rows zero
        (the prompt is never scored: :meth:`scorable` is the canvas)."""
        inputs = self.model_inputs(input_ids, attention_mask, config=model.config)
        canvas = model(**inputs).logits
        prompt = canvas.new_zeros(canvas.shape[0], inputs["input_ids"].shape[1], canvas.shape[-1])
        return torch.cat([prompt, canvas], dim=1)

    # -- forward process / calibration -------------------------------------------------
    def forward_process(self, tokenizer: Any, config: Any, seed: int) -> UniformSubstitution:
        return UniformSubstitution(vocab_size=int(_text_config(config).vocab_size), seed=seed)

    def calibration_canvas(self, config: Any) -> int:
        return int(config.canvas_length)

    # -- sink pass ---------------------------------------------------------------------
    def sink_embedding(self, model: nn.Module) -> nn.Module:
        return model.model.decoder.embed_tokens

    def sink_pass(self, model: nn.Module, token_ids: torch.Tensor, call_kwargs: dict | None) -> dict:
        prompt = (call_kwargs or {}).get("input_ids")
        if prompt is None:
            raise ValueError(
                "the DiffusionGemma sink pass needs the batch's prompt (input_ids) from the whole-model "
                "call; run oneshot with pipeline='basic'"
            )
        decoder_attention = attention_modules(model.model.decoder.layers)
        return {
            "forward_inputs": {"input_ids": prompt, "decoder_input_ids": token_ids},
            "attention_modules": decoder_attention,
            "trailing_keys": True,
        }

    # -- generation ------------------------------------------------------------------
    def native_generate(self, model: nn.Module, prompt_ids: torch.LongTensor, gen_length: int) -> torch.LongTensor:
        """transformers' own block-diffusion sampler (entropy-bounded renoising of a uniform
        canvas, one canvas of ``canvas_length`` at a time): LLaDA's mask-token sampler does not
        apply to a model trained on uniform noise."""
        output = model.generate(prompt_ids, max_new_tokens=gen_length)
        sequences = getattr(output, "sequences", output)
        return sequences[:, : prompt_ids.shape[1] + gen_length]

    # -- pruning ---------------------------------------------------------------------
    def pruning_ignore(self, model: nn.Module) -> list[str]:
        return output_head_patterns(model) + [ENCODER_TEXT, *TEXT_BLIND, *KEPT_DENSE]

    def dense_reasons(self, model: nn.Module) -> list[tuple[str, str]]:
        return super().dense_reasons(model) + [
            (ENCODER_TEXT, "encoder text layers (the decoder's weights, shared)"),
            *((p, "vision tower (never sees text)") for p in TEXT_BLIND),
            (KEPT_DENSE[0], "router (tiny; pruning it reroutes tokens)"),
            (KEPT_DENSE[1], "self-conditioning (zero input at the calibration step: nothing to rank)"),
        ]

    def after_oneshot(self, model: nn.Module) -> None:
        from llmcompressor.modeling.moe.linearize import get_linearized_moes, repack_moe

        quantized = [name for name, moe in get_linearized_moes(model)
                     if any(getattr(m, "quantization_scheme", None) is not None for m in moe.modules())]
        if quantized:
            # Repacking would drop the experts' quantization (expert_layout.py): keep one Linear per
            # expert, the layout vLLM loads expert by expert; our loader reads it back fused.
            logger.info(f"Keeping the {len(quantized)} quantized expert blocks one Linear per expert")
            return
        repack_moe(model)
        tied = retie_encoder_to_decoder(model)
        if tied:
            logger.info(f"Re-tied {tied} encoder text-layer parameters to the decoder's (pruned) weights")

    def after_save(self, folder: Path) -> None:
        """Drop the encoder's copies of the decoder's weights from a saved checkpoint, and their ignores.

        The encoder's text layers *are* the decoder's (``_tied_weights_keys``); the original checkpoint
        stores them once. After quantization they are no longer the same tensors in memory (the decoder's
        were compressed, the encoder's ignored), so transformers writes both, and vLLM, which maps
        ``model.encoder.language_model.`` and ``model.decoder.`` onto one ``model.``, would load two
        different copies (and read the encoder's ``ignore`` entries as the decoder's layers).
        """
        from .tied_copies import drop_tied_copies

        dropped = drop_tied_copies(Path(folder), _tied_encoder_patterns(), ENCODER_PREFIX)
        if dropped:
            logger.info(f"Dropped {dropped} encoder tensors tied to the decoder's from the saved checkpoint")
