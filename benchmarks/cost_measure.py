"""Cost of sink-aware pruning measured at small scale on CPU: ours vs llm-compressor's Wanda.

Random-weight bidirectional Llama configs (4 layers, heads of 64, MLP 2.75x hidden, vocabulary
8192 so the tiny-dlm tokenizer serves), float32 on CPU. Random token windows noised at the 10
LLaDA timesteps (``noise_windows``) are pruned to 50 % by ``oneshot(pipeline="sequential")``
with our ``SinkAwareWandaPruningModifier`` and with llm-compressor's ``WandaPruningModifier``
on the *same* rows. Each run is a fresh process forked from a parent that has imported the
libraries but computed nothing (:func:`prepare_parent`, :func:`in_child`); wall time and process
CPU time bracket the ``oneshot`` call, memory is the peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` after loading) minus the RSS just before the call. Runs alternate
between the two pruners; medians are reported with the 1-minute load average around each run.
Separately, for one row at growing ``T``: a plain SDPA forward, our sink pass alone
(``global_attention_mass`` on an SDPA model, chunked from q/k; and on an eager model, from the
probabilities) and the paper's naive collector (full ``softmax(QK^T)`` per layer, summed), time
and peak RSS delta each.

torch, transformers, llm-compressor and ``sink_modifier`` are imported inside the functions, so
that importing this module (for its constants, as ``cost_report.py`` does) stays light.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import replace
from pathlib import Path

# the sibling modules, also when this file is loaded by path rather than run from benchmarks/
from cost_model import TINY_DLM, ModelShape, mass_buffer_bytes, model_params, procedure_cost  # noqa: E402
from process_memory import reset_peak_rss, rss_mib  # noqa: E402

LAYERS = 4
HEAD_DIM = 64
VOCAB = 8192  # the tiny-dlm tokenizer's vocabulary
MASK_ID = 2


def mlp_width(hidden: int) -> int:
    return int(round(hidden * 2.75 / 32)) * 32


def small_shape(hidden: int) -> ModelShape:
    """The measured configs as analytic shapes (eager attention: llm-compressor forces it)."""
    heads = max(1, hidden // HEAD_DIM)
    return ModelShape(f"llama-h{hidden}", hidden, LAYERS, heads, heads, HEAD_DIM, mlp_width(hidden), VOCAB, "eager")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def loadavg() -> float:
    return os.getloadavg()[0]


def model_dir(work: Path, hidden: int, max_len: int) -> Path:
    return work / f"llama_h{hidden}_L{LAYERS}_T{max_len}"


def build_model(path: Path, hidden: int, max_len: int) -> None:
    """Save a random bidirectional Llama (seeded) and the tiny-dlm tokenizer at ``path``."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    heads = max(1, hidden // HEAD_DIM)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=mlp_width(hidden), num_hidden_layers=LAYERS,
        num_attention_heads=heads, num_key_value_heads=heads, head_dim=HEAD_DIM, max_position_embeddings=max_len,
        is_causal=False, mask_token_id=MASK_ID, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        tie_word_embeddings=False, use_cache=False,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY_DLM / name, path / name)


def calibration_rows(T: int, windows: int, seed: int = 0):
    """``windows`` random token windows noised at the 10 LLaDA timesteps: ``[windows*10, T]``."""
    import torch

    from sink_modifier.process import LLADA_TIMESTEPS, MaskTokenProcess, noise_windows

    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(3, VOCAB, (windows, T), generator=gen)
    rows, _, _ = noise_windows(clean, LLADA_TIMESTEPS, MaskTokenProcess(MASK_ID), seed)
    return rows


def load(path: Path, attn: str | None = None):
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    kwargs = {"attn_implementation": attn} if attn else {}
    model = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(path)


def child_oneshot(path: str, method: str, T: int, windows: int, batch_size: int, threads: int) -> dict:
    """One pruning run; returns wall, CPU, peak RSS over the ``oneshot`` call."""
    import gc

    import torch
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier

    from sink_modifier import SinkAwareWandaPruningModifier

    torch.set_num_threads(threads)
    model, tokenizer = load(Path(path))
    rows = calibration_rows(T, windows)
    data = [{"input_ids": r, "attention_mask": torch.ones_like(r)} for r in rows]
    loader = torch.utils.data.DataLoader(
        data, batch_size=batch_size, shuffle=False,
        collate_fn=lambda b: {k: torch.stack([x[k] for x in b]) for k in b[0]})
    if method == "llmc":
        modifier = WandaPruningModifier(sparsity=0.5, targets=["Linear"], ignore=["re:.*lm_head"])
    else:
        modifier = SinkAwareWandaPruningModifier(sparsity=0.5, ignore=["re:.*lm_head"])
    gc.collect()
    baseline = rss_mib()
    reset = reset_peak_rss()
    load_before = loadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    oneshot(model=model, processor=tokenizer, dataset=loader, recipe=[modifier], pipeline="sequential")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = rss_mib("VmHWM")
    linears = [m for layer in model.model.layers for m in layer.modules() if isinstance(m, torch.nn.Linear)]
    zeros = sum(int((m.weight == 0).sum()) for m in linears) / sum(m.weight.numel() for m in linears)
    return {"method": method, "rows": int(rows.shape[0]), "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak,
            "rss_before_mib": baseline, "peak_minus_before_mib": peak - baseline, "peak_reset": reset,
            "loadavg_1min": [load_before, loadavg()], "sparsity": zeros}


class _NaiveCollector:
    """The paper's collector (reference-spec §1.7): for every SDPA self-attention call,
    ``S = (q @ k^T) * scale`` in the model dtype, ``P = softmax(S.float())`` over the full
    ``T x T``, mass ``+= P.sum(heads, queries)``. Independent of ``sink_modifier.sinks``."""

    def __init__(self):
        import torch.nn.functional as F
        from torch.overrides import TorchFunctionMode

        collector = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is F.scaled_dot_product_attention:
                    collector.observe(*args, **kwargs)
                return func(*args, **kwargs)

        self.mode = Mode()
        self.mass = None
        self.layers = 0

    def observe(self, q, k, v=None, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        import torch

        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        scale = scale if scale is not None else q.shape[-1] ** -0.5
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale  # [B, H, T, T] in the model dtype
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else scores + attn_mask
        probs = torch.softmax(scores.float(), dim=-1)
        mass = probs.sum(dim=2).sum(dim=1)
        self.mass = mass if self.mass is None else self.mass + mass
        self.layers += 1


def child_mass(path: str, mode: str, T: int, threads: int) -> dict:
    """One row at length ``T``: a plain forward, our sink pass, or the naive collector."""
    import gc

    import torch

    from sink_modifier.sinks import global_attention_mass

    torch.set_num_threads(threads)
    attn = "eager" if mode == "ours_eager" else "sdpa"
    model, _ = load(Path(path), attn)
    ids = calibration_rows(T, 1)[4:5]  # the t = 0.5 row

    def run():
        with torch.no_grad():
            if mode == "forward":
                model(input_ids=ids)
                return None
            if mode in ("ours_sdpa", "ours_eager"):
                return global_attention_mass(model, ids)
            collector = _NaiveCollector()
            with collector.mode:
                model(input_ids=ids)
            return collector.mass

    run()  # warm-up (first-call allocations and lazy initialisation)
    gc.collect()
    baseline = rss_mib()
    reset = reset_peak_rss()
    load_before = loadavg()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    mass = run()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    peak = rss_mib("VmHWM")
    out = {"mode": mode, "T": T, "wall_s": wall, "cpu_s": cpu, "peak_rss_mib": peak, "rss_before_mib": baseline,
           "peak_minus_before_mib": peak - baseline, "peak_reset": reset, "loadavg_1min": [load_before, loadavg()]}
    if mass is not None:
        out["mass"] = mass[0].double().tolist()
    return out


def in_child(target, *args) -> dict:
    """Run ``target(*args)`` in a forked child (libraries already imported here); its result dict."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    reader, writer = ctx.Pipe(duplex=False)

    def body():
        try:
            writer.send({"ok": target(*args)})
        except BaseException:  # noqa: BLE001 - report anything to the parent
            writer.send({"error": traceback.format_exc()})
        finally:
            writer.close()

    proc = ctx.Process(target=body)
    proc.start()
    writer.close()
    try:
        message = reader.recv()
    except EOFError:
        message = {"error": "child died without a result"}
    proc.join()
    if "error" in message:
        raise RuntimeError(f"{getattr(target, '__name__', target)}{args} failed (exit {proc.exitcode}):\n{message['error']}")
    return message["ok"]


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def prepare_parent() -> dict:
    """Import everything the children need, computing nothing (children are forked from here)."""
    os.environ.setdefault("LLM_COMPRESSOR_LOG_LEVEL", "ERROR")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TQDM_DISABLE", "1")
    started = time.perf_counter()
    import llmcompressor  # noqa: F401
    import torch
    import transformers
    from llmcompressor import oneshot  # noqa: F401
    from llmcompressor.modifiers.pruning.wanda import WandaPruningModifier  # noqa: F401
    from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: F401

    import sink_modifier  # noqa: F401
    from sink_modifier.sinks import mass as mass_module

    try:
        from loguru import logger

        logger.remove()
        logger.add(sys.stderr, level="WARNING")
    except Exception:  # noqa: BLE001
        pass
    log(f"libraries imported in {time.perf_counter() - started:.0f} s")
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "llmcompressor": llmcompressor.__version__, "python": platform.python_version(),
            "chunk_bytes": getattr(mass_module, "DEFAULT_CHUNK_BYTES", None)}


def measure(args) -> dict:
    """The measured grid: oneshot ours vs llmc, and the sink pass alone vs naive."""
    work = Path(tempfile.mkdtemp(prefix="sink_cost_"))
    max_len = max([*args.seq_lens, args.size_seq, *args.mass_seq_lens])
    hiddens = sorted({*args.hiddens, args.seq_hidden, args.mass_hidden})
    for hidden in hiddens:
        path = model_dir(work, hidden, max_len)
        in_child(build_model, path, hidden, max_len)
    configs = [(h, args.size_seq) for h in args.hiddens]
    configs += [(args.seq_hidden, t) for t in args.seq_lens if (args.seq_hidden, t) not in configs]
    oneshot_results = []
    for hidden, T in configs:
        windows = max(1, args.tokens // T)
        path = str(model_dir(work, hidden, max_len))
        runs = {"llmc": [], "ours": []}
        for r in range(args.repeats):
            order = ("llmc", "ours") if r % 2 == 0 else ("ours", "llmc")
            for method in order:
                res = in_child(child_oneshot, path, method, T, windows, args.batch_size, args.threads)
                runs[method].append(res)
                log(f"oneshot h{hidden} T{T} {method}: wall {res['wall_s']:.1f}s cpu {res['cpu_s']:.1f}s "
                    f"peak-before {res['peak_minus_before_mib']:.0f} MiB (load {res['loadavg_1min'][0]:.1f})")
        entry = summarize_pair(runs)
        shape = small_shape(hidden)
        analytic = {p: procedure_cost(shape, T, windows, 10, p, batch=args.batch_size, dtype_bytes=4)
                    for p in ("ours", "llmc")}
        entry.update(hidden=hidden, T=T, windows=windows, rows=windows * 10, params=model_params(shape),
                     analytic_flops_ratio=analytic["ours"]["flops"]["total"] / analytic["llmc"]["flops"]["total"],
                     runs=runs)
        oneshot_results.append(entry)
        log(f"  => h{hidden} T{T}: wall {entry['wall_ratio']:.2f}x, cpu {entry['cpu_ratio']:.2f}x, "
            f"peak RSS {entry['peak_rss_ratio']:.2f}x, net {entry['net_rss_ratio']:.2f}x")
    mass_results = []
    path = str(model_dir(work, args.mass_hidden, max_len))
    for T in args.mass_seq_lens:
        per_mode = {}
        for mode in ("forward", "ours_sdpa", "ours_eager", "naive"):
            runs = [in_child(child_mass, path, mode, T, args.threads) for _ in range(args.mass_repeats)]
            per_mode[mode] = {
                "wall_s": median([r["wall_s"] for r in runs]),
                "cpu_s": median([r["cpu_s"] for r in runs]),
                "peak_minus_before_mib": median([r["peak_minus_before_mib"] for r in runs]),
                "loadavg_1min": [v for r in runs for v in r["loadavg_1min"]],
                "runs": [{k: v for k, v in r.items() if k != "mass"} for r in runs],
            }
            if "mass" in runs[0]:
                per_mode[mode]["mass"] = runs[0]["mass"]
        ref = per_mode["naive"].pop("mass")
        for mode in ("ours_sdpa", "ours_eager"):
            got = per_mode[mode].pop("mass")
            per_mode[mode]["max_rel_err_vs_naive"] = max(abs(a - b) / max(abs(b), 1e-30) for a, b in zip(got, ref))
        shape = small_shape(args.mass_hidden)
        per_mode["analytic_mass_bytes"] = {
            "naive_collector_fp32": shape.heads * T * T * 8,  # fp32 model: fp32 scores + fp32 probabilities
            "ours_query_key": mass_buffer_bytes(replace(shape, attention="sdpa"), T, "query_key", dtype_bytes=4),
        }
        mass_results.append({"hidden": args.mass_hidden, "T": T, **per_mode})
        log(f"mass T{T}: forward {per_mode['forward']['wall_s']:.2f}s/{per_mode['forward']['peak_minus_before_mib']:.0f}MiB, "
            f"ours sdpa {per_mode['ours_sdpa']['wall_s']:.2f}s/{per_mode['ours_sdpa']['peak_minus_before_mib']:.0f}MiB, "
            f"ours eager {per_mode['ours_eager']['wall_s']:.2f}s/{per_mode['ours_eager']['peak_minus_before_mib']:.0f}MiB, "
            f"naive {per_mode['naive']['wall_s']:.2f}s/{per_mode['naive']['peak_minus_before_mib']:.0f}MiB")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return {"oneshot": oneshot_results, "mass": mass_results}


def summarize_pair(runs: dict) -> dict:
    med = {m: {k: median([r[k] for r in rs]) for k in ("wall_s", "cpu_s", "peak_rss_mib", "peak_minus_before_mib")}
           for m, rs in runs.items()}
    pair_wall = [o["wall_s"] / u["wall_s"] for o, u in zip(runs["ours"], runs["llmc"])]
    pair_cpu = [o["cpu_s"] / u["cpu_s"] for o, u in zip(runs["ours"], runs["llmc"])]
    return {
        "median": med,
        "wall_ratio": med["ours"]["wall_s"] / med["llmc"]["wall_s"],
        "cpu_ratio": med["ours"]["cpu_s"] / med["llmc"]["cpu_s"],
        "peak_rss_ratio": med["ours"]["peak_rss_mib"] / med["llmc"]["peak_rss_mib"],
        "net_rss_ratio": med["ours"]["peak_minus_before_mib"] / max(med["llmc"]["peak_minus_before_mib"], 1e-9),
        "paired_wall_ratios": pair_wall,
        "paired_cpu_ratios": pair_cpu,
        "loadavg_1min": [v for rs in runs.values() for r in rs for v in r["loadavg_1min"]],
    }
