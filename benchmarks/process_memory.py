"""Resident memory of this process, read from ``/proc/self/status``: the benchmarks' memory probe.

``VmHWM`` (peak RSS) can be restarted through ``/proc/self/clear_refs`` (Linux ≥ 4.0), so a
benchmark can measure the peak of one step (e.g. ``oneshot``) rather than of model loading.
"""

from __future__ import annotations

import resource

__all__ = ["peak_rss_mib", "reset_peak_rss", "rss_mib", "ru_maxrss_mib"]


def rss_mib(field: str = "VmRSS") -> float:
    """A ``/proc/self/status`` memory field in MiB (``VmRSS`` now, ``VmHWM`` peak); NaN if absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def ru_maxrss_mib() -> float:
    """``getrusage`` peak RSS. In a child started by fork+exec it also counts the parent's RSS at
    fork time (the kernel folds the pre-exec image into it), so it is recorded but not used."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def peak_rss_mib() -> float:
    """Peak RSS of this process image (``VmHWM``); falls back to ``ru_maxrss`` off Linux."""
    peak = rss_mib("VmHWM")
    return ru_maxrss_mib() if peak != peak else peak


def reset_peak_rss() -> bool:
    """Restart the peak-RSS counter ``VmHWM``; False if unsupported.

    Without it a step's peak could be set by the transient of loading the model and
    libraries rather than by the step itself.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True
