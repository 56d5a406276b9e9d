"""Check that a written checkpoint is what ``sink_modifier.json`` says it is, and that it loads.

``verify_checkpoint(path)`` re-reads a folder written by ``sink-modifier prune`` the way a
user would (transformers ``from_pretrained``; compressed-tensors checkpoints through the HF
quantizer with ``CompressedTensorsConfig(dequantize=True)`` so every weight is a readable
float tensor) and checks:

1. ``sink_modifier.json`` is present and parseable;
2. ``config.json`` has no ``sparsity_config`` with ``targets`` (vLLM refuses those) and any
   ``quantization_config`` is ``quant_method: compressed-tensors``;
3. the model reloads;
4. every layer recorded in ``sparsity.per_layer`` exists and has the recorded fraction of
   exact zeros (within ``tolerance``);
5. every recorded layer keeps the N:M pattern of any N:M modifier in ``modifiers``;
6. a forward pass on a few token ids gives finite logits;
7. the files hold nothing vLLM 0.32's loader would refuse (:mod:`.vllm_layout`: schemes, name
   mapping, tied copies, expert layout; read from the files, no vLLM needed). What vLLM would
   serve with a caveat (no vLLM model class for the architecture, ``is_causal: false`` run
   causally) goes to ``notes``: not a problem of the checkpoint.

Quantized layers: symmetric and integer-zero-point quantization map 0 to exactly 0, so
pruned zeros survive, and small kept weights can also round to 0. ``prune`` records the
sparsity measured on the checkpoint as written (reloaded and dequantized), so rounding
zeros are part of the record and the comparison is exact for every layer.

A bad checkpoint never raises: every finding is collected in :class:`VerifyReport`. Only a
path that is not a folder raises.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sink_modifier.export.atomic import METADATA_FILE
from sink_modifier.families import ModelFamily, load_pretrained, quantization_config
from sink_modifier.sparsity_pattern import is_n_m_sparse, parse_mask_structure

__all__ = ["VerifyReport", "verify_checkpoint"]
_FORWARD_TOKENS = 8


@dataclass
class VerifyReport:
    """What was checked (``checks``: passed, in order) and what was wrong (``problems``)."""

    path: str
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)
    quantized: bool = False
    notes: list[str] = field(default_factory=list)
    coverage: dict | None = None  # export.coverage: parameters per status and reason

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "coverage": self.coverage,
            "ok": self.ok,
            "quantized": self.quantized,
            "checks": list(self.checks),
            "problems": list(self.problems),
            "notes": list(self.notes),
        }


def _read_metadata(folder: Path, report: VerifyReport) -> dict | None:
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        report.problems.append(
            f"{METADATA_FILE} is missing: not a checkpoint written by `sink-modifier prune` "
            "(its recorded sparsity and modifiers are what verify checks against)"
        )
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        report.problems.append(f"{METADATA_FILE} cannot be parsed: {err}")
        return None
    if not isinstance(meta, dict):
        report.problems.append(f"{METADATA_FILE} is not a JSON object")
        return None
    report.checks.append(f"{METADATA_FILE} present and parseable")
    return meta


def _check_config(folder: Path, report: VerifyReport) -> dict | None:
    config_path = folder / "config.json"
    if not config_path.is_file():
        report.problems.append("config.json is missing: transformers cannot load this folder")
        return None
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        report.problems.append(f"config.json cannot be parsed: {err}")
        return None
    if not isinstance(config, dict):
        report.problems.append("config.json is not a JSON object")
        return None

    quant = quantization_config(config)
    places = {"config.json sparsity_config": config.get("sparsity_config")}
    for key in ("quantization_config", "compression_config"):
        if isinstance(config.get(key), dict):
            places[f"config.json {key}.sparsity_config"] = config[key].get("sparsity_config")
    bad = False
    for where, sparsity in places.items():
        if isinstance(sparsity, dict) and sparsity.get("targets"):
            bad = True
            report.problems.append(
                f"{where} lists targets {sparsity.get('targets')} (format {sparsity.get('format')!r}): "
                "vLLM refuses any checkpoint whose sparsity_config has non-empty targets, and "
                "compressed-tensors >= 0.15 has no sparse compressors; write the model dense "
                "(zeros in place, `sparsity_config: {}` as llm-compressor >= 0.11 does)"
            )
    if not bad:
        report.checks.append("config.json: no sparsity_config with targets (vLLM accepts it)")

    if "quantization_config" in config and quant is None:
        report.problems.append("config.json quantization_config is not an object")
    elif quant is not None:
        method = quant.get("quant_method")
        if method != "compressed-tensors":
            report.problems.append(
                f"config.json quantization_config has quant_method {method!r}, expected 'compressed-tensors'"
            )
        else:
            report.quantized = True
            report.checks.append(
                f"config.json: compressed-tensors quantization (format {quant.get('format')!r})"
            )
    return config


def _per_layer(meta: dict, report: VerifyReport) -> dict[str, float] | None:
    sparsity = meta.get("sparsity")
    per_layer = sparsity.get("per_layer") if isinstance(sparsity, dict) else None
    if not isinstance(per_layer, dict) or not per_layer:
        report.problems.append(f"{METADATA_FILE} has no sparsity.per_layer to check the weights against")
        return None
    bad = [name for name, value in per_layer.items() if not isinstance(value, (int, float))]
    if bad:
        report.problems.append(f"{METADATA_FILE} sparsity.per_layer has non-numeric entries: {bad[:5]}")
        return None
    recorded_count = sparsity.get("num_layers")
    if recorded_count is not None and recorded_count != len(per_layer):
        report.problems.append(
            f"{METADATA_FILE} says num_layers={recorded_count} but per_layer lists {len(per_layer)} layers"
        )
    return {name: float(value) for name, value in per_layer.items()}


def _n_m_structures(meta: dict, report: VerifyReport) -> list[tuple[int, int]]:
    found = []
    modifiers = meta.get("modifiers")
    if not isinstance(modifiers, list):
        report.problems.append(f"{METADATA_FILE} has no modifiers list")
        return found
    for settings in modifiers:
        if not isinstance(settings, dict):
            continue
        structure = settings.get("mask_structure")
        if structure is None:
            continue
        try:
            n, m = parse_mask_structure(structure)
        except ValueError as err:
            report.problems.append(f"{settings.get('type', 'modifier')}: {err}")
            continue
        if n > 0 and (n, m) not in found:
            found.append((n, m))
    return found


def _weight(model: torch.nn.Module, name: str) -> torch.Tensor | None:
    """The weight recorded under ``name``: a Linear's ``[out, in]``, or an expert stack flattened to ``[E*out, in]``."""
    try:
        module = model.get_submodule(name)
        weight = getattr(module, "weight", None)
    except AttributeError:
        try:
            weight = model.get_parameter(name)
        except AttributeError:
            return None
    if not isinstance(weight, torch.Tensor) or weight.ndim not in (2, 3):
        return None
    weight = weight.detach()
    return weight.reshape(-1, weight.shape[-1]) if weight.ndim == 3 else weight


def _check_sparsity(model, per_layer: dict[str, float], tolerance: float, report: VerifyReport) -> None:
    # prune.py records the zeros of the checkpoint as written (reloaded and dequantized, so
    # zeros that quantization rounding adds are counted), hence an exact comparison.
    matched = zeros = total = 0
    for name, recorded in per_layer.items():
        weight = _weight(model, name)
        if weight is None:
            report.problems.append(
                f"{name}: recorded in {METADATA_FILE} but the reloaded model has no such 2-D weight"
            )
            continue
        layer_zeros = int((weight == 0).sum())
        measured = layer_zeros / weight.numel()
        zeros += layer_zeros
        total += weight.numel()
        if abs(measured - recorded) <= tolerance:
            matched += 1
        else:
            expected = round(recorded * weight.numel())
            report.problems.append(
                f"{name}: {measured:.6%} of weights are exactly zero but {METADATA_FILE} records "
                f"{recorded:.6%} ({layer_zeros} zeros vs {expected} expected of {weight.numel()})"
            )
    if matched == len(per_layer):
        overall = zeros / total if total else 0.0
        report.checks.append(
            f"sparsity: all {len(per_layer)} recorded layers have their recorded zero fraction "
            f"(within {tolerance:g}; overall {overall:.4%})"
        )


def _check_n_m(model, per_layer: dict[str, float], structures, report: VerifyReport) -> None:
    for n, m in structures:
        broken = 0
        for name in per_layer:
            weight = _weight(model, name)
            if weight is None:
                continue  # already reported by the sparsity check
            if is_n_m_sparse(weight, n, m):
                continue
            broken += 1
            rows, cols = weight.shape
            if cols % m:
                report.problems.append(
                    f"{name}: breaks {n}:{m}: {cols} inputs are not a multiple of {m}"
                )
                continue
            group_zeros = (weight == 0).reshape(rows, cols // m, m).sum(-1)
            bad = (group_zeros < n).nonzero()
            row, group = (int(v) for v in bad[0])
            report.problems.append(
                f"{name}: breaks {n}:{m}: {len(bad)} group(s) of {m} inputs have fewer than {n} zeros "
                f"(first at output row {row}, inputs {group * m}..{group * m + m - 1})"
            )
        if not broken:
            report.checks.append(f"{n}:{m}: all {len(per_layer)} recorded layers keep the pattern")


def _check_forward(model, family, report: VerifyReport) -> None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    if vocab < 1:
        report.problems.append("forward pass skipped: config has no vocab_size")
        return
    length = min(_FORWARD_TOKENS, int(getattr(config, "max_position_embeddings", _FORWARD_TOKENS) or _FORWARD_TOKENS))
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, length), generator=generator)
    try:
        device = next(model.parameters()).device
        ids = ids.to(device)
        with torch.no_grad():
            logits = family.logits(model, ids)
    except Exception as err:  # noqa: BLE001 - a broken checkpoint is a finding, not a crash
        report.problems.append(f"forward pass failed: {type(err).__name__}: {err}")
        return
    if not isinstance(logits, torch.Tensor):
        report.problems.append(f"forward pass returned no logits tensor (got {type(logits).__name__})")
        return
    finite = torch.isfinite(logits)
    if not bool(finite.all()):
        report.problems.append(
            f"forward pass gives non-finite logits ({int((~finite).sum())} of {logits.numel()} are nan/inf)"
        )
        return
    report.checks.append(f"forward pass on {length} token ids: finite logits {tuple(logits.shape)}")


# vllm_layout codes that verify reports itself (sparsity) or that are about the runtime, not the files
_LAYOUT_NOTES = {"architecture"}
_LAYOUT_SKIPPED = {"sparsity_targets", "config"}


def _check_vllm_layout(folder: Path, report: VerifyReport) -> None:
    from sink_modifier.export.vllm_layout import VLLM_VERSION, check_vllm_layout

    layout = check_vllm_layout(folder)
    refusals = [f for f in layout.refusals if f.code not in _LAYOUT_SKIPPED]
    report.notes.extend(f"vLLM {VLLM_VERSION}: {f.message}" for f in layout.refusals if f.code in _LAYOUT_NOTES)
    report.notes.extend(f"vLLM {VLLM_VERSION}: {f.message}" for f in layout.notes if f.code != "scheme")
    problems = [f"vLLM {VLLM_VERSION} would refuse: {f.message}" for f in refusals if f.code not in _LAYOUT_NOTES]
    report.problems.extend(problems)
    if not problems:
        schemes = sorted({f.message.split(" -> ")[1].split(" ")[0] for f in layout.notes if f.code == "scheme"})
        report.checks.append(f"vLLM {VLLM_VERSION} layout: {layout.tensors} tensors, nothing its loader refuses"
                             + (f" (schemes {', '.join(schemes)})" if schemes else ""))


def _check_coverage(folder: Path, model, family: ModelFamily, meta: dict | None, report: VerifyReport) -> None:
    """Every parameter pruned, quantized or dense with a reason; a claimed but missing quantization is a problem."""
    from sink_modifier.export.coverage import checkpoint_coverage

    recorded = (meta or {}).get("coverage") if isinstance((meta or {}).get("coverage"), dict) else {}
    modifiers = (meta or {}).get("modifiers") if isinstance((meta or {}).get("modifiers"), list) else []
    ignores = [p for m in modifiers if isinstance(m, dict) for p in (m.get("ignore") or [])]
    coverage = checkpoint_coverage(folder, model, dense_reasons=family.dense_reasons(model), recipe_ignore=ignores,
                                   pruned_modules=recorded.get("pruned_modules") or [])
    report.coverage = coverage.to_dict()
    report.problems.extend(coverage.problems)
    if recorded.get("by_status") and recorded["by_status"] != report.coverage["by_status"]:
        report.problems.append(f"coverage differs from the record in {METADATA_FILE}: recorded "
                               f"{recorded['by_status']}, found {report.coverage['by_status']}")
    if not coverage.problems:
        shares = ", ".join(f"{status} {count / max(coverage.parameters, 1):.1%}"
                           for status, count in report.coverage["by_status"].items())
        report.checks.append(f"coverage: {coverage.parameters:,} parameters accounted for ({shares})")


def verify_checkpoint(
    path: str | Path, *, tolerance: float = 1e-6, trust_remote_code: bool = False,
    family: str | ModelFamily | None = None,
) -> VerifyReport:
    """Check a pruned (optionally quantized) checkpoint folder; see the module docstring."""
    if not tolerance >= 0:
        raise ValueError(f"tolerance must be a non-negative fraction, got {tolerance}")
    folder = Path(path)
    if not folder.exists():
        raise FileNotFoundError(f"{folder} does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; pass the checkpoint directory")
    report = VerifyReport(path=str(folder))

    meta = _read_metadata(folder, report)
    config = _check_config(folder, report)
    per_layer = _per_layer(meta, report) if meta is not None else None
    structures = _n_m_structures(meta, report) if meta is not None else []
    if config is not None:
        _check_vllm_layout(folder, report)

    model = None
    if config is not None:
        try:
            loaded = load_pretrained(folder, family=family, trust_remote_code=trust_remote_code,
                                     quantized=report.quantized)
            model, chosen = loaded.model, loaded.family
        except Exception as err:  # noqa: BLE001
            report.problems.append(f"transformers cannot reload the checkpoint: {type(err).__name__}: {err}")
        else:
            how = " (compressed-tensors, dequantized at load)" if report.quantized else ""
            report.checks.append(f"reloaded with from_pretrained as a {chosen.name} model{how}")

    if model is not None:
        if per_layer is not None:
            _check_sparsity(model, per_layer, tolerance, report)
            _check_n_m(model, per_layer, structures, report)
        _check_forward(model, chosen, report)
        _check_coverage(folder, model, chosen, meta, report)

    report.ok = not report.problems
    return report
