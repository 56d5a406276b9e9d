"""Diagnostics: how attention sinks move along a model's trajectory (``sink-modifier analyze``).

:func:`analyze_sink_dynamics` measures one model of a family (dict, JSON-able) under
:class:`SinkDynamicsOptions`; steps whose max/mean mass is below :data:`SINK_FLOOR` are
:data:`NO_SINK`, and :func:`apply_sink_floor` re-applies another floor to a stored analysis.
:mod:`.figures` draws one or two analyses (matplotlib is imported only when a figure is
drawn); :mod:`sink_modifier.commands.analyze` is the CLI subcommand.
"""

from sink_modifier.diagnostics.trajectory import (
    NO_SINK,
    SINK_FLOOR,
    SINK_KINDS,
    TRAJECTORY_TIMESTEPS,
    SinkDynamicsOptions,
    analyze_sink_dynamics,
    apply_sink_floor,
    classify_sink_token,
    is_punctuation,
    prefix_lengths,
)

__all__ = [
    "NO_SINK",
    "SINK_FLOOR",
    "SINK_KINDS",
    "TRAJECTORY_TIMESTEPS",
    "SinkDynamicsOptions",
    "analyze_sink_dynamics",
    "apply_sink_floor",
    "classify_sink_token",
    "is_punctuation",
    "prefix_lengths",
    "write_figures",
]


def __getattr__(name: str):
    if name == "write_figures":
        from sink_modifier.diagnostics.figures import write_figures

        return write_figures
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
