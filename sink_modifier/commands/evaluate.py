"""``sink-modifier eval``: a model folder and a text file in, one score dict out.

Held-out windows and evaluation masks depend only on ``(data, seq_len, num_windows, seed)``,
never on the model, so a dense checkpoint and its pruned copies evaluated with the same
arguments are scored on identical tokens and masks. ``--onnx`` scores a folder written by
``sink-modifier export-onnx`` in ONNX Runtime the same way: family, tokenizer, mask token and
windows come from its ``config.json`` and tokenizer files as for the checkpoint it was
exported from (:mod:`sink_modifier.commands.onnx_preflight`), and the result says what ran it
(``runtime``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from sink_modifier.commands.arguments import (
    add_max_chars_argument,
    add_model_loading_arguments,
    positive_int,
)
from sink_modifier.console import show_progress

if TYPE_CHECKING:
    import torch

    from sink_modifier.families import LoadedModel

__all__ = ["add_parser", "evaluate_checkpoint", "evaluate_loaded", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("eval", help="evaluate a model on held-out text")
    parser.add_argument("--model", required=True,
                        help="model folder, or a folder written by `sink-modifier export-onnx` with --onnx")
    parser.add_argument("--data", required=True, help="held-out text (.txt/.txt.gz/.jsonl)")
    parser.add_argument("--num-windows", type=positive_int, default=64)
    parser.add_argument("--seq-len", type=positive_int, default=None)
    parser.add_argument("--seed", type=int, default=0, help="seed for windows and masks (same for every model)")
    parser.add_argument("--mc-samples", type=positive_int, default=8, help="Monte-Carlo rows per window for the NELBO")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--onnx", action="store_true",
                        help="run the forward pass in ONNX Runtime (--model is an export folder; --dtype is ignored)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch / ORT intra-op (default: the library's)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    add_max_chars_argument(parser, None)
    add_model_loading_arguments(parser, "float32")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        import torch

        torch.set_num_threads(args.threads)
    result = evaluate_checkpoint(
        args.model, args.data, num_windows=args.num_windows, seq_len=args.seq_len, seed=args.seed,
        mc_samples=args.mc_samples, batch_size=args.batch_size, dtype=args.dtype, max_chars=args.max_chars,
        mask_token_id=args.mask_token_id,
        progress=show_progress(), trust_remote_code=args.trust_remote_code, family=args.family,
        onnx=args.onnx, threads=args.threads,
    )
    if args.json:
        print(json.dumps(result))
    elif result["kind"] == "diffusion":
        ce = ", ".join(f"{r}: {v:.4f}" for r, v in result["masked_ce"].items())
        print(f"NELBO {result['nelbo']:.4f} ± {result['nelbo_stderr']:.4f} nats/token; masked CE {ce}")
    else:
        print(f"perplexity {result['ppl']:.3f} (CE {result['ce']:.4f} nats/token)")
    return 0


def evaluate_checkpoint(
    model_path: str | Path,
    data,
    *,
    num_windows: int = 64,
    seq_len: int | None = None,
    seed: int = 0,
    mc_samples: int = 8,
    batch_size: int = 8,
    dtype: str = "float32",
    max_chars: int | None = None,
    progress: bool = True,
    trust_remote_code: bool = False,
    family: str | None = None,
    mask_token_id: int | None = None,
    onnx: bool = False,
    threads: int | None = None,
) -> dict:
    """Load ``model_path``, cut ``num_windows`` windows of ``data`` with its tokenizer, and
    :func:`evaluate_loaded` it.

    Model folder, text, tokenizer (and mask token: ``mask_token_id`` is ``--mask-token-id``) and
    windows are checked before the weights are read (:mod:`sink_modifier.commands.preflight`).
    ``onnx``: ``model_path`` is an ONNX export folder, run in ONNX Runtime with ``threads``
    intra-op threads (``None``: ORT's default); ``dtype`` is then the graph's own. The windows
    and masks are those of the PyTorch checkpoint with the same arguments.
    """
    from sink_modifier.commands.onnx_preflight import check_onnx_export, refuse_onnx_export_without_onnx
    from sink_modifier.commands.preflight import check_model
    from sink_modifier.data import load_documents, token_windows

    if onnx:
        model = check_onnx_export(model_path, family=family, trust_remote_code=trust_remote_code,
                                  mask_token_id=mask_token_id, threads=threads)
    else:
        refuse_onnx_export_without_onnx(model_path)
        model = check_model(model_path, family=family, trust_remote_code=trust_remote_code,
                            mask_token_id=mask_token_id)
    seq_len = model.seq_len(seq_len)
    documents = load_documents(data, max_chars=max_chars)
    tokenizer = model.check_tokenizer(needs_mask_token=model.family.diffusion)
    windows = token_windows(documents, tokenizer, seq_len, num_windows, seed=seed)
    loaded = model.load(dtype=dtype)
    result = evaluate_loaded(loaded, windows, seed=seed, mc_samples=mc_samples, batch_size=batch_size,
                             progress=progress)
    return {"model": str(model_path), "data": str(data), **result}


def _runtime(model) -> dict:
    """``{"runtime": ...}`` for a model that says what runs it (ONNX Runtime), else nothing."""
    runtime = getattr(model, "runtime", None)
    return {"runtime": runtime} if isinstance(runtime, dict) else {}


def evaluate_loaded(
    loaded: LoadedModel,
    windows: torch.LongTensor,
    *,
    seed: int = 0,
    mc_samples: int = 8,
    batch_size: int = 8,
    progress: bool = True,
) -> dict:
    """Score the loaded model on token ``windows`` ``[N, T]``; see ``scoring.evaluate.evaluate_model``.

    The family decides the score: NELBO / masked CE for diffusion models (with Dream's shifted
    logits and DiffusionGemma's clean prompt + scored canvas), perplexity for causal ones.
    """
    from sink_modifier.scoring.evaluate import evaluate_model

    model, tokenizer, chosen = loaded.model, loaded.tokenizer, loaded.family
    diffusion = chosen.diffusion
    result = evaluate_model(
        model,
        windows,
        diffusion=diffusion,
        mask_token_id=loaded.mask_token_id if diffusion else None,
        seed=seed,
        mc_samples=mc_samples,
        batch_size=batch_size,
        progress=progress,
        logit_shift=chosen.logit_shift if diffusion else 0,
        maskable=chosen.scorable(windows, tokenizer, model.config) if diffusion else None,
        logits_fn=(lambda ids: chosen.logits(model, ids)) if diffusion else None,
        corrupt=chosen.evaluation_corruption(tokenizer, model.config, seed) if diffusion else None,
    )
    return {"family": chosen.name, "kind": "diffusion" if diffusion else "causal", "objective": chosen.objective,
            **result, **_runtime(model)}
