"""Loading published remote-code models under the pinned transformers, without touching their files.

The checkpoints of LLaDA and Dream ship their own ``modeling_*.py`` written for transformers
4.x. Rather than editing that code (the user's folder is never modified), we resolve the
class the way ``AutoModel*`` would and repair the in-memory class or config around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

__all__ = ["ensure_post_init", "remote_class", "require_trust", "tolerate_tie_weights_arguments"]


def require_trust(folder: Path, config: dict[str, Any], trust_remote_code: bool, family: str) -> None:
    """Refuse to run a folder's own code unless the user allowed it."""
    if config.get("auto_map") and not trust_remote_code:
        raise ValueError(
            f"{folder} is a {family} checkpoint whose model code ships in the folder (auto_map in "
            "config.json); it only runs with trust_remote_code=True (--trust-remote-code). Read the "
            "folder's *.py files first if you did not write them."
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
