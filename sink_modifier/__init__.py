"""sink_modifier: sink-aware pruning of diffusion language models inside llm-compressor.

Importing the package is light: it does not import llm-compressor. It still makes the
modifiers nameable in YAML recipes (``SinkAwareWandaPruningModifier``,
``SinkAwareSparseGPTModifier``, ``MaskPreservingGPTQModifier``, ``SinkAwareGPTQModifier``) in either import order:
if llm-compressor is already imported they are registered now, otherwise a one-shot import
hook registers them as soon as ``import llmcompressor`` has finished. ``from sink_modifier
import SinkAwareWandaPruningModifier`` imports them (and llm-compressor) on first use.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from types import ModuleType
from typing import Callable

__version__ = "0.1.0"
__all__ = ["MaskPreservingGPTQModifier", "SinkAwareGPTQModifier", "SinkAwareSparseGPTModifier",
           "SinkAwareWandaPruningModifier", "__version__"]

_MODIFIERS = frozenset(__all__) - {"__version__"}


def __getattr__(name: str):
    if name in _MODIFIERS:
        from sink_modifier import modifiers

        return getattr(modifiers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_modifiers(module=None) -> None:
    import sink_modifier.modifiers  # noqa: F401  (registers them with llm-compressor's ModifierFactory)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first import of ``module_name`` it wraps that module's loader
    so ``callback(module)`` runs once the module's own code has run; then it leaves ``sys.meta_path``."""

    def __init__(self, module_name: str, callback: Callable[[ModuleType], None]) -> None:
        self.module_name = module_name
        self.callback = callback

    def same_as(self, module_name: str, callback: Callable[[ModuleType], None]) -> bool:
        # by name, not identity: a re-imported sink_modifier has new function objects
        return (self.module_name, _qualified(self.callback)) == (module_name, _qualified(callback))

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.module_name:
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding us again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run_module = spec.loader.exec_module
        callback = self.callback

        def exec_module(module) -> None:
            run_module(module)
            callback(module)

        spec.loader.exec_module = exec_module
        return spec


def _qualified(function: Callable) -> str:
    return f"{getattr(function, '__module__', '')}.{getattr(function, '__qualname__', repr(function))}"


def after_import(module_name: str, callback: Callable[[ModuleType], None]) -> None:
    """Run ``callback(module)`` now if ``module_name`` is imported, else once, right after the module's
    code has first run (its whole body, so everything it defines is complete).

    The package's own tool (modifier registration here, loguru sinks in :mod:`sink_modifier.console`);
    the same callback registered twice for one module still runs once.
    """
    if module_name in sys.modules:
        callback(sys.modules[module_name])
    elif not any(isinstance(getattr(finder, "module_name", None), str) and finder.same_as(module_name, callback)
                 for finder in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport(module_name, callback))


# Our modifiers subclass llm-compressor classes: registering them from inside llm-compressor's
# own package import (e.g. when llmcompressor.modifiers.factory executes) would meet
# half-initialised modules, so wait for the whole ``llmcompressor`` package.
after_import("llmcompressor", _register_modifiers)
