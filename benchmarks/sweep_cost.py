"""What a sparsity sweep costs: ``sink-modifier sweep`` against separate ``sink-modifier prune`` runs.

One 4-point sweep (``0.5,0.6,0.7,2:4``) of ``tiny-dlm`` with ``recipes/paper_sink_wanda_50.yaml``
(8 calibration windows x the 10 LLaDA timesteps, 256 tokens, corpus text) in one process,
against the same four points pruned by four ``prune`` processes (fresh each, as a user would
run them), once with the default sequential pipeline and once with ``--pipeline basic``.

The sweep loads the model, reads and tokenizes the text and builds the calibration set once,
and its sink cache (``sink_cache_dir``) runs each batch's sink pass once for all points (in the
basic pipeline the Wanda statistics too); it also evaluates the dense model and every point
(here on 4 held-out windows x 2 Monte-Carlo masks), which the ``prune`` runs do not, so the
table shows its wall time with and without that evaluation. ``oneshot s`` are the seconds of
the ``oneshot`` call alone per point (``prune_seconds`` of each run's record): a sweep's first
point computes and stores the masks, the later ones reuse them.

Run ``python benchmarks/sweep_cost.py`` (about 5 minutes on 2 CPU cores); it writes
``benchmarks/results/sweep_cost.{md,json}``. Every process runs on one intra-op thread
(``OMP_NUM_THREADS=1``); the 1-minute load average before each run is recorded, since another
job on the machine slows every run alike.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_paths import CORPUS, HELDOUT, REPO, RESULTS, SHARED  # noqa: E402

MODEL = SHARED / "models" / "tiny-dlm"
RECIPE = REPO / "recipes" / "paper_sink_wanda_50.yaml"  # sink weighting on: the sink pass whose cache is measured

POINTS = ("0.5", "0.6", "0.7", "2:4")
CALIBRATION = ["--num-samples", "8", "--seq-len", "256", "--seed", "0"]
EVALUATION = ["--num-windows", "4", "--mc-samples", "2"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    return env


def _timed(argv: list[str]) -> dict:
    """Run ``sink-modifier ARGV`` in a fresh interpreter: wall and CPU seconds, load average before."""
    load = os.getloadavg()[0]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sink_modifier", *argv], capture_output=True, text=True,
                          env=_env(), cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"sink-modifier {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "loadavg_1min": round(load, 2), "stdout": done.stdout}


def measure(pipeline: str, work: Path) -> dict:
    common = ["--model", str(MODEL), "--recipe", str(RECIPE), "--data", str(CORPUS), *CALIBRATION,
              "--pipeline", pipeline]
    out = work / f"sweep-{pipeline}"
    run = _timed(["sweep", *common, "--sparsities", ",".join(POINTS), "--eval-data", str(HELDOUT), *EVALUATION,
                  "--output", str(out), "--json"])
    result = json.loads(run.pop("stdout"))
    eval_s = result["dense"]["eval_seconds"] + sum(p["eval_seconds"] for p in result["points"])
    sweep = {**run, "eval_s": round(eval_s, 2), "wall_without_eval_s": round(run["wall_s"] - eval_s, 2),
             "points": [{"point": p["point"], "oneshot_s": p["prune_seconds"], "prune_cpu_s": p["prune_cpu_seconds"],
                         "cache": p["cache"],
                         "nelbo": p["value"]} for p in result["points"]]}
    separate = []
    for point in POINTS:
        recipe = _point_recipe(point, work)
        argv = ["prune", *common, "--output", str(work / f"prune-{pipeline}-{point.replace(':', 'of')}")]
        argv[argv.index("--recipe") + 1] = str(recipe)
        one = _timed(argv)
        one.pop("stdout")
        record = json.loads((Path(argv[argv.index("--output") + 1]) / "sink_modifier.json").read_text())
        separate.append({"point": point, **one, "oneshot_s": record["prune_seconds"]})
    total = {k: round(sum(r[k] for r in separate), 2) for k in ("wall_s", "cpu_s", "oneshot_s")}
    return {"pipeline": pipeline, "sweep": sweep, "separate": separate, "separate_total": total}


def _point_recipe(point: str, work: Path) -> Path:
    """``paper_sink_wanda_50.yaml`` at ``point``: the recipe a user would write for one prune run."""
    import yaml

    data = yaml.safe_load(RECIPE.read_text())
    settings = data["sparsity_stage"]["sparsity_modifiers"]["SinkAwareWandaPruningModifier"]
    if ":" in point:
        n, m = (int(x) for x in point.split(":"))
        settings.update(sparsity=n / m, mask_structure=point)
    else:
        settings.update(sparsity=float(point), mask_structure="0:0")
    path = work / f"sink_wanda-{point.replace(':', 'of')}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def report_md(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# Sweep cost: one `sink-modifier sweep` vs separate `prune` runs",
        "",
        f"Generated {report['created']} by `python benchmarks/sweep_cost.py` in {report['seconds'] / 60:.1f} min "
        f"({m['cpu_count']} CPUs, one intra-op thread per process; {report['versions']}). "
        f"1-min load average at start {m['loadavg_start']:.2f}, end {m['loadavg_end']:.2f} (each run's is in "
        "the JSON).",
        "",
        f"tiny-dlm, `recipes/paper_sink_wanda_50.yaml` at {', '.join(POINTS)}; calibration 8 windows x 10 timesteps of "
        "256 tokens (80 rows, batches of 1) from the corpus; the sweep also evaluates the dense model and each "
        "point on 4 held-out windows x 2 Monte-Carlo masks. `prune` = four fresh processes, one per point.",
        "",
        "| pipeline | run | wall s | CPU s | wall s without evaluation | sweep / separate, wall without eval | "
        "sweep / separate, CPU | oneshot wall s per point | CPU s per point |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        s, t = r["sweep"], r["separate_total"]
        per_sweep = " / ".join(f"{p['oneshot_s']:.1f}" for p in s["points"])
        per_sep = " / ".join(f"{p['oneshot_s']:.1f}" for p in r["separate"])
        cpu_sweep = " / ".join(f"{p['prune_cpu_s']:.1f}" for p in s["points"])
        cpu_sep = " / ".join(f"{p['cpu_s']:.1f}" for p in r["separate"])
        lines.append(f"| {r['pipeline']} | sweep (1 process) | {s['wall_s']:.1f} | {s['cpu_s']:.1f} | "
                     f"{s['wall_without_eval_s']:.1f} | {s['wall_without_eval_s'] / t['wall_s']:.2f}x | "
                     f"{s['cpu_s'] / t['cpu_s']:.2f}x (with eval) | {per_sweep} | {cpu_sweep} (prune step) |")
        lines.append(f"| {r['pipeline']} | 4 x prune | {t['wall_s']:.1f} | {t['cpu_s']:.1f} | {t['wall_s']:.1f} | "
                     f"1.00x | 1.00x | {per_sep} | {cpu_sep} (whole process) |")
    lines += ["", "Cache use per sweep point (sink masks: calibration batches reused / batches; statistics: "
              "runs reused, basic pipeline only):", ""]
    for r in report["runs"]:
        cells = []
        for p in r["sweep"]["points"]:
            parts = [f"{label} {c['hits']}/{c['hits'] + c['misses']}"
                     for kind, label in (("token_weights", "masks"), ("statistics", "stats"))
                     if (c := p["cache"].get(kind))]
            cells.append(f"{p['point']}: {', '.join(parts)}")
        lines.append(f"- {r['pipeline']}: " + "; ".join(cells))
    lines += ["", "## Findings", "", *report["findings"]]
    return "\n".join(lines) + "\n"


def findings(runs: list[dict]) -> list[str]:
    out = []
    for r in runs:
        s, t = r["sweep"], r["separate_total"]
        first, later = s["points"][0]["prune_cpu_s"], [p["prune_cpu_s"] for p in s["points"][1:]]
        saved = 1 - (sum(later) / len(later)) / first
        reused = "sink masks" if r["pipeline"] == "sequential" else "statistics, so no sink pass at all"
        out.append(
            f"- {r['pipeline']}: the sweep took {s['wall_s']:.1f} s wall / {s['cpu_s']:.1f} CPU s, of which "
            f"{s['eval_s']:.1f} s evaluating the dense model and 4 points, against {t['wall_s']:.1f} s / "
            f"{t['cpu_s']:.1f} CPU s for four prune processes (which evaluate nothing): "
            f"{t['wall_s'] / s['wall_without_eval_s']:.2f}x less wall time for the pruning. Inside the sweep a "
            f"point's prune step (calibration, pruning, saving) took {first:.1f} CPU s at the first point (the "
            f"masks computed and stored) and {min(later):.1f}–{max(later):.1f} CPU s at the later ones (reusing "
            f"the {reused}): {saved:.0%} less. The rest of the saving is the process start, model load, corpus "
            "tokenization and calibration build, paid once instead of four times."
        )
    first_counts = runs[0]["sweep"]["points"][0]["cache"].get("token_weights", {"hits": 0, "misses": 0})
    if first_counts["hits"]:
        out.append(
            f"- The first point already reuses {first_counts['hits']} of its "
            f"{first_counts['hits'] + first_counts['misses']} batches: at t = 1.0 every token is masked "
            "(p = (1 − ε)·1 + ε = 1), so every window's row at that timestep is the same all-mask row and "
            "one sink pass serves them all (masks are keyed by the batch's own tokens)."
        )
    return out


def load_note(report: dict) -> str:
    runs = [run for r in report["runs"] for run in (r["sweep"], *r["separate"])]
    loads = [run["loadavg_1min"] for run in runs]
    cpus = report["machine"]["cpu_count"]
    busy = max(loads) > cpus
    return (f"- Machine load: 1-minute load average {min(loads):.2f}–{max(loads):.2f} before the runs on {cpus} CPUs "
            "(the lead's benchmark ran on one core meanwhile). "
            + ("Above the CPU count wall times are inflated and scatter; compare the CPU seconds."
               if busy else "At or below the CPU count: wall and CPU seconds agree, both carry the comparison."))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", default="sequential,basic")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the md (and the findings) from the existing JSON, measuring nothing")
    args = parser.parse_args(argv)
    if args.report_only:
        report = json.loads((RESULTS / "sweep_cost.json").read_text())
        report["findings"] = findings(report["runs"]) + [load_note(report)]
        return _write(report)
    import torch
    import transformers

    start = time.perf_counter()
    report = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start": round(os.getloadavg()[0], 2)},
        "versions": f"torch {torch.__version__}, transformers {transformers.__version__}",
        "settings": {"model": str(MODEL), "recipe": str(RECIPE), "points": list(POINTS),
                     "calibration": CALIBRATION, "evaluation": EVALUATION},
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="sweep-cost-") as work:
        for pipeline in args.pipelines.split(","):
            report["runs"].append(measure(pipeline, Path(work)))
            print(f"{pipeline}: sweep {report['runs'][-1]['sweep']['wall_s']} s, "
                  f"4 x prune {report['runs'][-1]['separate_total']['wall_s']} s", file=sys.stderr)
    report["machine"]["loadavg_end"] = round(os.getloadavg()[0], 2)
    report["seconds"] = round(time.perf_counter() - start, 1)
    report["findings"] = findings(report["runs"]) + [load_note(report)]
    return _write(report)


def _write(report: dict) -> int:
    from sink_modifier.export.atomic import write_file_atomically, write_json_atomically

    write_json_atomically(RESULTS / "sweep_cost.json", report, pretty=True)
    text = report_md(report)
    write_file_atomically(RESULTS / "sweep_cost.md", lambda tmp: tmp.write_text(text))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
