"""Measure how attention sinks move along a model's trajectory (the paper's central claim).

*Sink-Aware Pruning for Diffusion LMs* argues that sinks in diffusion LMs are transient (the
token soaking up attention changes as the canvas is denoised) while an autoregressive
model's sink stays put. Its code never measures this; :func:`analyze_sink_dynamics` does.

**Steps.** A trajectory is ``K = len(timesteps)`` steps over each clean window ``[T]``:

* diffusion model (``config.is_causal is False``): step ``k`` is the window noised at
  ``timesteps[k]`` by :func:`sink_modifier.diffusion.noise_windows` (seeded per
  (window, timestep), ``t = 0`` is the clean window);
* causal model: step ``k`` (1-based) is the generation prefix of length
  ``L_k = floor(T * k / K + 0.5)`` (round half up; ``L_K = T``), i.e. the context the
  model has seen after generating that far. Mass is computed on the prefix alone; per-step
  vectors are padded to ``T`` with NaN (``null`` in JSON), and every statistic (dominant sink,
  threshold, ratio, soft mask) uses only the ``L_k`` real positions. ``timesteps`` then only
  fixes ``K``.

**Per sample** (window) the global mass ``M[k, j]`` (sum over layers, heads, queries) and
the per-layer mass are read with :func:`sink_modifier.sinks.per_layer.per_layer_attention_mass`,
and reduced with the pure statistics of :mod:`sink_modifier.sinks.stability`: the dominant
sink per step (and the ``top_k`` keys), its movement (``position_std``, ``stay_fraction``,
``distinct_positions``), the soft sink mask's per-position mean/std over steps and the
number of stable/unstable sink positions under the thresholds of
:func:`~sink_modifier.sinks.stability.apply_sink_policy`, the kind of token each dominant
sink is (see :func:`classify_sink_token`) and the max/mean mass ratio of every step.
For causal models a position's soft-mask mean/std is taken over the steps whose prefix
contains it.

The result is a JSON-able dict (NaN written as ``None``); :mod:`.figures` draws it.
"""

from __future__ import annotations

import inspect
import math
import string
import unicodedata
from collections import Counter
from typing import Any, Iterable

import torch

from sink_modifier.data.keyed_random import digest_hex
from sink_modifier.process import LLADA_TIMESTEPS, is_diffusion_config, noise_windows, resolve_mask_token_id
from sink_modifier.sinks.detection import soft_sink_mask
from sink_modifier.sinks.per_layer import per_layer_attention_mass
from sink_modifier.sinks.stability import apply_sink_policy, dominant_sink_movement, dominant_sinks

__all__ = [
    "SINKLESS_RATIO",
    "SINK_KINDS",
    "TRAJECTORY_TIMESTEPS",
    "analyze_sink_dynamics",
    "classify_sink_token",
    "is_punctuation",
    "prefix_lengths",
    "special_token_ids",
]

#: The clean window followed by the LLaDA grid: the 11 noise levels of the published numbers.
TRAJECTORY_TIMESTEPS: tuple[float, ...] = (0.0, *LLADA_TIMESTEPS)

#: Token kinds of a dominant sink, in the order they are tested.
SINK_KINDS: tuple[str, ...] = ("mask", "eos", "bos", "pad", "punctuation", "first_position", "other")

#: A step whose strongest key gets less than this many times the mean mass has no sink to
#: speak of (e.g. the all-mask canvas at t = 1): its "dominant" position is an arbitrary
#: argmax. ``movement_with_sink`` repeats the movement statistics without such steps.
SINKLESS_RATIO: float = 1.5

_POLICY_DEFAULTS = inspect.signature(apply_sink_policy).parameters
UNSTABLE_STD: float = _POLICY_DEFAULTS["unstable_std"].default
STABLE_MEAN: float = _POLICY_DEFAULTS["stable_mean"].default


# -- token kinds -----------------------------------------------------------------------
def is_punctuation(text: str | None) -> bool:
    """True iff ``text`` has a non-space character and every non-space one is punctuation.

    Punctuation is ``string.punctuation`` or a Unicode ``P*`` category character, so
    ``"."``, ``" ,"``, ``"..."``, ``"—"`` qualify and ``"\\n"``, ``" a."`` or ``"�"`` do not.
    """
    if not text:
        return False
    chars = [c for c in text if not c.isspace()]
    return bool(chars) and all(
        c in string.punctuation or unicodedata.category(c).startswith("P") for c in chars
    )


def classify_sink_token(
    token_id: int,
    position: int,
    *,
    mask_token_id: int | None = None,
    eos_token_id: int | None = None,
    bos_token_id: int | None = None,
    pad_token_id: int | None = None,
    text: str | None = None,
) -> str:
    """The kind of the token a sink sits on; the first match of :data:`SINK_KINDS` wins.

    ``mask`` / ``eos`` / ``bos`` / ``pad``: the token id equals that special id (``None``
    ids never match); ``punctuation``: the decoded ``text`` is punctuation only (see
    :func:`is_punctuation`); ``first_position``: position 0 and none of the above; ``other``.
    """
    token_id = int(token_id)
    for kind, special in (
        ("mask", mask_token_id),
        ("eos", eos_token_id),
        ("bos", bos_token_id),
        ("pad", pad_token_id),
    ):
        if special is not None and token_id == int(special):
            return kind
    if is_punctuation(text):
        return "punctuation"
    if int(position) == 0:
        return "first_position"
    return "other"


def special_token_ids(tokenizer: Any, config: Any = None) -> dict[str, int | None]:
    """``mask``/``eos``/``bos``/``pad`` ids from the tokenizer, else the model config."""
    ids: dict[str, int | None] = {}
    for kind in ("mask", "eos", "bos", "pad"):
        value = None
        for holder in (tokenizer, config):
            candidate = getattr(holder, f"{kind}_token_id", None) if holder is not None else None
            if isinstance(candidate, (list, tuple)):  # some configs list several eos ids
                candidate = candidate[0] if candidate else None
            if isinstance(candidate, int) and not isinstance(candidate, bool):
                value = candidate
                break
        ids[kind] = value
    return ids


# -- steps -----------------------------------------------------------------------------
def prefix_lengths(seq_len: int, num_steps: int) -> list[int]:
    """Prefix length of each causal step: ``floor(T * k / K + 0.5)`` for ``k = 1..K``, at least 1."""
    if num_steps < 1:
        raise ValueError(f"need at least one step, got {num_steps}")
    return [max(1, math.floor(seq_len * k / num_steps + 0.5)) for k in range(1, num_steps + 1)]


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


def _model_device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _layer_mass(model, ids: torch.Tensor, batch_size: int, progress: bool = False, desc: str = "") -> torch.Tensor:
    """Per-layer mass ``[L, R, T']`` of rows ``ids [R, T']``, ``batch_size`` rows per forward."""
    from tqdm.auto import tqdm

    device = _model_device(model)
    parts = []
    starts = range(0, ids.shape[0], batch_size)
    for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
        rows = ids[start : start + batch_size].to(device)
        parts.append(per_layer_attention_mass(model, rows, torch.ones_like(rows)).cpu())
    return torch.cat(parts, dim=1)


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


# -- the analysis ----------------------------------------------------------------------
def analyze_sink_dynamics(
    model: torch.nn.Module,
    tokenizer: Any,
    windows: torch.LongTensor,
    *,
    timesteps: Iterable[float] = LLADA_TIMESTEPS,
    seed: int = 0,
    sink_std: float = 2.0,
    sink_alpha: float = 5.0,
    top_k: int = 3,
    progress: bool = True,
    batch_size: int = 16,
    diffusion: bool | None = None,
    mask_token_id: int | None = None,
    store_mass_samples: int | None = None,
    store_layer_samples: int = 2,
    model_name: str | None = None,
) -> dict:
    """Sink dynamics of ``model`` on clean ``windows [N, T]`` over ``K = len(timesteps)`` steps.

    ``diffusion`` defaults to :func:`~sink_modifier.diffusion.is_diffusion_config`;
    ``mask_token_id`` to the tokenizer's / config's (diffusion only). ``store_mass_samples``
    (default: all) samples keep their ``[K, T]`` mass and soft-mask mean/std in the result;
    the first ``store_layer_samples`` also keep the per-layer mass ``[L, K, T]``. Statistics
    always use every sample. See the module docstring for the definitions and layout.
    """
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.dtype != torch.long:
        raise ValueError(f"windows must be a LongTensor [num_windows, seq_len], got {getattr(windows, 'shape', windows)!r}")
    num_windows, seq_len = (int(x) for x in windows.shape)
    if num_windows < 1 or seq_len < 2:
        raise ValueError(f"need at least one window of >= 2 tokens, got shape {tuple(windows.shape)}")
    grid = tuple(float(t) for t in timesteps)
    if not grid:
        raise ValueError("timesteps is empty; pass at least one step")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be a positive int, got {top_k!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    config = getattr(model, "config", None)
    if diffusion is None:
        diffusion = is_diffusion_config(config)
    specials = special_token_ids(tokenizer, config)
    if diffusion:
        mask_token_id = resolve_mask_token_id(tokenizer, config) if mask_token_id is None else int(mask_token_id)
        specials["mask"] = mask_token_id
    num_steps = len(grid)
    store_mass_samples = num_windows if store_mass_samples is None else int(store_mass_samples)

    windows = windows.cpu()
    # ---- mass: [L, N, K, T] (NaN where a causal prefix does not reach), tokens [N, K, T]
    if diffusion:
        lengths = [seq_len] * num_steps
        noised, _, _ = noise_windows(windows, grid, mask_token_id, seed)
        step_ids = noised.view(num_windows, num_steps, seq_len)
        layer_mass = _layer_mass(model, noised, batch_size, progress, "sink dynamics (noised rows)")
        layer_mass = layer_mass.view(layer_mass.shape[0], num_windows, num_steps, seq_len)
    else:
        lengths = prefix_lengths(seq_len, num_steps)
        step_ids = windows[:, None, :].expand(num_windows, num_steps, seq_len)
        layer_mass = None
        for k, length in enumerate(lengths):
            part = _layer_mass(model, windows[:, :length], batch_size, progress,
                               f"sink dynamics (prefix {k + 1}/{num_steps})")  # [L, N, length]
            if layer_mass is None:
                layer_mass = torch.full((part.shape[0], num_windows, num_steps, seq_len), float("nan"))
            layer_mass[:, :, k, :length] = part
    num_layers = int(layer_mass.shape[0])
    positions = torch.arange(seq_len)
    valid = positions[None, :] < torch.tensor(lengths)[:, None]  # [K, T]
    mass_all = layer_mass.sum(0)  # [N, K, T]; NaN stays NaN

    decode_cache: dict[int, str] = {}

    def decode(token_id: int) -> str:
        if token_id not in decode_cache:
            try:
                decode_cache[token_id] = tokenizer.decode([token_id])
            except Exception:  # a tokenizer that cannot decode one id: treat as not punctuation
                decode_cache[token_id] = ""
        return decode_cache[token_id]

    def describe_key(sample_ids: torch.Tensor, k: int, pos: int, ratio: float) -> dict:
        token_id = int(sample_ids[k, pos])
        text = decode(token_id)
        return {
            "position": pos,
            "ratio": round(ratio, 4),
            "token_id": token_id,
            "token": text,
            "kind": classify_sink_token(
                token_id, pos, mask_token_id=specials["mask"], eos_token_id=specials["eos"],
                bos_token_id=specials["bos"], pad_token_id=specials["pad"], text=text,
            ),
        }

    samples = []
    layer_stats: list[dict[str, list[float]]] = [
        {"position_std": [], "stay_fraction": [], "ratio": []} for _ in range(num_layers)
    ]
    for s in range(num_windows):
        mass = mass_all[s].nan_to_num(0.0)  # [K, T]; invalid positions are masked everywhere below
        sample_ids = step_ids[s]
        dominant = dominant_sinks(mass, valid)
        movement = dominant_sink_movement(mass, valid)
        means = torch.stack([mass[k, valid[k]].mean() for k in range(num_steps)])  # [K]
        masked = mass.masked_fill(~valid, float("-inf"))
        steps = []
        for k in range(num_steps):
            kk = min(top_k, int(valid[k].sum()))
            values, idx = masked[k].topk(kk)
            mean_k = float(means[k])
            top = [describe_key(sample_ids, k, int(p), float(v) / mean_k if mean_k > 0 else float("nan"))
                   for v, p in zip(values.tolist(), idx.tolist())]
            steps.append({"ratio": top[0]["ratio"], "kind": top[0]["kind"], "top": top})
        with_sink = torch.tensor([step["ratio"] >= SINKLESS_RATIO for step in steps])
        if with_sink.any():
            movement_with_sink = {**dominant_sink_movement(mass[with_sink], valid[with_sink]),
                                  "steps": int(with_sink.sum())}
        else:
            movement_with_sink = {"position_std": None, "stay_fraction": None, "distinct_positions": 0, "steps": 0}
        soft = soft_sink_mask(mass, sink_std, sink_alpha, valid)  # [K, T], 0 at invalid
        s_mean, s_std, present = _masked_position_stability(soft, valid)
        seen = present > 0
        ever_sink = ((soft > 0.5) & valid).any(0)
        stability = {
            "sink_positions": int(ever_sink.sum()),
            "stable": int(((s_mean >= STABLE_MEAN) & (s_std <= UNSTABLE_STD) & seen).sum()),
            "unstable": int(((s_std > UNSTABLE_STD) & seen).sum()),
            "mean_soft_mask_std": float(s_std[seen].mean()),
        }
        entry: dict[str, Any] = {
            "index": s,
            "dominant_positions": dominant.tolist(),
            "movement": movement,
            "movement_with_sink": movement_with_sink,
            "steps": steps,
            "mask_stability": stability,
        }
        if s < store_mass_samples:
            entry["mass"] = _floats(mass_all[s], 3)
            entry["soft_mask_mean"] = _floats(s_mean.masked_fill(~seen, float("nan")), 4)
            entry["soft_mask_std"] = _floats(s_std.masked_fill(~seen, float("nan")), 4)
        if s < store_layer_samples:
            entry["layer_mass"] = _floats(layer_mass[:, s], 3)
        samples.append(entry)

        for layer in range(num_layers):
            lm = layer_mass[layer, s].nan_to_num(0.0)
            mv = dominant_sink_movement(lm, valid)
            layer_stats[layer]["position_std"].append(mv["position_std"])
            layer_stats[layer]["stay_fraction"].append(mv["stay_fraction"])
            lmax = lm.masked_fill(~valid, float("-inf")).max(-1).values
            lmean = torch.stack([lm[k, valid[k]].mean() for k in range(num_steps)])
            layer_stats[layer]["ratio"].append(float((lmax / lmean.clamp_min(1e-12)).mean()))

    # ---- aggregates over samples
    kinds_total = Counter(step["kind"] for sample in samples for step in sample["steps"])
    kinds_per_step = [Counter(sample["steps"][k]["kind"] for sample in samples) for k in range(num_steps)]
    tokens = Counter(sample["steps"][k]["top"][0]["token"] for sample in samples for k in range(num_steps))
    step_info = []
    for k in range(num_steps):
        info: dict[str, Any] = {"step": k, "timestep": grid[k] if diffusion else None, "prefix_len": lengths[k]}
        if diffusion:
            maskable = windows != mask_token_id
            newly = (step_ids[:, k] == mask_token_id) & maskable
            info["mask_rate"] = float(newly.sum()) / max(1, int(maskable.sum()))
        step_info.append(info)
    ratio_per_step = []
    for k in range(num_steps):
        ratio_per_step.append({**step_info[k], **_stats(sample["steps"][k]["ratio"] for sample in samples)})
    aggregate = {
        "position_std": _stats(sample["movement"]["position_std"] for sample in samples),
        "stay_fraction": _stats(sample["movement"]["stay_fraction"] for sample in samples),
        "distinct_positions": _stats(sample["movement"]["distinct_positions"] for sample in samples),
        "movement_with_sink": {
            key: _stats(sample["movement_with_sink"][key] for sample in samples
                        if sample["movement_with_sink"][key] is not None)
            for key in ("position_std", "stay_fraction", "distinct_positions", "steps")
        },
        "sinkless_ratio": SINKLESS_RATIO,
        # std of a position drawn uniformly from 0..T-1: what a sink with no memory would give
        "uniform_position_std": math.sqrt((seq_len**2 - 1) / 12.0),
        "position0_share": sum(p == 0 for sample in samples for p in sample["dominant_positions"])
        / (num_windows * num_steps),
        "kinds": {kind: kinds_total.get(kind, 0) for kind in SINK_KINDS},
        "kinds_per_step": [{kind: c.get(kind, 0) for kind in SINK_KINDS} for c in kinds_per_step],
        "top_tokens": [[tok, n] for tok, n in tokens.most_common(10)],
        "ratio_per_step": ratio_per_step,
        "stability": {
            key: _stats(sample["mask_stability"][key] for sample in samples)
            for key in ("sink_positions", "stable", "unstable", "mean_soft_mask_std")
        },
        "per_layer": [
            {"layer": layer, **{key: _stats(values)["mean"] for key, values in stats.items()}}
            for layer, stats in enumerate(layer_stats)
        ],
    }
    name = model_name
    if name is None:
        name = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or type(model).__name__
    return {
        "model": str(name),
        "kind": "diffusion" if diffusion else "causal",
        "steps_are": "noised copies of the window at each timestep" if diffusion
        else "generation prefixes of length round(T*k/K), k=1..K; mass padded to T with null",
        "seed": int(seed),
        "timesteps": list(grid),
        "steps": step_info,
        "num_windows": num_windows,
        "seq_len": seq_len,
        "num_layers": num_layers,
        "sink_std": float(sink_std),
        "sink_alpha": float(sink_alpha),
        "top_k": top_k,
        "special_token_ids": specials,
        "stability_thresholds": {"unstable_std": UNSTABLE_STD, "stable_mean": STABLE_MEAN},
        "windows_digest": digest_hex(windows.numpy().tobytes()),
        "samples_with_mass": min(store_mass_samples, num_windows),
        "samples_with_layer_mass": min(store_layer_samples, num_windows),
        "aggregate": aggregate,
        "samples": samples,
    }
