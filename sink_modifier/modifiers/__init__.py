"""llm-compressor modifiers; importing this package registers them for YAML recipes."""

from llmcompressor.modifiers.factory import ModifierFactory

from sink_modifier.modifiers.mask_preserving_gptq import MaskPreservingGPTQModifier
from sink_modifier.modifiers.sink_gptq import SinkAwareGPTQModifier
from sink_modifier.modifiers.sink_sparsegpt import SinkAwareSparseGPTModifier
from sink_modifier.modifiers.sink_wanda import SinkAwareWandaPruningModifier

__all__ = ["MaskPreservingGPTQModifier", "SinkAwareGPTQModifier", "SinkAwareSparseGPTModifier",
           "SinkAwareWandaPruningModifier"]

for _cls in (MaskPreservingGPTQModifier, SinkAwareGPTQModifier, SinkAwareSparseGPTModifier,
             SinkAwareWandaPruningModifier):
    ModifierFactory.register(_cls.__name__, _cls)
