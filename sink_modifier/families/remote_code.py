"""Loading published remote-code models under the pinned transformers, without touching their files.

The checkpoints of LLaDA and Dream ship their own ``modeling_*.py`` written for transformers
4.x. Rather than editing that code (the user's folder is never modified), we resolve the
class the way ``AutoModel*`` would and repair the in-memory class or config around it.

Whether a folder's code may run is decided here, before transformers is asked
(:func:`check_custom_code`): transformers' own refusal names a Python keyword and a hub URL
made from the local path, not the command's ``--trust-remote-code``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "auto_map_classes",
    "builtin_model_type",
    "check_custom_code",
    "ensure_post_init",
    "ignored_code_warning",
    "remote_class",
    "require_trust",
    "tolerate_tie_weights_arguments",
]

_READ_FIRST = "read the folder's *.py files first if you did not write them"


def auto_map_classes(config: dict[str, Any]) -> dict[str, str]:
    """``auto_map`` of a parsed ``config.json`` as ``{auto class: "module.Class"}`` (empty: none)."""
    auto_map = config.get("auto_map")
    if not isinstance(auto_map, dict):
        return {}
    # an entry may be a list (a tokenizer's slow/fast pair) or name a hub repo ("org/repo--module.Class")
    return {str(k): str(v[0] if isinstance(v, (list, tuple)) and v else v).split("--")[-1]
            for k, v in auto_map.items() if v}


def builtin_model_type(config: dict[str, Any]) -> bool:
    """Whether transformers itself has classes for the config's ``model_type``."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return str(config.get("model_type", "")) in CONFIG_MAPPING_NAMES


def require_trust(folder: Path, config: dict[str, Any], trust_remote_code: bool, family: str) -> None:
    """Refuse to run a folder's own code unless the user allowed it."""
    if config.get("auto_map") and not trust_remote_code:
        raise ValueError(
            f"{folder} is a {family} checkpoint whose model code ships in the folder (auto_map in "
            "config.json); it only runs with --trust-remote-code (trust_remote_code=True in Python); "
            f"{_READ_FIRST}"
        )


def check_custom_code(folder: Path, config: dict[str, Any], trust_remote_code: bool, family: Any) -> None:
    """Refuse a folder that can only load by running its own code, unless the user allowed it.

    A family of remote-code checkpoints (LLaDA, Dream) always needs it; any other folder with
    an ``auto_map`` needs it when transformers has no built-in class for its ``model_type``.
    """
    if trust_remote_code or not config.get("auto_map"):
        return
    if getattr(family, "remote_code", False):
        require_trust(folder, config, trust_remote_code, family.name)
    if not builtin_model_type(config):
        classes = ", ".join(f"{k}: {v}" for k, v in auto_map_classes(config).items())
        raise ValueError(
            f"{folder}/config.json has model_type {config.get('model_type')!r}, which transformers has no "
            f"built-in class for, and names the folder's own code (auto_map {{{classes}}}); it only loads "
            f"with --trust-remote-code (trust_remote_code=True in Python); {_READ_FIRST}"
        )


def ignored_code_warning(folder: Path, config: dict[str, Any], used: type) -> str | None:
    """The warning for a folder whose ``auto_map`` code was not run (built-in class used instead)."""
    classes = auto_map_classes(config)
    if not classes:
        return None
    names = ", ".join(f"{k}: {v}" for k, v in classes.items())
    return (
        f"{folder}/config.json names its own code (auto_map {{{names}}}) but its model_type "
        f"{config.get('model_type')!r} is built into transformers: loaded transformers' {used.__name__} and "
        "ignored the folder's code; pass --trust-remote-code (trust_remote_code=True in Python) to run the "
        "folder's code instead"
    )


def remote_class(folder: Path, config: dict[str, Any], auto_classes: tuple[str, ...]) -> type[nn.Module]:
    """The model class that ``auto_map`` names for the first of ``auto_classes`` present."""
    from transformers.dynamic_module_utils import get_class_from_dynamic_module

    auto_map = config.get("auto_map") or {}
    for auto_class in auto_classes:
        reference = auto_map.get(auto_class)
        if reference:
            return get_class_from_dynamic_module(reference, str(folder))
    raise ValueError(
        f"{folder}/config.json has no auto_map entry for {' or '.join(auto_classes)}; "
        "is this the published checkpoint folder?"
    )


def ensure_post_init(cls: type[nn.Module]) -> type[nn.Module]:
    """Make ``cls.__init__`` end with ``post_init()`` when the published code forgot it.

    transformers 5 sets ``all_tied_weights_keys`` (and more) in ``post_init``; a class that
    never calls it fails inside ``from_pretrained``. The patch lives on the in-memory class
    only, and is applied once.
    """
    # The marker sits on the wrapper itself, so code that restores the original __init__
    # (the class object is shared by every load of the same module) is noticed.
    if getattr(cls.__init__, "_sink_modifier_post_init", False):
        return cls
    original_init = cls.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if not hasattr(self, "all_tied_weights_keys"):
            self.post_init()

    __init__._sink_modifier_post_init = True
    cls.__init__ = __init__
    return cls


def tolerate_tie_weights_arguments(cls: type[nn.Module]) -> type[nn.Module]:
    """Let an old ``tie_weights(self)`` override accept transformers 5's keyword arguments.

    ``from_pretrained`` calls ``tie_weights(recompute_mapping=...)``; code written for 4.x
    overrides ``tie_weights(self)`` and raises ``TypeError``. The override keeps its behaviour.
    """
    own = cls.__dict__.get("tie_weights")
    if own is None or getattr(own, "_sink_modifier_tolerant", False):
        return cls

    def tie_weights(self, *args, **kwargs):
        return own(self)

    tie_weights._sink_modifier_tolerant = True
    cls.tie_weights = tie_weights
    return cls
