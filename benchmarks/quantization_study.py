"""Does diffusion-aware calibration help quantization? A matched-compute study on ``tiny-dlm``.

The protocol is the calibration study's (``benchmarks/README.md``, "Matched compute";
:mod:`study_protocol`): every calibrated arm sees the same forward rows (``--rows`` of 256 tokens:
clean ``R`` windows at t = 0, noised ``R / K`` windows at each of ``K`` timesteps, mixed ``R / 5``
windows at t = 0, .25, .5, .75, 1), three calibration seeds, identical evaluation windows and masks,
paired per-window NELBO differences with standard errors, settings chosen on ``dev`` and reported on
``heldout`` and ``handbook``. The model is fake-quantized in memory after ``oneshot`` (compressed-
tensors' forward: weights and activations rounded as the scheme says), which is what quality on a
CPU can measure; kernels and speed are another question (``deploy_speed.py``, vLLM).

Schemes (tiny-dlm's widths, 320 and 864, divide 32 but not 128, so group 32 stands in for the
W4A16 preset's 128; NVFP4's group is 16):

* ``w4a16``: GPTQ, int4 symmetric weights, group 32 (vLLM GPU's W4A16 path); the row-weighting
  arms (sink on, ELBO 1/t) run on this scheme;
* ``w4a16_awq``: AWQ scales (a 10-point grid search, upstream's default is 20), then round-to-nearest
  of the same int4 scheme (AWQ vs GPTQ), on clean and on noised rows only;
* ``w4a16_rtn``: round-to-nearest, no data (the data-free reference);
* ``w8a8``: GPTQ int8 per-channel weights, dynamic int8 per-token activations (the CPU int8 path);
* ``w4a4``: GPTQ int4 group-32 weights, dynamic int4 per-token activations;
* ``fp8``: FP8 weights and *static* per-tensor FP8 activation scales from the calibration rows;
* ``nvfp4``: NVFP4 weights (group 16, FP8 scales, global scale) and activations with a static
  global scale from the calibration rows.

Arms per scheme: llm-compressor's own modifier on clean rows (the reference), on noised rows (the
LLaDA grid and the low-t grid) and on mixed rows; for W4A16 GPTQ also our
:class:`~sink_modifier.modifiers.sink_gptq.SinkAwareGPTQModifier` with sink weighting on and with
ELBO 1/t row weights (both on the noised rows they are compared with). ``--bases`` adds the shipped
pruning recipes: each prunes once per seed as ``sink-modifier prune`` would (its own ``calibration:``
block), then W4A16 GPTQ that keeps the zeros calibrates on clean or on noised rows.

Results accumulate in ``benchmarks/results/quantization_study.json`` (resumable; ``--report`` only
rewrites ``quantization_study.md`` and the figure).

    python benchmarks/quantization_study.py --schemes w4a16,fp8 --seeds 0,1,2
    python benchmarks/quantization_study.py --report
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import study_protocol as protocol  # benchmarks/, beside this script
import torch
from bench_paths import REPO, RESULTS

STORE = RESULTS / "quantization_study.json"
GROUP = 32  # divides tiny-dlm's 320 and 864 (128 does not)
AWQ_GRID = 10  # scales AWQ tries per mapping (upstream's default is 20): half the CPU time, the same for every arm
HEAD = "re:.*lm_head"


# -- schemes ---------------------------------------------------------------------------------------
def _int_args(bits: int, strategy: str, group: int | None = None, dynamic: bool = False) -> dict:
    args = {"num_bits": bits, "type": "int", "symmetric": True, "strategy": strategy, "dynamic": dynamic}
    if group is not None:
        args["group_size"] = group
    return args


def _groups(weights: dict, activations: dict | None = None) -> dict:
    return {"group_0": {"targets": ["Linear"], "weights": weights, "input_activations": activations}}


W4_G32 = _groups(_int_args(4, "group", GROUP))
W4A4_G32 = _groups(_int_args(4, "group", GROUP), _int_args(4, "token", dynamic=True))


@dataclass(frozen=True)
class Scheme:
    key: str
    label: str
    algorithm: str  # "gptq" | "rtn" | "awq"
    quant: dict  # scheme=... or config_groups=... for the modifier
    data_free: bool = False


SCHEMES = {s.key: s for s in (
    Scheme("w4a16", "W4A16 int4 g32, GPTQ", "gptq", {"config_groups": W4_G32}),
    Scheme("w4a16_awq", "W4A16 int4 g32, AWQ + RTN", "awq", {"config_groups": W4_G32}),
    Scheme("w4a16_rtn", "W4A16 int4 g32, RTN (no data)", "rtn", {"config_groups": W4_G32}, data_free=True),
    Scheme("w8a8", "W8A8 int8 (dynamic per-token activations), GPTQ", "gptq", {"scheme": "W8A8"}),
    Scheme("w8a8_rtn", "W8A8 int8, RTN (no data; the shipped CPU recipe's)", "rtn", {"scheme": "W8A8"},
           data_free=True),
    Scheme("w4a4", "W4A4 int4 g32 weights, dynamic int4 activations, GPTQ", "gptq", {"config_groups": W4A4_G32}),
    Scheme("fp8", "FP8 weights, static per-tensor FP8 activations", "rtn", {"scheme": "FP8"}),
    Scheme("fp8_dynamic", "FP8 weights, dynamic per-token FP8 activations (no data)", "rtn",
           {"scheme": "FP8_DYNAMIC"}, data_free=True),
    Scheme("nvfp4", "NVFP4 weights and activations (static global scales)", "rtn", {"scheme": "NVFP4"}),
)}


# -- arms ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    calibration: str = "noised"  # "clean" | "noised" | "mixed" | "none"
    grid: str = "llada"
    settings: dict = field(default_factory=dict, hash=False, compare=False)  # SinkAwareGPTQModifier fields
    reference: str | None = None

    @property
    def data_free(self) -> bool:
        return self.calibration == "none"


UPSTREAM = Arm("clean", "llm-compressor's own, clean rows", "clean")
ROW_ARMS = (
    UPSTREAM,
    Arm("noised", "noised rows (LLaDA grid)", "noised", reference="clean"),
    Arm("low", "noised rows (low-t grid)", "noised", "low", reference="clean"),
    Arm("mixed", "mixed rows", "mixed", reference="clean"),
)
GPTQ_ARMS = (
    Arm("noised_sink", "noised rows, sink weighting on", "noised", settings={"sink_weighting": True},
        reference="noised"),
    Arm("noised_elbo", "noised rows, ELBO 1/t row weights", "noised", settings={"timestep_weighting": "elbo"},
        reference="noised"),
)
DATA_FREE = Arm("none", "no calibration data", "none")
ROW_WEIGHTED_SCHEMES = ("w4a16",)
PRUNED_ARMS = ROW_ARMS[:2]  # after a pruning recipe: clean vs noised rows for the quantization stage
PRUNED_SCHEMES = ("w4a16",)
# schemes compared with each other on the same base, arm and rows: (scheme, against, what changes)
SCHEME_PAIRS = (("w4a16_awq", "w4a16", "AWQ + RTN vs GPTQ"),)  # GPTQ that keeps the zeros (RTN schemes keep them by construction, need no rows)


def arms_of(scheme: Scheme, base: str) -> list[Arm]:
    if scheme.data_free:
        return [DATA_FREE]
    if base != "dense" or scheme.algorithm == "awq":
        return list(PRUNED_ARMS)  # AWQ: clean vs noised only (its grid search is the slowest arm on CPU)
    # the row-weighting arms on W4A16 GPTQ, the scheme where GPTQ's Hessian matters most
    return list(ROW_ARMS) + (list(GPTQ_ARMS) if scheme.key in ROW_WEIGHTED_SCHEMES else [])


def find_arm(key: str) -> Arm:
    return {a.key: a for a in (*ROW_ARMS, *GPTQ_ARMS, DATA_FREE)}[key]


def quantization_modifiers(scheme: Scheme, arm: Arm, pruned: bool) -> list:
    """llm-compressor's own modifiers, except where the arm needs row weighting or zeros must survive."""
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier

    from sink_modifier import SinkAwareGPTQModifier

    common = {"targets": ["Linear"], "ignore": [HEAD], **copy.deepcopy(scheme.quant)}
    if "config_groups" in common:
        del common["targets"]
    if scheme.algorithm == "gptq":
        if arm.settings or pruned:  # ours: row weights, or keeping a pruned model's zeros
            return [SinkAwareGPTQModifier(preserve_sparsity_mask=pruned, **common, **arm.settings)]
        return [GPTQModifier(**common)]
    if scheme.algorithm == "awq":
        _cpu_awq()
        return [AWQModifier(n_grid=AWQ_GRID), QuantizationModifier(**common)]  # AWQ reads the scheme of the modifier after it
    return [QuantizationModifier(**common)]


def _cpu_awq() -> None:
    """llm-compressor 0.14's AWQ pins its cached activations (``IntermediatesCache.pin_memory``) to speed
    up host-to-GPU copies, unconditionally; without an accelerator ``Tensor.pin_memory`` raises. Pinning
    changes no value, so on a CPU-only machine the study skips it (AWQ's maths untouched)."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    if not torch.cuda.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


# -- bases: dense, or a shipped pruning recipe ------------------------------------------------------------
def pruned_state(recipe: str, documents, tokenizer, config, seed: int, cache: dict) -> dict:
    """The state dict of tiny-dlm pruned by ``recipes/<recipe>.yaml`` on its own calibration block (seed)."""
    if (recipe, seed) in cache:
        return cache[(recipe, seed)]
    from llmcompressor import oneshot

    from sink_modifier.commands.recipe_check import check_recipe
    from sink_modifier.data import token_windows
    from sink_modifier.process import LLADA_TIMESTEPS, MaskTokenProcess, build_calibration

    checked = check_recipe(REPO / "recipes" / f"{recipe}.yaml")
    block = checked.calibration
    timesteps = block.timesteps or LLADA_TIMESTEPS
    windows = token_windows(documents, tokenizer, protocol.SEQ_LEN, block.num_samples or 32, seed=seed)
    cal = build_calibration(windows, tokenizer, process=MaskTokenProcess(int(config.mask_token_id)), seq_len=protocol.SEQ_LEN,
                            num_samples=windows.shape[0], timesteps=timesteps, seed=seed, config=config)
    model = protocol.load_model()
    start = time.perf_counter()
    oneshot(model=model, processor=tokenizer, dataset=cal.dataloader(batch_size=16), recipe=checked.modifiers,
            pipeline="sequential")
    protocol.log(f"pruned {recipe} (seed {seed}) on {len(cal)} rows in {time.perf_counter() - start:.0f} s")
    cache[(recipe, seed)] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return cache[(recipe, seed)]


def quantize(scheme: Scheme, arm: Arm, base_state: dict | None, cal, tokenizer, batch_size: int):
    from llmcompressor import oneshot

    model = protocol.load_model()
    if base_state is not None:
        model.load_state_dict(base_state)
    start = time.perf_counter()
    modifiers = quantization_modifiers(scheme, arm, pruned=base_state is not None)
    if cal is None:
        oneshot(model=model, processor=tokenizer, recipe=modifiers)
    else:
        oneshot(model=model, processor=tokenizer, dataset=cal.dataloader(batch_size=batch_size), recipe=modifiers,
                pipeline="sequential")
    return model.eval(), time.perf_counter() - start


# -- the store ---------------------------------------------------------------------------------------
def settings_of(args) -> dict:
    return {"rows": args.rows, "timesteps": args.timesteps, "seq_len": protocol.SEQ_LEN, "eval_windows": args.eval_windows,
            "mc_samples": args.mc_samples, "corpus_chars": args.corpus_chars, "batch_size": args.batch_size,
            "model": protocol.MODEL_DIR.name, "group_size": GROUP}


def run_key(base: str, scheme: str, arm: Arm, seed: int | None) -> str:
    return f"{base}|{scheme}|{arm.key}|{'-' if arm.data_free or seed is None else seed}"


# -- report ----------------------------------------------------------------------------------------
def seed_mean(store: dict, base: str, scheme: str, arm: Arm, domain: str, seeds: list[int]) -> list[float] | None:
    keys = [run_key(base, scheme, arm, None)] if arm.data_free else [run_key(base, scheme, arm, s) for s in seeds]
    found = [store["runs"][k]["eval"][domain]["per_window"] for k in keys if k in store["runs"]]
    if not found or len(found) < len(keys):
        return None
    return torch.tensor(found, dtype=torch.float64).mean(0).tolist()


def _fmt(delta) -> str:
    if delta is None:
        return ""
    mean, se = delta
    mark = "**" if se is not None and abs(mean) >= protocol.SIGNIFICANT_Z * se else ""
    return f"{mark}{mean:+.4f} ± {se:.4f}{mark}"


def summarize(store: dict) -> dict:
    """``{base: {scheme: {arm: entry}}}``, each entry with NELBO per domain and its paired Δs."""
    seeds = store.get("seeds", [0, 1, 2])
    table: dict = {}
    order = [a.key for a in (*ROW_ARMS, *GPTQ_ARMS, DATA_FREE)]
    found = [key.split("|")[:3] for key in store["runs"]]
    bases = sorted({b for b, _, _ in found}, key=lambda b: (b != "dense", b))
    for base in bases:
        for scheme in (s for s in SCHEMES if any(b == base and sc == s for b, sc, _ in found)):
            for arm_key in (a for a in order if [base, scheme, a] in found):
                table.setdefault(base, {}).setdefault(scheme, {})[arm_key] = None
    for base, schemes in table.items():
        for scheme, arms in schemes.items():
            for arm_key in list(arms):
                arm = find_arm(arm_key)
                windows = {d: seed_mean(store, base, scheme, arm, d, seeds) for d in protocol.DOMAINS}
                if windows["dev"] is None:
                    del arms[arm_key]
                    continue
                entry = {"label": arm.label}
                for d in protocol.DOMAINS:
                    entry[d] = {"nelbo": sum(windows[d]) / len(windows[d]),
                                "vs_dense": protocol.paired(windows[d], store["dense"][d]["per_window"])}
                    for name, other in (("vs_reference", arm.reference), ("vs_upstream", "clean")):
                        if other and other != arm.key:
                            ref = seed_mean(store, base, scheme, find_arm(other), d, seeds)
                            if ref is not None:
                                entry[d][name] = protocol.paired(windows[d], ref)
                                if name == "vs_reference":
                                    entry[d]["reference"] = other
                arms[arm_key] = entry
    return table


def scheme_findings(store: dict, table: dict) -> list[str]:
    """One line per :data:`SCHEME_PAIRS` entry and arm both schemes ran: the algorithm is the one change."""
    seeds = store.get("seeds", [0, 1, 2])
    lines = []
    for base, schemes in table.items():
        for scheme, against, what in SCHEME_PAIRS:
            for arm_key in (k for k in schemes.get(scheme, {}) if k in schemes.get(against, {})):
                arm = find_arm(arm_key)
                entry = {d: {"vs_reference": protocol.paired(seed_mean(store, base, scheme, arm, d, seeds),
                                                              seed_mean(store, base, against, arm, d, seeds))}
                         for d in protocol.REPORTED}
                lines.append(f"- {base}, {what} (`{arm_key}` rows both): **{protocol.verdict(entry)}** (heldout "
                             f"{_fmt(entry['heldout']['vs_reference'])}; handbook {_fmt(entry['handbook']['vs_reference'])}).")
    return lines


def chosen_on_dev(arms: dict) -> str | None:
    calibrated = {k: v for k, v in arms.items() if k != "none"}
    return min(calibrated, key=lambda k: calibrated[k]["dev"]["nelbo"]) if calibrated else None


def write_report(store: dict, path: Path) -> None:
    from sink_modifier.export.atomic import write_file_atomically

    table = summarize(store)
    settings = store["settings"]
    dense = {d: sum(store["dense"][d]["per_window"]) / len(store["dense"][d]["per_window"]) for d in protocol.DOMAINS}
    lines = [
        "# Quantization study: diffusion-aware calibration rows for GPTQ, AWQ, FP8, NVFP4, W8A8, W4A4",
        "",
        f"`python benchmarks/quantization_study.py` on `{settings['model']}`: every calibrated arm sees "
        f"{settings['rows']} forward rows × {settings['seq_len']} tokens (clean: {settings['rows']} windows; noised: "
        f"{settings['rows'] // settings['timesteps']} windows × {settings['timesteps']} timesteps; mixed: "
        f"{settings['rows'] // 5} windows × 5), seeds {', '.join(map(str, store.get('seeds', [])))}; NELBO in "
        f"nats/token (lower is better) on {settings['eval_windows']} windows × {settings['mc_samples']} masks per "
        f"domain, the same for every model; Δ = paired per-window difference (seed-averaged) ± se, **bold** = "
        f"|Δ| ≥ {protocol.SIGNIFICANT_Z:g} se. Fake-quantized in memory (weights and activations as the scheme rounds "
        "them); choices on `dev`, reported on `heldout` and `handbook`. Machine: "
        f"{store.get('environment', {}).get('cpu', 'unknown')}.",
        "",
        f"Dense: dev {dense['dev']:.4f}, heldout {dense['heldout']:.4f}, handbook {dense['handbook']:.4f}.",
        "",
    ]
    findings = []
    for base, schemes in table.items():
        lines += [f"## {'Quantization alone' if base == 'dense' else f'After `recipes/{base}.yaml`'}", ""]
        lines += ["| scheme | arm | dev | heldout | handbook | Δ vs dense (heldout / handbook) | "
                  "Δ vs its reference (heldout / handbook) | Δ vs llm-compressor's own on clean rows |",
                  "|---|---|---|---|---|---|---|---|"]
        for scheme, arms in schemes.items():
            chosen = chosen_on_dev(arms)
            for arm_key, e in arms.items():
                mark = " ✓" if arm_key == chosen else ""
                ref = f" (vs `{e['heldout'].get('reference')}`)" if e["heldout"].get("reference") else ""
                lines.append(
                    f"| {SCHEMES[scheme].label} | {e['label']}{mark} | {e['dev']['nelbo']:.4f} | "
                    f"{e['heldout']['nelbo']:.4f} | {e['handbook']['nelbo']:.4f} | "
                    f"{_fmt(e['heldout']['vs_dense'])} / {_fmt(e['handbook']['vs_dense'])} | "
                    f"{_fmt(e['heldout'].get('vs_reference'))} / {_fmt(e['handbook'].get('vs_reference'))}{ref} | "
                    f"{_fmt(e['heldout'].get('vs_upstream'))} / {_fmt(e['handbook'].get('vs_upstream'))} |")
                if e["heldout"].get("vs_reference"):
                    findings.append(f"- {base}, {scheme}: `{arm_key}` vs `{e['heldout']['reference']}`: "
                                    f"**{protocol.verdict(e)}** (heldout {_fmt(e['heldout']['vs_reference'])}; handbook "
                                    f"{_fmt(e['handbook']['vs_reference'])}).")
        lines += ["", "✓ = the arm chosen on `dev` for that scheme.", ""]
    findings += scheme_findings(store, table)
    lines += ["## Findings (each arm against the arm it changes one thing of)", "", *findings, ""]
    text = "\n".join(lines) + "\n"
    write_file_atomically(path.with_suffix(".md"), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    _plot(table, path.with_suffix(".png"))


def _plot(table: dict, path: Path) -> None:
    """Per scheme (quantization alone): each calibrated arm's heldout and handbook Δ vs llm-compressor's own."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sink_modifier.export.atomic import write_file_atomically

    schemes = {s: a for s, a in table.get("dense", {}).items() if any(k != "clean" and k != "none" for k in a)}
    if not schemes:
        return
    fig, axes = plt.subplots(1, len(schemes), figsize=(3.2 * len(schemes), 3.4), squeeze=False, sharey=False)
    for ax, (scheme, arms) in zip(axes[0], schemes.items()):
        keys = [k for k in arms if "vs_upstream" in arms[k]["heldout"]]
        for offset, domain, color in ((-0.18, "heldout", "tab:blue"), (0.18, "handbook", "tab:orange")):
            means = [arms[k][domain]["vs_upstream"][0] for k in keys]
            errors = [2 * (arms[k][domain]["vs_upstream"][1] or 0) for k in keys]
            ax.bar([i + offset for i in range(len(keys))], means, 0.36, yerr=errors, color=color, label=domain)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(range(len(keys)), keys, rotation=45, ha="right", fontsize=8)
        ax.set_title(scheme, fontsize=9)
    axes[0][0].set_ylabel("Δ NELBO vs clean rows (± 2 se)")
    axes[0][-1].legend(fontsize=7)
    fig.suptitle("Quantization of tiny-dlm: calibration rows against llm-compressor's clean rows (lower is better)",
                 fontsize=9)
    fig.tight_layout()
    write_file_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", default=",".join(SCHEMES), help=f"comma-separated: {', '.join(SCHEMES)}")
    parser.add_argument("--bases", default="dense",
                        help="comma-separated: dense and/or shipped pruning recipes (names in recipes/ without .yaml)")
    parser.add_argument("--arms", default=None, help="comma-separated arm keys: run only these")
    protocol.add_protocol_arguments(parser, STORE)
    args = parser.parse_args(argv)

    store = protocol.load_store(settings_of(args), args.store)
    seeds = protocol.open_store(args, store, protocol.save_store, write_report)
    if seeds is None:
        return 0
    unknown = sorted(set(args.schemes.split(",")) - set(SCHEMES))
    if unknown:
        raise SystemExit(f"unknown --schemes {unknown}; choose from {list(SCHEMES)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from sink_modifier import console
    from sink_modifier.runtime.cpu_isa import cpu_isa

    console.configure(0)
    import llmcompressor  # noqa: F401  (after console.configure: its logs go to stderr)

    inputs = protocol.study_inputs(args, store)
    tokenizer, config, calib_docs, windows = inputs.tokenizer, inputs.config, inputs.calib_docs, inputs.windows
    mask_token_id = inputs.mask_token_id
    wanted = set(args.arms.split(",")) if args.arms else None
    todo = [(base, SCHEMES[s], arm, seed) for base in args.bases.split(",") for s in args.schemes.split(",")
            for arm in arms_of(SCHEMES[s], base) for seed in seeds
            if (wanted is None or arm.key in wanted) and not (arm.data_free and seed != seeds[0])
            and (base == "dense" or s in PRUNED_SCHEMES)]
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    pruned_cache: dict = {}
    started = time.monotonic()
    for base, scheme, arm, seed in todo:
        key = run_key(base, scheme.key, arm, seed)
        if key in store["runs"]:
            continue
        if deadline is not None and time.monotonic() > deadline:
            protocol.log("--max-minutes reached")
            break
        base_state = None if base == "dense" else pruned_state(base, calib_docs, tokenizer, config, seed, pruned_cache)
        cal = None if arm.data_free else protocol.calibration_set(arm.calibration, arm.grid, calib_docs, tokenizer, config,
                                                         args.rows, args.timesteps, seed, key)
        model, seconds = quantize(scheme, arm, base_state, cal, tokenizer, args.batch_size)
        result = {"quantize_s": round(seconds, 2), "eval": protocol.evaluate(model, windows, mask_token_id, args.mc_samples),
                  "rows": 0 if cal is None else len(cal), "timesteps": None if cal is None else list(cal.timesteps),
                  "settings": arm.settings}
        del model
        gc.collect()
        protocol.record_run(store, key, result, args.store, cpu=cpu_isa()["summary"])
        protocol.log_run(key, result, f"{seconds:.0f}s", started)
    write_report(store, args.store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
