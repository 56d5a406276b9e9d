"""sink_modifier: sink-aware pruning of diffusion language models inside llm-compressor.

Importing the package registers its modifiers with llm-compressor, so YAML recipes can
name them (``SinkAwareWandaPruningModifier``, ``SinkAwareSparseGPTModifier``).
"""

from sink_modifier.modifiers import SinkAwareSparseGPTModifier, SinkAwareWandaPruningModifier

__version__ = "0.1.0"
__all__ = ["SinkAwareSparseGPTModifier", "SinkAwareWandaPruningModifier", "__version__"]
