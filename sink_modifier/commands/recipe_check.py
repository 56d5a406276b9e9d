"""Read a YAML recipe the way llm-compressor will, and refuse one that would not do what it says.

``Recipe.from_dict`` instantiates the modifiers under top-level keys ending in ``_stage``,
in groups ending in ``_modifiers``, in file order, and silently skips everything else: a
recipe without those suffixes runs no modifier at all (and ``prune`` would write a "pruned"
checkpoint with sparsity 0). A malformed file fails inside llm-compressor with a traceback
about ``<unicode string>``, and a bad modifier setting with a multi-line pydantic report.
:func:`check_recipe` parses the file itself first, so each of these is one line that names
the file (``FILE:LINE:COL``, 1-based), the modifier and the field; it builds the modifiers
exactly as ``from_dict`` does, and refuses quantizing before pruning (the pruning would
then zero quantized weights, and the quantization scales were fitted to weights that are
gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sink_modifier.commands.recipe_calibration import BLOCK, RecipeCalibration, parse_calibration_block
from sink_modifier.commands.recipe_yaml import read_recipe_yaml
from sink_modifier.commands.recipe_yaml import where as _where

__all__ = ["CheckedRecipe", "check_recipe"]

EXAMPLE = ("sparsity_stage: {sparsity_modifiers: {SinkAwareWandaPruningModifier: {sparsity: 0.5}}} "
           "(see recipes/sink_wanda_50.yaml)")
SUFFIX_RULE = ("llm-compressor reads modifiers only under top-level keys ending in _stage, each holding "
               f"groups ending in _modifiers, e.g. {EXAMPLE}")


@dataclass(frozen=True)
class CheckedRecipe:
    """A recipe file that passed :func:`check_recipe`: its text and its modifiers, in run order."""

    path: Path
    text: str
    modifiers: list[Any]
    calibration: RecipeCalibration = RecipeCalibration()  # its ``calibration:`` block (recipe_calibration.py)


@dataclass(frozen=True)
class _Entry:
    stage: str
    group: str
    type: str
    settings: Any
    key: Any  # the yaml nodes of the modifier's name and settings (for line numbers)
    node: Any


def _pair(node: Any, key: str) -> tuple[Any, Any]:
    """The key and value nodes of ``key`` in a yaml mapping node (``None, None`` if absent)."""
    import yaml

    if not isinstance(node, yaml.MappingNode):
        return None, None
    for key_node, value_node in node.value:
        if getattr(key_node, "value", None) == str(key):
            return key_node, value_node
    return None, None


def _child(node: Any, key: str) -> Any:
    return _pair(node, key)[1]


def _entries(path: Path, root: Any, data: Any) -> list[_Entry]:
    if data is None:
        raise ValueError(f"recipe {path} defines no modifiers: the file is empty; {SUFFIX_RULE}")
    if not isinstance(data, dict):
        raise ValueError(
            f"{_where(path, root)}: recipe {path} is a YAML {type(data).__name__}, not a mapping of stages, "
            f"so it defines no modifiers; {SUFFIX_RULE}"
        )
    entries, skipped = [], []
    for stage_key, stage in data.items():
        if stage_key == BLOCK:  # ours (the rows the settings were chosen with); llm-compressor skips it
            continue
        if not (str(stage_key).endswith("_stage") and isinstance(stage, dict)):
            if isinstance(stage, dict):
                skipped.append(str(stage_key))
            continue
        stage_node = _child(root, stage_key)
        for group_key, group in stage.items():
            if not (str(group_key).endswith("_modifiers") and isinstance(group, dict)):
                skipped.append(f"{stage_key}.{group_key}")
                continue
            group_node = _child(stage_node, group_key)
            for mod_type, settings in group.items():
                key, node = _pair(group_node, mod_type)
                entries.append(_Entry(str(stage_key), str(group_key), str(mod_type), settings, key, node))
    if skipped:
        raise ValueError(
            f"recipe {path}: llm-compressor would skip {', '.join(skipped)} (a key without the _stage / "
            f"_modifiers suffix){'' if entries else ', so the recipe defines no modifiers'}; {SUFFIX_RULE}"
        )
    if not entries:
        found = ", ".join(str(k) for k in data) or "none"
        raise ValueError(f"recipe {path} defines no modifiers (top-level keys: {found}); {SUFFIX_RULE}")
    return entries


def _validation_message(path: Path, entry: _Entry, err) -> str:
    parts = []
    for error in err.errors():
        field = ".".join(str(p) for p in error.get("loc", ())) or "(settings)"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        given = error.get("input")
        shown = "" if isinstance(given, dict) or str(given) in message else f" (got {given!r})"
        parts.append((field, f"{field}: {message}{shown}"))
    first_field = parts[0][0].split(".")[0] if parts else None
    node = _pair(entry.node, first_field)[0] if first_field else None
    where = _where(path, node if node is not None else entry.key)
    details = "; ".join(text for _, text in parts)
    return f"{where}: {entry.type} in {entry.stage}.{entry.group}: {details}; fix it in the recipe"


def _build(path: Path, entry: _Entry):
    from llmcompressor.modifiers.factory import ModifierFactory
    from pydantic import ValidationError

    settings = entry.settings if entry.settings is not None else {}
    if not isinstance(settings, dict):
        raise ValueError(
            f"{_where(path, entry.key)}: the settings of {entry.type} in {entry.stage}.{entry.group} are a "
            f"{type(settings).__name__}, not a mapping of field: value; {SUFFIX_RULE}"
        )
    if not ModifierFactory._loaded:
        ModifierFactory.refresh()
    known = {**ModifierFactory._main_registry, **ModifierFactory._registered_registry,
             **ModifierFactory._experimental_registry}
    if entry.type not in known and entry.type not in ModifierFactory._errors:
        ours = sorted(ModifierFactory._registered_registry)
        raise ValueError(
            f"{_where(path, entry.key)}: unknown modifier {entry.type!r} in {entry.stage}.{entry.group}; "
            f"sink-modifier's are {', '.join(ours)}, llm-compressor's include QuantizationModifier, "
            "GPTQModifier, WandaPruningModifier, SparseGPTModifier (check the spelling)"
        )
    # exactly Recipe.from_dict's call (its group defaults to the group key without "_modifiers")
    group = settings.get("group", entry.group.removesuffix("_modifiers"))
    try:
        return ModifierFactory.create(entry.type, allow_registered=True, allow_experimental=True,
                                      **{**settings, "group": group})
    except ValidationError as err:
        raise ValueError(_validation_message(path, entry, err)) from None
    except (ValueError, TypeError) as err:
        raise ValueError(
            f"{_where(path, entry.key)}: {entry.type} in {entry.stage}.{entry.group}: "
            f"{' '.join(str(err).split())}; fix it in the recipe"
        ) from None


def modifier_role(modifier: Any) -> str | None:
    """``"quantization"``, ``"pruning"`` or ``None`` (e.g. SmoothQuant), from the class hierarchy."""
    modules = [cls.__module__ for cls in type(modifier).__mro__]
    if any(m.startswith("llmcompressor.modifiers.quantization") for m in modules):
        return "quantization"  # QuantizationModifier, GPTQModifier, MaskPreservingGPTQModifier (QuantizationMixin)
    if any(m.startswith("llmcompressor.modifiers.pruning") for m in modules):
        return "pruning"  # Wanda, SparseGPT and ours (SparsityModifierBase), magnitude, ...
    return None


def _stable_reorder(items: list[str], first: set[str]) -> list[str]:
    return [i for i in items if i in first] + [i for i in items if i not in first]


def _check_order(path: Path, entries: list[_Entry], modifiers: list[Any]) -> None:
    roles = [modifier_role(m) for m in modifiers]
    if "quantization" not in roles or "pruning" not in roles:
        return
    first_quant = roles.index("quantization")
    last_prune = len(roles) - 1 - roles[::-1].index("pruning")
    if first_quant > last_prune:
        return
    quant, prune = entries[first_quant], entries[last_prune]
    why = (f"quantizing before pruning ({quant.type} in {quant.stage} runs before {prune.type} in {prune.stage}) "
           "would zero weights after their quantization scales were fitted, and a GPTQ step could not keep the "
           "pruned positions at zero")
    stages = list(dict.fromkeys(e.stage for e in entries))
    if quant.stage != prune.stage:
        pruning_stages = {e.stage for e, r in zip(entries, roles) if r == "pruning"}
        reordered = _stable_reorder(stages, pruning_stages)
        raise ValueError(
            f"recipe {path}: stages run in file order: {', '.join(stages)}; {why}; put them as: "
            f"{', '.join(reordered)}"
        )
    within = [e.type for e in entries if e.stage == quant.stage]
    pruning = {e.type for e, r in zip(entries, roles) if r == "pruning" and e.stage == quant.stage}
    raise ValueError(
        f"recipe {path}: in {quant.stage}, modifiers run in file order: {', '.join(within)}; {why}; put them "
        f"as: {', '.join(_stable_reorder(within, pruning))} (or pruning and quantization in two stages)"
    )


def check_recipe(recipe: str | Path) -> CheckedRecipe:
    """Parse ``recipe``, build its modifiers as llm-compressor would, refuse what would not run as written."""
    import sink_modifier.modifiers  # noqa: F401  (registers our modifiers for the YAML recipe)

    path = Path(recipe)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "not found"
        raise FileNotFoundError(f"recipe {path} {what}; pass a YAML recipe file with --recipe "
                                "(e.g. recipes/sink_wanda_50.yaml)")
    text, root, data = read_recipe_yaml(path)
    entries = _entries(path, root, data)
    modifiers = [_build(path, entry) for entry in entries]
    _check_order(path, entries, modifiers)
    key, node = _pair(root, BLOCK)
    calibration = parse_calibration_block(path, data.get(BLOCK), node, key)
    return CheckedRecipe(path=path, text=text, modifiers=modifiers, calibration=calibration)
