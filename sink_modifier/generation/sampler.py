"""LLaDA's low-confidence remasking sampler (``generate.py`` of the reference), as pure tensor code.

The canvas is ``[prompt; gen_length × MASK]``. It is decoded in ``gen_length / block_length``
blocks, left to right; each block gets ``steps / num_blocks`` denoising steps. At each step the
model predicts every position, the masked positions of the current block get a proposal
(argmax of the logits, after Gumbel noise when ``temperature > 0``) and a confidence (the
softmax probability of the proposal for ``low_confidence``, a uniform random number for
``random``), and the ``k`` most confident are committed, ``k`` following
:func:`get_num_transfer_tokens`. Committed tokens are never remasked.

Differences from the reference, all deliberate:

* Any batch size (the reference builds a batch-1 canvas), any device, a ``torch.Generator`` for
  every random draw, so a seeded run is reproducible.
* Gumbel-max is computed in log space, ``argmax(logits + T·g)`` with ``g = −log(−log U)``, in
  float64. The reference's ``exp(logits) / (−log U)^T`` picks the same token but overflows to
  ``inf`` for logits above ~709 (ties → the lowest id wins instead of the sampled one).
* Confidences are softmax probabilities in float32 even for bf16 models (bf16 probabilities
  tie often, and ties decide which positions are committed).
* Only positions of the current block that are still masked can be committed. The reference
  also lets mask tokens *inside the prompt* be committed; here a prompt containing the mask
  token is refused (the sampler fills the ``gen_length`` tail only).
* The mask token itself is never proposed. The reference can commit it (an untrained or
  pruned model may rate it highest); it then counts as masked again, the block's schedule
  no longer adds up, and mask tokens can survive to the output.
* More ``steps`` than ``gen_length`` tokens cannot be taken: a step commits at least one token,
  so each block runs ``min(steps / num_blocks, block_length)`` steps (one token per step) and a
  step that would commit nothing skips the forward pass instead of computing logits it throws
  away. :func:`scheduled_steps` says how many steps run; :class:`GenerationResult` records it
  (``sink-modifier generate`` warns when it is fewer than ``--steps``).
* ``logit_shift=1`` (Dream): position ``j`` is predicted by the logits at ``j − 1``.
  Alignment and guidance are :func:`sink_modifier.scoring.denoiser.denoiser_logits`, the core
  evaluation and the lm-eval adapter score with too.
* ``eos_token_id`` (optional) stops early: once every row has produced it inside the finished
  blocks, the remaining blocks are filled with it instead of being decoded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from sink_modifier.scoring.denoiser import LogitsFn, check_logit_shift, denoiser_logits, model_logits
from sink_modifier.scoring.inference import input_device

__all__ = ["REMASKING", "GenerationResult", "generate", "generate_with_stats", "get_num_transfer_tokens",
           "scheduled_steps"]

REMASKING = ("low_confidence", "random")


def get_num_transfer_tokens(mask_index: torch.Tensor, steps: int) -> torch.Tensor:
    """Tokens to commit at each of ``steps`` steps, per row: ``[B, steps]`` int64.

    ``mask_index`` is the ``[B, block_length]`` boolean mask of a block's masked positions.
    Each row's count is split evenly over the steps and the remainder goes to the first steps
    (10 masked over 4 steps → 3, 3, 2, 2), so every row's schedule sums to its masked count.
    """
    if mask_index.dim() != 2 or mask_index.dtype != torch.bool:
        raise ValueError(
            f"mask_index must be a boolean [B, block_length] tensor, got {mask_index.dtype} {tuple(mask_index.shape)}"
        )
    if steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}")
    masked = mask_index.sum(dim=1, keepdim=True)
    base, remainder = masked // steps, masked % steps
    step = torch.arange(steps, device=mask_index.device).unsqueeze(0)
    return base + (step < remainder).to(torch.int64)


def scheduled_steps(gen_length: int, steps: int) -> int:
    """Denoising steps that commit tokens when ``steps`` are asked for ``gen_length`` tokens.

    Every generated position starts masked and a step commits at least one token, so at most
    ``gen_length`` steps run (one token per step); the rest would commit nothing and are skipped.
    ``steps`` must already be a multiple of the number of blocks (:func:`generate` checks it),
    so each block gets ``min(steps / num_blocks, block_length)`` steps and the total is
    ``min(steps, gen_length)``.
    """
    _positive_int("gen_length", gen_length)
    _positive_int("steps", steps)
    return min(steps, gen_length)


@dataclass(frozen=True)
class GenerationResult:
    """What :func:`generate_with_stats` measured; ``sequences`` is what :func:`generate` returns."""

    sequences: torch.Tensor
    prompt_length: int
    new_tokens: int  # generated positions over the whole batch (B × gen_length)
    forward_passes: int  # calls of logits_fn (a CFG step is one call on 2B rows)
    seconds: float
    # denoising steps of the schedule, ``scheduled_steps(gen_length, steps)`` (fewer than asked when
    # steps > gen_length); None for a family's own sampler, whose steps are its own
    steps: int | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("inf")

    @property
    def generated(self) -> torch.Tensor:
        """The ``[B, gen_length]`` tail without the prompt."""
        return self.sequences[:, self.prompt_length:]


def _config_int(model, name: str) -> int | None:
    """``model.config.<name>``, else ``model.<name>`` (e.g. OnnxDenoiser), when it is an int."""
    config = getattr(model, "config", None)
    for holder in (config, model):
        value = getattr(holder, name, None) if holder is not None else None
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _validate(model, prompt_ids, mask_token_id, gen_length, steps, block_length, temperature, cfg_scale,
              remasking, logit_shift, eos_token_id) -> int:
    """Check every argument; return the number of blocks."""
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 2:
        shape = tuple(prompt_ids.shape) if isinstance(prompt_ids, torch.Tensor) else type(prompt_ids).__name__
        raise ValueError(f"prompt_ids must be a [batch, prompt_len] tensor of token ids, got {shape}; "
                         "for a single prompt use ids.unsqueeze(0)")
    if prompt_ids.dtype.is_floating_point or prompt_ids.dtype.is_complex or prompt_ids.dtype == torch.bool:
        raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
    if prompt_ids.shape[0] == 0:
        raise ValueError("prompt_ids has an empty batch (shape[0] == 0)")
    if isinstance(mask_token_id, bool) or not isinstance(mask_token_id, int) or mask_token_id < 0:
        raise ValueError(f"mask_token_id must be a non-negative int, got {mask_token_id!r}; "
                         "see ModelFamily.mask_token_id")
    for name, value in (("gen_length", gen_length), ("steps", steps), ("block_length", block_length)):
        _positive_int(name, value)
    if gen_length % block_length:
        raise ValueError(f"gen_length ({gen_length}) must be a multiple of block_length ({block_length}); "
                         f"e.g. block_length={gen_length} for a single block")
    num_blocks = gen_length // block_length
    if steps % num_blocks:
        raise ValueError(f"steps ({steps}) must be a multiple of the number of blocks "
                         f"(gen_length / block_length = {num_blocks}) so every block gets the same steps; "
                         f"e.g. steps={max(num_blocks, steps - steps % num_blocks)}")
    if not temperature >= 0:  # also rejects NaN
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not cfg_scale >= 0:
        raise ValueError(f"cfg_scale must be >= 0 (0 = no classifier-free guidance), got {cfg_scale}")
    if remasking not in REMASKING:
        raise ValueError(f"remasking must be one of {list(REMASKING)}, got {remasking!r}")
    check_logit_shift(logit_shift)
    prompt_len = prompt_ids.shape[1]
    if logit_shift == 1 and prompt_len == 0:
        raise ValueError("logit_shift=1 needs a prompt of at least one token (the first generated "
                         "position is predicted by the logits of the position before it)")
    if eos_token_id is not None and (isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int)
                                     or eos_token_id < 0 or eos_token_id == mask_token_id):
        raise ValueError(f"eos_token_id must be None or a non-negative int other than the mask token, "
                         f"got {eos_token_id!r}")
    vocab_size = _config_int(model, "vocab_size")
    if vocab_size is not None and mask_token_id >= vocab_size:
        raise ValueError(f"mask_token_id {mask_token_id} is outside the model's vocabulary ({vocab_size} tokens); "
                         "pass the mask id of this model's tokenizer")
    max_positions = _config_int(model, "max_position_embeddings")
    if max_positions is not None and prompt_len >= max_positions:
        raise ValueError(f"the prompt alone is {prompt_len} tokens and the model's window is {max_positions} "
                         f"positions (max_position_embeddings), leaving no room to generate; shorten the prompt "
                         f"to at most {max_positions - 1} tokens")
    if max_positions is not None and prompt_len + gen_length > max_positions:
        raise ValueError(f"prompt ({prompt_len} tokens) + gen_length ({gen_length}) = {prompt_len + gen_length} "
                         f"exceeds the model's max_position_embeddings ({max_positions}); shorten the prompt "
                         f"or lower gen_length to at most {max(max_positions - prompt_len, 0)}")
    in_prompt = (prompt_ids == mask_token_id).nonzero()
    if len(in_prompt):
        where = ", ".join(f"(row {r}, position {p})" for r, p in in_prompt[:5].tolist())
        raise ValueError(f"prompt_ids contain the mask token {mask_token_id} at {where}; the sampler only "
                         "fills the gen_length positions after the prompt, remove mask tokens from the prompt")
    return num_blocks


def _checked(logits_fn: LogitsFn, mask_token_id: int) -> LogitsFn:
    """``logits_fn`` with its output's shape and vocabulary checked on every call."""

    def checked(ids: torch.Tensor) -> torch.Tensor:
        logits = logits_fn(ids)
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or logits.shape[:2] != ids.shape:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"logits_fn must return [batch, seq_len, vocab] = [{ids.shape[0]}, {ids.shape[1]}, V] "
                             f"logits for its input ids, got {shape}")
        if mask_token_id >= logits.shape[-1]:
            raise ValueError(f"mask_token_id {mask_token_id} is outside the model's vocabulary "
                             f"({logits.shape[-1]} logits); pass the mask id of this model's tokenizer")
        return logits

    return checked


def _uniform(shape, generator: torch.Generator | None, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    gen_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _propose(logits: torch.Tensor, mask_token_id: int, temperature: float, remasking: str,
             generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposal tokens ``[B, n]`` and their confidences ``[B, n]`` (float32) from block logits ``[B, n, V]``."""
    logits = logits.clone()
    logits[..., mask_token_id] = float("-inf")  # a committed mask token would stay masked
    if temperature > 0:
        u = _uniform(logits.shape, generator, logits.device, torch.float64)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(torch.float64).tiny)))
        x0 = torch.argmax(logits.double() + temperature * gumbel, dim=-1)
    else:
        x0 = torch.argmax(logits, dim=-1)
    if remasking == "low_confidence":
        probs = torch.softmax(logits.float(), dim=-1)
        confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
    else:
        confidence = _uniform(x0.shape, generator, logits.device)
    return x0, confidence


@torch.no_grad()
def _run(model, prompt_ids, *, mask_token_id, gen_length, steps, block_length, temperature, cfg_scale,
         remasking, logit_shift, eos_token_id, generator, logits_fn) -> tuple[torch.Tensor, int]:
    num_blocks = _validate(model, prompt_ids, mask_token_id, gen_length, steps, block_length, temperature,
                           cfg_scale, remasking, logit_shift, eos_token_id)
    if logits_fn is None:
        if model is None:
            raise ValueError("generate needs a model or a logits_fn (got model=None and no logits_fn)")
        logits_fn = model_logits(model)
        was_training = model.training if isinstance(model, nn.Module) else None
        if was_training:
            model.eval()
    else:
        was_training = None
    device = input_device(model) if isinstance(model, nn.Module) else prompt_ids.device
    batch, prompt_len = prompt_ids.shape
    canvas = torch.full((batch, prompt_len + gen_length), mask_token_id, dtype=torch.long, device=device)
    canvas[:, :prompt_len] = prompt_ids.to(device=device, dtype=torch.long)
    steps_per_block = steps // num_blocks
    forward = _checked(logits_fn, mask_token_id)
    forward_passes = 0
    try:
        for block in range(num_blocks):
            start = prompt_len + block * block_length
            end = start + block_length
            schedule = get_num_transfer_tokens(canvas[:, start:end] == mask_token_id, steps_per_block)
            for step in range(steps_per_block):
                k = schedule[:, step]
                if not bool((k > 0).any()):
                    continue
                unconditional = None
                if cfg_scale > 0:
                    unconditional = canvas.clone()
                    unconditional[:, :prompt_len] = mask_token_id
                logits = denoiser_logits(forward, canvas, logit_shift=logit_shift, cfg=cfg_scale,
                                         unconditional=unconditional, start=start, end=end)
                forward_passes += 1
                logits = logits.to(device)
                x0, confidence = _propose(logits, mask_token_id, temperature, remasking, generator)
                masked = canvas[:, start:end] == mask_token_id
                confidence = confidence.masked_fill(~masked, float("-inf"))
                order = torch.argsort(confidence, dim=-1, descending=True, stable=True)
                rank = torch.empty_like(order).scatter_(-1, order, torch.arange(block_length, device=device)
                                                        .expand_as(order).contiguous())
                commit = (rank < k.to(device).unsqueeze(1)) & masked
                canvas[:, start:end] = torch.where(commit, x0, canvas[:, start:end])
            if eos_token_id is not None and end < canvas.shape[1]:
                if bool((canvas[:, prompt_len:end] == eos_token_id).any(dim=1).all()):
                    canvas[:, end:] = eos_token_id
                    break
    finally:
        if was_training:
            model.train()
    return canvas, forward_passes


def generate(
    model,
    prompt_ids: torch.Tensor,
    *,
    mask_token_id: int,
    gen_length: int = 128,
    steps: int = 128,
    block_length: int = 32,
    temperature: float = 0.0,
    cfg_scale: float = 0.0,
    remasking: str = "low_confidence",
    logit_shift: int = 0,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    logits_fn: LogitsFn | None = None,
) -> torch.LongTensor:
    """Denoise ``gen_length`` masked positions after each prompt; returns ``[B, P + gen_length]`` ids.

    Args:
        model: the diffusion LM (``model(input_ids=ids).logits``); may be ``None`` when
            ``logits_fn`` is given. Its ``config.max_position_embeddings`` bounds ``P + gen_length``.
        prompt_ids: ``[B, P]`` integer ids (same length for every row; no mask tokens).
        mask_token_id: the model's mask id.
        gen_length, steps, block_length: canvas tail length, total denoising steps and block size;
            ``gen_length % block_length == 0`` and ``steps % (gen_length // block_length) == 0``.
            At most ``gen_length`` steps run (one token per step; see :func:`scheduled_steps`).
        temperature: 0 = greedy; otherwise Gumbel-max sampling at this temperature.
        cfg_scale: classifier-free guidance ``un + (cfg + 1)(cond − un)``, unconditional = prompt masked.
        remasking: ``"low_confidence"`` (commit the most probable proposals) or ``"random"``.
        logit_shift: 0 if ``logits[:, i]`` predict token ``i`` (LLaDA), 1 if token ``i + 1`` (Dream).
        eos_token_id: stop early once every row has produced it in finished blocks (rest filled with it).
        generator: the source of every random draw (Gumbel noise, random confidences).
        logits_fn: ``ids [B, L] -> logits [B, L, V]``; default ``model(input_ids=ids).logits``.
    """
    canvas, _ = _run(model, prompt_ids, mask_token_id=mask_token_id, gen_length=gen_length, steps=steps,
                     block_length=block_length, temperature=temperature, cfg_scale=cfg_scale,
                     remasking=remasking, logit_shift=logit_shift, eos_token_id=eos_token_id,
                     generator=generator, logits_fn=logits_fn)
    return canvas


def generate_with_stats(model, prompt_ids: torch.Tensor, **kwargs) -> GenerationResult:
    """:func:`generate` (same keyword arguments), timed, with the number of forward passes."""
    device = input_device(model) if isinstance(model, nn.Module) else prompt_ids.device
    _synchronize(device)
    kwargs = _with_defaults(kwargs)
    start = time.perf_counter()
    canvas, passes = _run(model, prompt_ids, **kwargs)
    _synchronize(device)
    seconds = time.perf_counter() - start
    gen_length = canvas.shape[1] - prompt_ids.shape[1]
    return GenerationResult(sequences=canvas, prompt_length=prompt_ids.shape[1],
                            new_tokens=canvas.shape[0] * gen_length, forward_passes=passes, seconds=seconds,
                            steps=scheduled_steps(gen_length, kwargs["steps"]))


_DEFAULTS = dict(gen_length=128, steps=128, block_length=32, temperature=0.0, cfg_scale=0.0,
                 remasking="low_confidence", logit_shift=0, eos_token_id=None, generator=None, logits_fn=None)


def _with_defaults(kwargs: dict) -> dict:
    unknown = set(kwargs) - set(_DEFAULTS) - {"mask_token_id"}
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; generate takes {sorted(_DEFAULTS)} "
                        "and mask_token_id")
    if "mask_token_id" not in kwargs:
        raise TypeError("mask_token_id is required")
    return {**_DEFAULTS, **kwargs}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
