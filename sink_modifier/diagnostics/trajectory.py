"""Measure how attention sinks move along a model's trajectory (the paper's central claim).

*Sink-Aware Pruning for Diffusion LMs* argues that sinks in diffusion LMs are transient (the
token soaking up attention changes as the canvas is denoised) while an autoregressive
model's sink stays put. Its code never measures this; :func:`analyze_sink_dynamics` does.

**Steps.** A trajectory is ``K = len(timesteps)`` steps over each clean window ``[T]``:

* diffusion model (the family's ``diffusion`` flag): step ``k`` is the window noised at
  ``timesteps[k]`` by the family's forward process at its maskable positions
  (:func:`sink_modifier.process.noise_windows`, seeded per (window, timestep); ``t = 0`` is the
  clean window), exactly as calibration noises it;
* causal model: step ``k`` (1-based) is the generation prefix of length
  ``L_k = floor(T * k / K + 0.5)`` (round half up; ``L_K = T``), i.e. the context the
  model has seen after generating that far. Mass is computed on the prefix alone; per-step
  vectors are padded to ``T`` with NaN (``null`` in JSON), and every statistic (dominant sink,
  threshold, ratio, soft mask) uses only the ``L_k`` real positions. ``timesteps`` then only
  fixes ``K``.

**Per sample** (window) the global mass ``M[k, j]`` (sum over layers, heads, queries) and
the per-layer mass are read with :func:`sink_modifier.sinks.per_layer.per_layer_attention_mass`,
and reduced with the pure statistics of :mod:`sink_modifier.sinks.stability`: the strongest
``top_k`` keys of every step and its max/mean mass ratio, the dominant sink per step, its
movement (``position_std``, ``stay_fraction``, ``distinct_positions``), the soft sink mask's
per-position mean/std over steps and the number of stable/unstable sink positions under the
thresholds of :func:`~sink_modifier.sinks.stability.apply_sink_policy`, and the kind of token
each dominant sink is (see :func:`classify_sink_token`). For causal models a position's
soft-mask mean/std is taken over the steps whose prefix contains it.

**No sink.** A step whose max/mean ratio is below the sink floor (:data:`SINK_FLOOR`,
``SinkDynamicsOptions.sink_floor``, ``--sink-floor``) has no dominant sink: its strongest key
is an arbitrary argmax of nearly flat mass (the all-mask canvas at ``t = 1``). Such a step is
labelled :data:`NO_SINK` (its ``kind``, counted as such in the kind shares; ``sink: false``;
``null`` in ``dominant_positions``), is not circled in the heatmaps and does not count in the
movement statistics (``position_std``, ``stay_fraction``, ``distinct_positions``), the dominant
tokens or ``position0_share``; ``movement_all_steps`` keeps the argmax statistics over every
step for comparison. :func:`apply_sink_floor` re-applies another floor to a stored analysis without
running the model again (everything it changes is derived from the stored per-step keys).

The analysis runs in small steps: :func:`trajectory_steps` (the token rows of every step),
:func:`trajectory_mass` (per-layer mass of those rows), :func:`summarize_window` (one
window's statistics), :func:`aggregate_windows` (statistics over windows), assembled by
:func:`analyze_sink_dynamics` with its :class:`SinkDynamicsOptions`. The result is a JSON-able
dict (NaN written as ``None``); :mod:`.figures` draws it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from sink_modifier.data.keyed_random import digest_hex
from sink_modifier.diagnostics.token_kinds import SINK_KINDS, classify_sink_token, is_punctuation, special_token_ids
from sink_modifier.diagnostics.window_stats import (
    NO_SINK,
    SINK_FLOOR,
    STABLE_MEAN,
    STEP_KINDS,
    UNSTABLE_STD,
    SinkDynamicsOptions,
    _KeyDescriber,
    aggregate_windows,
    apply_sink_floor,
    check_sink_floor,
    summarize_window,
)
from sink_modifier.process import LLADA_TIMESTEPS, ForwardProcess, noise_windows
from sink_modifier.sinks.per_layer import per_layer_attention_mass

if TYPE_CHECKING:
    from sink_modifier.families import ModelFamily

__all__ = [
    "NO_SINK",
    "SINK_FLOOR",
    "SINK_KINDS",
    "STEP_KINDS",
    "TRAJECTORY_TIMESTEPS",
    "SinkDynamicsOptions",
    "Trajectory",
    "aggregate_windows",
    "analyze_sink_dynamics",
    "apply_sink_floor",
    "check_sink_floor",
    "classify_sink_token",
    "is_punctuation",
    "prefix_lengths",
    "special_token_ids",
    "summarize_window",
    "trajectory_mass",
    "trajectory_steps",
]

#: The clean window followed by the LLaDA grid: the 11 noise levels of the published numbers.
TRAJECTORY_TIMESTEPS: tuple[float, ...] = (0.0, *LLADA_TIMESTEPS)


# -- steps -----------------------------------------------------------------------------
def prefix_lengths(seq_len: int, num_steps: int) -> list[int]:
    """Prefix length of each causal step: ``floor(T * k / K + 0.5)`` for ``k = 1..K``, at least 1."""
    if num_steps < 1:
        raise ValueError(f"need at least one step, got {num_steps}")
    return [max(1, math.floor(seq_len * k / num_steps + 0.5)) for k in range(1, num_steps + 1)]


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


# -- the analysis, step by step ------------------------------------------------------------
@dataclass(frozen=True)
class Trajectory:
    """The token rows of every step: ``step_ids [N, K, T]``, the real length of each step
    (``T`` for diffusion, the prefix length for causal models), and the process that noised them."""

    step_ids: torch.LongTensor
    lengths: list[int]
    process: ForwardProcess | None

    @property
    def diffusion(self) -> bool:
        return self.process is not None

    @property
    def valid(self) -> torch.BoolTensor:
        """``[K, T]``: which positions each step really has."""
        return torch.arange(self.step_ids.shape[-1])[None, :] < torch.tensor(self.lengths)[:, None]


def trajectory_steps(
    windows: torch.LongTensor, timesteps: tuple[float, ...], process: ForwardProcess | None, seed: int,
    maskable: torch.BoolTensor | None = None,
) -> Trajectory:
    """Diffusion (a ``process``): each window noised at every timestep, at the ``maskable``
    positions, as calibration noises it. Causal (``None``): the window itself, seen through
    :func:`prefix_lengths` growing prefixes."""
    num_windows, seq_len = windows.shape
    num_steps = len(timesteps)
    if process is not None:
        noised, _, _ = noise_windows(windows, timesteps, process, seed, maskable)
        return Trajectory(noised.view(num_windows, num_steps, seq_len), [seq_len] * num_steps, process)
    steps = windows[:, None, :].expand(num_windows, num_steps, seq_len)
    return Trajectory(steps, prefix_lengths(seq_len, num_steps), None)


def trajectory_mass(model, trajectory: Trajectory, batch_size: int, progress: bool = False) -> torch.Tensor:
    """Per-layer mass ``[L, N, K, T]`` of every step (NaN where a causal prefix does not reach)."""
    num_windows, num_steps, seq_len = trajectory.step_ids.shape
    if trajectory.diffusion:
        rows = trajectory.step_ids.reshape(num_windows * num_steps, seq_len)
        layer_mass = _layer_mass(model, rows, batch_size, progress, "sink dynamics (noised rows)")
        return layer_mass.view(layer_mass.shape[0], num_windows, num_steps, seq_len)
    layer_mass = None
    for k, length in enumerate(trajectory.lengths):
        part = _layer_mass(model, trajectory.step_ids[:, k, :length], batch_size, progress,
                           f"sink dynamics (prefix {k + 1}/{num_steps})")  # [L, N, length]
        if layer_mass is None:
            layer_mass = torch.full((part.shape[0], num_windows, num_steps, seq_len), float("nan"))
        layer_mass[:, :, k, :length] = part
    return layer_mass


def _step_facts(trajectory: Trajectory, windows: torch.LongTensor, timesteps: tuple[float, ...]) -> list[dict]:
    """Per step: its timestep (diffusion), prefix length, and the observed noise rate (diffusion)."""
    facts = []
    for k, length in enumerate(trajectory.lengths):
        info: dict[str, Any] = {"step": k, "timestep": timesteps[k] if trajectory.diffusion else None,
                                "prefix_len": length}
        if trajectory.process is not None:
            rate = trajectory.process.observed_rate(windows, trajectory.step_ids[:, k])
            info["mask_rate"] = 0.0 if rate is None else rate
        facts.append(info)
    return facts


def analyze_sink_dynamics(
    model: torch.nn.Module,
    tokenizer: Any,
    windows: torch.LongTensor,
    family: ModelFamily,
    options: SinkDynamicsOptions = SinkDynamicsOptions(),
    *,
    model_name: str | None = None,
) -> dict:
    """Sink dynamics of ``model`` (of ``family``) on clean ``windows [N, T]`` over ``K = len(options.timesteps)`` steps.

    A diffusion family's steps are its forward process (``family.forward_process``) at each
    timestep, on its maskable positions; a causal family's are growing prefixes. See the
    module docstring for the definitions and layout.
    """
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.dtype != torch.long:
        raise ValueError(f"windows must be a LongTensor [num_windows, seq_len], got {getattr(windows, 'shape', windows)!r}")
    num_windows, seq_len = (int(x) for x in windows.shape)
    if num_windows < 1 or seq_len < 2:
        raise ValueError(f"need at least one window of >= 2 tokens, got shape {tuple(windows.shape)}")
    config = getattr(model, "config", None)
    grid = options.timesteps
    process = family.forward_process(tokenizer, config, options.seed) if family.diffusion else None
    specials = special_token_ids(tokenizer, config)
    if process is not None:
        specials["mask"] = getattr(process, "mask_token_id", None)

    windows = windows.cpu()
    trajectory = trajectory_steps(windows, grid, process, options.seed,
                                  family.maskable(windows, tokenizer, config) if process is not None else None)
    layer_mass = trajectory_mass(model, trajectory, options.batch_size, options.progress)
    mass_all = layer_mass.sum(0)  # [N, K, T]; NaN stays NaN
    valid = trajectory.valid
    describe_key = _KeyDescriber(tokenizer, specials)
    samples, per_layer = [], []
    for s in range(num_windows):
        entry, layers = summarize_window(s, mass_all[s], layer_mass[:, s], trajectory.step_ids[s], valid,
                                         describe_key, options)
        samples.append(entry)
        per_layer.append(layers)
    steps = _step_facts(trajectory, windows, grid)

    store_mass_samples = num_windows if options.store_mass_samples is None else int(options.store_mass_samples)
    name = model_name
    if name is None:
        name = getattr(model, "name_or_path", None) or getattr(config, "_name_or_path", None) or type(model).__name__
    return {
        "model": str(name),
        "kind": "diffusion" if trajectory.diffusion else "causal",
        "steps_are": "noised copies of the window at each timestep" if trajectory.diffusion
        else "generation prefixes of length round(T*k/K), k=1..K; mass padded to T with null",
        "seed": int(options.seed),
        "timesteps": list(grid),
        "steps": steps,
        "num_windows": num_windows,
        "seq_len": seq_len,
        "num_layers": int(layer_mass.shape[0]),
        "sink_std": float(options.sink_std),
        "sink_alpha": float(options.sink_alpha),
        "sink_floor": float(options.sink_floor),
        "top_k": options.top_k,
        "special_token_ids": specials,
        "stability_thresholds": {"unstable_std": UNSTABLE_STD, "stable_mean": STABLE_MEAN},
        "windows_digest": digest_hex(windows.numpy().tobytes()),
        "samples_with_mass": min(store_mass_samples, num_windows),
        "samples_with_layer_mass": min(options.store_layer_samples, num_windows),
        "aggregate": aggregate_windows(samples, per_layer, steps, seq_len),
        "samples": samples,
    }


