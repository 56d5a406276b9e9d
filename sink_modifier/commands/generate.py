"""``sink-modifier generate``: denoise a completion for a prompt, print it and tokens/s.

Heavy imports happen inside :func:`run`. All model loading is in :func:`load_for_generation`:
a model folder through the family loader (which supplies ``logits_fn``, ``logit_shift`` and
any native sampler), or (``--onnx``) an ONNX export folder read through the same family,
whose forward runs in ONNX Runtime; its ``--json`` then says so (``runtime``).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from sink_modifier.commands.arguments import (
    add_model_loading_arguments,
    non_negative_float,
    positive_int,
)

__all__ = ["GenerationModel", "add_parser", "load_for_generation", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from sink_modifier.generation.sampler import REMASKING

    parser = subparsers.add_parser(
        "generate", help="generate text with a diffusion LM (LLaDA low-confidence remasking sampler)",
        description="Appends --gen-length mask tokens to the prompt and denoises them block by block "
                    "(--steps spread evenly over the blocks), then prints the text and tokens/s.",
    )
    parser.add_argument("--model", required=True,
                        help="model folder, or a folder written by `sink-modifier export-onnx` with --onnx")
    parser.add_argument("--prompt", required=True, help="prompt text")
    parser.add_argument("--gen-length", type=positive_int, default=64, help="tokens to generate (default 64)")
    parser.add_argument("--steps", type=positive_int, default=64,
                        help="denoising steps in total (default 64); at most --gen-length run, one token per step "
                        "(more is capped, with a warning)")
    parser.add_argument("--block-length", type=positive_int, default=32,
                        help="semi-autoregressive block size; divides --gen-length (default 32)")
    parser.add_argument("--temperature", type=non_negative_float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--cfg-scale", type=non_negative_float, default=0.0, help="classifier-free guidance (default 0)")
    parser.add_argument("--remasking", choices=list(REMASKING), default="low_confidence")
    parser.add_argument("--logit-shift", type=int, choices=[0, 1], default=None,
                        help="1 for Dream-style models whose logits[i] predict token i+1 (default: the family's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler's random draws (default 0)")
    parser.add_argument("--onnx", action="store_true", help="run the forward pass in ONNX Runtime (export folder)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch / ORT intra-op (default: the library's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_loading_arguments(parser, "float32")
    return parser


@dataclass
class GenerationModel:
    """What the sampler needs: a model (or None), a tokenizer, the mask id and the forward."""

    model: Any
    tokenizer: Any
    mask_token_id: int
    logits_fn: Callable | None = None
    logit_shift: int = 0
    eos_token_id: int | None = None
    native: Callable | None = None  # (prompt_ids, gen_length) -> ids, or None: use our sampler
    runtime: dict | None = None  # what runs the forward when it is not PyTorch (OnnxDenoiser.runtime)


def load_for_generation(path: str | Path, *, dtype: str = "float32", onnx: bool = False,
                        trust_remote_code: bool = False, threads: int | None = None,
                        family: str | None = None, mask_token_id: int | None = None) -> GenerationModel:
    """Load a model folder (or, with ``onnx``, an ONNX export folder run in ONNX Runtime with
    ``threads`` intra-op threads) with its tokenizer and mask id (``mask_token_id``:
    ``--mask-token-id``, else the model's own); either folder is checked before its weights are
    read or its session started (:mod:`sink_modifier.commands.preflight`,
    :mod:`sink_modifier.commands.onnx_preflight`). An export folder is read through its family
    like the checkpoint it came from (mask token, logit shift)."""
    from sink_modifier.commands.onnx_preflight import check_onnx_export, refuse_onnx_export_without_onnx
    from sink_modifier.commands.preflight import check_model

    if onnx:
        checked = check_onnx_export(path, family=family, trust_remote_code=trust_remote_code,
                                    mask_token_id=mask_token_id, threads=threads)
    else:
        refuse_onnx_export_without_onnx(path)
        checked = check_model(path, family=family, trust_remote_code=trust_remote_code, mask_token_id=mask_token_id)
    if not checked.family.diffusion:
        raise ValueError(
            f"{path} is a {checked.family.name} (autoregressive) model; denoising generation needs a diffusion LM "
            "(pass --family if detection is wrong)"
        )
    checked.check_tokenizer(needs_mask_token=True)
    loaded = checked.load(dtype=dtype)
    model, chosen = loaded.model, loaded.family
    return GenerationModel(model, loaded.tokenizer, loaded.mask_token_id,
                           logits_fn=lambda ids: chosen.logits(model, ids), logit_shift=chosen.logit_shift,
                           native=_native_sampler(model, chosen), runtime=getattr(model, "runtime", None))


def _native_sampler(model, family):
    """The family's own sampler when it has one (``ModelFamily.native_generate`` overridden)."""
    from sink_modifier.families import ModelFamily

    if type(family).native_generate is ModelFamily.native_generate:
        return None
    return lambda prompt_ids, gen_length: family.native_generate(model, prompt_ids, gen_length)


def run(args: argparse.Namespace) -> int:
    import torch

    from sink_modifier.generation.sampler import generate_with_stats

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loaded = load_for_generation(args.model, dtype=args.dtype, onnx=args.onnx,
                                 trust_remote_code=args.trust_remote_code, threads=args.threads,
                                 family=args.family, mask_token_id=args.mask_token_id)
    # verbose=False: a prompt over the tokenizer's model_max_length is refused below in our words
    # (its length and the model's window), not with transformers' "indexing errors" warning
    prompt_ids = loaded.tokenizer(args.prompt, return_tensors="pt", verbose=False).input_ids
    if prompt_ids.shape[1] == 0:
        raise ValueError("the prompt is empty after tokenization; pass some text with --prompt")
    if loaded.native is not None:
        return _report(args, loaded, native_result(loaded, prompt_ids, args.gen_length))
    result = generate_with_stats(
        loaded.model, prompt_ids, mask_token_id=loaded.mask_token_id, gen_length=args.gen_length,
        steps=args.steps, block_length=args.block_length, temperature=args.temperature,
        cfg_scale=args.cfg_scale, remasking=args.remasking, logit_shift=loaded.logit_shift if args.logit_shift is None else args.logit_shift,
        eos_token_id=loaded.eos_token_id, generator=torch.Generator().manual_seed(args.seed),
        logits_fn=loaded.logits_fn,
    )
    _warn_if_steps_capped(args, result)
    return _report(args, loaded, result)


def _warn_if_steps_capped(args: argparse.Namespace, result) -> None:
    """Say on stderr when the sampler ran fewer steps than --steps asked (see ``scheduled_steps``)."""
    if result.steps is None or result.steps >= args.steps:
        return
    # a plain stderr line like cli.main's errors: shown whatever the log level, never on stdout
    print(f"sink-modifier generate: warning: --steps {args.steps} is more than the {args.gen_length} tokens to "
          f"generate (--gen-length); used {result.steps} steps (one token per step: a step commits at least one "
          "token)", file=sys.stderr)


def native_result(loaded: GenerationModel, prompt_ids, gen_length: int):
    """Time the family's own sampler (see ``ModelFamily.native_generate``) like ``generate_with_stats``."""
    import time

    from sink_modifier.generation.sampler import GenerationResult

    start = time.perf_counter()
    sequences = loaded.native(prompt_ids, gen_length)
    seconds = time.perf_counter() - start
    return GenerationResult(sequences=sequences, prompt_length=prompt_ids.shape[1],
                            new_tokens=int(sequences.shape[0] * (sequences.shape[1] - prompt_ids.shape[1])),
                            forward_passes=0, seconds=seconds)


def _report(args, loaded: GenerationModel, result) -> int:
    completion = loaded.tokenizer.decode(result.generated[0], skip_special_tokens=False)
    if args.json:
        print(json.dumps({
            "prompt": args.prompt, "completion": completion, "token_ids": result.generated[0].tolist(),
            # steps: what the schedule ran (None: the family's own sampler); steps_requested: --steps
            "gen_length": args.gen_length, "steps": result.steps, "steps_requested": args.steps,
            "forward_passes": result.forward_passes,
            "seconds": result.seconds, "tokens_per_second": result.tokens_per_second,
            **({"runtime": loaded.runtime} if loaded.runtime is not None else {}),
        }))
    else:
        print(args.prompt + completion)
        # The text is the result (stdout); the speed is a report about the run (stderr).
        print(f"-- {result.new_tokens} tokens in {result.seconds:.2f} s: {result.tokens_per_second:.1f} tokens/s "
              + (f"({result.forward_passes} forward passes{', ONNX Runtime' if args.onnx else ''})"
                 if loaded.native is None else "(the family's own sampler)"), file=sys.stderr)
    return 0
