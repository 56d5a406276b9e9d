"""Where the command line's logs go and how loud they are: results on stdout, everything else on stderr.

Only the entry points call this (``sink-modifier``, ``python -m sink_modifier.lm_eval``): a
library user who imports ``sink_modifier`` and llm-compressor keeps upstream's logging as
upstream configures it.

:func:`configure` sends loguru's records (ours and llm-compressor's / compressed-tensors') to
stderr, at a level per verbosity:

============  =====================  ===============================  ==============  ====================
verbosity     ``sink_modifier``      upstream (llm-compressor, ...)   transformers    known upstream noise
============  =====================  ===============================  ==============  ====================
0 (default)   INFO: a line a phase   WARNING (not METRIC)             ERROR           dropped
1 (``-v``)    DEBUG: per layer       INFO, METRIC (GPTQ error/time)   WARNING         dropped
2 (``-vv``)   DEBUG                  DEBUG                            INFO            shown
============  =====================  ===============================  ==============  ====================

``LLM_COMPRESSOR_LOG_LEVEL``, when set, still decides upstream's level (it is llm-compressor's
documented switch). llm-compressor reconfigures loguru when ``llmcompressor.logger`` executes
(``logger.remove()`` and a ``sys.stdout`` sink, then warnings during the rest of ``import
llmcompressor``), so the configuration is re-applied right after that module has run.

Progress bars draw only for a person: when stderr is not a terminal, :func:`configure` wraps it
so carriage-return redraws (every tqdm bar, also those upstream creates with an explicit
``disable=False``) never reach the log file; in a terminal :func:`quiet_progress_bars` makes
tqdm bars erase themselves when done, so one live bar shows at a time.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from dataclasses import dataclass

from sink_modifier import after_import

__all__ = ["configure", "quiet_progress_bars", "show_progress"]

OUR_PACKAGE = "sink_modifier"

# Modules that (re)configure loguru's sinks when they execute; ours are re-applied after each.
RECONFIGURING_MODULES = ("llmcompressor.logger", "compressed_tensors.logger")

# Upstream loguru messages (by prefix) that say nothing to a user of this command line.
UPSTREAM_METRIC = "METRIC"  # llmcompressor.logger's level for compression metrics (no. 38)

UPSTREAM_NOISE = (
    # llm-compressor's get_main_device repeats it at import and at every pipeline stage; on a
    # machine without a GPU running on the CPU is the only choice, not a problem to warn about.
    "No accelerator available!",
    # oneshot sets TOKENIZERS_PARALLELISM=false itself and says so; it guards Datasets.map,
    # which we never use (prune hands it a ready DataLoader), so the user has nothing to do.
    "Disabling tokenizer parallelism",
    # Names the hidden temporary folder that export/atomic.py renames into place; the user
    # asked for, and gets, the final folder ("wrote DIR").
    "Resaved original config",
    # llm-compressor linearises MoE experts for calibration (what prune relies on) and suggests
    # registering a load converter to its own developers; nothing for a user of the command to do.
    "MoE is being linearized after loading",
)

# (Python logger, message prefix) pairs of the standard logging module to drop, and why.
PYTHON_LOG_NOISE = (
    # A deprecation addressed to code that calls torch.fx.is_fx_tracing (llm-compressor's
    # tracer), not to whoever runs the pruning.
    ("torch.fx._symbolic_trace", "is_fx_tracing will return true"),
    # The ONNX exporter skips torchvision's vision ops when torchvision is absent; a language
    # model has none of them.
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed"),
)

# (message regex, category, module regex) for warnings.filterwarnings, and why.
WARNING_NOISE = (
    # transformers says it for any model with accelerate hooks (llm-compressor's offloading
    # wrappers, here on the CPU): "ensure cpu memory exceeds shard_size (50GB default)" does not
    # apply to a model that already fits in memory.
    ("Attempting to save a model with offloaded modules", UserWarning, ""),
    # torchvision is imported by transformers' vision utilities; its warnings (missing image
    # extension, beta transforms) concern image models only.
    ("", Warning, r"torchvision(\..*)?"),
)


@dataclass
class _Settings:
    verbosity: int = 0


_settings = _Settings()
_logged_once: set[str] = set()


def configure(verbosity: int = 0) -> None:
    """Route loguru to stderr at ``verbosity`` (0 default, 1 ``-v``, 2 ``-vv``) and drop upstream noise.

    Replaces every loguru sink of the process (upstream's ``sys.stdout`` one included): call it
    from an entry point, not from library code.
    """
    _settings.verbosity = verbosity
    # transformers' warnings (e.g. "Token indices sequence length ... indexing errors") address
    # library callers; the commands check those inputs themselves and say so in their own words.
    # Read by transformers when it first logs; a user's own TRANSFORMERS_VERBOSITY wins.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", ("error", "warning", "info")[min(verbosity, 2)])
    _install_loguru_sink()
    for module in RECONFIGURING_MODULES:
        if module not in sys.modules:
            after_import(module, _reinstall_after)
    quiet = verbosity < 2
    for name, prefix in PYTHON_LOG_NOISE:
        target = logging.getLogger(name)
        if quiet:
            target.addFilter(_PrefixFilter.for_prefix(prefix))
        else:
            target.removeFilter(_PrefixFilter.for_prefix(prefix))
    if quiet:
        for message, category, module in WARNING_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category, module=module)
    if not show_progress() and sys.stderr is not None and not isinstance(sys.stderr, _WithoutRedraws):
        sys.stderr = _WithoutRedraws(sys.stderr)


def quiet_progress_bars() -> None:
    """In a terminal, tqdm bars that erase themselves when done (one live bar instead of a stack).

    tqdm reads ``TQDM_*`` defaults once, when ``tqdm`` is first imported (torch imports it), so
    call this before torch is imported. A bar created with an explicit ``leave=`` keeps it, and a
    user's own ``TQDM_LEAVE`` wins.
    """
    if show_progress():
        # tqdm converts the text with bool(): only the empty string gives leave=False.
        os.environ.setdefault("TQDM_LEAVE", "")


def show_progress() -> bool:
    """Whether our own progress bars should draw: only for a person watching stderr."""
    stream = sys.stderr
    return stream is not None and hasattr(stream, "isatty") and stream.isatty()


def _reinstall_after(module) -> None:
    _install_loguru_sink()


def _install_loguru_sink() -> None:
    from loguru import logger

    logger.remove()  # upstream's stdout sink (and any earlier one of ours)
    level = 5 if _settings.verbosity >= 2 else 10  # TRACE / DEBUG: the filter decides per source
    logger.add(_Stderr(), level=level, format=_format, filter=_wanted, colorize=False)


def _upstream_level() -> int:
    from loguru import logger

    chosen = os.environ.get("LLM_COMPRESSOR_LOG_LEVEL")
    if chosen:
        try:
            return logger.level(chosen.upper()).no
        except ValueError:
            pass  # not a level name: llm-compressor itself would fail on it; keep ours
    return (30, 20, 10)[min(_settings.verbosity, 2)]  # WARNING, INFO, DEBUG


def _wanted(record) -> bool:
    name = record["name"] or ""
    ours = name == OUR_PACKAGE or name.startswith(OUR_PACKAGE + ".")
    threshold = (20 if _settings.verbosity == 0 else 10) if ours else _upstream_level()
    if record["level"].no < threshold:
        return False
    # llm-compressor's METRIC level (38, above WARNING) carries GPTQ's per-module error and time:
    # detail, so it counts as INFO (shown from -v on, or with LLM_COMPRESSOR_LOG_LEVEL=INFO).
    if not ours and record["level"].name == UPSTREAM_METRIC and threshold > 20:
        return False
    if not ours and _settings.verbosity < 2 and record["message"].startswith(UPSTREAM_NOISE):
        return False
    # llm-compressor's `logger.bind(log_once=True)` (its own sink's filter honours it; ours must too)
    if record["extra"].get("log_once"):
        key = f"{record['level'].name}{record['message']}"
        if key in _logged_once:
            return False
        _logged_once.add(key)
    return True


def _format(record) -> str:
    level = record["level"].name
    if _settings.verbosity == 0:
        label = "" if level in ("INFO", "SUCCESS") else f"{level.lower()}: "
        return "{time:HH:mm:ss} " + label + "{message}\n{exception}"
    return "{time:HH:mm:ss.SSS} {level: <7} {name}: {message}\n{exception}"


class _Stderr:
    """A loguru sink writing to whatever ``sys.stderr`` is at the time (pytest swaps it per test)."""

    def write(self, text: str) -> None:
        if sys.stderr is not None:
            sys.stderr.write(text)

    def flush(self) -> None:
        if sys.stderr is not None:
            sys.stderr.flush()


class _WithoutRedraws:
    """stderr for a log file: drops progress-bar redraws, passes everything else.

    A write that starts with a carriage return redraws a bar (tqdm, and every other bar library,
    draws so); the lone newline that ends a bar right after it goes too. Any other text resets.
    """

    def __init__(self, stream) -> None:
        self._stream = stream
        self._after_redraw = False

    def write(self, text: str) -> int:
        if text.startswith("\r") or (self._after_redraw and text == "\n"):
            self._after_redraw = text != "\n"
            return len(text)
        self._after_redraw = False
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)  # flush, isatty, fileno, encoding, ...


class _PrefixFilter(logging.Filter):
    """Drops standard-logging records whose message starts with ``prefix``; one instance per prefix,
    so adding it twice (a second ``configure``) is a no-op and removing it finds it."""

    _instances: dict[str, _PrefixFilter] = {}

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    @classmethod
    def for_prefix(cls, prefix: str) -> _PrefixFilter:
        return cls._instances.setdefault(prefix, cls(prefix))

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)
