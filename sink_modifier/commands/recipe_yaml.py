"""A recipe file read as YAML the one way every reader of it does: errors as ``FILE:LINE:COL``, no duplicate keys.

Both :mod:`.recipe_check` (the modifiers) and :mod:`.recipe_calibration` (the ``calibration:`` block)
read recipes through :func:`read_recipe_yaml`, so a recipe means the same thing to each.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["read_recipe_yaml", "where"]


def where(path: Path, node: Any) -> str:
    """``FILE:LINE:COL`` (1-based) of a yaml node, or the file alone."""
    mark = getattr(node, "start_mark", None)
    return f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)


def read_recipe_yaml(path: Path) -> tuple[str, Any, Any]:
    """The text, the composed node tree (for line numbers) and the loaded data of ``path``."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"recipe {path} is not UTF-8 text (byte offset {err.start}); pass a YAML recipe") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        _refuse_duplicate_keys(path, root)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        spot = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = err.problem or err.context or "invalid YAML"
        if err.context and err.problem:
            start = err.context_mark
            problem += f" ({err.context}{f' that starts at {start.line + 1}:{start.column + 1}' if start else ''})"
        raise ValueError(f"{spot}: {problem}; the recipe is not valid YAML") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: {' '.join(str(err).split())} (the recipe is not valid YAML)") from None
    return text, root, data


def _refuse_duplicate_keys(path: Path, root: Any) -> None:
    """YAML keeps the last of two equal keys and drops the first without a word: a recipe with two
    ``calibration:`` blocks, two ``sparsity_stage:`` or one modifier listed twice would run one of
    them silently. Refuse it at any depth, naming both places."""
    import yaml

    pending = [(root, "")] if root is not None else []
    while pending:
        node, context = pending.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = getattr(key_node, "value", None)
                name = f"{context}.{key}" if context else str(key)
                if isinstance(key_node, yaml.ScalarNode) and key in seen:
                    raise ValueError(
                        f"{where(path, seen[key])} and {where(path, key_node)}: {name} appears twice; YAML would "
                        "keep only the second and silently drop the first: remove one of them or merge them"
                    )
                seen.setdefault(key, key_node)
                pending.append((value_node, name))
        elif isinstance(node, yaml.SequenceNode):
            pending.extend((item, f"{context}[{index}]") for index, item in enumerate(node.value))
