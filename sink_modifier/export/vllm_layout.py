"""What vLLM's loader would refuse in a checkpoint folder, found by reading its files only (no vLLM, no GPU).

``check_vllm_layout(folder)`` reads ``config.json`` and the safetensors headers (names,
shapes, dtypes; tensor values only to compare two copies that land on one vLLM parameter)
and applies the rules of vLLM 0.32's loader, as written in its source:

* ``model_executor/models/registry.py``: the architecture must have a model class there
  (LLaDA's ``LLaDAModelLM`` and Dream's ``DreamModel`` do not);
* ``layers/quantization/compressed_tensors/compressed_tensors.py``: a ``sparsity_config``
  with targets raises (``_parse_sparsity_config``); each ``config_groups`` entry must map to
  one scheme in ``_get_scheme_from_parts`` (:func:`vllm_scheme` mirrors the cases our recipes
  can write); a ``Linear`` target also targets the fused experts
  (``_add_fused_moe_to_target_scheme_map``); the shards of one fused module (q/k/v,
  gate/up) must all be ignored or none (``should_ignore_layer``);
* ``models/diffusion_gemma.py``: ``hf_to_vllm_mapper`` renames ``model.decoder.``,
  ``model.encoder.language_model.`` (both to ``model.``: the tied encoder and decoder are
  one set of weights there), ``model.encoder.vision_tower.`` / ``embed_vision.`` and the
  self-conditioning block; full-attention layers are ``attention_k_eq_v`` (no ``v_proj``);
* ``layers/fused_moe/routed_experts.py``: fused 3-D experts load as ``experts.gate_up_proj``
  ``[E, 2I, H]`` (split in two along dim 1) and ``experts.down_proj`` ``[E, H, I]``, into
  float parameters unless a MoE quantization method was chosen.

Findings are ``refusals`` (vLLM would raise, or would load wrong numbers) and ``notes``
(served, but worth knowing). Each carries a ``code`` so callers can pick (``verify`` leaves
out the sparsity one it reports itself).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["VLLM_VERSION", "Finding", "VllmLayoutReport", "check_vllm_layout", "vllm_scheme"]

VLLM_VERSION = "0.32.0"
DIFFUSION_GEMMA = "DiffusionGemmaForBlockDiffusion"
# Architectures of the families we prune, as vLLM 0.32's registry has them (checked there).
VLLM_ARCHITECTURES = {"LlamaForCausalLM", "Qwen2ForCausalLM", DIFFUSION_GEMMA}
NOT_IN_VLLM = {"LLaDAModelLM": "LLaDA", "DreamModel": "Dream"}
# diffusion_gemma.py hf_to_vllm_mapper.orig_to_new_prefix, applied in order like WeightsMapper
DIFFUSION_GEMMA_PREFIXES = (
    ("model.decoder.self_conditioning.", "self_conditioning."),
    ("model.decoder.", "model."),
    ("model.encoder.language_model.", "model."),
    ("model.encoder.vision_tower.", "vision_tower."),
    ("model.encoder.embed_vision.", "embed_vision."),
)
# top-level modules of vLLM's DiffusionGemmaForConditionalGeneration and the children of its
# Gemma4Model ("model."), from their __init__ (gemma4.py); a name elsewhere has no parameter
DIFFUSION_GEMMA_MODULES = (
    "vision_tower.", "embed_vision.", "self_conditioning.", "lm_head.", "model.layers.", "model.embed_tokens.",
    "model.norm.", "model.embed_tokens_per_layer.", "model.per_layer_model_projection.",
    "model.per_layer_projection_norm.",
)
FUSED_SHARDS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_LAYER_LINEAR = re.compile(r"^model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj)$")
_PER_EXPERT = re.compile(r"^.+\.experts\.\d+\.(gate_proj|up_proj|down_proj)\.[^.]+$")
FP4_FORMATS = ("nvfp4-pack-quantized", "mxfp4-pack-quantized")
_QUANTIZED_SUFFIXES = (".weight_packed", ".weight_scale", ".weight_zero_point", ".weight_shape")


@dataclass(frozen=True)
class Finding:
    code: str
    message: str


@dataclass
class VllmLayoutReport:
    """``refusals``: what vLLM 0.32's loader would refuse (or load wrongly); ``notes``: the rest."""

    path: str
    architecture: str | None = None
    refusals: list[Finding] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)
    tensors: int = 0

    @property
    def ok(self) -> bool:
        return not self.refusals

    def to_dict(self) -> dict:
        return {"path": self.path, "architecture": self.architecture, "ok": self.ok, "tensors": self.tensors,
                "vllm_version": VLLM_VERSION,
                "refusals": [vars(f) for f in self.refusals], "notes": [vars(f) for f in self.notes]}


def vllm_scheme(group: dict, fmt: str | None) -> tuple[str | None, str]:
    """The vLLM compressed-tensors scheme class a ``config_groups`` entry selects, or ``(None, why)``.

    Mirrors ``_get_scheme_from_parts`` for integer and float 8-bit and for weight-only int
    schemes (what llm-compressor's presets and our recipes write). FP4 / MX formats (NVFP4's
    ``nvfp4-pack-quantized``) select GPU-only schemes this check does not mirror: ``("", why)``,
    reported as a note, neither accepted nor refused.
    """
    w = group.get("weights") or {}
    a = group.get("input_activations")
    fmt = group.get("format") or fmt
    if not w:
        return None, "no weights quantization (vLLM uses the float method)"
    if fmt in FP4_FORMATS:
        return "", f"format {fmt!r}: vLLM's FP4 schemes (GPU only) are not checked here"
    strategy, bits, kind = w.get("strategy"), w.get("num_bits"), w.get("type")
    static_weight = not w.get("dynamic")
    if a is None:
        if strategy in ("channel", "group") and static_weight and kind == "int":
            if fmt != "pack-quantized":
                return None, f"weight-only int needs format 'pack-quantized' (CompressedTensorsWNA16), got {fmt!r}"
            return "CompressedTensorsWNA16", f"int{bits} weights, group {w.get('group_size')}"
        if kind == "float" and bits == 8 and strategy in ("tensor", "channel", "block"):
            return "CompressedTensorsW8A16Fp8", "fp8 weights, 16-bit activations"
        return None, f"no vLLM scheme for weight-only {kind}{bits} strategy {strategy!r}"
    if fmt not in ("int-quantized", "float-quantized", "naive-quantized"):
        return None, f"weight+activation quantization needs an activation format, got {fmt!r}"
    if kind == "float" and a.get("type") == "float" and bits == 8 and w.get("symmetric") and static_weight \
            and strategy in ("tensor", "channel", "block"):
        # GPUs below compute capability 8.9 get CompressedTensorsW8A16Fp8 instead
        return "CompressedTensorsW8A8Fp8", f"fp8 weights ({strategy}), {'dynamic' if a.get('dynamic') else 'static'} fp8 activations"
    if kind == "int" and bits == a.get("num_bits") == 8 and strategy in ("tensor", "channel") and w.get("symmetric") \
            and static_weight:
        if a.get("dynamic") and a.get("strategy") == "token":
            return "CompressedTensorsW8A8Int8", "int8 weights, dynamic per-token int8 activations"
        if not a.get("dynamic") and a.get("strategy") == "tensor":
            return "CompressedTensorsW8A8Int8", "int8 weights, static per-tensor int8 activations"
    return None, (f"no vLLM scheme for weights {kind}{bits}/{strategy} with activations "
                  f"{a.get('type')}{a.get('num_bits')}/{a.get('strategy')} dynamic={a.get('dynamic')}")


def _read_json(path: Path, report: VllmLayoutReport) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        report.refusals.append(Finding("config", f"{path.name} cannot be read: {err}"))
        return None
    return data if isinstance(data, dict) else None


def _headers(folder: Path, report: VllmLayoutReport) -> dict[str, tuple[tuple[int, ...], str, Path]]:
    from safetensors import safe_open

    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for name in f.keys():
                piece = f.get_slice(name)
                found[name] = (tuple(piece.get_shape()), piece.get_dtype(), path)
    if not found:
        report.refusals.append(Finding("weights", "no *.safetensors files: vLLM's default loader reads safetensors"))
    report.tensors = len(found)
    return found


def _check_architecture(config: dict, report: VllmLayoutReport) -> None:
    arch = (config.get("architectures") or [None])[0]
    report.architecture = arch
    if arch in NOT_IN_VLLM:
        report.refusals.append(Finding("architecture", (
            f"architecture {arch} ({NOT_IN_VLLM[arch]}) has no model class in vLLM {VLLM_VERSION}'s registry: "
            "vLLM does not serve it (its one native diffusion LM is DiffusionGemma)")))
    elif arch not in VLLM_ARCHITECTURES:
        report.notes.append(Finding("architecture", f"architecture {arch!r} not among those this check knows "
                                    f"({sorted(VLLM_ARCHITECTURES)}); names and shapes not checked"))
    if arch in ("LlamaForCausalLM", "Qwen2ForCausalLM") and config.get("is_causal") is False:
        report.notes.append(Finding("bidirectional", (
            f"config.json says is_causal: false, but vLLM's {arch} always attends causally: it loads and runs, "
            "and its outputs are not this bidirectional (diffusion) model's")))


def _check_quantization(config: dict, report: VllmLayoutReport) -> dict | None:
    for where, sparsity in (("sparsity_config", config.get("sparsity_config")),
                            ("quantization_config.sparsity_config",
                             (config.get("quantization_config") or {}).get("sparsity_config"))):
        if isinstance(sparsity, dict) and sparsity.get("targets"):
            report.refusals.append(Finding("sparsity_targets", (
                f"{where} has targets {sparsity['targets']}: vLLM raises 'Sparsity support has been removed "
                "from compressed-tensors'; write the model dense (sparsity_config: {})")))
    quant = config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    if quant.get("quant_method") != "compressed-tensors":
        report.notes.append(Finding("quant_method", f"quant_method {quant.get('quant_method')!r} not checked here"))
        return None
    for name, group in (quant.get("config_groups") or {}).items():
        scheme, why = vllm_scheme(group, quant.get("format"))
        if scheme is None:
            report.refusals.append(Finding("scheme", f"config_groups.{name}: {why}"))
        elif not scheme:
            report.notes.append(Finding("scheme_not_checked", f"config_groups.{name}: {why}"))
        else:
            report.notes.append(Finding("scheme", f"config_groups.{name} -> {scheme} ({why})"))
    return quant


def _map_name(name: str) -> str:
    for prefix, new in DIFFUSION_GEMMA_PREFIXES:
        if name.startswith(prefix):
            name = new + name[len(prefix):]
    return name


def _ignored(module: str, ignore: list[str]) -> bool:
    for pattern in ignore:
        if pattern.startswith("re:"):
            if re.match(pattern[3:], module):
                return True
        elif pattern == module:
            return True
    return False


def _same_values(a: tuple, b: tuple, name_a: str, name_b: str) -> bool:
    import torch
    from safetensors import safe_open

    with safe_open(str(a[2]), "pt") as fa, safe_open(str(b[2]), "pt") as fb:
        return torch.equal(fa.get_tensor(name_a), fb.get_tensor(name_b))


def _check_diffusion_gemma(config: dict, quant: dict | None, tensors: dict, report: VllmLayoutReport) -> None:
    text = config.get("text_config") or {}
    mapped: dict[str, list[str]] = {}
    for name in tensors:
        mapped.setdefault(_map_name(name), []).append(name)
    outside = sorted(n for n in mapped if not n.startswith(DIFFUSION_GEMMA_MODULES))
    if outside:
        report.refusals.append(Finding("names", (
            f"{len(outside)} tensor name(s) map to no vLLM module (e.g. {outside[:3]}): vLLM's loader raises "
            "on a checkpoint weight it cannot place")))

    # Encoder and decoder names both become model.*: two copies must be one tensor.
    for target, sources in sorted(mapped.items()):
        if len(sources) < 2:
            continue
        first = tensors[sources[0]]
        for other in sources[1:]:
            second = tensors[other]
            if first[:2] != second[:2]:
                report.refusals.append(Finding("tied_copies", (
                    f"{sources[0]} {first[1]}{list(first[0])} and {other} {second[1]}{list(second[0])} both load "
                    f"into vLLM's {target}: the encoder and decoder share weights there, the checkpoint holds "
                    "two different tensors")))
            elif not _same_values(first, second, sources[0], other):
                report.refusals.append(Finding("tied_copies", (
                    f"{sources[0]} and {other} both load into vLLM's {target} but hold different values")))

    # Which vLLM modules the checkpoint stores quantized, and which a Linear target quantizes.
    quantized = {n.rsplit(".", 1)[0] for n in mapped if n.endswith(_QUANTIZED_SUFFIXES)}
    float_int = {n.rsplit(".", 1)[0] for n in mapped if n.endswith(".weight") and tensors[mapped[n][0]][1] in
                 ("I8", "F8_E4M3")} - quantized
    quantized |= float_int
    ignore = [_map_name(i) if "." in i and not i.startswith("re:") else i for i in (quant or {}).get("ignore", [])]
    targets = {t for g in ((quant or {}).get("config_groups") or {}).values() for t in g.get("targets", [])}
    linears = {m.rsplit(".", 1)[0] for m in mapped if m.endswith(".weight") and _LAYER_LINEAR.match(m.rsplit(".", 1)[0])}
    if quant is not None and "Linear" in targets:
        for fused, shards in FUSED_SHARDS.items():
            groups: dict[str, list[str]] = {}
            for module in linears:
                head, _, leaf = module.rpartition(".")
                if leaf in shards:
                    groups.setdefault(f"{head}.{fused}", []).append(module)
            for fused_name, members in sorted(groups.items()):
                flags = {m: _ignored(m, ignore) for m in members}
                if len(set(flags.values())) > 1:
                    report.refusals.append(Finding("ignore", (
                        f"{fused_name}: ignore lists {sorted(m for m, v in flags.items() if v)} but not "
                        f"{sorted(m for m, v in flags.items() if not v)}: vLLM requires one scheme for all shards")))
        for module in sorted(linears):
            ignored, stored = _ignored(module, ignore), module in quantized
            if ignored and stored:
                report.refusals.append(Finding("ignore", (
                    f"{module}: the checkpoint stores it quantized, but quantization_config.ignore names it "
                    "(after vLLM's name mapping; e.g. the encoder copy's name): vLLM builds a float layer and "
                    "the quantized tensors do not load into it")))
            elif not ignored and not stored:
                report.refusals.append(Finding("ignore", (
                    f"{module}: targeted by 'Linear' and not ignored, so vLLM builds a quantized layer, but the "
                    "checkpoint stores it as a float weight")))

    layer_types = text.get("layer_types") or []
    for i, kind in enumerate(layer_types):
        if kind == "full_attention" and f"model.layers.{i}.self_attn.v_proj.weight" in mapped:
            report.refusals.append(Finding("k_eq_v", (
                f"model.layers.{i}.self_attn.v_proj: full-attention layers are attention_k_eq_v in vLLM "
                "(V comes from k_proj), so this weight has no place")))

    experts, hidden = text.get("num_experts"), text.get("hidden_size")
    inter = text.get("moe_intermediate_size") or text.get("expert_intermediate_size")
    expert_layers = sorted({m.split(".experts.")[0] for m in mapped if ".experts." in m})
    experts_targeted = quant is not None and "Linear" in targets
    for layer in expert_layers:
        names = sorted(m for m in mapped if m.startswith(f"{layer}.experts."))
        fused = {f"{layer}.experts.gate_up_proj": (experts, 2 * inter if inter else None, hidden),
                 f"{layer}.experts.down_proj": (experts, hidden, inter)}
        per_expert = [m for m in names if _PER_EXPERT.match(m)]
        ignored = _ignored(f"{layer}.experts", ignore) or all(
            _ignored(f"{layer}.experts.0.{p}", ignore) for p in ("gate_proj", "up_proj", "down_proj"))
        if per_expert:
            # one Linear per expert: vLLM's fused-MoE loader maps them by expert id (routed_experts.load_weights)
            if set(names) - set(per_expert):
                report.refusals.append(Finding("experts", (
                    f"{layer}.experts mixes fused and per-expert tensors ({sorted(set(names) - set(per_expert))[:2]}): "
                    "vLLM loads one layout")))
            modules = {m.rsplit(".", 1)[0] for m in per_expert}
            wanted = {f"{layer}.experts.{e}.{p}" for e in range(experts or 0) for p in ("gate_proj", "up_proj", "down_proj")}
            if wanted - modules:
                report.refusals.append(Finding("experts", (
                    f"{layer}.experts: {len(wanted - modules)} expert projections are missing "
                    f"(e.g. {sorted(wanted - modules)[0]}); vLLM needs all {experts} experts")))
            unquantized = sorted(m for m in modules if m not in quantized)
            if experts_targeted and not ignored and unquantized:
                report.refusals.append(Finding("experts", (
                    f"{layer}.experts: 'Linear' targets cover the experts and ignore does not name them, so vLLM "
                    f"expects them quantized, but {len(unquantized)} are stored float (e.g. {unquantized[0]})")))
            continue
        for name, shape in fused.items():
            if name not in mapped:
                report.refusals.append(Finding("experts", f"{name} is missing (vLLM loads fused experts by this name)"))
                continue
            got = tensors[mapped[name][0]][0]
            if got != shape:
                report.refusals.append(Finding("experts", (
                    f"{name} has shape {list(got)}, vLLM's fused loader expects {list(shape)} "
                    "([E, 2I, H] / [E, H, I] from text_config)")))
        extra = [m for m in names if m not in fused]
        if experts_targeted and not ignored:
            dtype = tensors[mapped[next(iter(fused))][0]][1] if next(iter(fused)) in mapped else "float"
            report.refusals.append(Finding("experts", (
                f"{layer}.experts: 'Linear' targets also match vLLM's fused experts and the ignore list does "
                "not name them, so vLLM picks a MoE quantization method and expects quantized expert "
                f"tensors; the checkpoint's experts are fused {dtype} 3-D parameters (repacked after quantization, "
                "which drops it: sink-modifier prune writes quantized experts one Linear per expert)")))
        if extra:
            report.refusals.append(Finding("experts", (
                f"{layer}.experts: extra tensors {extra[:4]}: vLLM's fused loader maps them to "
                "w13_/w2_ parameters that a float MoE layer does not have")))


def check_vllm_layout(path: str | Path) -> VllmLayoutReport:
    """Read ``path``'s config and safetensors headers the way vLLM 0.32's loader would; see the module docstring."""
    folder = Path(path)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder; pass the checkpoint directory")
    report = VllmLayoutReport(path=str(folder))
    config = _read_json(folder / "config.json", report)
    if config is None:
        return report
    _check_architecture(config, report)
    quant = _check_quantization(config, report)
    tensors = _headers(folder, report)
    if report.architecture == DIFFUSION_GEMMA and tensors:
        _check_diffusion_gemma(config, quant, tensors, report)
    return report
