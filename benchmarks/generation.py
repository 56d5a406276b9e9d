"""Denoising generation with tiny-dlm: dense vs sink-aware-Wanda 50%, PyTorch vs ONNX Runtime.

Prompts are the first ``--prompt-tokens`` tokens of ``--num-prompts`` held-out documents
(evenly spaced through ``../shared/data/heldout.txt.gz``, never seen in calibration). Each is
completed greedily with the LLaDA low-confidence remasking sampler
(:func:`sink_modifier.generation.generate`, ``--gen-length`` tokens, ``--steps`` steps,
``--block-length`` blocks), one prompt at a time (batch 1), by:

* ``dense``        ../shared/models/tiny-dlm in PyTorch (float32);
* ``sink50``       a sink-aware Wanda 50% copy (``outputs/tiny-dlm-sink50``; pruned here with
                   ``recipes/sink_wanda_50.yaml`` on 8 calibration windows if it is missing);
* ``dense-onnx``   the dense model exported with :func:`sink_modifier.export.export_onnx`,
                   run in ONNX Runtime (the same sampler with ``logits_fn`` = the ORT session);
* ``sink50-onnx``  the same for the pruned copy.

Reported: the samples, tokens/s (generated tokens / wall seconds of the sampler, after one
warm-up generation), forward passes, and how many generated tokens agree with the dense
PyTorch run (the ONNX runs should agree on all of them). Unstructured 50% zeros do not make
a dense kernel faster, so dense and sink50 speeds should match: the table shows it.

On a CUDA GPU the script also times dense vs 2:4 (:func:`sink_modifier.runtime.accelerate_2of4`)
generation: tiny-dlm's weights 2:4-magnitude-pruned (speed does not depend on which weights
are kept), float16, ``min_features=0`` so the small layers are converted. tiny-dlm is far
too small for 2:4 kernels to pay off; the number checks the path, not the speed-up at 8B
(see ``benchmarks/sparse24_speed.py`` for LLaDA-8B shapes). On CPU that part is skipped with
a message.

Threads: torch and ORT both get ``--threads`` intra-op threads (default 1, so the two
runtimes compare like for like and the numbers do not depend on other load on a shared box).

    python benchmarks/generation.py                  # writes benchmarks/results/generation.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")

import torch
from bench_paths import CORPUS, HELDOUT, REPO, RESULTS, TINY_DLM  # noqa: E402

from sink_modifier.generation import generate, generate_with_stats

PRUNED = REPO / "outputs" / "tiny-dlm-sink50"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num-prompts", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--gen-length", type=int, default=32)
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--block-length", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pruned", type=Path, default=PRUNED)
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime rows")
    p.add_argument("--output", type=Path, default=RESULTS / "generation.json")
    return p.parse_args(argv)


def prompts(tokenizer, num: int, length: int) -> list[list[int]]:
    from sink_modifier.data import load_documents

    docs = [d for d in load_documents(HELDOUT) if len(d) > 400]
    picked = [docs[i * len(docs) // num] for i in range(num)]
    return [tokenizer(d).input_ids[:length] for d in picked]


def ensure_pruned(path: Path, threads: int) -> None:
    if (path / "config.json").is_file():
        return
    print(f"pruning {path} (recipes/sink_wanda_50.yaml, 8 calibration windows)...", flush=True)
    subprocess.run([sys.executable, "-m", "sink_modifier.cli", "prune", "--model", str(TINY_DLM),
                    "--recipe", str(REPO / "recipes" / "sink_wanda_50.yaml"), "--data", str(CORPUS),
                    "--output", str(path), "--num-samples", "8"], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": str(threads)})


def ensure_onnx(model_dir: Path, out: Path) -> Path:
    from sink_modifier.export.onnx_export import export_onnx

    if not (out / "model.onnx").is_file():
        result = export_onnx(model_dir, out)
        print(f"exported {out} in {result.seconds:.1f} s, ORT vs PyTorch max |Δ| "
              f"{max(result.max_abs_diff.values()):.1e}", flush=True)
    return out


def run(name, model, prompt_list, settings, mask_id, logits_fn=None):
    warm = torch.tensor([prompt_list[0]])
    generate(model, warm, mask_token_id=mask_id, logits_fn=logits_fn, **settings)  # warm-up
    outputs, seconds, passes, tokens = [], 0.0, 0, 0
    for ids in prompt_list:
        r = generate_with_stats(model, torch.tensor([ids]), mask_token_id=mask_id, logits_fn=logits_fn, **settings)
        outputs.append(r.generated[0].tolist())
        seconds += r.seconds
        passes += r.forward_passes
        tokens += r.new_tokens
    print(f"{name:12s} {tokens / seconds:8.1f} tokens/s ({passes} forward passes, {seconds:.2f} s)", flush=True)
    return {"name": name, "tokens_per_second": tokens / seconds, "seconds": seconds, "forward_passes": passes,
            "new_tokens": tokens, "outputs": outputs}


def gpu_2of4(settings, prompt_list, mask_id) -> dict:
    if not torch.cuda.is_available():
        msg = "no CUDA GPU: dense vs 2:4 generation speed skipped (2:4 kernels need an NVIDIA GPU, sm80+)"
        print(msg)
        return {"skipped": msg}
    from sink_modifier.families import load_pretrained
    from sink_modifier.runtime import accelerate_2of4

    def two_of_four(model):
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and "lm_head" not in name:
                w = module.weight.data
                groups = w.reshape(-1, 4)
                drop = groups.abs().argsort(dim=1)[:, :2]
                module.weight.data = groups.scatter(1, drop, 0).reshape_as(w)
        return model

    out = {}
    dense = two_of_four(load_pretrained(TINY_DLM, dtype="float16").model).cuda()
    sparse = two_of_four(load_pretrained(TINY_DLM, dtype="float16").model).cuda()
    report = accelerate_2of4(sparse, min_features=0, dtype=torch.float16)
    out["acceleration"] = report.summary()
    gpu_settings = dict(settings, gen_length=128, steps=128, block_length=32)
    for name, model in (("dense-2of4-weights", dense), ("2of4-kernels", sparse)):
        out[name] = run(name, model, prompt_list, gpu_settings, mask_id)
    out["identical_tokens"] = sum(a == b for x, y in zip(out["dense-2of4-weights"]["outputs"],
                                                          out["2of4-kernels"]["outputs"]) for a, b in zip(x, y))
    out["device"] = torch.cuda.get_device_name()
    return out


def _equal(a: dict, b: dict) -> int:
    return sum(x == y for ra, rb in zip(a["outputs"], b["outputs"]) for x, y in zip(ra, rb))


def agreement(rows: list[dict]) -> None:
    by_name = {row["name"]: row for row in rows}
    for row in rows:
        row["tokens_equal_to_dense"] = _equal(row, by_name["dense"])
        torch_twin = by_name.get(row["name"].removesuffix("-onnx"), row)
        row["tokens_equal_to_pytorch_same_model"] = _equal(row, torch_twin)


def markdown(result: dict, tokenizer, prompt_list) -> str:
    s = result["settings"]
    lines = [
        "# Denoising generation: tiny-dlm dense vs sink-aware Wanda 50%, PyTorch vs ONNX Runtime",
        "",
        f"`python benchmarks/generation.py` ({result['date']}, {result['machine']}). Greedy LLaDA low-confidence "
        f"remasking, gen_length {s['gen_length']}, steps {s['steps']}, block_length {s['block_length']}, "
        f"batch 1, {result['threads']} intra-op thread(s) for torch and ORT, {len(prompt_list)} held-out prompts of "
        f"{result['prompt_tokens']} tokens. tokens/s = generated tokens / sampler wall time after a warm-up run. "
        f"Load average during the run: {result['load_average']} on {os.cpu_count()} cores (a shared machine: "
        "speed ratios between rows are what to read, and differences under ~20% are noise).",
        "",
        "| model | runtime | tokens/s | forward passes | tokens equal to dense PyTorch | "
        "tokens equal to the same model in PyTorch |",
        "|---|---|---|---|---|---|",
    ]
    total = len(prompt_list) * s["gen_length"]
    for row in result["runs"]:
        runtime = "ONNX Runtime" if row["name"].endswith("onnx") else "PyTorch"
        lines.append(f"| {row['name'].removesuffix('-onnx')} | {runtime} | {row['tokens_per_second']:.1f} | "
                     f"{row['forward_passes']} | {row['tokens_equal_to_dense']} / {total} | "
                     f"{row['tokens_equal_to_pytorch_same_model']} / {total} |")
    lines += ["", f"GPU 2:4: {result['gpu_2of4'].get('skipped') or json.dumps(_gpu_short(result['gpu_2of4']))}",
              "", "## Samples", ""]
    for i, ids in enumerate(prompt_list):
        lines.append(f"**Prompt {i + 1}:** `{_clean(tokenizer.decode(ids))}`")
        lines.append("")
        for row in result["runs"]:
            if row["name"].endswith("onnx"):
                continue
            lines.append(f"- *{row['name']}*: `{_clean(tokenizer.decode(row['outputs'][i]))}`")
        lines.append("")
    return "\n".join(lines)


def _gpu_short(gpu: dict) -> dict:
    return {k: (v["tokens_per_second"] if isinstance(v, dict) else v) for k, v in gpu.items()}


def _clean(text: str) -> str:
    return text.replace("\n", "⏎").replace("`", "'")


def main(argv=None) -> int:
    args = parse_args(argv)
    from sink_modifier.families import load_pretrained, load_tokenizer

    torch.set_num_threads(args.threads)
    ensure_pruned(args.pruned, args.threads)
    tokenizer = load_tokenizer(TINY_DLM)
    mask_id = tokenizer.mask_token_id
    prompt_list = prompts(tokenizer, args.num_prompts, args.prompt_tokens)
    settings = dict(gen_length=args.gen_length, steps=args.steps, block_length=args.block_length)
    runs = [run("dense", load_pretrained(TINY_DLM, dtype="float32").model, prompt_list, settings, mask_id),
            run("sink50", load_pretrained(args.pruned, dtype="float32").model, prompt_list, settings, mask_id)]
    if not args.no_onnx:
        from sink_modifier.generation.onnx_runtime import OnnxDenoiser

        for name, folder in (("dense", TINY_DLM), ("sink50", args.pruned)):
            exported = ensure_onnx(folder, REPO / "outputs" / f"{folder.name}-onnx")
            denoiser = OnnxDenoiser(exported, intra_op_threads=args.threads, providers=["CPUExecutionProvider"])
            runs.append(run(f"{name}-onnx", denoiser, prompt_list, settings, mask_id, logits_fn=denoiser))
    agreement(runs)
    result = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "threads": args.threads, "prompt_tokens": args.prompt_tokens, "settings": settings,
        "prompts": prompt_list, "pruned_model": str(args.pruned.relative_to(REPO)) if args.pruned.is_relative_to(REPO)
        else str(args.pruned), "runs": runs, "gpu_2of4": gpu_2of4(settings, prompt_list, mask_id),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(result, tokenizer, prompt_list) + "\n")
    print(f"wrote {args.output} and {args.output.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
