"""What makes a pruned diffusion LM good: a matched-compute calibration study on ``tiny-dlm``.

Protocol (``benchmarks/README.md``, "Matched compute")
------------------------------------------------------
* **Matched compute.** Every calibrated arm sees the same number of forward rows of the same
  length (``--rows``, default 160 rows of 256 tokens): the clean arm ``R`` distinct windows at
  t = 0, the noised arm ``R / K`` windows at each of ``K`` timesteps, mixed arms in between
  (``R / 5`` windows at t = 0, 0.25, 0.5, 0.75, 1). Upstream's clean calibration with more rows
  is *not* what we compare against: that confounds the noise with the amount of data.
* **Seeds.** ``--seeds`` (default 0, 1, 2) re-draw the calibration windows and their noise.
* **Identical evaluation.** Each domain's windows and masks depend only on a fixed seed, so
  every model answers the same questions; two arms are compared by the per-window difference of
  the NELBO (averaged over seeds), its mean and its standard error over windows.
* **Three domains.** ``dev``: windows of a held-back tail of the corpus documents (the
  calibration windows come from the other documents) — the only domain settings are chosen on;
  ``heldout`` (same sources as the corpus) and ``handbook`` (a book the corpus does not
  contain) are only reported.

Arms
----
An arm is (base, calibration rows, modifier settings). Bases: ``wanda`` / ``sparsegpt`` (our
modifiers; with ``sink_weighting: false`` they are llm-compressor's Wanda / SparseGPT bit for bit,
``tests/test_upstream_scenarios.py``, so ``*_clean_off`` *is* upstream's modifier on matched clean
rows) and ``magnitude`` (no data). The plans group arms by the question they answer:

* ``core``: clean vs noised vs mixed (sink off) and sink on, for each base;
* ``grids``: the timestep grid of the noised rows (LLaDA's, uniform random, low-t-heavy, high-t-heavy);
* ``sink``: sink policies and strength (``sink_std`` 1/2/3, ``sink_alpha``);
* ``weighting``: timestep weighting (ELBO 1/t) and masked-position weighting of the rows;
* ``owl``: non-uniform layer sparsity (OWL) from the same rows;
* ``combined``: the low-t grid with ELBO 1/t row weights (the two timestep choices that won alone).

Results accumulate in ``benchmarks/results/calibration_study.json`` as each run finishes, so the
study can be run in parts (``--plan``, ``--max-minutes``) and resumed; a run whose settings differ
from the stored ones is refused rather than mixed in. ``--report`` rewrites the tables and
figures from the JSON without running anything.

    python benchmarks/calibration_study.py --plan core --sparsities 0.5,2:4 --bases wanda
    python benchmarks/calibration_study.py --report
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import study_protocol as protocol  # benchmarks/, beside this script (sets the offline environment first)
import torch
from bench_paths import RESULTS

STORE = RESULTS / "calibration_study.json"


# -- arms -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arm:
    key: str
    label: str
    base: str  # "wanda" | "sparsegpt" | "magnitude"
    calibration: str = "noised"  # "clean" | "noised" | "mixed" | "none"
    grid: str = "llada"  # timesteps of noised rows: "llada" | "uniform" | "low" | "high"
    settings: dict = field(default_factory=dict, hash=False, compare=False)  # modifier fields
    reference: str | None = None  # arm this one is compared with (paired delta)
    needs_unstructured: bool = False  # OWL: meaningless for N:M

    @property
    def data_free(self) -> bool:
        return self.calibration == "none"


def _base_arms(base: str) -> list[Arm]:
    name = {"wanda": "Wanda", "sparsegpt": "SparseGPT"}[base]
    off, on = {"sink_weighting": False}, {"sink_weighting": True}
    return [
        Arm(f"{base}_clean_off", f"llm-compressor {name}: clean rows", base, "clean", settings=off),
        Arm(f"{base}_noised_off", f"{name}: noised rows, sink off", base, "noised", settings=off,
            reference=f"{base}_clean_off"),
        Arm(f"{base}_mixed_off", f"{name}: mixed rows, sink off", base, "mixed", settings=off,
            reference=f"{base}_clean_off"),
        Arm(f"{base}_noised_on", f"{name}: noised rows, sink on", base, "noised", settings=on,
            reference=f"{base}_noised_off"),
    ]


def _grid_arms(base: str) -> list[Arm]:
    off = {"sink_weighting": False}
    return [
        Arm(f"{base}_grid_{grid}", f"{base}: {grid} timesteps, sink off", base, "noised", grid, off,
            reference=f"{base}_noised_off")
        for grid in ("uniform", "low", "high")
    ]


def _sink_arms(base: str) -> list[Arm]:
    variants = {
        "unstable": {"sink_policy": "unstable"},
        "stable": {"sink_policy": "stable"},
        "std1": {"sink_std": 1.0},
        "std3": {"sink_std": 3.0},
        "alpha1": {"sink_alpha": 1.0},
        "alpha20": {"sink_alpha": 20.0},
    }
    return [
        Arm(f"{base}_sink_{name}", f"{base}: sink on, {name}", base, "noised",
            settings={"sink_weighting": True, **extra}, reference=f"{base}_noised_off")
        for name, extra in variants.items()
    ]


def _weighting_arms(base: str) -> list[Arm]:
    off = {"sink_weighting": False}
    return [
        Arm(f"{base}_elbo_weights", f"{base}: ELBO 1/t row weights, sink off", base, "noised",
            settings={**off, "timestep_weighting": "elbo"}, reference=f"{base}_noised_off"),
        Arm(f"{base}_masked_0.75", f"{base}: masked positions weighted 0.75, sink off", base, "noised",
            settings={**off, "masked_position_weight": 0.75}, reference=f"{base}_noised_off"),
        Arm(f"{base}_masked_0.9", f"{base}: masked positions weighted 0.9, sink off", base, "noised",
            settings={**off, "masked_position_weight": 0.9}, reference=f"{base}_noised_off"),
    ]


def _owl_arms(base: str) -> list[Arm]:
    owl = {"sparsity_profile": "owl", "owl_m": 5, "owl_lmbda": 0.08}
    return [
        Arm(f"{base}_owl_off", f"{base}: OWL layer sparsity, sink off", base, "noised",
            settings={"sink_weighting": False, **owl}, reference=f"{base}_noised_off", needs_unstructured=True),
    ]


def _combined_arms(base: str) -> list[Arm]:
    """The two winning timestep choices together: the low-t grid and ELBO 1/t row weights."""
    return [
        Arm(f"{base}_low_elbo", f"{base}: low timesteps + ELBO 1/t row weights, sink off", base, "noised", "low",
            settings={"sink_weighting": False, "timestep_weighting": "elbo"}, reference=f"{base}_grid_low"),
    ]


MAGNITUDE = Arm("magnitude", "magnitude (per-row abs W)", "magnitude", "none")
PLANS = {"core": _base_arms, "grids": _grid_arms, "sink": _sink_arms, "weighting": _weighting_arms, "owl": _owl_arms,
         "combined": _combined_arms}


def arms_for(plans: list[str], bases: list[str]) -> list[Arm]:
    arms = [MAGNITUDE]
    for plan in plans:
        for base in bases:
            arms += [a for a in PLANS[plan](base) if a not in arms]
    return arms


def all_arms() -> dict[str, Arm]:
    return {a.key: a for a in arms_for(list(PLANS), ["wanda", "sparsegpt"])}


# -- data ------------------------------------------------------------------------------------------------
# -- pruning and evaluation ------------------------------------------------------------------------
def decoder_linears(model) -> list[torch.nn.Linear]:
    return [m for layer in model.model.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]


def achieved_sparsity(model) -> float:
    from sink_modifier.export.sparsity import sparsity_report

    return sparsity_report(model)["overall"]  # every Linear but the output head: tiny-dlm's decoder layers


def make_modifier(arm: Arm, spec):
    from sink_modifier import SinkAwareSparseGPTModifier, SinkAwareWandaPruningModifier

    cls = SinkAwareWandaPruningModifier if arm.base == "wanda" else SinkAwareSparseGPTModifier
    return cls(sparsity=spec.sparsity, mask_structure=spec.mask_structure, targets=["Linear"],
               ignore=["re:.*lm_head"], **arm.settings)


def prune(arm: Arm, spec, cal, tokenizer, batch_size: int):
    from llmcompressor import oneshot

    from sink_modifier.modifiers.wanda_scoring import magnitude_prune

    model = protocol.load_model()
    start = time.perf_counter()
    if arm.base == "magnitude":
        n, m = (int(p) for p in spec.mask_structure.split(":"))
        magnitude_prune(decoder_linears(model), spec.sparsity, n, m)
    else:
        policy = arm.settings.get("sink_policy", "all") != "all"
        loader = cal.dataloader(batch_size=len(cal.timesteps) if policy else batch_size)
        oneshot(model=model, processor=tokenizer, dataset=loader, recipe=[make_modifier(arm, spec)],
                pipeline="sequential")
    return model, time.perf_counter() - start


# -- the store ---------------------------------------------------------------------------------------
def settings_of(args) -> dict:
    return {"rows": args.rows, "timesteps": args.timesteps, "seq_len": protocol.SEQ_LEN, "eval_windows": args.eval_windows,
            "mc_samples": args.mc_samples, "dev_fraction": protocol.DEV_FRACTION, "corpus_chars": args.corpus_chars,
            "batch_size": args.batch_size, "model": protocol.MODEL_DIR.name}


def run_key(spec, arm: Arm, seed: int | None) -> str:
    return f"{spec.label}|{arm.key}|{'-' if seed is None else seed}"


# -- statistics ----------------------------------------------------------------------------------
def seed_mean_windows(store: dict, spec: str, arm: Arm, domain: str, seeds: list[int]) -> list[float] | None:
    """Per-window NELBO averaged over the seeds that have run (None when none has)."""
    keys = [f"{spec}|{arm.key}|-"] if arm.data_free else [f"{spec}|{arm.key}|{s}" for s in seeds]
    found = [store["runs"][k]["eval"][domain]["per_window"] for k in keys if k in store["runs"]]
    if not found or (not arm.data_free and len(found) < len(keys)):
        return None
    return torch.tensor(found, dtype=torch.float64).mean(0).tolist()


def per_seed_deltas(store: dict, spec: str, arm: Arm, ref: Arm, domain: str, seeds: list[int]) -> list[float]:
    out = []
    for s in seeds:
        a, b = store["runs"].get(f"{spec}|{arm.key}|{s}"), store["runs"].get(f"{spec}|{ref.key}|{s}")
        if a and b:
            out.append(a["eval"][domain]["nelbo"] - b["eval"][domain]["nelbo"])
    return out


# -- report ----------------------------------------------------------------------------------------
def _fmt(delta: tuple[float, float] | None) -> str:
    if delta is None:
        return ""
    mean, se = delta
    mark = "**" if abs(mean) >= protocol.SIGNIFICANT_Z * se else ""
    return f"{mark}{mean:+.4f} ± {se:.4f}{mark}"


def summarize(store: dict) -> dict:
    arms = all_arms()
    seeds = store.get("seeds", [0, 1, 2])
    dense = store["dense"]
    specs = sorted({k.split("|")[0] for k in store["runs"]}, key=lambda s: (":" in s, s))
    table = {}
    for spec in specs:
        rows = {}
        for arm in arms.values():
            windows = {d: seed_mean_windows(store, spec, arm, d, seeds) for d in protocol.DOMAINS}
            if windows["dev"] is None:
                continue
            entry = {"label": arm.label}
            for d in protocol.DOMAINS:
                entry[d] = {
                    "nelbo": float(torch.tensor(windows[d]).mean()),
                    "vs_dense": protocol.paired(windows[d], dense[d]["per_window"]),
                }
                ref = arms.get(arm.reference) if arm.reference else None
                ref_windows = seed_mean_windows(store, spec, ref, d, seeds) if ref else None
                if ref_windows is not None:
                    entry[d]["vs_reference"] = protocol.paired(windows[d], ref_windows)
                    entry[d]["reference"] = ref.key
                    entry[d]["seed_deltas"] = per_seed_deltas(store, spec, arm, ref, d, seeds)
                upstream = arms.get(f"{arm.base}_clean_off")
                up_windows = seed_mean_windows(store, spec, upstream, d, seeds) if upstream else None
                if up_windows is not None and arm.key != upstream.key:
                    entry[d]["vs_upstream"] = protocol.paired(windows[d], up_windows)
            rows[arm.key] = entry
        table[spec] = rows
    return table


def best_per_sparsity(table: dict) -> dict:
    """Per sparsity and base: the arm with the lowest dev NELBO (chosen on dev only)."""
    best = {}
    for spec, rows in table.items():
        for base in ("wanda", "sparsegpt"):
            candidates = {k: v for k, v in rows.items() if k.startswith(base + "_")}
            if candidates:
                key = min(candidates, key=lambda k: candidates[k]["dev"]["nelbo"])
                best[f"{spec}|{base}"] = key
    return best


BASELINES = ("magnitude", "wanda_clean_off", "sparsegpt_clean_off")  # data-free, and llm-compressor's own


def best_against_baseline(store: dict, table: dict) -> list[str]:
    """Per sparsity: the best arm of any base against the best baseline, both chosen on dev, paired Δ."""
    arms, seeds = all_arms(), store.get("seeds", [0, 1, 2])
    lines = ["| sparsity | best arm (chosen on dev) | heldout / handbook NELBO | best baseline (dev) | "
             "heldout / handbook NELBO | Δ heldout | Δ handbook |", "|---|---|---|---|---|---|---|"]
    for spec, rows in table.items():
        baselines = [k for k in BASELINES if k in rows]
        if not baselines:
            continue
        best = min(rows, key=lambda k: rows[k]["dev"]["nelbo"])
        baseline = min(baselines, key=lambda k: rows[k]["dev"]["nelbo"])
        deltas = []
        for d in protocol.REPORTED:
            if best == baseline:
                deltas.append("is the baseline")
                continue
            a = seed_mean_windows(store, spec, arms[best], d, seeds)
            b = seed_mean_windows(store, spec, arms[baseline], d, seeds)
            deltas.append(_fmt(protocol.paired(a, b)))
        nelbo = lambda k: f"{rows[k]['heldout']['nelbo']:.4f} / {rows[k]['handbook']['nelbo']:.4f}"  # noqa: E731
        lines.append(f"| {spec} | {rows[best]['label']} | {nelbo(best)} | {rows[baseline]['label']} | "
                     f"{nelbo(baseline)} | {deltas[0]} | {deltas[1]} |")
    return lines


def findings(table: dict) -> list[str]:
    out = []
    for spec, rows in table.items():
        for key, entry in rows.items():
            ref = entry["heldout"].get("reference")
            if not ref:
                continue
            deltas = "; ".join(f"{d} {_fmt(entry[d]['vs_reference'])}" for d in protocol.REPORTED)
            out.append(f"- {spec}: `{key}` vs `{ref}`: **{protocol.verdict(entry)}** ({deltas}).")
    return out or ["- no complete comparison yet"]


def write_report(store: dict, path: Path) -> None:
    from sink_modifier.export.atomic import write_file_atomically

    table = summarize(store)
    best = best_per_sparsity(table)
    dense = store["dense"]
    lines = [
        "# Calibration study: what makes a pruned tiny-dlm good (matched compute)",
        "",
        f"Runs in `calibration_study.json` ({len(store['runs'])} pruned models), generated by "
        f"`python benchmarks/calibration_study.py`; last update {store.get('updated', '')}. Protocol: "
        "`benchmarks/README.md` (matched compute). Every calibrated arm sees "
        f"{store['settings']['rows']} forward rows × {protocol.SEQ_LEN} tokens (clean: {store['settings']['rows']} windows; "
        f"noised: {store['settings']['rows'] // store['settings']['timesteps']} windows × "
        f"{store['settings']['timesteps']} timesteps; mixed: {store['settings']['rows'] // 5} windows × t ∈ "
        "{0, .25, .5, .75, 1}); calibration seeds "
        f"{store.get('seeds')}. Evaluation: {store['settings']['eval_windows']} fixed windows per domain, "
        f"{store['settings']['mc_samples']} fixed NELBO masks per window (nats/token, lower is better). "
        "Δ = mean over windows of the seed-averaged per-window NELBO difference ± its standard error; "
        f"**bold** = |Δ| ≥ {protocol.SIGNIFICANT_Z:g} se. A finding is better/worse when both domains move that way by "
        f"≥ {protocol.SIGNIFICANT_Z:g} se, negligible when such a move stays under {protocol.NEGLIGIBLE_NATS} nats on both. "
        "`dev` (held-back corpus documents) is where settings are chosen; `heldout` and `handbook` are "
        "reported only.",
        "",
        f"Dense NELBO: dev {dense['dev']['nelbo']:.4f}, heldout {dense['heldout']['nelbo']:.4f}, "
        f"handbook {dense['handbook']['nelbo']:.4f}.",
        "",
    ]
    for spec, rows in table.items():
        lines += [f"## Sparsity {spec}", "",
                  "| arm | dev NELBO | heldout NELBO | Δ vs reference (heldout) | Δ vs reference (handbook) | "
                  "per-seed Δ heldout | Δ vs llm-compressor (heldout) | Δ vs llm-compressor (handbook) |",
                  "|---|---|---|---|---|---|---|---|"]
        for key, entry in rows.items():
            ref = entry["heldout"].get("reference", "")
            seeds = ", ".join(f"{d:+.4f}" for d in entry["heldout"].get("seed_deltas", []))
            chosen = " ✓" if key in best.values() and best.get(f"{spec}|{key.split('_')[0]}") == key else ""
            lines.append(
                f"| {entry['label']}{chosen} | {entry['dev']['nelbo']:.4f} | {entry['heldout']['nelbo']:.4f} | "
                f"{_fmt(entry['heldout'].get('vs_reference'))}{' (vs ' + ref + ')' if ref else ''} | "
                f"{_fmt(entry['handbook'].get('vs_reference'))} | {seeds} | "
                f"{_fmt(entry['heldout'].get('vs_upstream'))} | {_fmt(entry['handbook'].get('vs_upstream'))} |"
            )
        lines.append("")
    lines += ["## Chosen on dev (✓ above)", ""]
    for slot, key in best.items():
        spec, base = slot.split("|")
        entry = table[spec][key]
        lines.append(
            f"- {spec} {base}: `{key}`; vs llm-compressor's {base} on matched clean rows: heldout "
            f"{_fmt(entry['heldout'].get('vs_upstream')) or 'is that arm'}, handbook "
            f"{_fmt(entry['handbook'].get('vs_upstream')) or 'is that arm'}"
        )
    lines += ["", "## Best per sparsity against the best baseline (magnitude, llm-compressor's Wanda / "
              "SparseGPT on clean rows)", ""]
    lines += best_against_baseline(store, table)
    lines += ["", "## Findings (each arm against its reference, both report domains)", ""]
    lines += findings(table)
    lines += ["", *store.get("notes", [])]
    text = "\n".join(lines) + "\n"
    write_file_atomically(path.with_suffix(".md"), lambda tmp: tmp.write_text(text, encoding="utf-8"))
    _plot(table, path.with_suffix(".png"))
    _plot_choices(table, best, path.with_name(path.stem + "_best.png"))


def _plot_choices(table: dict, best: dict, path: Path) -> None:
    """The study's answer in one figure: per sparsity, the baselines against each base's dev choice."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sink_modifier.export.atomic import write_file_atomically

    specs = list(table)
    if not specs:
        return
    series = [("magnitude", lambda spec: "magnitude"),
              ("llm-compressor Wanda (clean rows)", lambda spec: "wanda_clean_off"),
              ("llm-compressor SparseGPT (clean rows)", lambda spec: "sparsegpt_clean_off"),
              ("Wanda, chosen on dev", lambda spec: best.get(f"{spec}|wanda")),
              ("SparseGPT, chosen on dev", lambda spec: best.get(f"{spec}|sparsegpt"))]
    colors = ["0.6", "tab:blue", "tab:orange", "tab:cyan", "tab:red"]
    fig, axes = plt.subplots(1, len(protocol.REPORTED), figsize=(6 * len(protocol.REPORTED), 4), squeeze=False)
    width = 0.8 / len(series)
    for ax, domain in zip(axes[0], protocol.REPORTED):
        for i, ((label, key_of), color) in enumerate(zip(series, colors)):
            xs, ys, es = [], [], []
            for j, spec in enumerate(specs):
                entry = table[spec].get(key_of(spec) or "")
                if entry:
                    mean, se = entry[domain]["vs_dense"]
                    xs.append(j + i * width)
                    ys.append(mean)
                    es.append(se)
            ax.bar(xs, ys, width, yerr=es, label=label, color=color)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(specs))], specs)
        ax.set_xlabel("sparsity")
        ax.set_ylabel(f"Δ NELBO vs dense, {domain} (nats/token)")
        ax.set_title(f"{domain}: lower is better")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    write_file_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


def _plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sink_modifier.export.atomic import write_file_atomically

    specs = list(table)
    if not specs:
        return
    fig, axes = plt.subplots(1, len(protocol.REPORTED), figsize=(6 * len(protocol.REPORTED), 4), squeeze=False)
    for ax, domain in zip(axes[0], protocol.REPORTED):
        keys = sorted({k for rows in table.values() for k in rows if k != "magnitude"})
        width = 0.8 / max(1, len(keys))
        for i, key in enumerate(keys):
            xs, ys, es = [], [], []
            for j, spec in enumerate(specs):
                entry = table[spec].get(key)
                if entry:
                    mean, se = entry[domain]["vs_dense"]
                    xs.append(j + i * width)
                    ys.append(mean)
                    es.append(se)
            ax.bar(xs, ys, width, yerr=es, label=key, color=plt.cm.tab20(i % 20),
                   hatch="//" if key.startswith("sparsegpt") else None)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(specs))], specs)
        ax.set_xlabel("sparsity")
        ax.set_ylabel(f"Δ NELBO vs dense, {domain} (nats/token)")
        ax.set_title(domain)
    axes[0][0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    write_file_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110))
    plt.close(fig)


# -- main ------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plan", default="core", help=f"comma-separated plans: {', '.join(PLANS)}")
    parser.add_argument("--bases", default="wanda,sparsegpt")
    parser.add_argument("--arms", default=None, help="comma-separated arm keys: run only these of the plans' arms")
    parser.add_argument("--sparsities", default="0.5,0.6,0.7,2:4")
    protocol.add_protocol_arguments(parser, STORE)
    args = parser.parse_args(argv)

    store = protocol.load_store(settings_of(args), args.store, notes=[])
    seeds = protocol.open_store(args, store, protocol.save_store, write_report)
    if seeds is None:
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    from sink_modifier import console

    console.configure(0)  # before llm-compressor's import, so its logs go to stderr too
    import llmcompressor  # noqa: F401

    plans = args.plan.split(",")
    unknown = set(plans) - set(PLANS)
    if unknown:
        raise SystemExit(f"unknown plan(s) {sorted(unknown)}; choose from {list(PLANS)}")
    arms = arms_for(plans, args.bases.split(","))
    if args.arms:
        wanted = args.arms.split(",")
        unknown = sorted(set(wanted) - {a.key for a in arms})
        if unknown:
            raise SystemExit(f"--arms {unknown} are not arms of --plan {args.plan} --bases {args.bases}")
        arms = [a for a in arms if a.key in wanted]
    # The sweep command's parser: the same points, labels and refusals as `sink-modifier sweep --sparsities`.
    from sink_modifier.commands.sweep import sparsity_points

    specs = list(sparsity_points(args.sparsities))
    inputs = protocol.study_inputs(args, store)
    tokenizer, config, calib_docs, windows = inputs.tokenizer, inputs.config, inputs.calib_docs, inputs.windows
    mask_token_id = inputs.mask_token_id
    deadline = time.monotonic() + 60 * args.max_minutes if args.max_minutes else None
    # One arm's seeds back to back: a stopped study leaves whole arms, which the report can compare.
    todo = [(spec, arm, seed) for spec in specs for arm in arms for seed in seeds
            if not (arm.needs_unstructured and spec.structured) and not (arm.data_free and seed != seeds[0])]
    started = time.monotonic()
    for spec, arm, seed in todo:
        key = run_key(spec, arm, None if arm.data_free else seed)
        if key in store["runs"]:
            continue
        if deadline is not None and time.monotonic() > deadline:
            protocol.log(f"--max-minutes reached; {sum(run_key(s, a, None if a.data_free else d) not in store['runs'] for s, a, d in todo)} runs left")
            break
        cal = None if arm.data_free else protocol.calibration_set(arm.calibration, arm.grid, calib_docs, tokenizer, config,
                                                             args.rows, args.timesteps, seed, arm.key)
        model, prune_s = prune(arm, spec, cal, tokenizer, args.batch_size)
        result = {"prune_s": round(prune_s, 2), "achieved_sparsity": achieved_sparsity(model),
                  "eval": protocol.evaluate(model, windows, mask_token_id, args.mc_samples),
                  "rows": 0 if cal is None else len(cal), "timesteps": None if cal is None else list(cal.timesteps),
                  "settings": arm.settings}
        del model
        gc.collect()
        protocol.record_run(store, key, result, args.store)
        protocol.log_run(key, result, f"prune {prune_s:.0f}s", started)
    write_report(store, args.store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
