"""How closely a runtime's prompt log-probs match the transformers reference on the same token ids.

Pure: lists of floats in (one list per prompt, ``None`` where a position has no log-prob, as
vLLM's ``prompt_logprobs`` has at position 0), one :class:`Agreement` out. The bound a
checkpoint is held to depends on what the runtime computes differently from the reference:
a dense or pruned float checkpoint runs the same float arithmetic in another order, so only
rounding differs; a quantized one runs real int8/int4/fp8 kernels against compressed-tensors'
fake quantization in float, so the bound is the measured difference (see
``benchmarks/results/vllm_cpu.md``), not a guess.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

__all__ = ["Agreement", "compare_logprobs", "first_divergence"]


@dataclass(frozen=True)
class Agreement:
    """Absolute log-prob differences over every scored prompt position."""

    positions: int
    max_abs: float
    mean_abs: float
    worst_prompt: int
    worst_position: int
    bound: float | None = None

    @property
    def within_bound(self) -> bool | None:
        return None if self.bound is None else self.max_abs <= self.bound

    def to_dict(self) -> dict:
        return asdict(self) | {"within_bound": self.within_bound}


def compare_logprobs(reference: list[list[float | None]], runtime: list[list[float | None]],
                     bound: float | None = None) -> Agreement:
    """Compare per-prompt log-prob lists position by position.

    Both sides must have the same prompts and lengths, and score the same positions (a
    ``None`` on one side only, or a non-finite value, is an error: it means the two did not
    see the same tokens).
    """
    if len(reference) != len(runtime):
        raise ValueError(f"{len(reference)} reference prompts but {len(runtime)} runtime prompts")
    total = 0.0
    count = 0
    worst = (-1.0, -1, -1)
    for p, (ref, run) in enumerate(zip(reference, runtime)):
        if len(ref) != len(run):
            raise ValueError(f"prompt {p}: {len(ref)} reference positions but {len(run)} runtime positions")
        for i, (a, b) in enumerate(zip(ref, run)):
            if a is None and b is None:
                continue
            if a is None or b is None:
                raise ValueError(f"prompt {p} position {i}: scored on one side only ({a!r} vs {b!r})")
            if not (math.isfinite(a) and math.isfinite(b)):
                raise ValueError(f"prompt {p} position {i}: non-finite log-prob ({a!r} vs {b!r})")
            diff = abs(a - b)
            total += diff
            count += 1
            if diff > worst[0]:
                worst = (diff, p, i)
    if not count:
        raise ValueError("no scored positions to compare")
    return Agreement(positions=count, max_abs=worst[0], mean_abs=total / count, worst_prompt=worst[1],
                     worst_position=worst[2], bound=bound)


def first_divergence(reference: list[int], runtime: list[int]) -> int | None:
    """The first step where two greedy continuations differ (``None``: identical over the shorter)."""
    for i, (a, b) in enumerate(zip(reference, runtime)):
        if a != b:
            return i
    return None
