"""Sink detection at LLaDA-8B scale on one GPU: our chunked attention mass vs the paper's T x T collector.

Called by ``benchmarks/gpu_check.sh`` (which also runs ``sparse24_speed.py``); usable alone::

    python benchmarks/gpu_sink_check.py --out benchmarks/results/gpu_check        # CUDA, bf16, T=4096
    python benchmarks/gpu_sink_check.py --cpu-smoke --out /tmp/gpu_check_smoke    # same code, tiny shapes, CPU
    python benchmarks/gpu_sink_check.py --summarize DIR                           # gpu_check.md from DIR's json

Three measurements, all in bf16 (the model dtype a user prunes LLaDA in):

1. **Stack sink pass.** A stack of LLaDA-8B-shaped blocks with random weights (``--layers`` of
   hidden 4096, 32 heads of 128, SwiGLU 12288, bidirectional SDPA; the block of
   ``sparse24_speed.py``), one row of ``T`` = 4096 tokens. Timed and peak-memory-measured
   (``torch.cuda.max_memory_allocated`` above what was allocated before the call):
   a plain forward; the forward under :class:`sink_modifier.sinks.AttentionMassObserver`
   (what the modifier's sink pass runs: the SDPA call's q/k, mass in fp32 query chunks); and the
   forward under the paper's collector (reference-spec §1.7: bf16 ``QK^T``, fp32 softmax over the
   whole ``T x T``). Numerics: the global mass of both against an fp64 recomputation from the
   same q/k (all collectors see the identical SDPA call in one forward), and their sink masks
   (``soft_sink_mask``, k=2, alpha=5) against the fp64 one.
2. **Planted sinks, one layer.** Random bf16 q/k ``[1, H, T, 128]`` with a shared direction
   planted in the queries and in the keys of a few positions, so those positions are real
   sinks: LLaDA (32/32 heads) and Dream (28 query / 4 kv heads, GQA). ``mass_from_query_key``
   (ours) and the paper's collector against fp64: max relative error of the mass, whether the
   hard sink masks (s > 0.5) are identical and find the planted positions; time and peak memory
   of the mass computation alone.
3. The 2:4 speed-up: run by ``gpu_check.sh`` (``sparse24_speed.py``), folded into the summary.

Exit status: 0 when everything ran (or no CUDA GPU: says so, measures nothing); 1 when our mass
deviates from fp64 by more than ``--tolerance`` or misses a planted sink.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from bench_paths import REPO  # noqa: E402
from process_memory import rss_mib  # noqa: E402
from torch.overrides import TorchFunctionMode  # noqa: E402

NO_GPU = ("gpu_sink_check: no CUDA GPU here ({why}); nothing was measured and nothing was written. "
          "Run with --cpu-smoke to exercise the same code path on CPU with tiny shapes.")


def _sparse24():
    spec = importlib.util.spec_from_file_location("sparse24_speed", REPO / "benchmarks" / "sparse24_speed.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sparse24_speed", module)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- reference collectors
def paper_mass(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The reference collector: scores in the input dtype (bf16), fp32 softmax over the full T x T."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    return torch.softmax(scores.float(), dim=-1).sum(dim=2).sum(dim=1)  # [B, T]


def fp64_mass(q: torch.Tensor, k: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Exact reference: fp64 scores and softmax from the same (bf16) q/k, one head at a time."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    mass = torch.zeros(q.shape[0], k.shape[2], dtype=torch.float64, device=q.device)
    for h in range(q.shape[1]):
        scores = torch.matmul(q[:, h].double(), k[:, h].double().transpose(-1, -2)) * scale
        mass += torch.softmax(scores, dim=-1).sum(dim=1)
    return mass


class SDPACollector(TorchFunctionMode):
    """Applies ``fn(q, k, scale)`` to every self-attention SDPA call and sums the results."""

    def __init__(self, fn):
        super().__init__()
        self.fn, self.mass, self.calls = fn, None, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            q, k = args[0], args[1]
            if q.shape[-2] == k.shape[-2]:
                m = self.fn(q.detach(), k.detach(), kwargs.get("scale"))
                self.mass = m if self.mass is None else self.mass + m
                self.calls += 1
        return func(*args, **kwargs)


# --------------------------------------------------------------------------- measurement helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median wall ms of ``fn`` and its peak memory above what was allocated before (MiB).

    CUDA: ``max_memory_allocated`` (exact, allocator-level). CPU: peak RSS after resetting
    ``VmHWM`` (coarse; the smoke mode only checks that the code runs)."""
    with torch.no_grad():
        for _ in range(warmup):
            fn()
        sync(device)
        times = []
        peaks = []
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            else:
                with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                base = rss_mib()
            start = time.perf_counter()
            fn()
            sync(device)
            times.append((time.perf_counter() - start) * 1e3)
            if device.type == "cuda":
                peaks.append((torch.cuda.max_memory_allocated(device) - base) / 2**20)
            else:
                peaks.append(rss_mib("VmHWM") - base)
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "peak_mib": max(peaks), "memory_counter": "cuda.max_memory_allocated" if device.type == "cuda" else "VmHWM"}


def compare(mass: torch.Tensor, ref: torch.Tensor, sink_std: float = 2.0, sink_alpha: float = 5.0) -> dict:
    from sink_modifier.sinks import soft_sink_mask

    mass, ref = mass.double(), ref.double()
    rel = ((mass - ref).abs() / ref.abs().clamp_min(1e-30)).max().item()
    s, s_ref = soft_sink_mask(mass.float(), sink_std, sink_alpha), soft_sink_mask(ref.float(), sink_std, sink_alpha)
    hard, hard_ref = s > 0.5, s_ref > 0.5
    return {"max_rel_err": rel, "max_abs_soft_mask_diff": (s - s_ref).abs().max().item(),
            "same_hard_mask": bool(torch.equal(hard, hard_ref)), "sinks": int(hard.sum()), "sinks_ref": int(hard_ref.sum())}


# --------------------------------------------------------------------------- 1: the stack
def stack_check(args, device, dtype) -> dict:
    from sink_modifier.sinks import AttentionMassObserver

    s24 = _sparse24()
    torch.manual_seed(args.seed)
    model = s24.LladaStack(args.layers, args.hidden, args.mlp, args.heads, 0, device=device, dtype=dtype).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.normal_(0.0, 0.02)
    gen = torch.Generator(device=device).manual_seed(args.seed + 1)
    x = torch.randn(1, args.seq, args.hidden, device=device, dtype=dtype, generator=gen)
    cos, sin = s24.rotary_tables(args.seq, args.hidden // args.heads, device, dtype)

    def forward():
        model(x, cos, sin)

    def ours():
        with AttentionMassObserver(model, chunk_size=args.chunk_size) as observer:
            observer.reset()
            model(x, cos, sin)
        return observer.mass

    def naive():
        with SDPACollector(paper_mass) as collector:
            model(x, cos, sin)
        return collector.mass

    timing = {"forward": measure(forward, device, args.warmup, args.repeats),
              "ours": measure(ours, device, args.warmup, args.repeats),
              "naive": measure(naive, device, args.warmup, args.repeats)}
    # numerics: one forward, every collector on the identical SDPA calls (the observer innermost)
    with torch.no_grad(), SDPACollector(fp64_mass) as ref, SDPACollector(paper_mass) as paper:
        with AttentionMassObserver(model, chunk_size=args.chunk_size) as observer:
            observer.reset()
            model(x, cos, sin)
    layers_seen = {"ours": observer.layers_observed, "paper": paper.calls, "fp64": ref.calls}
    out = {"shape": {"layers": args.layers, "hidden": args.hidden, "heads": args.heads, "mlp": args.mlp,
                     "seq": args.seq, "batch": 1, "dtype": str(dtype)},
           "timing": timing, "layers_observed": layers_seen,
           "numerics": {"ours_vs_fp64": compare(observer.mass, ref.mass),
                        "paper_vs_fp64": compare(paper.mass, ref.mass)},
           "mean_mass_over_layers_heads": (ref.mass.mean() / (args.layers * args.heads)).item()}
    return out


# --------------------------------------------------------------------------- 2: planted sinks
def planted_check(args, device, dtype, heads: int, kv_heads: int, label: str) -> dict:
    from sink_modifier.sinks import mass_from_query_key

    gen = torch.Generator(device=device).manual_seed(args.seed + 2)
    T, hd = args.seq, args.head_dim
    q = torch.randn(1, heads, T, hd, device=device, generator=gen)
    k = torch.randn(1, kv_heads, T, hd, device=device, generator=gen)
    u = torch.randn(hd, device=device, generator=gen)
    u = u / u.norm()
    sinks = sorted({0, T // 3, T // 2 + 7, T - 1})
    q += 3.0 * u  # every query shares a direction ...
    k[:, :, sinks] += 15.0 * u  # ... that the sink keys point along: logit +~4 for all queries
    q, k = q.to(dtype), k.to(dtype)

    def ours():
        return mass_from_query_key(q, k, chunk_size=args.chunk_size)

    def naive():
        return paper_mass(q, k)

    timing = {"ours": measure(ours, device, args.warmup, args.repeats),
              "naive": measure(naive, device, args.warmup, args.repeats)}
    with torch.no_grad():
        ref = fp64_mass(q, k)
        got_ours, got_paper = ours(), naive()
    from sink_modifier.sinks import soft_sink_mask

    found = (soft_sink_mask(got_ours.float()) > 0.5)[0].nonzero().flatten().tolist()
    return {"label": label, "heads": heads, "kv_heads": kv_heads, "seq": T, "head_dim": hd, "dtype": str(dtype),
            "planted_sinks": sinks, "ours_sinks": found, "timing": timing,
            "numerics": {"ours_vs_fp64": compare(got_ours, ref), "paper_vs_fp64": compare(got_paper, ref)}}


# --------------------------------------------------------------------------- report
def md_table_timing(rows: list[tuple[str, dict]]) -> list[str]:
    lines = ["| computation | median ms | min–max ms | peak MiB above baseline |", "|---|---|---|---|"]
    for name, t in rows:
        lines.append(f"| {name} | {t['median_ms']:.2f} | {t['min_ms']:.2f}–{t['max_ms']:.2f} | {t['peak_mib']:.0f} |")
    return lines


def md_numerics(num: dict) -> list[str]:
    lines = ["| collector | max rel. error of mass vs fp64 | same hard sink mask | sinks (fp64) | max abs soft-mask diff |",
             "|---|---|---|---|---|"]
    for name, label in (("ours_vs_fp64", "ours (fp32 chunks from bf16 q/k)"), ("paper_vs_fp64", "paper (bf16 QKᵀ, fp32 softmax)")):
        c = num[name]
        lines.append(f"| {label} | {c['max_rel_err']:.2e} | {'yes' if c['same_hard_mask'] else 'NO'} | "
                     f"{c['sinks']} ({c['sinks_ref']}) | {c['max_abs_soft_mask_diff']:.2e} |")
    return lines


def summarize(out_dir: Path) -> str:
    sink = json.loads((out_dir / "gpu_sink_check.json").read_text()) if (out_dir / "gpu_sink_check.json").exists() else None
    s24_path = out_dir / "sparse24_speed.json"
    s24 = json.loads(s24_path.read_text()) if s24_path.exists() else None
    parts = ["# GPU check: sink detection at LLaDA-8B scale, and 2:4 speed", ""]
    if sink:
        env = sink["environment"]
        parts += [f"Run {sink['created']} on {env.get('gpu', env['device'])} (torch {env['torch']}, CUDA {env.get('cuda')}, "
                  f"TF32 matmul {env.get('tf32')}){' — CPU SMOKE MODE, tiny shapes: not a measurement' if sink['cpu_smoke'] else ''}.", ""]
        st = sink["stack"]
        sh = st["shape"]
        t = st["timing"]
        parts += [f"## Sink pass on a {sh['layers']}-layer LLaDA-shaped stack (hidden {sh['hidden']}, {sh['heads']} heads, "
                  f"MLP {sh['mlp']}), one row of T={sh['seq']}, {sh['dtype']}", ""]
        parts += md_table_timing([("plain forward (SDPA)", t["forward"]), ("forward + ours (AttentionMassObserver)", t["ours"]),
                                  ("forward + paper collector (full T×T)", t["naive"])])
        parts += ["", f"Sink-pass overhead over the forward: ours {t['ours']['median_ms'] / t['forward']['median_ms']:.2f}x time, "
                  f"{t['ours']['peak_mib'] - t['forward']['peak_mib']:+.0f} MiB; paper "
                  f"{t['naive']['median_ms'] / t['forward']['median_ms']:.2f}x time, {t['naive']['peak_mib'] - t['forward']['peak_mib']:+.0f} MiB. "
                  f"Layers observed: {st['layers_observed']}.", ""]
        parts += md_numerics(st["numerics"]) + [""]
        parts += ["## Planted sinks, one attention layer (mass computation alone)", ""]
        for p in sink["planted"]:
            ok = "found exactly" if p["ours_sinks"] == p["planted_sinks"] else f"found {p['ours_sinks']}"
            parts += [f"**{p['label']}**: {p['heads']}/{p['kv_heads']} heads × {p['head_dim']}, T={p['seq']}, {p['dtype']}; "
                      f"planted sinks {p['planted_sinks']}: ours {ok}.", ""]
            parts += md_table_timing([("ours (mass_from_query_key)", p["timing"]["ours"]), ("paper collector", p["timing"]["naive"])])
            parts += [""] + md_numerics(p["numerics"]) + [""]
        parts += [f"**Verdict: {sink['verdict']}**", ""]
    parts += ["## 2:4 semi-structured speed (`sparse24_speed.py`)", ""]
    if s24:
        sp = s24["speedup"]
        parts += [f"{s24['environment'].get('gpu')} {s24['environment'].get('backend')}; "
                  f"{s24['config']['layers']} layers, seq {s24['config']['seq']}, {s24['config']['dtype']}.", "",
                  "| component | dense ms | 2:4 ms | speed-up |", "|---|---|---|---|"]
        for key in ("layer", "mlp", "attn_proj", "attn_core", "lm_head", "model"):
            d, s = s24["timings_ms"]["dense"][key]["median_ms"], s24["timings_ms"]["sparse24"][key]["median_ms"]
            parts.append(f"| {key} | {d:.3f} | {s:.3f} | {sp.get(key, float('nan')):.2f}x |")
        parts += ["", f"max rel. error sparse vs dense: {s24['correctness']['max_rel_error']:.2e}", ""]
    else:
        parts += ["not measured (no CUDA GPU, or dry run: see the log)", ""]
    text = "\n".join(parts)
    (out_dir / "gpu_check.md").write_text(text)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "gpu_check")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny shapes on CPU: checks the code path, measures nothing meaningful")
    p.add_argument("--summarize", type=Path, default=None, help="only (re)write DIR/gpu_check.md from DIR's json files")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--heads", type=int, default=32)
    p.add_argument("--mlp", type=int, default=12288)
    p.add_argument("--seq", type=int, default=4096)
    p.add_argument("--chunk-size", type=int, default=None, help="queries per block for ours (default: the package's budget)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--tolerance", type=float, default=1e-3, help="max relative error of our mass vs fp64")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.cpu_smoke:
        args.layers, args.hidden, args.heads, args.mlp, args.seq = 2, 128, 4, 256, 64
        args.warmup, args.repeats = 0, 1
    args.head_dim = args.hidden // args.heads
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if args.cpu_smoke:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        print(NO_GPU.format(why="torch.cuda.is_available() is False"))
        return 0
    else:
        device = torch.device("cuda", torch.cuda.current_device())
    dtype = torch.bfloat16
    started = time.perf_counter()
    print(f"gpu_sink_check: {'CPU smoke (tiny shapes)' if args.cpu_smoke else 'GPU'} on {device}; "
          f"stack {args.layers}x(hidden {args.hidden}, {args.heads} heads, MLP {args.mlp}), T={args.seq}, bf16", flush=True)
    stack = stack_check(args, device, dtype)
    print(f"  stack: forward {stack['timing']['forward']['median_ms']:.1f} ms, ours {stack['timing']['ours']['median_ms']:.1f} ms "
          f"({stack['timing']['ours']['peak_mib'] - stack['timing']['forward']['peak_mib']:+.0f} MiB), naive "
          f"{stack['timing']['naive']['median_ms']:.1f} ms ({stack['timing']['naive']['peak_mib'] - stack['timing']['forward']['peak_mib']:+.0f} MiB); "
          f"ours vs fp64 rel err {stack['numerics']['ours_vs_fp64']['max_rel_err']:.1e}, paper vs fp64 "
          f"{stack['numerics']['paper_vs_fp64']['max_rel_err']:.1e}", flush=True)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    planted = []
    kv = max(1, args.heads // 8)
    dream_heads = args.heads - args.heads // 8  # 28 of 32: Dream's 28 query heads over 4 kv heads (7 per group)
    dream_heads -= dream_heads % kv
    for heads, kv_heads, label in ((args.heads, args.heads, "LLaDA-like (no GQA)"), (dream_heads, kv, "Dream-like (GQA)")):
        res = planted_check(args, device, dtype, heads, kv_heads, label)
        planted.append(res)
        print(f"  planted {label}: ours {res['timing']['ours']['median_ms']:.1f} ms / {res['timing']['ours']['peak_mib']:.0f} MiB, "
              f"naive {res['timing']['naive']['median_ms']:.1f} ms / {res['timing']['naive']['peak_mib']:.0f} MiB; rel err ours "
              f"{res['numerics']['ours_vs_fp64']['max_rel_err']:.1e}, paper {res['numerics']['paper_vs_fp64']['max_rel_err']:.1e}; "
              f"sinks planted {res['planted_sinks']} found {res['ours_sinks']}", flush=True)
    problems = []
    for name, num in [("stack", stack["numerics"]), *((p["label"], p["numerics"]) for p in planted)]:
        if not num["ours_vs_fp64"]["max_rel_err"] <= args.tolerance:
            problems.append(f"{name}: our mass deviates from fp64 by {num['ours_vs_fp64']['max_rel_err']:.1e}")
    for p in planted:
        if p["ours_sinks"] != p["planted_sinks"]:
            problems.append(f"{p['label']}: planted sinks {p['planted_sinks']}, ours found {p['ours_sinks']}")
        if not p["numerics"]["ours_vs_fp64"]["same_hard_mask"]:
            problems.append(f"{p['label']}: our hard sink mask differs from the fp64 one")
    verdict = "PASS" if not problems else "FAIL: " + "; ".join(problems)
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda, "device": str(device),
           "tf32": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    report = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": [sys.executable, *sys.argv],
              "cpu_smoke": args.cpu_smoke, "environment": env,
              "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "stack": stack, "planted": planted, "verdict": verdict, "runtime_s": time.perf_counter() - started}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_sink_check.json").write_text(json.dumps(report, indent=1) + "\n")
    summarize(args.out)
    print(f"gpu_sink_check: {verdict} ({report['runtime_s']:.0f} s); wrote {args.out / 'gpu_sink_check.json'}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
