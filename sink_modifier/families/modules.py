"""Finding a model's parts by role: the output head, the attention modules, the MoE expert stacks.

One lookup each, used by the family rules, the sink pass, the sparsity record and the 2:4
runtime, so that every layer agrees on what "the head" or "an attention module" is.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

__all__ = ["attention_modules", "expert_stacks", "output_head"]


def output_head(model: nn.Module) -> nn.Module | None:
    """``model.get_output_embeddings()``, or ``None`` where the model has or declares none.

    Found by role, not by the name ``lm_head``: LLaDA's head is ``model.transformer.ff_out``,
    and each of its blocks has an ``ff_out`` too.
    """
    getter = getattr(model, "get_output_embeddings", None)
    try:
        return getter() if callable(getter) else None
    except (AttributeError, NotImplementedError):
        return None


def attention_modules(root: nn.Module) -> list[nn.Module]:
    """Every module under ``root`` (itself included) whose class name ends with ``Attention``."""
    return [module for module in root.modules() if type(module).__name__.endswith("Attention")]


def expert_stacks(module: nn.Module, name: str) -> Iterator[tuple[str, nn.Parameter]]:
    """``(full name, [E, out, in] parameter)`` of an MoE experts module (class name ``*Experts``).

    DiffusionGemma's ``experts.gate_up_proj`` is one 3-D parameter per projection rather than
    ``E`` Linears; any other module yields nothing.
    """
    if not type(module).__name__.endswith("Experts"):
        return
    for param_name, weight in module.named_parameters(recurse=False):
        if weight.dim() == 3:
            yield f"{name}.{param_name}", weight
