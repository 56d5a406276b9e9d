"""Every parameter of a written checkpoint accounted for: pruned, quantized, or left dense and why.

:func:`checkpoint_coverage` reads the checkpoint as written (``config.json``'s
``quantization_config`` and the safetensors headers) beside the reloaded model (to tell a
Linear from an embedding) and sorts every weight tensor into a status:

* ``quantized``: stored compressed (an integer / FP8 / packed FP4 weight with its scales);
* ``pruned``: a pruning modifier of the recipe targeted it (``pruned_modules``, recorded by
  ``sink-modifier prune``); ``pruned+quantized`` when both;
* ``dense``, with the first reason that applies: the family's (output head, router, vision tower,
  ...: :meth:`~sink_modifier.families.ModelFamily.dense_reasons`), an embedding, a 1-D tensor (norm,
  bias, scalar), ``ignored by the recipe``, or ``not a target of the recipe``.

Fused 3-D expert parameters (``experts.gate_up_proj [E, 2I, H]``) count like the per-expert Linears
they are calibrated as. A tensor that the checkpoint's own ``quantization_config`` targets (a
``Linear`` target covers experts too, as vLLM reads it) and does not ignore, but that is stored
float, is a *problem*: the checkpoint claims a quantization it does not hold, which is how ~88% of a
DiffusionGemma's parameters (its fused experts) used to stay float after a plain ``oneshot``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

__all__ = ["Coverage", "checkpoint_coverage"]

# compressed-tensors' companions of a quantized weight: not parameters of the model
QPARAM_SUFFIXES = ("weight_scale", "weight_zero_point", "weight_global_scale", "weight_shape", "weight_g_idx",
                   "input_scale", "input_zero_point", "input_global_scale", "output_scale", "output_zero_point")
_QUANTIZED_DTYPES = ("I8", "U8", "I32", "F8_E4M3", "F8_E5M2")
_FUSED_EXPERTS = re.compile(r"^(?P<block>.+\.experts)\.(?P<leaf>gate_up_proj|down_proj|up_proj)$")
_PER_EXPERT = re.compile(r"^(?P<block>.+\.experts)\.\d+\.(gate_proj|up_proj|down_proj)$")
_EXAMPLES = 4


@dataclass
class _Tensor:
    name: str  # the weight tensor's name in the checkpoint
    module: str  # its module ("...experts" for expert tensors)
    parameters: int
    quantized: bool
    expert: bool = False
    ndim: int = 2


@dataclass
class Coverage:
    """Parameters per (status, reason); ``problems``: tensors a quantization config claims but that are float."""

    parameters: int = 0
    rows: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def share(self, status: str) -> float:
        return sum(r["parameters"] for r in self.rows if r["status"] == status) / max(self.parameters, 1)

    def to_dict(self) -> dict:
        by_status: dict[str, int] = {}
        for row in self.rows:
            by_status[row["status"]] = by_status.get(row["status"], 0) + row["parameters"]
        return {"parameters": self.parameters, "by_status": by_status, "rows": self.rows, "problems": self.problems}

    def table(self) -> str:
        lines = ["| status | reason | parameters | share | modules | e.g. |", "|---|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['status']} | {r['reason'] or ''} | {r['parameters']:,} | {r['share']:.2%} | "
                         f"{r['modules']} | {', '.join(r['examples'])} |")
        return "\n".join(lines)


def _match(name: str, pattern: str) -> bool:
    if pattern.startswith("re:"):
        return re.match(pattern[3:], name) is not None or re.match(pattern[3:], name + ".") is not None
    return name == pattern or name == pattern.rstrip(".")


def _headers(folder: Path) -> dict[str, tuple[list[int], str, Path]]:
    from safetensors import safe_open

    from sink_modifier.families.expert_layout import weight_files

    found = {}
    for path in weight_files(folder):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                piece = handle.get_slice(key)
                found[key] = (list(piece.get_shape()), piece.get_dtype(), path)
    return found


def _weight_tensors(folder: Path) -> list[_Tensor]:
    from safetensors import safe_open

    headers = _headers(folder)
    out = []
    for key, (shape, dtype, path) in sorted(headers.items()):
        module, _, leaf = key.rpartition(".")
        if leaf in QPARAM_SUFFIXES:
            continue
        quantized = leaf in ("weight", "weight_packed") and (
            f"{module}.weight_scale" in headers or dtype in _QUANTIZED_DTYPES)
        count = 1
        for size in shape:
            count *= size
        if leaf == "weight_packed":
            if f"{module}.weight_shape" in headers:
                with safe_open(str(headers[f"{module}.weight_shape"][2]), "pt") as handle:
                    count = int(handle.get_tensor(f"{module}.weight_shape").prod())
            else:  # packed 4-bit values: 8 per int32, 2 per uint8
                count *= 8 if dtype == "I32" else 2
        fused = _FUSED_EXPERTS.match(key)
        per_expert = _PER_EXPERT.match(module)
        if fused or per_expert:
            block = (fused or per_expert)["block"]
            out.append(_Tensor(key, block, count, quantized, expert=True, ndim=len(shape)))
        else:
            owner = module if leaf in ("weight", "weight_packed", "bias") else key
            out.append(_Tensor(key, owner, count, quantized, ndim=len(shape)))
    return out


def _targets(quant: dict | None) -> tuple[list[str], list[str]]:
    if not quant:
        return [], []
    targets = [t for g in (quant.get("config_groups") or {}).values() for t in (g.get("targets") or [])]
    return targets, list(quant.get("ignore") or [])


def checkpoint_coverage(
    folder: str | Path,
    model: nn.Module,
    *,
    dense_reasons: list[tuple[str, str]] = (),
    recipe_ignore: list[str] = (),
    pruned_modules: list[str] = (),
) -> Coverage:
    """Sort every weight tensor of ``folder`` (see the module docstring); ``model``: the checkpoint reloaded."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    quant = config.get("quantization_config") if isinstance(config.get("quantization_config"), dict) else None
    targets, ignore = _targets(quant)
    modules = dict(model.named_modules())
    pruned = set(pruned_modules)
    pruned_blocks = {m.group("block") for m in map(_PER_EXPERT.match, pruned) if m}
    groups: dict[tuple[str, str | None], list[_Tensor]] = {}
    problems: list[str] = []
    for tensor in _weight_tensors(folder):
        module = modules.get(tensor.module)
        is_linear = tensor.expert or isinstance(module, nn.Linear)
        is_pruned = tensor.module in pruned or (tensor.expert and tensor.module in pruned_blocks)
        reason = None
        if tensor.quantized:
            status = "pruned+quantized" if is_pruned else "quantized"
        elif is_pruned:
            status = "pruned"
        else:
            status = "dense"
            reason = next((why for pattern, why in dense_reasons if _match(tensor.module, pattern)), None)
            if reason is None and isinstance(module, nn.Embedding):
                reason = "embedding (not a Linear target)"
            if reason is None and tensor.ndim < 2:
                reason = "norm, bias or scalar (1-D: never pruned or quantized)"
            if reason is None and any(_match(tensor.module, p) for p in (*recipe_ignore, *ignore)):
                reason = "ignored by the recipe"
            if reason is None:
                reason = "not a target of the recipe"
        if not tensor.quantized and tensor.ndim >= 2 and quant is not None:
            targeted = any((t == "Linear" and is_linear) or (t != "Linear" and _match(tensor.module, t)) for t in targets)
            if targeted and not any(_match(tensor.module, p) for p in ignore) and not (
                    tensor.expert and any(_match(f"{tensor.module}.0.gate_proj", p) for p in ignore)):
                problems.append(tensor.name)
        groups.setdefault((status, reason), []).append(tensor)
    total = sum(t.parameters for members in groups.values() for t in members)
    order = {"pruned+quantized": 0, "quantized": 1, "pruned": 2, "dense": 3}
    rows = []
    for (status, reason), members in sorted(groups.items(), key=lambda kv: (order[kv[0][0]], -sum(
            t.parameters for t in kv[1]))):
        names = list(dict.fromkeys(t.module for t in members))
        count = sum(t.parameters for t in members)
        rows.append({"status": status, "reason": reason, "parameters": count, "share": count / max(total, 1),
                     "modules": len(names), "examples": names[:_EXAMPLES]})
    messages = []
    if problems:
        floats = sum(t.parameters for members in groups.values() for t in members if t.name in set(problems))
        messages.append(
            f"{len(problems)} weight tensors ({floats / max(total, 1):.1%} of the parameters, e.g. {problems[0]}) are "
            f"stored float although quantization_config targets them ({', '.join(sorted(set(targets)))}) and does "
            "not ignore them: a runtime would expect them quantized. Quantize with `sink-modifier prune` (which "
            "keeps quantized experts one Linear per expert), or list them in the recipe's ignore to keep them float"
        )
    return Coverage(parameters=total, rows=rows, problems=messages)
