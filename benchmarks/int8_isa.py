"""int8 ONNX export and ``eval --onnx`` per x86 ISA: this CPU natively, and AVX2 without VNNI emulated.

The question (issue 21): does an int8 export of a W8A8 checkpoint give the PyTorch W8A8 model's
quality on every x86 CPU? ONNX Runtime's U8S8 int8 GEMM sums pairs of u8·s8 products into int16
on x86 without VNNI (AVX2, AVX-512 without VNNI) and saturates there; ``--int8-operands auto``
picks u8u8 on those CPUs (:mod:`sink_modifier.export.onnx_int8`).

An AVX2 machine is emulated with ``qemu-x86_64 -cpu Haswell`` (Debian's ``qemu-user``): its CPUID
has AVX2 but no AVX-512 and no VNNI, so ORT's MLAS dispatches its AVX2 kernels, as on a real
Haswell..Zen 3 CPU. Emulation gives those kernels' *results* (integer arithmetic is exact under
qemu), not their speed: no speed figure comes from it.

Steps, each a CLI command a user would type (the AVX2 ones under qemu):

1. ``sink-modifier prune --recipe recipes/sink_wanda_50_w8a8.yaml --num-samples N`` (natively);
2. per ISA, ``export-onnx`` and ``export-onnx --int8-head`` (``--int8-operands auto``; its ORT vs
   PyTorch check runs on that ISA), then ``eval --onnx --json`` of each export and ``eval --json``
   of the PyTorch W8A8 checkpoint, on the same windows and masks;
3. the VNNI-made (u8s8) export evaluated under emulated AVX2 too: a graph carried to another CPU.

    python benchmarks/int8_isa.py                  # ~40 min on 2 cores (emulation is ~20x slower)
    python benchmarks/int8_isa.py --report         # rewrite the table from the JSON

Writes ``benchmarks/results/int8_isa.{json,md}``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_paths import SHARED
from runtime_checkpoints import CORPUS, HELDOUT, REPO, log

RESULTS = REPO / "benchmarks" / "results"
MODEL = SHARED / "models" / "tiny-dlm"
RECIPE = "sink_wanda_50_w8a8"
EMULATED_CPU = "Haswell"  # AVX2 + FMA, no AVX-512, no VNNI
EXPORTS = {"int8": [], "int8-head": ["--int8-head"]}


def emulator() -> str | None:
    return shutil.which("qemu-x86_64")


def python_binary() -> str:
    """The interpreter itself (a pyenv shim is a shell script, which qemu-user cannot run)."""
    return os.path.realpath(sys.executable)


def cli(args: list[str], isa: str, timeout: float) -> subprocess.CompletedProcess:
    command = [python_binary(), "-m", "sink_modifier.cli", *args]
    if isa == "avx2-emulated":
        command = [emulator(), "-cpu", EMULATED_CPU, *command]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    log(f"[{isa}] sink-modifier {' '.join(args)}")
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def cpu_seen(isa: str) -> dict:
    code = ("import json; from sink_modifier.export.onnx_cpu import cpu_info; i = cpu_info(); "
            "print(json.dumps({'isa': i.isa.value, 'u8s8_saturates': i.isa.u8s8_saturates, 'source': i.source}))")
    command = [python_binary(), "-c", code]
    if isa == "avx2-emulated":
        command = [emulator(), "-cpu", EMULATED_CPU, *command]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr.strip()[-300:]}


def outcome(done: subprocess.CompletedProcess) -> dict:
    if done.returncode != 0:
        return {"rc": done.returncode, "error": (done.stderr.strip().splitlines() or ["(no stderr)"])[-1]}
    return {"rc": 0, **json.loads(done.stdout)}


def eval_args(model: Path, args, onnx: bool) -> list[str]:
    return ["eval", "--model", str(model), "--data", str(HELDOUT), "--num-windows", str(args.windows),
            "--mc-samples", str(args.mc_samples), "--seq-len", str(args.seq_len), "--threads", "1", "--json",
            *(["--onnx"] if onnx else [])]


def run_isa(isa: str, checkpoint: Path, work: Path, args, native_reference: dict | None) -> dict:
    out: dict = {"cpu": cpu_seen(isa), "exports": {}, "eval": {}}
    started = time.perf_counter()
    if isa != "native" and native_reference is not None and args.emulated_reference == "native":
        # PyTorch's fake-quantized W8A8 forward is float arithmetic: the same NELBO on every ISA up to
        # float rounding, and ~20x slower under emulation than ORT's int8 graph
        out["eval"]["pytorch-w8a8"] = {**native_reference, "ran_on": "native"}
    else:
        out["eval"]["pytorch-w8a8"] = outcome(cli(eval_args(checkpoint, args, onnx=False), isa, args.timeout))
    for name, extra in EXPORTS.items():
        folder = work / f"{isa}-{name}"
        done = cli(["export-onnx", "--model", str(checkpoint), "--output", str(folder), "--overwrite", "--json",
                    *extra], isa, args.timeout)
        result = outcome(done)
        if result["rc"] == 0:
            meta = json.loads((folder / "onnx_export.json").read_text())
            result = {"rc": 0, "check_max_abs_diff": meta.get("check_max_abs_diff"), "atol": meta.get("check_atol"),
                      "int8_operands": ((meta.get("quantization") or {}).get("int8_operands") or {}).get("form"),
                      "check_cpu": meta.get("check_cpu")}
            out["eval"][f"onnx-{name}"] = outcome(cli(eval_args(folder, args, onnx=True), isa, args.timeout))
        out["exports"][name] = result
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def nelbo(entry: dict) -> float | None:
    return entry.get("nelbo") if entry and entry.get("rc") == 0 else None


def markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        "# int8 ONNX per x86 ISA: export check and `eval --onnx` vs the PyTorch W8A8 model",
        "",
        f"`python benchmarks/int8_isa.py` ({result['date']}). Host: {result['host_cpu']}. Checkpoint: "
        f"`sink-modifier prune --recipe recipes/{RECIPE}.yaml --num-samples {s['num_samples']}` on tiny-dlm. "
        f"eval: `heldout`, {s['windows']} windows × {s['seq_len']} tokens, {s['mc_samples']} masks each, "
        "the same windows and masks for every row, 1 thread.",
        f"AVX2 is emulated with `qemu-x86_64 -cpu {EMULATED_CPU}` (CPUID: AVX2, no AVX-512, no VNNI): "
        "ORT runs its AVX2 kernels, whose integer results are exact under emulation; **no speed figure "
        "comes from emulation**.",
        "",
        "The PyTorch W8A8 reference of the emulated rows ran "
        + ("natively (float arithmetic: the same on every ISA up to rounding)." if s.get("emulated_reference") == "native"
           else "under emulation too."),
        "",
        "| ISA (as the process sees it) | export | int8 operands (auto) | export check max abs Δ logit (atol) "
        "| `eval --onnx` NELBO | Δ vs PyTorch W8A8 (same ISA) |",
        "|---|---|---|---|---|---|",
    ]
    for isa, run in result["runs"].items():
        seen = run["cpu"].get("isa", run["cpu"].get("error", "?"))
        reference = nelbo(run["eval"].get("pytorch-w8a8"))
        lines.append(f"| {seen} | PyTorch W8A8 (`eval`) | - | - | {reference:.5f} | - |"
                     if reference is not None else f"| {seen} | PyTorch W8A8 | - | - | failed | - |")
        for name, exported in run["exports"].items():
            if exported["rc"] != 0:
                lines.append(f"| {seen} | `--{name}`" if name != "int8" else f"| {seen} | plain")
                lines[-1] += f" | - | **failed (exit {exported['rc']})**: {exported['error']} | - | - |"
                continue
            value = nelbo(run["eval"].get(f"onnx-{name}"))
            diff = exported["check_max_abs_diff"]
            diff = max(diff.values()) if isinstance(diff, dict) else diff
            delta = f"{value - reference:+.5f}" if value is not None and reference is not None else "-"
            label = "plain `export-onnx`" if name == "int8" else "`export-onnx --int8-head`"
            lines.append(f"| {seen} | {label} | {exported['int8_operands']} | {diff:.3f} ({exported['atol']}) | "
                         f"{value:.5f} | {delta} |" if value is not None else
                         f"| {seen} | {label} | {exported['int8_operands']} | {diff:.3f} | eval failed | - |")
    carried = result.get("carried")
    if carried:
        lines += ["", "A graph carried to another CPU: the exports made natively (operands above) evaluated under "
                  "emulated AVX2 (the runner sets ORT's exact-int8 session option where the CPU lacks VNNI):", "",
                  "| export (made on the host) | `eval --onnx` NELBO under AVX2 | Δ vs PyTorch W8A8 (AVX2) |",
                  "|---|---|---|"]
        reference = nelbo(result["runs"]["avx2-emulated"]["eval"].get("pytorch-w8a8"))
        for name, entry in carried.items():
            value = nelbo(entry)
            lines.append(f"| {name} | {value:.5f} | {value - reference:+.5f} |" if value is not None and reference
                         is not None else f"| {name} | failed: {entry.get('error')} | - |")
    lines += ["", "Speed per ISA: measured natively only (`benchmarks/results/deploy_speed.md`, with the ISA beside "
              "each figure); on a real AVX2 CPU the int8 speed-up is not measured here."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/sink-modifier-int8-isa"))
    p.add_argument("--num-samples", type=int, default=4, help="calibration windows of the W8A8 prune")
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--mc-samples", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--timeout", type=float, default=3600, help="seconds per command")
    p.add_argument("--isa", default="native,avx2-emulated")
    p.add_argument("--emulated-reference", choices=("native", "emulated"), default="native",
                   help="where the PyTorch W8A8 reference of the emulated ISA runs (native: float maths, same numbers)")
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    path = RESULTS / "int8_isa.json"
    if args.report:
        (RESULTS / "int8_isa.md").write_text(markdown(json.loads(path.read_text())))
        return 0
    if "avx2-emulated" in args.isa and emulator() is None:
        raise SystemExit("qemu-x86_64 not found: install Debian's qemu-user (apt-get install qemu-user), "
                         "or pass --isa native")
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoint = args.work / f"tiny-dlm-{RECIPE}"
    if not (checkpoint / "config.json").is_file():
        done = cli(["prune", "--model", str(MODEL), "--recipe", str(REPO / "recipes" / f"{RECIPE}.yaml"), "--data",
                    str(CORPUS), "--output", str(checkpoint), "--num-samples", str(args.num_samples)], "native",
                   args.timeout)
        if done.returncode != 0:
            raise SystemExit(f"prune failed: {done.stderr.strip()[-500:]}")
    from sink_modifier.export.onnx_cpu import cpu_info

    result = {"date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "host_cpu": f"{cpu_info().isa.value} ({os.cpu_count()} cores)",
              "settings": {"num_samples": args.num_samples, "windows": args.windows, "mc_samples": args.mc_samples,
                           "seq_len": args.seq_len, "emulated_cpu": EMULATED_CPU,
                           "emulated_reference": args.emulated_reference}, "runs": {}}
    from sink_modifier.export.atomic import write_json_atomically

    partial = args.work / "int8_isa.partial.json"  # finished ISAs, kept across reruns with other --isa
    if partial.exists():
        result["runs"] = json.loads(partial.read_text())["runs"]
    for isa in args.isa.split(","):
        native = result["runs"].get("native", {}).get("eval", {}).get("pytorch-w8a8")
        result["runs"][isa] = run_isa(isa, checkpoint, args.work, args, native)
        write_json_atomically(partial, result, pretty=True)
        log(f"[{isa}] done in {result['runs'][isa]['seconds']:.0f} s")
    if "native" in result["runs"] and "avx2-emulated" in result["runs"]:
        result["carried"] = {
            f"{name} ({result['runs']['native']['exports'][name].get('int8_operands')})":
                outcome(cli(eval_args(args.work / f"native-{name}", args, onnx=True), "avx2-emulated", args.timeout))
            for name in EXPORTS if result["runs"]["native"]["exports"][name]["rc"] == 0}

    write_json_atomically(path, result, pretty=True)
    (RESULTS / "int8_isa.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
