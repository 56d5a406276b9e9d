"""The statistics of an analysed trajectory: one window's (:func:`summarize_window`), over windows
(:func:`aggregate_windows`), and the sink floor re-applied to a stored analysis (:func:`apply_sink_floor`).

Pure functions over the per-step mass and keys that :mod:`.trajectory` measures; see its docstring for
what each statistic means.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from sink_modifier.diagnostics.token_kinds import SINK_KINDS, classify_sink_token
from sink_modifier.process import LLADA_TIMESTEPS, check_timesteps
from sink_modifier.sinks.detection import soft_sink_mask
from sink_modifier.sinks.stability import apply_sink_policy, dominant_sink_movement

__all__ = ["NO_SINK", "SINK_FLOOR", "STEP_KINDS", "SinkDynamicsOptions", "aggregate_windows", "apply_sink_floor",
           "check_sink_floor", "summarize_window"]


#: A step whose strongest key receives less than ``SINK_FLOOR`` times the step's mean mass
#: has no sink (:data:`NO_SINK`). Chosen on the shipped models
#: (``benchmarks/results/sink_dynamics.json``, 32 windows × 11 steps each): the all-mask canvas
#: at t = 1, where every key is the same token and mass varies only with position, gives 1.04
#: on tiny-dlm (1.00 on random models); every step with real tokens gives at least 1.51 on
#: tiny-dlm and 2.04 on tiny-ar. 1.25 is the geometric middle of that gap, so neither side
#: crosses it under small changes. A floor of 2 would also discard 26 of tiny-dlm's 320
#: real-token steps (clean and lightly noised windows whose strongest keys, ordinary words and
#: punctuation, get 1.5-2x): weak sinks, not flat mass.
SINK_FLOOR: float = 1.25


#: The label of a step without a sink (its ``kind``).
NO_SINK: str = "no sink"


#: What a step's ``kind`` can be: a dominant sink's token kind, or no sink.
STEP_KINDS: tuple[str, ...] = (*SINK_KINDS, NO_SINK)


_POLICY_DEFAULTS = inspect.signature(apply_sink_policy).parameters


UNSTABLE_STD: float = _POLICY_DEFAULTS["unstable_std"].default


STABLE_MEAN: float = _POLICY_DEFAULTS["stable_mean"].default


def _stats(values: Iterable[float]) -> dict[str, float | None]:
    data = torch.tensor([float(v) for v in values], dtype=torch.float64)
    if data.numel() == 0:
        return {"mean": None, "std": None, "median": None, "min": None, "max": None}
    return {
        "mean": data.mean().item(),
        "std": data.std(unbiased=False).item(),
        "median": data.median().item(),
        "min": data.min().item(),
        "max": data.max().item(),
    }


def _floats(tensor: torch.Tensor, ndigits: int = 4) -> list:
    """Nested lists of rounded floats, NaN as ``None`` (strict JSON)."""
    if tensor.dim() == 0:
        value = float(tensor)
        return None if math.isnan(value) else round(value, ndigits)
    return [_floats(row, ndigits) for row in tensor] if tensor.dim() > 1 else [
        None if math.isnan(v) else round(v, ndigits) for v in tensor.tolist()
    ]


def _masked_position_stability(soft: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-position mean/std of ``soft [K, T]`` over the steps where the position is valid.

    Equals :func:`~sink_modifier.sinks.stability.mask_stability` when every step is valid.
    Returns ``(mean, std, present)`` with ``present`` the number of valid steps per position
    (positions valid at no step get mean and std 0).
    """
    weight = valid.float()
    present = weight.sum(0)
    count = present.clamp_min(1.0)
    mean = (soft * weight).sum(0) / count
    var = (((soft - mean[None]) ** 2) * weight).sum(0) / count
    return mean, var.sqrt(), present


def check_sink_floor(floor: float) -> float:
    """``floor`` if it is a finite number >= 1 (a max/mean ratio is never below 1), else ValueError."""
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 1.0 <= floor < math.inf:
        raise ValueError(f"sink_floor must be a finite number >= 1 (max/mean mass; 1 counts every step as a "
                         f"sink, default {SINK_FLOOR}), got {floor!r}")
    return float(floor)


class _KeyDescriber:
    """Describes a key of a step (position, ratio, token and its kind), decoding each token id once."""

    def __init__(self, tokenizer: Any, specials: dict[str, int | None]) -> None:
        self.tokenizer, self.specials = tokenizer, specials
        self.cache: dict[int, str] = {}

    def decode(self, token_id: int) -> str:
        if token_id not in self.cache:
            try:
                self.cache[token_id] = self.tokenizer.decode([token_id])
            except Exception:  # a tokenizer that cannot decode one id: treat as not punctuation
                self.cache[token_id] = ""
        return self.cache[token_id]

    def __call__(self, sample_ids: torch.Tensor, k: int, pos: int, ratio: float) -> dict:
        token_id = int(sample_ids[k, pos])
        text = self.decode(token_id)
        return {
            "position": pos,
            "ratio": round(ratio, 4),
            "token_id": token_id,
            "token": text,
            "kind": classify_sink_token(
                token_id, pos, mask_token_id=self.specials["mask"], eos_token_id=self.specials["eos"],
                bos_token_id=self.specials["bos"], pad_token_id=self.specials["pad"], text=text,
            ),
        }


def summarize_window(
    index: int,
    mass: torch.Tensor,
    layer_mass: torch.Tensor,
    sample_ids: torch.LongTensor,
    valid: torch.BoolTensor,
    describe_key: Callable[[torch.Tensor, int, int, float], dict],
    options: SinkDynamicsOptions,
) -> tuple[dict[str, Any], list[dict[str, float]]]:
    """One window's entry of the result and its per-layer movement statistics.

    ``mass [K, T]`` and ``layer_mass [L, K, T]`` may hold NaN at invalid positions; ``valid
    [K, T]`` says which positions each step has. Steps below ``options.sink_floor`` are
    :data:`NO_SINK` (see :func:`_floor_window`).
    """
    num_steps = valid.shape[0]
    filled = mass.nan_to_num(0.0)  # invalid positions are masked everywhere below
    means = torch.stack([filled[k, valid[k]].mean() for k in range(num_steps)])  # [K]
    masked = filled.masked_fill(~valid, float("-inf"))
    steps = []
    for k in range(num_steps):
        kk = min(options.top_k, int(valid[k].sum()))
        values, idx = masked[k].topk(kk)
        mean_k = float(means[k])
        top = [describe_key(sample_ids, k, int(p), float(v) / mean_k if mean_k > 0 else 0.0)
               for v, p in zip(values.tolist(), idx.tolist())]
        steps.append({"ratio": top[0]["ratio"], "top": top})
    soft = soft_sink_mask(filled, options.sink_std, options.sink_alpha, valid)  # [K, T], 0 at invalid
    s_mean, s_std, present = _masked_position_stability(soft, valid)
    seen = present > 0
    ever_sink = ((soft > 0.5) & valid).any(0)
    entry: dict[str, Any] = {
        "index": index,
        "steps": steps,
        "mask_stability": {
            "sink_positions": int(ever_sink.sum()),
            "stable": int(((s_mean >= STABLE_MEAN) & (s_std <= UNSTABLE_STD) & seen).sum()),
            "unstable": int(((s_std > UNSTABLE_STD) & seen).sum()),
            "mean_soft_mask_std": float(s_std[seen].mean()),
        },
    }
    store_mass = options.store_mass_samples is None or index < options.store_mass_samples
    if store_mass:
        entry["mass"] = _floats(mass, 3)
        entry["soft_mask_mean"] = _floats(s_mean.masked_fill(~seen, float("nan")), 4)
        entry["soft_mask_std"] = _floats(s_std.masked_fill(~seen, float("nan")), 4)
    if index < options.store_layer_samples:
        entry["layer_mass"] = _floats(layer_mass, 3)

    _floor_window(entry, options.sink_floor)
    # per layer: the argmax of that layer's mass over every step (the floor is a property of the
    # global mass; apply_sink_floor cannot revisit layers, whose per-window mass is not stored)
    per_layer = []
    for lm in layer_mass.nan_to_num(0.0):
        mv = dominant_sink_movement(lm, valid)
        lmax = lm.masked_fill(~valid, float("-inf")).max(-1).values
        lmean = torch.stack([lm[k, valid[k]].mean() for k in range(num_steps)])
        per_layer.append({"position_std": mv["position_std"], "stay_fraction": mv["stay_fraction"],
                          "ratio": float((lmax / lmean.clamp_min(1e-12)).mean())})
    return entry, per_layer


def _movement(positions: list[int]) -> dict[str, Any]:
    """Movement statistics of a window's dominant positions at the steps given, and their number."""
    if not positions:
        return {"position_std": None, "stay_fraction": None, "distinct_positions": 0, "steps": 0}
    # one-hot rows have their argmax at the given positions, so these are exactly
    # sinks.stability.dominant_sink_movement's statistics (one definition of the movement)
    one_hot = torch.nn.functional.one_hot(torch.tensor(positions), max(positions) + 1).float()
    return {**dominant_sink_movement(one_hot), "steps": len(positions)}


def _floor_window(entry: dict[str, Any], floor: float) -> None:
    """Set a window entry's floor-dependent fields from its steps' ratio and strongest key, in place.

    Each step gets ``sink`` (ratio >= floor) and ``kind`` (the dominant key's kind, or
    :data:`NO_SINK`); ``dominant_positions`` holds ``None`` at steps without a sink; ``movement``
    is over the steps with a sink (consecutive pairs of them for ``stay_fraction``),
    ``movement_all_steps`` over every step's strongest key.
    """
    for step in entry["steps"]:
        step["sink"] = bool(step["ratio"] >= floor)
        step["kind"] = step["top"][0]["kind"] if step["sink"] else NO_SINK
    strongest = [step["top"][0]["position"] for step in entry["steps"]]
    entry["dominant_positions"] = [p if step["sink"] else None for p, step in zip(strongest, entry["steps"])]
    entry["movement"] = _movement([p for p in entry["dominant_positions"] if p is not None])
    entry["movement_all_steps"] = _movement(strongest)


def _sink_statistics(samples: list[dict], steps: list[dict]) -> dict[str, Any]:
    """The aggregate statistics that depend on the sink floor (samples already floored)."""
    num_steps = len(steps)
    sink_steps = [(sample, k) for sample in samples for k in range(num_steps) if sample["steps"][k]["sink"]]
    kinds_total = Counter(sample["steps"][k]["kind"] for sample in samples for k in range(num_steps))
    kinds_per_step = [Counter(sample["steps"][k]["kind"] for sample in samples) for k in range(num_steps)]
    tokens = Counter(sample["steps"][k]["top"][0]["token"] for sample, k in sink_steps)

    def over_windows(movement: str, key: str) -> dict[str, float | None]:
        return _stats(v for v in (sample[movement][key] for sample in samples) if v is not None)

    return {
        "position_std": over_windows("movement", "position_std"),
        "stay_fraction": over_windows("movement", "stay_fraction"),
        "distinct_positions": over_windows("movement", "distinct_positions"),
        "sink_steps": over_windows("movement", "steps"),
        "movement_all_steps": {key: over_windows("movement_all_steps", key)
                               for key in ("position_std", "stay_fraction", "distinct_positions")},
        # share of the steps with a sink whose dominant sink is the first position (None: no sink anywhere)
        "position0_share": (sum(sample["dominant_positions"][k] == 0 for sample, k in sink_steps) / len(sink_steps)
                            if sink_steps else None),
        "kinds": {kind: kinds_total.get(kind, 0) for kind in STEP_KINDS},
        "kinds_per_step": [{kind: c.get(kind, 0) for kind in STEP_KINDS} for c in kinds_per_step],
        "top_tokens": [[tok, n] for tok, n in tokens.most_common(10)],
        "ratio_per_step": [
            {**steps[k], **_stats(sample["steps"][k]["ratio"] for sample in samples),
             "sink_share": sum(sample["steps"][k]["sink"] for sample in samples) / len(samples)}
            for k in range(num_steps)
        ],
    }


def aggregate_windows(
    samples: list[dict], per_layer: list[list[dict[str, float]]], steps: list[dict], seq_len: int
) -> dict[str, Any]:
    """Statistics over windows: movement, sink kinds and tokens, per-step ratios, stability, per layer.

    ``samples`` are :func:`summarize_window` entries (floored); ``per_layer[s][layer]`` its layer
    statistics of window ``s``; ``steps`` the per-step facts (timestep, prefix length, noise rate)
    merged into ``ratio_per_step``. Movement, kinds, tokens and ``position0_share`` count only the
    steps with a sink.
    """
    num_layers = len(per_layer[0]) if per_layer else 0
    return {
        **_sink_statistics(samples, steps),
        # std of a position drawn uniformly from 0..T-1: what a sink with no memory would give
        "uniform_position_std": math.sqrt((seq_len**2 - 1) / 12.0),
        "stability": {
            key: _stats(sample["mask_stability"][key] for sample in samples)
            for key in ("sink_positions", "stable", "unstable", "mean_soft_mask_std")
        },
        "per_layer": [
            {"layer": layer, **{key: _stats(window[layer][key] for window in per_layer)["mean"]
                                for key in ("position_std", "stay_fraction", "ratio")}}
            for layer in range(num_layers)
        ],
    }


def apply_sink_floor(analysis: dict, floor: float) -> dict:
    """A copy of ``analysis`` (from :func:`analyze_sink_dynamics`) with steps below ``floor`` as no sink.

    Re-derives every floor-dependent field (each step's ``sink`` and ``kind``, the windows'
    ``dominant_positions`` and movement, and the aggregate movement, kinds, tokens,
    ``position0_share`` and per-step ``sink_share``) from the stored per-step ratios and
    strongest keys; nothing is recomputed from the model. The soft-mask stability and the
    per-layer statistics do not depend on the floor and are kept.
    """
    import copy

    floor = check_sink_floor(floor)
    result = copy.deepcopy(analysis)
    for sample in result["samples"]:
        _floor_window(sample, floor)
    result["sink_floor"] = floor
    result["aggregate"].update(_sink_statistics(result["samples"], result["steps"]))
    return result


@dataclass(frozen=True)
class SinkDynamicsOptions:
    """Settings of one analysis (the ``sink-modifier analyze`` options).

    ``store_mass_samples`` (``None``: all) windows keep their ``[K, T]`` mass and soft-mask
    mean/std in the result; the first ``store_layer_samples`` also keep the per-layer mass
    ``[L, K, T]``. Statistics always use every window. ``sink_floor``: steps whose max/mean
    mass ratio is below it have no sink (see :data:`SINK_FLOOR`; 1 counts every step).
    """

    timesteps: tuple[float, ...] = LLADA_TIMESTEPS
    seed: int = 0
    sink_std: float = 2.0
    sink_alpha: float = 5.0
    top_k: int = 3
    batch_size: int = 16
    progress: bool = True
    store_mass_samples: int | None = None
    store_layer_samples: int = 2
    sink_floor: float = SINK_FLOOR

    def __post_init__(self) -> None:
        object.__setattr__(self, "timesteps", check_timesteps(self.timesteps))
        check_sink_floor(self.sink_floor)
        for name in ("top_k", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
