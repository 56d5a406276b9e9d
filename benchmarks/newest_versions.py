"""Do our checkpoints still load, with the same logits, under the newest transformers and compressed-tensors on PyPI?

    python benchmarks/newest_versions.py     # writes benchmarks/results/newest_versions.{json,md}

1. a side venv OUTSIDE the repository (``--venv``, default ``~/.cache/sink-modifier/newest-ct-tf``)
   gets ``pip install transformers compressed-tensors accelerate`` (newest of each) with
   ``torch==2.13.0+cpu``, our torch: neither newest package needs a newer one, and PyPI's newer
   torch wheels are CUDA builds (the torch move is its own check);
2. dense, pruned (``sink_wanda_50``), W8A8, W4A16 and FP8 checkpoints of tiny-ar and tiny-dlm are
   built with our CLI in OUR environment (``--num-samples`` windows; reused when present);
3. ``benchmarks/newest_versions_worker.py`` loads each with plain ``from_pretrained`` (and, for
   quantized ones, ``CompressedTensorsConfig(dequantize=True)`` as ``sink_modifier`` does) under our
   python and under the venv's, on the same token ids, and the logits are compared.

A row "breaks" when the newest versions fail to load a checkpoint ours load, or the logits move
by more than :data:`LOGIT_BOUND`. Exit 1 when any row breaks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")

import torch  # noqa: E402
from bench_paths import REPO, RESULTS, SHARED  # noqa: E402
from runtime_checkpoints import build_checkpoints, log  # noqa: E402
from side_venv import ensure_venv  # noqa: E402

WORKER = REPO / "benchmarks" / "newest_versions_worker.py"
DEFAULT_VENV = Path("~/.cache/sink-modifier/newest-ct-tf")
PACKAGES = ["torch==2.13.0+cpu", "transformers", "compressed-tensors", "accelerate"]
CHECKPOINTS = ("dense", "sink_wanda_50", "sink_wanda_50_w8a8", "sink_wanda_2of4_w4a16", "sink_wanda_2of4_fp8_dynamic")
# float32 logits of the same weights and ops: only a changed kernel or a changed decompression
# moves them; 1e-4 is far above fp32 reordering and far below any real change
LOGIT_BOUND = 1e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--models", default="tiny-ar,tiny-dlm", help="folders under ../shared/models")
    p.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "vllm_cpu", help="checkpoints (reused)")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--output", type=Path, default=RESULTS / "newest_versions.json")
    return p.parse_args(argv)


def run_worker(python: Path, job: dict, out: Path) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(job, f)
    done = subprocess.run([str(python), str(WORKER), f.name, str(out)], stdout=sys.stderr, stderr=subprocess.PIPE,
                          text=True)
    os.unlink(f.name)
    if done.returncode != 0:
        raise SystemExit(f"error: the worker failed under {python}:\n{done.stderr[-3000:]}")
    return json.loads((out / "result.json").read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    python = ensure_venv(args.venv, PACKAGES)
    entries = []
    for model_name in args.models.split(","):
        model = (SHARED / "models" / model_name).resolve()
        if not (model / "config.json").is_file():
            print(f"error: {model} has no config.json; --models names folders of ../shared/models", file=sys.stderr)
            return 2
        folders = build_checkpoints(model, list(CHECKPOINTS), args.work_dir.resolve(), args.num_samples)
        for name, folder in folders.items():
            if isinstance(folder, str):
                raise SystemExit(f"error: {model_name} {name} could not be built: {folder}")
            quantized = "quantization_config" in json.loads((folder / "config.json").read_text())
            for mode in ("plain", "dequantize") if quantized else ("plain",):
                entries.append({"key": f"{model_name}-{name}-{mode}", "model": model_name, "checkpoint": name,
                                "mode": mode, "path": str(folder)})
    ids = torch.randint(4, 8192, (2, 32), generator=torch.Generator().manual_seed(0)).tolist()
    job = {"ids": ids, "entries": entries}
    with tempfile.TemporaryDirectory() as tmp:
        log("loading every checkpoint under our versions")
        ours = run_worker(Path(sys.executable), job, Path(tmp) / "ours")
        log(f"loading every checkpoint under the newest versions ({python})")
        newest = run_worker(python, job, Path(tmp) / "newest")
        rows = []
        for entry in entries:
            key = entry["key"]
            a, b = ours["entries"][key], newest["entries"][key]
            row = {k: entry[k] for k in ("model", "checkpoint", "mode")} | {
                "ours_loads": a["ok"], "newest_loads": b["ok"], "ours_error": a.get("error"),
                "newest_error": b.get("error"), "newest_warnings": b.get("warnings", []),
                "newest_weight_dtypes": b.get("weight_dtypes"),
                "schemes": f"{a.get('modules_with_scheme')} {a.get('status')} -> {b.get('modules_with_scheme')} {b.get('status')}"}
            if a["ok"] and b["ok"]:
                diff = (torch.load(Path(tmp) / "ours" / f"{key}.pt") - torch.load(Path(tmp) / "newest" / f"{key}.pt"))
                row["max_abs_logit_diff"] = float(diff.abs().max())
            row["breaks"] = (a["ok"] and not b["ok"]) or row.get("max_abs_logit_diff", 0.0) > LOGIT_BOUND
            rows.append(row)
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python benchmarks/newest_versions.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "ours": ours["versions"], "newest": newest["versions"], "logit_bound": LOGIT_BOUND,
              "ids": "2 x 32 random token ids (seed 0)", "num_samples": args.num_samples, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(report))
    print(table(rows))
    broken = [f"{r['model']}-{r['checkpoint']}-{r['mode']}" for r in rows if r["breaks"]]
    if broken:
        print(f"newest_versions: {len(broken)} row(s) break under the newest versions: {broken}", file=sys.stderr)
        return 1
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| model | checkpoint | load | ours | newest | max abs Δ logit | modules with a scheme (status): ours -> newest | breaks |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ours = "loads" if r["ours_loads"] else f"fails: {r['ours_error'][:120]}"
        new = "loads" if r["newest_loads"] else f"**fails**: {r['newest_error'][:160]}"
        diff = "-" if "max_abs_logit_diff" not in r else f"{r['max_abs_logit_diff']:.1e}"
        lines.append(f"| {r['model']} | {r['checkpoint']} | {r['mode']} | {ours} | {new} | {diff} | "
                     f"{r.get('schemes', '')} | {'**yes**' if r['breaks'] else 'no'} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    o, n = report["ours"], report["newest"]
    warned = sorted({w for r in report["rows"] for w in r["newest_warnings"]})
    warn_lines = "\n".join(f"- `{w}`" for w in warned) or "- none"
    return f"""# Our checkpoints under the newest transformers and compressed-tensors

`{report['command'].strip()}` ({report['date']}).
Ours: torch {o['torch']}, transformers {o['transformers']}, compressed-tensors {o['compressed-tensors']}.
Newest on PyPI (side venv): torch {n['torch']}, transformers {n['transformers']}, compressed-tensors
{n['compressed-tensors']}, accelerate {n['accelerate']}.
Checkpoints built with our CLI under our pins (`--num-samples {report['num_samples']}`); logits on
{report['ids']}, float32; `plain` = `AutoModelForCausalLM.from_pretrained(folder, dtype=float32)`,
`dequantize` = the same with `CompressedTensorsConfig(dequantize=True)` (how sink_modifier loads).
A row breaks when the newest versions fail where ours load or the logits move by more than
{report['logit_bound']:g}. A module that keeps its compressed-tensors scheme applies the scheme's
activation fake-quantization in its forward (dynamic per-token int8 for W8A8, fp8 for FP8); with
no scheme left the layer is a plain float Linear with dequantized weights.

{table(report['rows'])}

Warnings raised while loading under the newest versions:
{warn_lines}
"""


if __name__ == "__main__":
    sys.exit(main())
