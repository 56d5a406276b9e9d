"""More rows for the quality table: sink-aware SparseGPT, sink policies, pruning + quantization.

Same model (tiny-dlm), same calibration windows and noise per seed, same held-out windows and
evaluation masks as ``benchmarks/quality.py`` (whose helpers this script imports), so every
row here pairs per window with the rows there:

* ``sgpt_clean``      llm-compressor's ``SparseGPTModifier`` on the clean windows;
* ``sgpt_off/on``     ``SinkAwareSparseGPTModifier`` on the noised rows, sink weighting off/on;
* ``sgpt_reference``  its ``reference`` mode (the paper's §1.10: clean rows, timestep-averaged masks);
* ``policy_unstable/stable``  ``SinkAwareWandaPruningModifier(statistic=rms)`` with ``sink_policy``,
  batches = one window's 10 noised copies; ``policy=all`` is ``ours_rms_on`` of quality.py;
* ``quant_*``         the recipes in ``recipes/`` that prune then quantize (run through oneshot
  as YAML), paired with their pruning-only twin ``ours_rms_on``.

Results are written after every run (``results/quality_extended.json``), so an interrupted sweep
keeps what it measured; ``--report`` rebuilds ``results/quality_extended.md`` from the json files.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import quality as q  # noqa: E402
import torch  # noqa: E402

RESULTS = q.RESULTS
OUT_JSON = RESULTS / "quality_extended.json"
OUT_MD = RESULTS / "quality_extended.md"
BASE_JSON = RESULTS / "quality.json"

SGPT = ("sgpt_clean", "sgpt_off", "sgpt_on", "sgpt_reference")
POLICIES = ("policy_unstable", "policy_stable")
QUANT = {
    "quant_2of4_fp8": ("sink_wanda_2of4_fp8_dynamic.yaml", "2:4"),
    "quant_50_w8a8": ("sink_wanda_50_w8a8.yaml", "0.5"),
    "quant_2of4_w4a16": ("sink_wanda_2of4_w4a16.yaml", "2:4"),
}


def modifier_for(key: str, spec: q.Sparsity):
    from llmcompressor.modifiers.pruning.sparsegpt import SparseGPTModifier

    from sink_modifier import SinkAwareSparseGPTModifier, SinkAwareWandaPruningModifier

    common = dict(sparsity=spec.sparsity, mask_structure=spec.mask_structure)
    head_dense = dict(ignore=["re:.*lm_head"])  # every arm, ours as upstream's, keeps the head dense
    if key == "sgpt_clean":
        return SparseGPTModifier(**common, targets=["Linear"], ignore=["re:.*lm_head"])
    if key in ("sgpt_off", "sgpt_on"):
        return SinkAwareSparseGPTModifier(**common, **head_dense, sink_weighting=key == "sgpt_on")
    if key == "sgpt_reference":
        return SinkAwareSparseGPTModifier(**common, **head_dense, sink_mask_mode="reference")
    if key in POLICIES:
        return SinkAwareWandaPruningModifier(**common, **head_dense, statistic="rms", sink_policy=key.split("_")[1])
    raise ValueError(key)


def rows_and_batch(key: str, cal, args) -> tuple[torch.Tensor, int]:
    if key in ("sgpt_clean", "sgpt_reference"):
        return cal.clean_ids, args.calib_batch_size
    if key in POLICIES:
        return cal.input_ids, len(cal.timesteps)  # one window's noised copies per batch
    return cal.input_ids, args.calib_batch_size


def prune_one(key: str, spec_key: str, cal, tokenizer, windows, mask_token_id, args) -> dict:
    from llmcompressor import oneshot

    model = q.load_model()
    start = time.perf_counter()
    if key in QUANT:
        recipe = str(q.REPO / "recipes" / QUANT[key][0])
        oneshot(model=model, processor=tokenizer, dataset=q.rows_loader(cal.input_ids, args.calib_batch_size),
                recipe=recipe, pipeline="sequential")
    else:
        rows, batch = rows_and_batch(key, cal, args)
        oneshot(model=model, processor=tokenizer, dataset=q.rows_loader(rows, batch),
                recipe=[modifier_for(key, q.parse_sparsity(spec_key))], pipeline="sequential")
    prune_s = time.perf_counter() - start
    result = {"prune_s": prune_s, "achieved_sparsity": q.achieved_sparsity(model)}
    result.update(q.evaluate(model, windows, mask_token_id, args))
    q.log(f"{spec_key:>4} {key:<17} NELBO {result['nelbo']:.4f} ± {result['nelbo_stderr']:.4f} "
          f"CE@0.5 {result['masked_ce']:.4f} prune {prune_s:.1f}s eval {result['eval_s']:.1f}s")
    return result


def plan(args) -> list[tuple[int, str, str]]:
    """(seed, sparsity, method) in the order to run: policies, quantization, SparseGPT, per seed."""
    order = []
    for seed in args.seeds:
        if "policies" in args.groups:
            order += [(seed, spec, k) for spec in args.sparsities for k in POLICIES]
        if "quant" in args.groups:
            order += [(seed, QUANT[k][1], k) for k in QUANT]
        if "sgpt" in args.groups:
            order += [(seed, spec, k) for spec in args.sgpt_sparsities for k in SGPT]
    return order


def run(args) -> None:
    torch.set_num_threads(args.threads)
    tokenizer = q.load_tokenizer()
    cals, _ = q.calibration_sets(argparse.Namespace(**{**vars(args), "cost_samples": args.num_samples}), tokenizer)
    mask_token_id = int(q.load_model().config.mask_token_id)
    windows = q.heldout_windows(tokenizer, args.eval_windows)
    store = json.loads(OUT_JSON.read_text()) if OUT_JSON.exists() and args.resume else {}
    store.setdefault("config", {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()})
    store.setdefault("versions", q.versions() if hasattr(q, "versions") else {})
    runs = store.setdefault("runs", {})
    for seed, spec_key, key in plan(args):
        slot = runs.setdefault(str(seed), {}).setdefault(spec_key, {})
        if key in slot:
            continue
        slot[key] = prune_one(key, spec_key, cals[seed], tokenizer, windows, mask_token_id, args)
        OUT_JSON.write_text(json.dumps(store, indent=1))
    report()


def report() -> None:
    """Tables of mean NELBO over seeds and paired deltas against the base run's rows."""
    store = json.loads(OUT_JSON.read_text())
    base = json.loads(BASE_JSON.read_text()) if BASE_JSON.exists() else None
    base_runs = (base or {}).get("quality", {}).get("runs", {})
    dense = (base or {}).get("quality", {}).get("dense")
    lines = ["# Sink-aware SparseGPT, sink policies, pruning + quantization on tiny-dlm", "",
             "`python benchmarks/quality_extended.py`: same calibration (16 windows x 10 timesteps per seed), "
             "held-out windows and masks as [quality.md](quality.md); NELBO in nats/token (mean over seeds); "
             "Δ = paired per-window difference (mean ± se over windows, per-window values averaged over seeds). "
             "Negative Δ = better.", ""]
    if dense:
        lines += [f"Dense NELBO {dense['nelbo']:.4f}.", ""]

    def windows_of(seed_runs: dict, spec: str, key: str) -> list[list[float]] | None:
        values = [seed_runs[s][spec][key]["per_window"] for s in seed_runs if key in seed_runs[s].get(spec, {})]
        return values or None

    merged = {}
    for seed, specs in store["runs"].items():
        for spec, rows in specs.items():
            merged.setdefault(seed, {}).setdefault(spec, {}).update(rows)
    for seed, specs in base_runs.items():
        for spec, rows in specs.items():
            merged.setdefault(seed, {}).setdefault(spec, {}).update({k: v for k, v in rows.items()})

    def row(spec: str, key: str, against: str | None) -> str | None:
        mine = windows_of(merged, spec, key)
        if not mine:
            return None
        seeds = [s for s in merged if key in merged[s].get(spec, {})]
        nelbo = sum(merged[s][spec][key]["nelbo"] for s in seeds) / len(seeds)
        ce = sum(merged[s][spec][key]["masked_ce"] for s in seeds) / len(seeds)
        per_seed = ", ".join(f"{merged[s][spec][key]['nelbo']:.4f}" for s in seeds)
        delta = ""
        other = windows_of(merged, spec, against) if against else None
        if other and len(other) == len(mine):
            d, se = q.paired(q.mean_windows(mine), q.mean_windows(other))
            delta = f"{d:+.4f} ± {se:.4f}"
        return f"| {spec} | {key} | {nelbo:.4f} | {per_seed} | {ce:.4f} | {against or ''} | {delta} |"

    header = ["| sparsity | method | NELBO | per seed | CE@0.5 | Δ vs | Δ NELBO |", "|---|---|---|---|---|---|---|"]
    sections = [
        ("SparseGPT", [(k, {"sgpt_on": "sgpt_off", "sgpt_off": "sgpt_clean", "sgpt_reference": "sgpt_clean",
                            "sgpt_clean": "wanda_clean"}[k]) for k in SGPT]),
        ("Sink policies (Wanda, rms; `all` = ours_rms_on)", [("ours_rms_on", "ours_rms_off")]
         + [(k, "ours_rms_on") for k in POLICIES]),
        ("Pruning + quantization (Δ vs the same pruning without quantization)",
         [(k, "ours_rms_on") for k in QUANT]),
    ]
    specs = sorted({spec for s in merged.values() for spec in s}, key=lambda x: (":" in x, x))
    for title, rows in sections:
        body = [r for spec in specs for key, against in rows if (r := row(spec, key, against))]
        if key_rows := [b for b in body if b]:
            lines += [f"## {title}", "", *header, *key_rows, ""]
    OUT_MD.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--sparsities", nargs="+", default=["0.5", "0.7", "2:4"], help="for the policy rows")
    p.add_argument("--sgpt-sparsities", nargs="+", default=["0.5", "2:4"], help="for the SparseGPT rows")
    p.add_argument("--groups", nargs="+", default=["policies", "sgpt", "quant"], choices=["policies", "sgpt", "quant"])
    p.add_argument("--num-samples", type=int, default=16)
    p.add_argument("--eval-windows", type=int, default=32)
    p.add_argument("--mc-samples", type=int, default=8)
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--calib-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--corpus-chars", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="keep runs already in the json")
    p.add_argument("--report", action="store_true", help="only rebuild the markdown from the json files")
    args = p.parse_args()
    if args.report:
        report()
    else:
        run(args)


if __name__ == "__main__":
    main()
