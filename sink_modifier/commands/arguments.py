"""Argument types and option adders shared by the sub-commands: one validator per kind of value.

Only the standard library is imported at module level; the ``--family`` and ``--dtype``
choices come from :mod:`sink_modifier.families` (torch, but no llm-compressor and no model code).
"""

from __future__ import annotations

import argparse
import math

__all__ = [
    "add_calibration_arguments",
    "add_dtype_argument",
    "add_family_argument",
    "add_mask_token_argument",
    "add_max_chars_argument",
    "add_model_loading_arguments",
    "add_trust_remote_code_argument",
    "finite_float",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "timesteps",
]

def _int_at_least(text: str, minimum: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from err
    if value < minimum:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _int_at_least(text, 0, "an integer >= 0")


def finite_float(text: str) -> float:
    """A float that is a number: ``nan``/``inf`` (which ``float()`` accepts) are refused."""
    try:
        value = float(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from err
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def timesteps(text: str) -> tuple[float, ...]:
    """Comma-separated diffusion timesteps, each in [0, 1] (0 = a clean row)."""
    message = f"--timesteps takes comma-separated floats in [0, 1], got {text!r}"
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(message) from err
    if not values or any(not 0.0 <= t <= 1.0 for t in values):
        raise argparse.ArgumentTypeError(message)
    return values


def add_family_argument(parser: argparse.ArgumentParser) -> None:
    from sink_modifier.families import FAMILIES

    parser.add_argument("--family", choices=list(FAMILIES), default=None,
                        help="model family (default: detected from config.json; see `sink-modifier families`)")


def add_dtype_argument(parser: argparse.ArgumentParser, default: str, help: str | None = None) -> None:
    from sink_modifier.families import DTYPES

    parser.add_argument("--dtype", choices=sorted(DTYPES), default=default, help=help)


def add_trust_remote_code_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own code to run")


def add_mask_token_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask-token-id", type=non_negative_int, default=None, metavar="N",
                        help="mask token of a diffusion model whose tokenizer and config.json name none "
                        "(or to override theirs); `prune` records it in the written config.json")


def add_max_chars_argument(parser: argparse.ArgumentParser, default: int | None) -> None:
    shown = "all of it" if default is None else f"{default:,}"
    parser.add_argument("--max-chars", type=positive_int, default=default, metavar="N",
                        help=f"read at most this many characters of --data (default {shown})")


def add_model_loading_arguments(parser: argparse.ArgumentParser, dtype_default: str, dtype_help: str | None = None) -> None:
    """``--dtype``, ``--trust-remote-code``, ``--family`` and ``--mask-token-id``: how every
    model-reading command loads its model."""
    add_dtype_argument(parser, dtype_default, dtype_help)
    add_trust_remote_code_argument(parser)
    add_family_argument(parser)
    add_mask_token_argument(parser)


def add_calibration_arguments(
    parser: argparse.ArgumentParser, *, seq_len_help: str = "tokens per window (default: model maximum)",
    seed_help: str = "seed for windows and noise (default 0)",
    pipeline_help: str = "llm-compressor calibration pipeline (basic = paper's one-shot statistics)",
) -> None:
    """How a pruning command builds and feeds its calibration rows (``prune``, ``sweep``): one definition."""
    parser.add_argument("--num-samples", type=positive_int, default=None,
                        help="calibration windows (default: the recipe's calibration.num_samples, else 32)")
    parser.add_argument("--seq-len", type=positive_int, default=None, help=seq_len_help)
    parser.add_argument("--seed", type=int, default=0, help=seed_help)
    parser.add_argument("--timesteps", type=timesteps, default=None,
                        help="comma-separated diffusion timesteps in [0, 1], 0 = clean rows (default: the "
                        "recipe's calibration.timesteps, else the LLaDA grid 0.1..1.0)")
    parser.add_argument("--batch-size", type=positive_int, default=None,
                        help="calibration rows per batch (default 1, or one window's timesteps for sink_policy)")
    parser.add_argument("--pipeline", choices=["sequential", "basic"], default="sequential", help=pipeline_help)
