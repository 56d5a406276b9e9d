"""The checkpoints a runtime check loads, built with our CLI in OUR environment, and their transformers reference.

``build_checkpoints(model, names, work)`` runs ``python -m sink_modifier.cli prune`` for
each shipped recipe named (reusing a folder already written), ``dense`` being the model
folder itself. ``reference_logprobs`` / ``reference_greedy`` compute, with our pins
(transformers through :func:`sink_modifier.families.load_pretrained`, float32;
compressed-tensors checkpoints decompressed with their activation fake-quantization kept),
the numbers another runtime is compared with, on the same token ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from bench_paths import CORPUS, HELDOUT, RECIPES, REPO  # noqa: E402

# Recipes whose stages run on a causal model (every shipped one: Wanda/SparseGPT and RTN/GPTQ
# quantization act on Linear layers whatever the attention); quantized ones last.
PRUNING_RECIPES = ("sink_wanda_50", "paper_sink_wanda_50", "sink_sparsegpt_50", "sink_wanda_2of4",
                   "sink_sparsegpt_2of4", "sink_sparsegpt_70", "wanda_70_owl")
QUANTIZED_RECIPES = ("sink_wanda_50_w8a8", "sink_wanda_2of4_w4a16", "sink_wanda_2of4_fp8_dynamic")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def build_checkpoints(model: Path, names: list[str], work: Path, num_samples: int) -> dict[str, Path | str]:
    """``{name: folder}``, or ``{name: "error text"}`` for a recipe our CLI could not apply."""
    out: dict[str, Path | str] = {}
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for name in names:
        if name == "dense":
            out[name] = model
            continue
        folder = work / f"{model.name}-{name}"
        if not (folder / "config.json").is_file():
            log(f"pruning {model.name} with recipes/{name}.yaml ({num_samples} calibration windows) -> {folder}")
            done = subprocess.run([sys.executable, "-m", "sink_modifier.cli", "prune", "--model", str(model),
                                   "--recipe", str(RECIPES / f"{name}.yaml"), "--data", str(CORPUS),
                                   "--output", str(folder), "--num-samples", str(num_samples)],
                                  env=env, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
            if done.returncode != 0:
                out[name] = (done.stderr.strip().splitlines() or ["prune failed"])[-1]
                log(f"prune failed for {name}: {out[name]}")
                continue
        out[name] = folder
    return out


def prompt_windows(model: Path, num_prompts: int, length: int, seed: int = 0) -> list[list[int]]:
    """``num_prompts`` held-out windows of ``length`` token ids (the same ids go to every runtime)."""
    from sink_modifier.data import load_documents, token_windows
    from sink_modifier.families import load_tokenizer

    tokenizer = load_tokenizer(model)
    docs = load_documents(HELDOUT, max_chars=400_000)
    return token_windows(docs, tokenizer, length, num_prompts, seed=seed).tolist()


def _model(folder: Path):
    from sink_modifier.families import load_pretrained

    return load_pretrained(folder, dtype="float32").model


@torch.no_grad()
def reference_logprobs(folder: Path, prompts: list[list[int]]) -> list[list[float | None]]:
    """Per prompt: ``None`` at position 0, then log p(token_i | tokens_<i) from transformers."""
    model = _model(folder)
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        logp = torch.log_softmax(model(input_ids=x).logits.float(), dim=-1)[0]
        out.append([None] + logp[:-1].gather(-1, x[0, 1:, None])[:, 0].tolist())
    return out


@torch.no_grad()
def reference_greedy(folder: Path, prompts: list[list[int]], steps: int) -> list[list[int]]:
    """Greedy continuation token ids from transformers (full recompute each step: exact, and tiny models)."""
    model = _model(folder)
    out = []
    for ids in prompts:
        x = torch.tensor([ids])
        new = []
        for _ in range(steps):
            token = int(model(input_ids=x).logits[0, -1].argmax())
            new.append(token)
            x = torch.cat([x, torch.tensor([[token]])], dim=1)
        out.append(new)
    return out
