"""llm-compressor modifiers; importing this package registers them for YAML recipes."""

from llmcompressor.modifiers.factory import ModifierFactory

from sink_modifier.modifiers.sink_wanda import SinkAwareWandaPruningModifier

__all__ = ["SinkAwareWandaPruningModifier"]

for _cls in (SinkAwareWandaPruningModifier,):
    ModifierFactory.register(_cls.__name__, _cls)
