"""Quantized MoE experts on disk: one Linear per expert, read back into transformers' fused 3-D parameters.

transformers keeps an MoE block's experts as two 3-D parameters (``experts.gate_up_proj [E, 2I, H]``,
``experts.down_proj [E, H, I]``); compressed-tensors quantizes and compresses ``nn.Linear``
modules. llm-compressor therefore calibrates MoE models with their experts *linearised* (one
``gate_proj`` / ``up_proj`` / ``down_proj`` Linear per expert). Repacking those into the fused
parameters after quantization (what upstream suggests for transformers' sake) throws the
quantization away: the fused tensors are written in float with stray ``*_scale`` tensors beside
them, ~88% of a DiffusionGemma's parameters. So a quantized MoE checkpoint keeps the per-expert
layout: ``...experts.{e}.{gate,up,down}_proj.weight`` (+ ``weight_scale`` ...), which vLLM's fused-MoE
loader maps expert by expert (``routed_experts.py``: ``load_weights`` by expert id).

transformers cannot load that layout into its fused class, so the family's loader reads it here:
the model is built and loaded as usual (its expert parameters then hold no checkpoint values) and
:func:`fill_fused_experts` decompresses each expert's tensors with compressed-tensors' own
compressor for the checkpoint's format and scheme and writes them into the fused parameters.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["PER_EXPERT", "fill_fused_experts", "per_expert_layers", "weight_files"]

# ``<layer>.experts.<e>.<proj>.<param>``: a per-expert tensor as llm-compressor writes it
PER_EXPERT = re.compile(r"^(?P<block>.+\.experts)\.(?P<expert>\d+)\.(?P<proj>gate_proj|up_proj|down_proj)\.(?P<param>.+)$")


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / n for n in names]
    return sorted(folder.glob("*.safetensors"))


def _names(folder: Path) -> list[str]:
    from safetensors import safe_open

    names: list[str] = []
    for path in weight_files(folder):
        with safe_open(str(path), "pt") as handle:
            names.extend(handle.keys())
    return names


def per_expert_layers(folder: Path) -> set[str]:
    """The expert blocks (``...experts``) whose tensors ``folder`` stores one expert at a time."""
    return {m["block"] for m in map(PER_EXPERT.match, _names(folder)) if m}


def _scheme_for(name: str, quantization_config: dict) -> tuple[Any, str] | None:
    """The (QuantizationScheme, format) compressed-tensors applied to module ``name``, or ``None`` (not quantized)."""
    from compressed_tensors.quantization import QuantizationScheme
    from compressed_tensors.utils import is_match

    for ignored in quantization_config.get("ignore") or []:
        if is_match(name, nn.Linear(1, 1), ignored):
            return None
    for group in (quantization_config.get("config_groups") or {}).values():
        targets = group.get("targets") or []
        if any(is_match(name, nn.Linear(1, 1), target) for target in targets):
            scheme = QuantizationScheme.model_validate({k: v for k, v in group.items() if k != "format"})
            return scheme, group.get("format") or quantization_config.get("format")
    return None


def fill_fused_experts(model: nn.Module, folder: Path, quantization_config: dict | None) -> list[str]:
    """Write the per-expert tensors of ``folder`` into ``model``'s fused expert parameters (float, dequantized).

    Returns the expert blocks filled. A block the checkpoint stores per expert but the model does not
    hold as a fused ``gate_up_proj`` / ``down_proj`` pair is refused (``ValueError``).
    """
    from compressed_tensors.compressors import BaseCompressor
    from safetensors import safe_open

    tensors: dict[str, dict[tuple[int, str], dict[str, torch.Tensor]]] = {}
    for path in weight_files(folder):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                match = PER_EXPERT.match(key)
                if match:
                    entry = tensors.setdefault(match["block"], {}).setdefault((int(match["expert"]), match["proj"]), {})
                    entry[match["param"]] = handle.get_tensor(key)
    filled = []
    for block, experts in sorted(tensors.items()):
        try:
            module = model.get_submodule(block)
        except AttributeError:
            module = None
        gate_up, down = getattr(module, "gate_up_proj", None), getattr(module, "down_proj", None)
        if not (isinstance(gate_up, torch.Tensor) and isinstance(down, torch.Tensor)):
            raise ValueError(f"{folder}: {block} is stored one expert at a time, but the model has no fused "
                             "gate_up_proj / down_proj there to read it into; the checkpoint and its config differ")
        count = gate_up.shape[0]
        dense: dict[tuple[int, str], torch.Tensor] = {}
        for (expert, proj), state in experts.items():
            found = _scheme_for(f"{block}.{expert}.{proj}", quantization_config or {})
            if found is None or "weight" not in state and "weight_packed" not in state:
                dense[(expert, proj)] = state["weight"]
                continue
            scheme, fmt = found
            compressor = BaseCompressor.get_value_from_registry(fmt)
            dense[(expert, proj)] = compressor.decompress(dict(state), scheme)["weight"]
        missing = [(e, p) for e in range(count) for p in ("gate_proj", "up_proj", "down_proj") if (e, p) not in dense]
        if missing:
            raise ValueError(f"{folder}: {block} lacks {len(missing)} expert tensors (e.g. expert {missing[0][0]} "
                             f"{missing[0][1]}); the checkpoint is incomplete, write it again")
        transposed = bool(getattr(module, "is_transposed", False))  # [E, H, 2I] rather than [E, 2I, H]
        with torch.no_grad():
            for e in range(count):
                gate, up, down_e = dense[(e, "gate_proj")], dense[(e, "up_proj")], dense[(e, "down_proj")]
                fused = torch.cat([gate.T, up.T], dim=1) if transposed else torch.cat([gate, up], dim=0)
                gate_up[e].copy_(fused.to(gate_up.dtype))
                down[e].copy_((down_e.T if transposed else down_e).to(down.dtype))
        filled.append(block)
    return filled
