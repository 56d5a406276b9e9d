"""Denoising-step speed of 2:4 semi-structured sparsity vs dense at LLaDA-8B shapes (NVIDIA GPU).

A diffusion LM denoises the whole canvas in every step: one bidirectional forward pass over
``seq`` tokens. This script builds a stack of LLaDA-8B-shaped blocks (hidden 4096, SwiGLU MLP
12288, 32 heads of 128, no GQA, RMSNorm, rotary, non-causal SDPA; the LLaDA module names
``q_proj k_proj v_proj attn_out ff_proj up_proj ff_out``) with random weights pruned to 2:4
(2 largest of every 4 consecutive inputs kept), times the forward pass dense, converts the
Linear weights with :func:`sink_modifier.runtime.accelerate_2of4` (PyTorch semi-structured
sparsity: cuSPARSELt, or CUTLASS), and times it again on the same input.

Reported (median of ``--repeats`` CUDA-event timings after ``--warmup`` runs, ms):

* ``layer``      one full block (the stack time divided by ``--layers``);
* ``mlp``        ff_proj/up_proj/ff_out with the SiLU gate, on one block;
* ``attn_proj``  q/k/v/attn_out projections alone (the attention core excluded);
* ``attn_core``  scaled_dot_product_attention alone: untouched by 2:4, the part that caps the gain;
* ``lm_head``    the dense output projection (vocabulary ``--vocab``), never pruned;
* ``model``      extrapolated: ``--total-layers`` x layer + lm_head (embedding lookup ignored).

Output: a table, and ``benchmarks/results/sparse24_speed.json`` (``--output``). Also written:
the relative error of the sparse stack's output against the dense one (same weights), the
weight bytes dense vs packed, and the acceleration report.

On a machine without a CUDA GPU nothing can be measured: the script says so and exits 0
without writing anything. ``--device cpu --dry-run`` with tiny shapes checks the script's
logic anywhere: it builds the stack, runs and times the dense forward, and prints the
eligibility report, but converts nothing and writes nothing::

    python benchmarks/sparse24_speed.py                           # GPU: defaults, 4 layers, seq 4096, bf16
    python benchmarks/sparse24_speed.py --seq 1024 --layers 8     # other shapes
    python benchmarks/sparse24_speed.py --device cpu --dry-run --hidden 64 --mlp 192 --heads 4 \\
        --seq 32 --layers 2 --vocab 128 --min-features 0 --warmup 0 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "WARNING")

import torch
import torch.nn.functional as F
from bench_paths import REPO  # noqa: E402
from torch import nn

from sink_modifier.runtime import accelerate_2of4

DEFAULT_OUTPUT = REPO / "benchmarks" / "results" / "sparse24_speed.json"
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
COMPONENTS = ("layer", "mlp", "attn_proj", "attn_core", "lm_head", "model")
NO_GPU = (
    "2:4 semi-structured kernels (cuSPARSELt/CUTLASS) run only on NVIDIA GPUs with compute "
    "capability 8.0+; {why}. Nothing was measured and nothing was written. To check this script's "
    "logic on CPU: --device cpu --dry-run with tiny shapes (see --help)."
)


# --------------------------------------------------------------------------- model


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5, **factory):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, **factory))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype) * self.weight


def rotary_tables(seq: int, head_dim: int, device, dtype, theta: float = 500000.0):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(seq, device=device, dtype=torch.float32), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class LladaBlock(nn.Module):
    """One LLaDA-8B decoder block, bidirectional (the denoiser sees the whole canvas)."""

    def __init__(self, hidden: int, mlp: int, heads: int, **factory):
        super().__init__()
        self.heads, self.head_dim = heads, hidden // heads
        self.attn_norm = RMSNorm(hidden, **factory)
        self.q_proj = nn.Linear(hidden, hidden, bias=False, **factory)
        self.k_proj = nn.Linear(hidden, hidden, bias=False, **factory)
        self.v_proj = nn.Linear(hidden, hidden, bias=False, **factory)
        self.attn_out = nn.Linear(hidden, hidden, bias=False, **factory)
        self.ff_norm = RMSNorm(hidden, **factory)
        self.ff_proj = nn.Linear(hidden, mlp, bias=False, **factory)
        self.up_proj = nn.Linear(hidden, mlp, bias=False, **factory)
        self.ff_out = nn.Linear(mlp, hidden, bias=False, **factory)

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.ff_out(F.silu(self.ff_proj(x)) * self.up_proj(x))

    def attention_projections(self, x: torch.Tensor):
        return self.q_proj(x), self.k_proj(x), self.v_proj(x), self.attn_out(x)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        return x.reshape(batch, seq, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        h = self.attn_norm(x)
        q = apply_rotary(self.split_heads(self.q_proj(h)), cos, sin)
        k = apply_rotary(self.split_heads(self.k_proj(h)), cos, sin)
        v = self.split_heads(self.v_proj(h))
        attention = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + self.attn_out(attention.transpose(1, 2).reshape(batch, seq, hidden))
        return x + self.mlp(self.ff_norm(x))


class LladaStack(nn.Module):
    def __init__(self, layers: int, hidden: int, mlp: int, heads: int, vocab: int, **factory):
        super().__init__()
        self.layers = nn.ModuleList(LladaBlock(hidden, mlp, heads, **factory) for _ in range(layers))
        self.lm_head = nn.Linear(hidden, vocab, bias=False, **factory) if vocab else None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, cos, sin)
        return x


def mask_2of4(weight: torch.Tensor) -> torch.Tensor:
    """Keep the 2 largest |w| of every 4 consecutive inputs of each row."""
    rows, cols = weight.shape
    groups = weight.abs().reshape(rows, cols // 4, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.topk(2, dim=-1).indices, True)
    return keep.reshape(rows, cols)


@torch.no_grad()
def build_stack(args, device: torch.device, dtype: torch.dtype) -> LladaStack:
    torch.manual_seed(args.seed)
    model = LladaStack(args.layers, args.hidden, args.mlp, args.heads, args.vocab, device=device, dtype=dtype).eval()
    for block in model.layers:
        for module in block.modules():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, 0.02)
                module.weight.mul_(mask_2of4(module.weight))
    if model.lm_head is not None:
        model.lm_head.weight.normal_(0.0, 0.02)
    return model


# --------------------------------------------------------------------------- timing


def time_ms(fn, *, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median (and min/max) of ``repeats`` timed calls after ``warmup`` untimed ones."""
    cuda = device.type == "cuda"
    times = []
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        if cuda:
            torch.cuda.synchronize(device)
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                begin = time.perf_counter()
                fn()
                times.append((time.perf_counter() - begin) * 1e3)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times), "repeats": repeats}


def measure(model: LladaStack, inputs: dict, args, device: torch.device, *, skip_unchanged: dict | None = None) -> dict:
    """Time every component; ``skip_unchanged`` reuses dense timings of the parts 2:4 does not touch."""
    block = model.layers[0]
    x, h, cos, sin = inputs["x"], inputs["h"], inputs["cos"], inputs["sin"]
    timing = dict(device=device, warmup=args.warmup, repeats=args.repeats)
    stack = time_ms(lambda: model(x, cos, sin), **timing)
    result = {
        "stack": stack,
        "layer": {**{k: v / args.layers for k, v in stack.items() if k.endswith("_ms")}, "repeats": stack["repeats"]},
        "mlp": time_ms(lambda: block.mlp(h), **timing),
        "attn_proj": time_ms(lambda: block.attention_projections(h), **timing),
    }
    if skip_unchanged is not None:
        result["attn_core"] = skip_unchanged["attn_core"]
        result["lm_head"] = skip_unchanged["lm_head"]
    else:
        q, k, v = (block.split_heads(t) for t in (h, h, h))
        result["attn_core"] = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=False), **timing)
        result["lm_head"] = (
            time_ms(lambda: model.lm_head(h), **timing) if model.lm_head is not None
            else {"median_ms": 0.0, "min_ms": 0.0, "max_ms": 0.0, "repeats": 0}
        )
    result["model"] = {"median_ms": args.total_layers * result["layer"]["median_ms"] + result["lm_head"]["median_ms"]}
    return result


def weight_bytes(model: LladaStack) -> int:
    total = 0
    for block in model.layers:
        for module in block.modules():
            if not isinstance(module, nn.Linear):
                continue
            weight = module.weight
            parts = [getattr(weight, name, None) for name in ("packed", "meta", "packed_t", "meta_t")]
            parts = [p for p in parts if isinstance(p, torch.Tensor)]
            if parts:
                total += sum(p.numel() * p.element_size() for p in parts)
            else:
                total += weight.numel() * weight.element_size()
    return total


# --------------------------------------------------------------------------- report


def table(dense: dict, sparse: dict | None, args) -> str:
    labels = {
        "layer": "full block (per layer)",
        "mlp": "MLP (ff_proj, up_proj, ff_out)",
        "attn_proj": "attention projections (q, k, v, out)",
        "attn_core": "attention core (SDPA, dense in both)",
        "lm_head": f"lm_head (vocab {args.vocab}, dense in both)",
        "model": f"model: {args.total_layers} layers + lm_head (extrapolated)",
    }
    lines = [f"{'component':44s} {'dense ms':>10s} {'2:4 ms':>10s} {'speed-up':>9s}", "-" * 76]
    for key in COMPONENTS:
        d = dense[key]["median_ms"]
        if sparse is None:
            lines.append(f"{labels[key]:44s} {d:10.3f} {'n/a':>10s} {'n/a':>9s}")
        else:
            s = sparse[key]["median_ms"]
            ratio = f"{d / s:8.2f}x" if s > 0 else "n/a"
            lines.append(f"{labels[key]:44s} {d:10.3f} {s:10.3f} {ratio:>9s}")
    return "\n".join(lines)


def environment(device: torch.device, backend: str) -> dict:
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "backend": backend,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["capability"] = "sm{}{}".format(*torch.cuda.get_device_capability(device))
        env["cusparselt"] = torch.backends.cusparselt.version() if torch.backends.cusparselt.is_available() else None
    return env


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default), cuda:N, or cpu (only with --dry-run)")
    p.add_argument("--dry-run", action="store_true",
                   help="build, run and time the dense forward, print the eligibility report; "
                        "convert and write nothing")
    p.add_argument("--layers", type=int, default=4, help="blocks actually built and timed (default 4)")
    p.add_argument("--total-layers", type=int, default=32, help="layers of the extrapolated model (LLaDA-8B: 32)")
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--mlp", type=int, default=12288)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--vocab", type=int, default=126464, help="lm_head size (0 = none)")
    p.add_argument("--seq", type=int, default=4096, help="canvas length in tokens (default 4096, LLaDA's maximum)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    p.add_argument("--backend", choices=["auto", "cusparselt", "cutlass"], default="auto")
    p.add_argument("--min-features", type=int, default=1024, help="smallest layer dimension converted to 2:4")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file (GPU runs only)")
    args = p.parse_args(argv)
    if args.hidden % args.heads or (args.hidden // args.heads) % 2:
        p.error(f"--hidden {args.hidden} must split into --heads {args.heads} heads of even size")
    if args.hidden % 4 or args.mlp % 4:
        p.error("--hidden and --mlp must be multiples of 4 for 2:4 weights")
    for name in ("layers", "total_layers", "seq", "batch", "repeats"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or args.vocab < 0 or args.min_features < 0:
        p.error("--warmup, --vocab and --min-features cannot be negative")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        print(f"sparse24_speed: bad --device {args.device!r}: {err}", file=sys.stderr)
        return 2
    if device.type == "cuda":
        if not torch.cuda.is_available():
            print(NO_GPU.format(why="torch.cuda.is_available() is False here"))
            return 0
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        major, minor = torch.cuda.get_device_capability(device)
        if torch.version.hip is None and (major, minor) < (8, 0):
            print(NO_GPU.format(why=f"{torch.cuda.get_device_name(device)} is sm{major}{minor}"))
            return 0
    elif not args.dry_run:
        print(NO_GPU.format(why=f"--device {args.device} was asked for"))
        return 0

    dtype = DTYPES[args.dtype]
    shape = (f"{args.layers} x LLaDA block (hidden {args.hidden}, MLP {args.mlp}, {args.heads} heads), "
             f"batch {args.batch} x seq {args.seq}, {args.dtype}, {device}")
    print(f"building {shape} with random 2:4 weights")
    model = build_stack(args, device, dtype)
    generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    x = torch.randn(args.batch, args.seq, args.hidden, device=device, dtype=dtype, generator=generator)
    h = torch.randn(args.batch, args.seq, args.hidden, device=device, dtype=dtype, generator=generator)
    cos, sin = rotary_tables(args.seq, args.hidden // args.heads, device, dtype)
    inputs = {"x": x, "h": h, "cos": cos, "sin": sin}

    with torch.no_grad():
        dense_out = model(x, cos, sin)
    if not bool(torch.isfinite(dense_out).all()):
        print("sparse24_speed: the dense forward gives non-finite values", file=sys.stderr)
        return 1

    eligibility = accelerate_2of4(model, min_features=args.min_features, backend=args.backend, dry_run=True)
    print(eligibility.summary())
    for name, reason in eligibility.skipped.items():
        print(f"  skip {name}: {reason}")
    expected = 7 * args.layers
    if eligibility.num_eligible != expected:
        print(f"  note: {eligibility.num_eligible} of the {expected} block Linear layers are eligible")

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    dense = measure(model, inputs, args, device)
    dense_bytes = weight_bytes(model)

    if args.dry_run:
        print(table(dense, None, args))
        print("dry run: weights not converted, 2:4 not timed, nothing written")
        return 0

    report = accelerate_2of4(model, min_features=args.min_features, backend=args.backend)
    print(report.summary())
    for name, reason in report.skipped.items():
        if name in eligibility.eligible:
            print(f"  not converted {name}: {reason}")
    if report.num_converted == 0:
        print("sparse24_speed: no layer was converted to 2:4, nothing to compare; nothing written", file=sys.stderr)
        return 1

    with torch.no_grad():
        sparse_out = model(x, cos, sin)
    difference = (sparse_out.float() - dense_out.float()).abs().max().item()
    scale = dense_out.float().abs().max().item() or 1.0
    cosine = F.cosine_similarity(sparse_out.float().flatten(), dense_out.float().flatten(), dim=0).item()
    sparse = measure(model, inputs, args, device, skip_unchanged=dense)

    print(table(dense, sparse, args))
    print(f"sparse vs dense output of the {args.layers}-layer stack: max relative error "
          f"{difference / scale:.2e}, cosine {cosine:.6f}")
    if not difference / scale < 5e-2:
        print("WARNING: the 2:4 stack's output differs from the dense one by more than 5%", file=sys.stderr)

    speedup = {key: dense[key]["median_ms"] / sparse[key]["median_ms"]
               for key in COMPONENTS if sparse[key]["median_ms"] > 0}
    results = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": [sys.executable, *sys.argv],
        "config": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "environment": environment(device, report.backend),
        "acceleration": {k: v for k, v in report.to_dict().items() if k not in ("eligible", "converted")},
        "timings_ms": {"dense": dense, "sparse24": sparse},
        "speedup": speedup,
        "extrapolated": {
            "total_layers": args.total_layers,
            "dense_ms": dense["model"]["median_ms"],
            "sparse24_ms": sparse["model"]["median_ms"],
            "speedup": speedup.get("model"),
            "note": "total_layers x measured per-layer time + lm_head; embedding lookup and sampling not included",
        },
        "correctness": {"max_abs_error": difference, "max_rel_error": difference / scale, "cosine": cosine},
        "weight_bytes": {"dense": dense_bytes, "sparse24": weight_bytes(model)},
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
