"""Remove a saved checkpoint's second copies of tied weights (a family's ``after_save`` repair).

A family whose modules share weights (DiffusionGemma: the encoder's text layers are the decoder's)
stores them once. When quantization compresses one side and not the other they stop being one tensor
in memory and ``save_pretrained`` writes both; :func:`drop_tied_copies` rewrites the safetensors
shards (and their index) without the tied side's tensors and removes that side's module names from
``quantization_config.ignore``. On load transformers ties them again.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["drop_tied_copies"]


def drop_tied_copies(folder: Path, patterns: list[re.Pattern], prefix: str) -> int:
    """Drop every tensor whose full name matches one of ``patterns``; returns how many were dropped.

    ``prefix``: the tied side's module prefix, whose entries leave ``quantization_config.ignore``.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    from .expert_layout import weight_files

    dropped = 0
    kept_map: dict[str, str] = {}
    for path in weight_files(folder):
        with safe_open(str(path), "pt") as handle:
            names = list(handle.keys())
            metadata = handle.metadata()
            drop = [n for n in names if any(p.match(n) for p in patterns)]
            if drop:
                tensors = {n: handle.get_tensor(n) for n in names if n not in drop}
        if drop:
            save_file(tensors, str(path), metadata=metadata)
            dropped += len(drop)
        kept_map.update({n: path.name for n in names if n not in drop})
    index = folder / "model.safetensors.index.json"
    if dropped and index.is_file():
        data = json.loads(index.read_text())
        data["weight_map"] = {n: f for n, f in data["weight_map"].items() if n in kept_map}
        index.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    quant = config.get("quantization_config")
    if isinstance(quant, dict) and isinstance(quant.get("ignore"), list):
        kept = [name for name in quant["ignore"] if not str(name).startswith((prefix, "re:^" + re.escape(prefix)))]
        if len(kept) != len(quant["ignore"]):
            quant["ignore"] = kept
            config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return dropped
