"""Held-out quality and pruning cost of sink-aware Wanda on ``tiny-dlm``.

What is compared
----------------
At each sparsity (50/60/70 % unstructured and 2:4) the same dense model is pruned by

* ``magnitude``     per-row ``|W|`` (Wanda's per-row grouping with a unit activation scale), no data;
* ``wanda_clean``   llm-compressor's own ``WandaPruningModifier`` calibrated on the N *clean*
                    windows (t = 0), i.e. what a user gets today when pruning a DLM like an AR model;
* ``ours_*_off``    ``SinkAwareWandaPruningModifier(sink_weighting=False)`` on the N windows noised at
                    the 10 LLaDA timesteps (N x 10 rows), with the ``rms`` or ``sum_of_norms`` statistic;
* ``ours_*_on``     the same with sink weighting, the paper's method.

and scored on a fixed set of held-out windows with the LLaDA Monte-Carlo NELBO (nats/token, an
upper bound on the NLL) and masked cross-entropy at mask ratio 0.5.

Confounds and how to read the table
-----------------------------------
``wanda_clean`` and ``ours_*`` differ in *two* ways: the calibration rows (clean vs noised, and
N vs 10 N rows) and the statistic's token weighting. Only the on/off pair of one statistic isolates
the sink weighting itself: same rows, same pipeline, same statistic, one flag. ``ours_rms_off`` vs
``wanda_clean`` isolates noised-vs-clean calibration (``rms`` with no weighting is llm-compressor's
statistic, verified bit-identical in tests/test_sink_wanda_modifier.py).

The evaluation windows and the evaluation masks are fixed (they depend only on a fixed seed and the
window shape), so every model is scored on identical questions. Differences between two models are
therefore reported *paired*: the per-window NELBO difference, its mean and its standard error over
windows. The unpaired stderr of each NELBO mostly reflects how hard the windows are, which cancels
in a paired difference. ``--seeds`` re-draws the calibration windows and their noise, not the
evaluation; dense and magnitude need no calibration and are scored once.

Cost: ours (sink weighting on, ``rms``) and llm-compressor's Wanda are each run in a fresh
subprocess on the identical noised rows; wall time covers the ``oneshot`` call only, memory is the
peak RSS of the process (``ru_maxrss``), also reported net of the RSS after model and data load.

Run ``python benchmarks/quality.py`` (defaults: about half an hour on 2 CPU cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # llm-compressor's per-layer progress bars

import torch  # noqa: E402
from bench_paths import CORPUS, HELDOUT, REPO, RESULTS  # noqa: E402
from bench_paths import TINY_DLM as MODEL_DIR
from process_memory import peak_rss_mib, reset_peak_rss, rss_mib, ru_maxrss_mib  # noqa: E402

SEQ_LEN = 256
EVAL_WINDOW_SEED = 0  # which held-out windows; fixed for every run
EVAL_MASK_SEED = 0  # which evaluation masks; fixed for every run
CE_RATIO = 0.5
COST_SPARSITY = "0.5"
SIGNIFICANT_Z = 2.0  # |delta| / paired se above which a difference is called real


# -- methods ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Method:
    key: str
    label: str
    kind: str  # "magnitude" | "wanda" | "ours"
    statistic: str | None = None
    sink_weighting: bool | None = None

    @property
    def twin(self) -> str | None:
        """Key of the sink_weighting=False method with the same statistic (ours, on only)."""
        return self.key.replace("_on", "_off") if self.kind == "ours" and self.sink_weighting else None


MAGNITUDE = Method("magnitude", "magnitude (per-row abs W)", "magnitude")
WANDA_CLEAN = Method("wanda_clean", "llm-compressor Wanda, clean rows", "wanda")
OURS = (
    Method("ours_rms_off", "ours rms, sink off", "ours", "rms", False),
    Method("ours_rms_on", "ours rms, sink on", "ours", "rms", True),
    Method("ours_son_off", "ours sum_of_norms, sink off", "ours", "sum_of_norms", False),
    Method("ours_son_on", "ours sum_of_norms, sink on", "ours", "sum_of_norms", True),
)
CALIBRATED = (WANDA_CLEAN, *OURS)
ALL_METHODS = (MAGNITUDE, *CALIBRATED)
BY_KEY = {m.key: m for m in ALL_METHODS}


@dataclass(frozen=True)
class Sparsity:
    key: str  # as given on the command line: "0.5", "2:4"
    sparsity: float
    mask_structure: str  # "0:0" or "N:M"

    @property
    def nm(self) -> tuple[int, int]:
        n, m = (int(p) for p in self.mask_structure.split(":"))
        return n, m

    @property
    def label(self) -> str:
        return self.mask_structure if self.nm[0] else f"{self.sparsity:.0%}"


def parse_sparsity(text: str) -> Sparsity:
    """``"0.6"`` -> 60 % unstructured, ``"2:4"`` -> N:M."""
    if ":" in text:
        n, m = (int(p) for p in text.split(":"))
        if not 0 < n < m:
            raise argparse.ArgumentTypeError(f"N:M needs 0 < N < M, got {text}")
        return Sparsity(text, n / m, f"{n}:{m}")
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"sparsity must be in (0, 1), got {text}")
    return Sparsity(text, value, "0:0")


# -- data -----------------------------------------------------------------------------------------
def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(MODEL_DIR)


def load_model():
    """Fresh dense tiny-dlm in float32 (weights are stored in bf16)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=torch.float32).eval()


def heldout_windows(tokenizer, num_windows: int) -> torch.Tensor:
    """The fixed evaluation windows ``[num_windows, SEQ_LEN]``, drawn once per process."""
    from sink_modifier.data import load_documents, token_windows

    return token_windows(load_documents(HELDOUT), tokenizer, SEQ_LEN, num_windows, seed=EVAL_WINDOW_SEED)


def noised_set(clean: torch.Tensor, tokenizer, config, seed: int):
    """Clean windows ``[N, T]`` plus their noised copies at the 10 LLaDA timesteps (N x 10 rows).

    Row ``(s, j)`` is noised by its own generator of ``(seed, s, j)``, so the set built from the
    first k windows equals the first 10 k rows of the set built from more.
    """
    from sink_modifier.process import MaskTokenProcess, build_calibration, resolve_mask_token_id

    return build_calibration(
        clean, tokenizer, process=MaskTokenProcess(resolve_mask_token_id(tokenizer, config)),
        seq_len=SEQ_LEN, num_samples=int(clean.shape[0]), seed=seed, config=config,
    )


def calibration_sets(args, tokenizer) -> tuple[dict, object]:
    """Per-seed quality calibration sets and the cost set (first seed, ``--cost-samples`` windows).

    The corpus is read once and tokenized once per seed (``token_windows`` picks windows by seed;
    the first k windows of a seed do not depend on how many are drawn).
    """
    from sink_modifier.data import load_documents, token_windows

    config = load_model().config
    corpus = load_documents(CORPUS, max_chars=args.corpus_chars)
    cals, cost_cal = {}, None
    for i, seed in enumerate(args.seeds):
        count = max(args.num_samples, args.cost_samples) if i == 0 else args.num_samples
        clean = token_windows(corpus, tokenizer, SEQ_LEN, count, seed=seed)
        cals[seed] = noised_set(clean[: args.num_samples], tokenizer, config, seed)
        if i == 0:
            cost_cal = noised_set(clean[: args.cost_samples], tokenizer, config, seed)
    log(f"calibration: seeds {args.seeds}, {args.num_samples} windows x 10 timesteps; cost set {len(cost_cal)} rows")
    return cals, cost_cal


def rows_loader(ids: torch.Tensor, batch_size: int) -> torch.utils.data.DataLoader:
    """Rows in order as ``{"input_ids", "attention_mask"}`` batches (what oneshot consumes)."""
    rows = [{"input_ids": r, "attention_mask": torch.ones_like(r)} for r in ids]
    return torch.utils.data.DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]},
    )


# -- pruning --------------------------------------------------------------------------------------
def decoder_linears(model) -> dict[str, torch.nn.Linear]:
    """Every Linear inside the decoder layers (the modules all methods prune; lm_head excluded)."""
    return {
        f"layers.{i}.{name}": module
        for i, layer in enumerate(model.model.layers)
        for name, module in layer.named_modules()
        if isinstance(module, torch.nn.Linear)
    }


def achieved_sparsity(model) -> float:
    from sink_modifier.export.sparsity import sparsity_report

    return sparsity_report(model)["overall"]  # every Linear but the output head: tiny-dlm's decoder layers


def magnitude_prune(model, spec: Sparsity) -> None:
    """Per-row |W| pruning: Wanda's mask with a unit activation scale."""
    from sink_modifier.modifiers.wanda_scoring import magnitude_prune as prune_by_magnitude

    prune_by_magnitude(decoder_linears(model).values(), spec.sparsity, *spec.nm)


def make_modifier(method: Method, spec: Sparsity):
    if method.kind == "wanda":
        from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier

        return WandaPruningModifier(
            sparsity=spec.sparsity,
            mask_structure=spec.mask_structure,
            targets=["Linear"],
            ignore=["re:.*lm_head"],
        )
    if method.kind == "ours":
        from sink_modifier import SinkAwareWandaPruningModifier

        return SinkAwareWandaPruningModifier(
            sparsity=spec.sparsity,
            mask_structure=spec.mask_structure,
            sink_weighting=method.sink_weighting,
            statistic=method.statistic,
            ignore=["re:.*lm_head"],  # as the upstream arms: the head stays dense in every arm
        )
    raise ValueError(f"{method.key} is not calibrated")


def oneshot_prune(model, tokenizer, modifier, rows: torch.Tensor, batch_size: int) -> float:
    """Run llm-compressor's sequential oneshot; returns the wall time of the call."""
    from llmcompressor import oneshot

    loader = rows_loader(rows, batch_size)
    start = time.perf_counter()
    oneshot(model=model, processor=tokenizer, dataset=loader, recipe=[modifier], pipeline="sequential")
    return time.perf_counter() - start


def calibration_rows(method: Method, cal) -> torch.Tensor:
    """Clean windows for llm-compressor's Wanda, noised rows for ours."""
    return cal.clean_ids if method.kind == "wanda" else cal.input_ids


# -- evaluation -----------------------------------------------------------------------------------
def evaluate(model, windows: torch.Tensor, mask_token_id: int, args) -> dict:
    """NELBO (+ per-window values) and masked CE at ``CE_RATIO`` on the fixed held-out windows."""
    from sink_modifier.scoring import masked_cross_entropy, nelbo

    start = time.perf_counter()
    bound = nelbo(
        model, windows, mask_token_id, mc_samples=args.mc_samples, seed=EVAL_MASK_SEED,
        batch_size=args.eval_batch_size,
    )
    ce = masked_cross_entropy(
        model, windows, mask_token_id, CE_RATIO, seed=EVAL_MASK_SEED, batch_size=args.eval_batch_size
    )
    return {
        "nelbo": bound.nelbo,
        "nelbo_stderr": bound.stderr,
        "per_window": list(bound.per_window),
        "masked_ce": ce["ce"],
        "masked_acc": ce["accuracy"],
        "eval_s": time.perf_counter() - start,
    }


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-window difference ``a - b`` (nan for one window)."""
    from sink_modifier.scoring.paired import paired_difference

    mean, se = paired_difference(a, b)
    return mean, float("nan") if se is None else se


def mean_windows(per_seed: list[list[float]]) -> list[float]:
    """Per-window values averaged over seeds (windows are identical across seeds)."""
    return torch.tensor(per_seed, dtype=torch.float64).mean(0).tolist()


def stderr_of(values: list[float]) -> float:
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.std(unbiased=True) / math.sqrt(t.numel())) if t.numel() > 1 else float("nan")


# -- the quality sweep -------------------------------------------------------------------------
def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prune_and_evaluate(method, spec, cal, tokenizer, windows, mask_token_id, args) -> dict:
    model = load_model()
    if method.kind == "magnitude":
        start = time.perf_counter()
        magnitude_prune(model, spec)
        prune_s = time.perf_counter() - start
    else:
        rows = calibration_rows(method, cal)
        prune_s = oneshot_prune(model, tokenizer, make_modifier(method, spec), rows, args.calib_batch_size)
    result = {"prune_s": prune_s, "achieved_sparsity": achieved_sparsity(model)}
    result.update(evaluate(model, windows, mask_token_id, args))
    if cal is not None and method.kind != "magnitude":
        result["calibration_rows"] = int(calibration_rows(method, cal).shape[0])
    del model
    gc.collect()
    log(
        f"{spec.label:>4} {method.key:<13} NELBO {result['nelbo']:.4f} ± {result['nelbo_stderr']:.4f}  "
        f"CE@{CE_RATIO} {result['masked_ce']:.4f}  prune {prune_s:.1f}s eval {result['eval_s']:.1f}s"
    )
    return result


def run_quality(args, specs: list[Sparsity], tokenizer, cals: dict) -> dict:
    """Dense once, magnitude once per sparsity, every calibrated method per seed and sparsity."""
    mask_token_id = int(load_model().config.mask_token_id)
    windows = heldout_windows(tokenizer, args.eval_windows)
    log(f"held-out windows {tuple(windows.shape)}")

    dense_model = load_model()
    dense = evaluate(dense_model, windows, mask_token_id, args)
    del dense_model
    log(f"dense NELBO {dense['nelbo']:.4f} ± {dense['nelbo_stderr']:.4f}  CE {dense['masked_ce']:.4f}")
    magnitude = {
        s.key: prune_and_evaluate(MAGNITUDE, s, None, tokenizer, windows, mask_token_id, args) for s in specs
    }
    runs: dict[str, dict] = {}
    calibration: dict[str, dict] = {}
    for seed in args.seeds:
        cal = cals[seed]
        calibration[str(seed)] = cal.describe()
        runs[str(seed)] = {
            s.key: {
                m.key: prune_and_evaluate(m, s, cal, tokenizer, windows, mask_token_id, args)
                for m in CALIBRATED
            }
            for s in specs
        }
    return {"dense": dense, "magnitude": magnitude, "runs": runs, "calibration": calibration}


def summarize(quality: dict, specs: list[Sparsity], seeds: list[int]) -> dict:
    """Mean over seeds, stderr, per-seed values and paired deltas for every (sparsity, method)."""
    dense = quality["dense"]
    summary: dict[str, dict] = {}
    for spec in specs:
        per_method: dict[str, dict] = {}
        windows_of: dict[str, list[float]] = {}
        seed_windows_of: dict[str, list[list[float]]] = {}
        for method in ALL_METHODS:
            if method.kind == "magnitude":
                results = [quality["magnitude"][spec.key]] * len(seeds)
            else:
                results = [quality["runs"][str(s)][spec.key][method.key] for s in seeds]
            seed_windows_of[method.key] = [r["per_window"] for r in results]
            windows_of[method.key] = mean_windows(seed_windows_of[method.key])
            per_method[method.key] = {
                "nelbo": sum(r["nelbo"] for r in results) / len(results),
                "nelbo_stderr": stderr_of(windows_of[method.key]),
                "nelbo_per_seed": [r["nelbo"] for r in results],
                "masked_ce": sum(r["masked_ce"] for r in results) / len(results),
                "masked_ce_per_seed": [r["masked_ce"] for r in results],
                "delta_vs_dense": paired(windows_of[method.key], dense["per_window"]),
                "seed_independent": method.kind == "magnitude",
            }
        for method in ALL_METHODS:
            entry = per_method[method.key]
            if method.twin:
                entry["delta_vs_off"] = paired(windows_of[method.key], windows_of[method.twin])
                entry["delta_vs_off_per_seed"] = [
                    paired(a, b) for a, b in zip(seed_windows_of[method.key], seed_windows_of[method.twin])
                ]
                entry["ce_delta_vs_off"] = entry["masked_ce"] - per_method[method.twin]["masked_ce"]
            if method.kind == "ours":
                entry["delta_vs_wanda_clean"] = paired(windows_of[method.key], windows_of[WANDA_CLEAN.key])
        summary[spec.key] = per_method
    return summary


# -- cost ---------------------------------------------------------------------------------------
current_rss_mib = rss_mib  # VmRSS now


def cost_child(args) -> None:
    """Subprocess body: load model and rows, time one oneshot, print one JSON line."""
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    model = load_model()
    rows = torch.load(args.rows, weights_only=True)
    method = OURS[1] if args.cost_child == "ours" else Method("wanda_noised", "llm-compressor Wanda", "wanda")
    modifier = make_modifier(method, parse_sparsity(COST_SPARSITY))
    load_peak = peak_rss_mib()
    peak_reset = reset_peak_rss()
    baseline_rss = current_rss_mib()
    cpu_start = time.process_time()
    wall = oneshot_prune(model, tokenizer, modifier, rows, args.calib_batch_size)
    cpu = time.process_time() - cpu_start
    peak = peak_rss_mib()
    ru_maxrss = ru_maxrss_mib()
    print("COST " + json.dumps({
        "method": args.cost_child,
        "rows": int(rows.shape[0]),
        "wall_s": wall,
        "cpu_s": cpu,
        "peak_rss_mib": peak,  # during oneshot when peak_reset, else over the process lifetime
        "peak_reset": peak_reset,
        "rss_after_load_mib": baseline_rss,
        "peak_rss_while_loading_mib": load_peak,
        "ru_maxrss_mib": ru_maxrss,
        "peak_minus_loaded_mib": peak - baseline_rss,
        "achieved_sparsity": achieved_sparsity(model),
    }), flush=True)


def run_cost_child(which: str, rows_path: str, args) -> dict:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--cost-child", which, "--rows", rows_path,
        "--calib-batch-size", str(args.calib_batch_size), "--threads", str(args.threads),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("COST ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"cost child {which} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("COST "):])


def run_cost(args, cal) -> dict:
    """Ours (sink on, rms) vs llm-compressor Wanda, each in a fresh process on identical noised rows."""
    with tempfile.TemporaryDirectory() as tmp:
        rows_path = str(Path(tmp) / "rows.pt")
        torch.save(cal.input_ids, rows_path)
        runs = {which: [] for which in ("upstream", "ours")}
        for _ in range(args.cost_repeats):
            for which in runs:  # alternate so drifting machine load hits both alike
                load_before = os.getloadavg()[0]
                runs[which].append(run_cost_child(which, rows_path, args))
                runs[which][-1]["loadavg_1min"] = [load_before, os.getloadavg()[0]]
                log(f"cost {which}: {runs[which][-1]['wall_s']:.1f}s, peak RSS {runs[which][-1]['peak_rss_mib']:.0f} MiB")
    best = {which: min(r, key=lambda x: x["wall_s"]) for which, r in runs.items()}
    return {
        "rows": int(cal.input_ids.shape[0]),
        "sparsity": COST_SPARSITY,
        "seed": cal.seed,
        "repeats": args.cost_repeats,
        "calib_batch_size": args.calib_batch_size,
        "threads": args.threads,
        "runs": runs,
        "best": best,
        "wall_ratio": best["ours"]["wall_s"] / best["upstream"]["wall_s"],
        "cpu_ratio": best["ours"]["cpu_s"] / best["upstream"]["cpu_s"],
        "peak_rss_ratio": best["ours"]["peak_rss_mib"] / best["upstream"]["peak_rss_mib"],
        "net_rss_ratio": best["ours"]["peak_minus_loaded_mib"] / max(best["upstream"]["peak_minus_loaded_mib"], 1e-9),
    }


# -- reporting ----------------------------------------------------------------------------------
def fmt_delta(pair, digits: int = 4) -> str:
    mean, se = pair
    return f"{mean:+.{digits}f} ± {se:.{digits}f}"


def quality_table(summary: dict, quality: dict, specs: list[Sparsity], seeds: list[int]) -> str:
    seed_cols = " | ".join(f"NELBO s{s}" for s in seeds)
    head = (
        f"| sparsity | method | NELBO ± se | {seed_cols} | CE@{CE_RATIO} | Δ vs dense ± paired se "
        f"| Δ vs off ± paired se | Δ vs llmc Wanda ± paired se |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    dense = quality["dense"]
    blank_seeds = " | ".join("" for _ in seeds)
    lines.append(
        f"| 0% | dense | {dense['nelbo']:.4f} ± {dense['nelbo_stderr']:.4f} | {blank_seeds} | "
        f"{dense['masked_ce']:.4f} | | | |"
    )
    for spec in specs:
        for method in ALL_METHODS:
            e = summary[spec.key][method.key]
            per_seed = " | ".join(f"{v:.4f}" for v in e["nelbo_per_seed"])
            if e["seed_independent"]:
                per_seed = " | ".join(["(no data)"] * len(seeds))
            off = fmt_delta(e["delta_vs_off"]) if "delta_vs_off" in e else ""
            vs_wanda = fmt_delta(e["delta_vs_wanda_clean"]) if "delta_vs_wanda_clean" in e else ""
            lines.append(
                f"| {spec.label} | {method.label} | {e['nelbo']:.4f} ± {e['nelbo_stderr']:.4f} | {per_seed} | "
                f"{e['masked_ce']:.4f} | {fmt_delta(e['delta_vs_dense'])} | {off} | {vs_wanda} |"
            )
    return "\n".join(lines)


def min_max_load(cost: dict) -> str:
    loads = [v for runs in cost["runs"].values() for r in runs for v in r.get("loadavg_1min", [])]
    return f"{min(loads):.1f}–{max(loads):.1f}" if loads else "not recorded"


def cost_table(cost: dict) -> str:
    up, ours = cost["best"]["upstream"], cost["best"]["ours"]
    return "\n".join([
        "| pruner | rows | oneshot wall s | oneshot CPU s | peak RSS in oneshot MiB | RSS after load MiB | peak − loaded MiB |",
        "|---|---|---|---|---|---|---|",
        f"| llm-compressor Wanda | {up['rows']} | {up['wall_s']:.1f} | {up['cpu_s']:.1f} | {up['peak_rss_mib']:.0f} | "
        f"{up['rss_after_load_mib']:.0f} | {up['peak_minus_loaded_mib']:.0f} |",
        f"| ours (sink on, rms) | {ours['rows']} | {ours['wall_s']:.1f} | {ours['cpu_s']:.1f} | {ours['peak_rss_mib']:.0f} | "
        f"{ours['rss_after_load_mib']:.0f} | {ours['peak_minus_loaded_mib']:.0f} |",
        f"| **ratio ours / upstream** | | **{cost['wall_ratio']:.2f}×** | **{cost['cpu_ratio']:.2f}×** | "
        f"**{cost['peak_rss_ratio']:.2f}×** | | **{cost['net_rss_ratio']:.2f}×** |",
    ])


def prune_time_ratios(quality: dict) -> dict[str, dict]:
    """Sink-on / sink-off prune wall time per statistic, over every (seed, sparsity) of the sweep.

    The two runs of a pair prune identical rows back to back in one process, and sink-off runs
    llm-compressor's own statistic, so the ratio is the sink pass's overhead measured in situ.
    """
    out = {}
    for method in OURS:
        if not method.twin:
            continue
        ratios = sorted(
            cell[method.key]["prune_s"] / cell[method.twin]["prune_s"]
            for per_seed in quality["runs"].values()
            for cell in per_seed.values()
        )
        out[method.statistic] = {"median": ratios[len(ratios) // 2] if len(ratios) % 2 else
                                 (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2,
                                 "min": ratios[0], "max": ratios[-1], "n": len(ratios)}
    return out


def verdict(pair) -> str:
    mean, se = pair
    if not math.isfinite(se) or se == 0 or abs(mean) < SIGNIFICANT_Z * se:
        return "noise"
    return "better" if mean < 0 else "worse"


def findings(summary: dict, quality: dict, specs: list[Sparsity], seeds: list[int], cost: dict | None) -> str:
    """The 'what this shows' paragraph, derived from the numbers (nothing hard-coded)."""
    sentences = []
    by_verdict: dict[str, list[str]] = {"better": [], "worse": [], "noise": []}
    for spec in specs:
        for method in OURS:
            if not method.twin:
                continue
            e = summary[spec.key][method.key]
            mean, se = e["delta_vs_off"]
            gap = summary[spec.key][method.twin]["delta_vs_dense"][0]
            share = f", {abs(mean) / gap:.0%} of the off model's gap to dense" if gap > 0 else ""
            signs = {math.copysign(1, d) for d, _ in e["delta_vs_off_per_seed"]}
            agree = "" if len(seeds) < 2 else ("; seeds agree in sign" if len(signs) == 1 else "; seeds disagree in sign")
            by_verdict[verdict((mean, se))].append(
                f"{spec.label} {method.statistic} ({mean:+.4f} ± {se:.4f} nats, {abs(mean) / se:.1f} se{share}{agree})"
            )
    total = sum(len(v) for v in by_verdict.values())
    sentences.append(
        f"Sink weighting vs the identical pipeline without it (paired over {len(seeds)} seed(s), "
        f"'real' = |Δ| ≥ {SIGNIFICANT_Z:g} paired se): lower NELBO in {len(by_verdict['better'])} of {total} "
        f"(sparsity, statistic) cells, higher in {len(by_verdict['worse'])}, within noise in {len(by_verdict['noise'])}."
    )
    for name, text in (("better", "It helps at"), ("worse", "It hurts at"), ("noise", "Within noise at")):
        if by_verdict[name]:
            sentences.append(f"{text}: " + "; ".join(by_verdict[name]) + ".")
    calib = []
    for spec in specs:
        mean, se = summary[spec.key]["ours_rms_off"]["delta_vs_wanda_clean"]
        calib.append(f"{spec.label} {mean:+.4f} ± {se:.4f} ({verdict((mean, se))})")
    sentences.append(
        "Noised vs clean calibration alone (ours rms sink-off minus llm-compressor Wanda on clean rows; "
        "10× more rows, same statistic): " + "; ".join(calib) + "."
    )
    best = []
    for spec in specs:
        ranked = sorted(ALL_METHODS, key=lambda m: summary[spec.key][m.key]["nelbo"])
        best.append(f"{spec.label}: {ranked[0].label}")
    sentences.append("Lowest mean NELBO per sparsity — " + "; ".join(best) + ".")
    if cost:
        sentences.append(
            f"Cost on {cost['rows']} identical noised rows: ours takes {cost['wall_ratio']:.2f}× the wall time "
            f"({cost['cpu_ratio']:.2f}× the CPU time) "
            f"and {cost['peak_rss_ratio']:.2f}× the peak RSS of llm-compressor's Wanda "
            f"({cost['net_rss_ratio']:.2f}× net of the loaded model and data; 1-min load average "
            f"{min_max_load(cost)})."
        )
    ratios = prune_time_ratios(quality)
    sentences.append(
        "Inside the sweep, sink-on pruning took "
        + " and ".join(f"{r['median']:.2f}× ({stat})" for stat, r in ratios.items())
        + " the wall time of its sink-off twin on the same rows (median over "
        + f"{next(iter(ratios.values()))['n']} pairs): the extra dense forward that reads attention mass."
    )
    return " ".join(sentences)


def markdown(report: dict, specs: list[Sparsity]) -> str:
    cfg, seeds = report["config"], report["config"]["seeds"]
    parts = [
        "# Held-out quality of sink-aware Wanda on tiny-dlm",
        "",
        f"Generated {report['date']} by `{report['command']}` in {report['runtime_s'] / 60:.1f} min "
        f"({report['machine']['cpu_count']} CPUs, torch {report['versions']['torch']}, transformers "
        f"{report['versions']['transformers']}, llmcompressor {report['versions']['llmcompressor']}).",
        "",
        f"Held-out: {cfg['eval_windows']} fixed windows × {SEQ_LEN} tokens of `heldout.txt.gz`; NELBO = LLaDA "
        f"Monte-Carlo bound, {cfg['mc_samples']} stratified masks/window (nats/token, lower is better); "
        f"CE@{CE_RATIO} = masked CE with half of each window masked. Evaluation masks are fixed, so Δ columns "
        "are paired per-window differences (mean over seeds ± se over windows); negative = better than the reference. "
        f"Calibration per seed (seeds {seeds}): {cfg['num_samples']} corpus windows; llm-compressor Wanda "
        f"sees them clean ({cfg['num_samples']} rows), ours sees them noised at the 10 LLaDA timesteps "
        f"({cfg['num_samples'] * 10} rows). NELBO ± se: se over windows of the seed-averaged per-window NELBO. "
        "Magnitude and dense use no data and are evaluated once.",
        "",
        quality_table(report["summary"], report["quality"], specs, seeds),
        "",
    ]
    if report.get("cost"):
        parts += [
            f"## Pruning cost ({report['cost']['rows']} noised rows, sparsity {COST_SPARSITY}, "
            f"calibration batch {report['cost']['calib_batch_size']}, fresh process each, "
            f"fastest of {report['cost']['repeats']})",
            "",
            cost_table(report["cost"]),
            "",
            "Wall time brackets the `oneshot` call only; CPU time is the process CPU time over the same "
            "span (less sensitive to other load on the machine). Peak RSS is `VmHWM` counted from after "
            "model and data loading (the counter is reset there), so it is the pruner's own peak. "
            f"1-min load average around the cost runs: {min_max_load(report['cost'])} on "
            f"{report['machine']['cpu_count']} CPUs (above the CPU count, other jobs competed and wall "
            "times are inflated).",
            "",
            "In the quality sweep itself (same process, identical rows, pairs run back to back), prune wall "
            "time of sink on / sink off: "
            + "; ".join(
                f"{stat} median {r['median']:.2f}× (range {r['min']:.2f}–{r['max']:.2f}, {r['n']} pairs)"
                for stat, r in prune_time_ratios(report["quality"]).items()
            )
            + ". Sink off with `rms` is llm-compressor's Wanda statistic on the same rows.",
            "",
        ]
        if report["cost"].get("command"):
            parts[-1:-1] = [
                "",
                f"Cost re-measured {report['cost']['date']} by `{report['cost']['command']}` "
                f"in {report['cost']['runtime_s'] / 60:.1f} min.",
            ]
    parts += ["## What this shows", "", report["findings"], ""]
    return "\n".join(parts)


def versions() -> dict:
    import llmcompressor
    import transformers

    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "llmcompressor": llmcompressor.__version__,
        "python": platform.python_version(),
    }


# -- entry point --------------------------------------------------------------------------------
def update_cost(args) -> None:
    """Re-measure only the cost comparison and rewrite it into an existing quality.json / .md.

    Timings are sensitive to other load on the machine; this lets them be repeated on a quiet
    machine without re-running the quality sweep (which is deterministic).
    """
    started = time.perf_counter()
    path = args.out_dir / "quality.json"
    report = json.loads(path.read_text())
    args.seeds = report["config"]["seeds"][:1]
    specs = [parse_sparsity(s) for s in report["config"]["sparsities"]]
    _, cost_cal = calibration_sets(args, load_tokenizer())
    cost = run_cost(args, cost_cal)
    cost.update(
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        runtime_s=time.perf_counter() - started,
    )
    report["cost"] = cost
    report["prune_time_ratios"] = prune_time_ratios(report["quality"])
    report["findings"] = findings(report["summary"], report["quality"], specs, report["config"]["seeds"], cost)
    write_report(report, specs, args.out_dir)


def write_report(report: dict, specs: list[Sparsity], out_dir: Path) -> None:
    text = markdown(report, specs)
    print(text)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(report, indent=1) + "\n")
    (out_dir / "quality.md").write_text(text)
    log(f"wrote {out_dir / 'quality.json'} and quality.md")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="calibration seeds (windows + noise)")
    p.add_argument("--sparsities", nargs="+", default=["0.5", "0.6", "0.7", "2:4"])
    p.add_argument("--num-samples", type=int, default=16, help="calibration windows per seed (x10 noised rows for ours)")
    p.add_argument("--eval-windows", type=int, default=32, help="fixed held-out windows")
    p.add_argument("--mc-samples", type=int, default=8, help="NELBO masks per window")
    p.add_argument("--eval-batch-size", type=int, default=16)
    p.add_argument("--calib-batch-size", type=int, default=16, help="rows per oneshot batch (statistics are batch-size independent)")
    p.add_argument("--cost-samples", type=int, default=16, help="windows (x10 noised rows) for the cost comparison")
    p.add_argument("--cost-repeats", type=int, default=2, help="alternating runs per pruner; the fastest is reported")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-cost", action="store_true", help="skip the cost comparison")
    p.add_argument("--cost-only", action="store_true",
                   help="re-measure only the cost comparison into an existing OUT_DIR/quality.json")
    p.add_argument("--corpus-chars", type=int, default=None, help="read only this many characters of the corpus")
    p.add_argument("--out-dir", type=Path, default=None, help=f"default {RESULTS} ({tempfile.gettempdir()}/sink_quality_quick with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1 seed, 50 %%, few windows (< 2 min)")
    p.add_argument("--cost-child", choices=["ours", "upstream"], help=argparse.SUPPRESS)
    p.add_argument("--rows", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.sparsities = args.seeds[:1], ["0.5"]
        args.num_samples, args.eval_windows, args.mc_samples = 1, 4, 2
        args.cost_samples, args.cost_repeats = 1, 1
        args.corpus_chars = args.corpus_chars or 500_000
    if args.out_dir is None:
        args.out_dir = Path(tempfile.gettempdir()) / "sink_quality_quick" if args.quick else RESULTS
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cost_child:
        cost_child(args)
        return
    if args.cost_only:
        update_cost(args)
        return
    started = time.perf_counter()
    specs = [parse_sparsity(s) for s in args.sparsities]
    tokenizer = load_tokenizer()
    cals, cost_cal = calibration_sets(args, tokenizer)
    cost = None if args.no_cost else run_cost(args, cost_cal)
    quality = run_quality(args, specs, tokenizer, cals)
    summary = summarize(quality, specs, args.seeds)
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                   if k not in ("cost_child", "rows", "cost_only")}
                  | {"seq_len": SEQ_LEN, "eval_window_seed": EVAL_WINDOW_SEED, "eval_mask_seed": EVAL_MASK_SEED,
                     "ce_ratio": CE_RATIO, "model": str(Path("..") / MODEL_DIR.relative_to(REPO.parent)),
                     "methods": [asdict(m) for m in ALL_METHODS],
                     "sparsity_specs": [asdict(s) for s in specs]},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "processor": platform.machine()},
        "quality": quality,
        "summary": summary,
        "cost": cost,
    }
    report["prune_time_ratios"] = prune_time_ratios(quality)
    report["runtime_s"] = time.perf_counter() - started
    report["findings"] = findings(summary, quality, specs, args.seeds, cost)
    write_report(report, specs, args.out_dir)


if __name__ == "__main__":
    main()
