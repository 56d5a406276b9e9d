"""sink_modifier: sink-aware pruning of diffusion language models inside llm-compressor.

Importing the package is light: it does not import llm-compressor. It still makes the
modifiers nameable in YAML recipes (``SinkAwareWandaPruningModifier``,
``SinkAwareSparseGPTModifier``, ``MaskPreservingGPTQModifier``) in either import order:
if llm-compressor is already imported they are registered now, otherwise a one-shot import
hook registers them as soon as ``import llmcompressor`` has finished. ``from sink_modifier
import SinkAwareWandaPruningModifier`` imports them (and llm-compressor) on first use.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"
__all__ = ["MaskPreservingGPTQModifier", "SinkAwareSparseGPTModifier", "SinkAwareWandaPruningModifier", "__version__"]

_MODIFIERS = frozenset(__all__) - {"__version__"}


def __getattr__(name: str):
    if name in _MODIFIERS:
        from sink_modifier import modifiers

        return getattr(modifiers, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_modifiers() -> None:
    import sink_modifier.modifiers  # noqa: F401  (registers them with llm-compressor's ModifierFactory)


class _RegisterAfterLLMCompressor(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the import of ``llmcompressor`` it wraps that package's loader so
    our modifiers are registered once its ``__init__`` has run.

    Not earlier (e.g. when ``llmcompressor.modifiers.factory`` executes): our modifiers subclass
    llm-compressor classes, and importing them from inside llm-compressor's own package import
    would meet half-initialised modules.
    """

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "llmcompressor":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from finding us again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        run_package = spec.loader.exec_module

        def exec_module(module) -> None:
            run_package(module)
            _register_modifiers()

        spec.loader.exec_module = exec_module
        return spec


if "llmcompressor" in sys.modules:
    _register_modifiers()
elif not any(isinstance(finder, _RegisterAfterLLMCompressor) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterLLMCompressor())
