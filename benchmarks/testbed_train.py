"""Train the second testbed: a LLaDA-style masked-diffusion LM whose windows begin with a BOS token.

tiny-dlm (15 M parameters) has weak sinks (top key 2-7x the mean mass), so the calibration study's
sink verdict is a verdict on that model (issue 22). This trains a larger one the way tiny-dlm was
trained (LLaDA's objective: t ~ U(0, 1) stratified over the batch, p = (1 - eps) t + eps, CE on the
masked tokens / p, summed and divided by B * L) on the shipped corpus and tokenizer, with what
LLaDA's pretraining has and tiny-dlm's had not: every window begins with ``<|bos|>`` (added to the
tokenizer), never masked, the position where real LMs' attention sinks sit.

    python benchmarks/testbed_train.py --cpu-smoke --out /tmp/testbed-smoke   # tiny config, CPU
    python benchmarks/testbed_train.py --out OUT --minutes 5                   # GPU: bf16 autocast, SDPA

OUT is a Hugging Face folder (``config.json`` with ``is_causal: false``, ``model-*.safetensors``
shards of at most ``--max-shard-mb``, the tokenizer, ``train_stats.json``) that loads with
``AutoModelForCausalLM.from_pretrained(OUT)``. Needs torch, transformers, tokenizers and this package (no llm-compressor, no datasets).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_paths import CORPUS, HELDOUT, TINY_DLM
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sink_modifier.data import load_documents

BOS = "<|bos|>"
EPS = 1e-3  # LLaDA's floor on the masking probability
SIZES = {  # hidden, MLP, layers, heads of 64 (the smoke size: heads of 32)
    "smoke": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2),
    "57m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=9),
    "110m": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=14, num_attention_heads=12),
}
EVAL_RATIOS = (0.15, 0.5, 0.9)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------
def token_stream(tokenizer, docs: list[str]) -> torch.Tensor:
    """The documents' tokens, each document followed by ``<|eos|>`` (as tiny-dlm was trained)."""
    ids: list[int] = []
    for start in range(0, len(docs), 1000):
        for doc in tokenizer(docs[start:start + 1000], add_special_tokens=False, verbose=False)["input_ids"]:
            ids.extend(doc)
            ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


def bos_windows(stream: torch.Tensor, starts: torch.Tensor, seq_len: int, bos: int) -> torch.Tensor:
    """``[B, seq_len]`` windows: BOS, then ``seq_len - 1`` stream tokens from each start."""
    body = stream[starts[:, None] + torch.arange(seq_len - 1)]
    return torch.cat([torch.full((len(starts), 1), bos, dtype=torch.long), body], dim=1)


# -- the objective -----------------------------------------------------------------------------------
def diffusion_loss(model, clean: torch.Tensor, mask_id: int, generator: torch.Generator) -> torch.Tensor:
    """LLaDA's loss on ``clean`` ``[B, L]``; position 0 (BOS) is never masked.

    The LM head runs on the masked positions only (their logits are all the loss reads).
    """
    batch, length = clean.shape
    t = (torch.arange(batch, dtype=torch.float32) + torch.rand(1, generator=generator)) / batch
    p = ((1 - EPS) * t + EPS).to(clean.device)
    masked = torch.rand(batch, length, generator=generator).to(clean.device) < p[:, None]
    masked[:, 0] = False
    noisy = torch.where(masked, torch.full_like(clean, mask_id), clean)
    hidden = model.model(input_ids=noisy).last_hidden_state
    logits = model.lm_head(hidden[masked]).float()
    ce = F.cross_entropy(logits, clean[masked], reduction="none")
    return (ce / p[:, None].expand(-1, length)[masked]).sum() / (batch * length)


@torch.no_grad()
def masked_ce(model, windows: torch.Tensor, mask_id: int, ratio: float, batch_size: int) -> dict:
    """Mean CE and accuracy on exactly ``round(ratio * (L - 1))`` masked positions a window (BOS kept)."""
    generator = torch.Generator().manual_seed(0)  # the same masks for every model
    length = windows.shape[1]
    count = max(1, round(ratio * (length - 1)))
    total, correct, n = 0.0, 0, 0
    device = next(model.parameters()).device
    for start in range(0, len(windows), batch_size):
        clean = windows[start:start + batch_size]
        order = torch.rand(len(clean), length - 1, generator=generator).argsort(dim=1)[:, :count] + 1
        masked = torch.zeros_like(clean, dtype=torch.bool).scatter_(1, order, True)
        noisy = torch.where(masked, torch.full_like(clean, mask_id), clean).to(device)
        with _autocast(device):
            logits = model(input_ids=noisy).logits.float().cpu()
        total += float(F.cross_entropy(logits[masked], clean[masked], reduction="sum"))
        correct += int((logits[masked].argmax(-1) == clean[masked]).sum())
        n += int(masked.sum())
    return {"ce": total / n, "accuracy": correct / n, "n_masked": n}


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def learning_rate(progress: float, peak: float, warmup: float = 0.05, floor: float = 0.1) -> float:
    """Linear warm-up over the first ``warmup`` of training, then cosine down to ``floor * peak``."""
    if progress < warmup:
        return peak * progress / warmup
    done = min(1.0, (progress - warmup) / (1 - warmup))
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done)))


# -- the run -----------------------------------------------------------------------------------------
def train(args) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu_smoke else "cpu")
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    tokenizer.add_special_tokens({"bos_token": BOS})
    bos, mask_id = tokenizer.bos_token_id, tokenizer.mask_token_id
    vocab = math.ceil(len(tokenizer) / 64) * 64
    stream = token_stream(tokenizer, load_documents(args.data, max_chars=args.max_chars))
    heldout = token_stream(tokenizer, load_documents(args.heldout, max_chars=args.max_chars))
    eval_starts = torch.arange(args.eval_windows) * (args.seq_len - 1)
    eval_windows = bos_windows(heldout, eval_starts[eval_starts + args.seq_len < len(heldout)], args.seq_len, bos)
    log(f"{len(stream):,} training tokens, {len(eval_windows)} held-out windows of {args.seq_len}")

    config = LlamaConfig(
        vocab_size=vocab, **SIZES[args.size], head_dim=SIZES[args.size]["hidden_size"] // SIZES[args.size]["num_attention_heads"],
        max_position_embeddings=args.seq_len, is_causal=False, tie_word_embeddings=False, use_cache=False,
        mask_token_id=mask_id, bos_token_id=bos, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5, attention_bias=False, mlp_bias=False,
    )
    model = LlamaForCausalLM(config).to(device)
    model.config._attn_implementation = "sdpa"
    params = sum(p.numel() for p in model.parameters())
    log(f"{args.size}: {params / 1e6:.1f} M parameters on {device}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")
    budget = 60 * args.minutes if args.minutes else None
    started, step, ema, first = time.monotonic(), 0, None, None
    model.train()
    while True:
        elapsed = time.monotonic() - started
        progress = step / args.steps if args.steps else elapsed / budget
        if progress >= 1:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(progress, args.lr)
        starts = torch.randint(0, len(stream) - args.seq_len, (args.batch,), generator=generator)
        clean = bos_windows(stream, starts, args.seq_len, bos).to(device, non_blocking=True)
        with _autocast(device):
            loss = diffusion_loss(model, clean, mask_id, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        value = float(loss.detach())
        first = value if first is None else first
        ema = value if ema is None else 0.98 * ema + 0.02 * value
        if step % args.log_every == 0:
            log(f"step {step}: loss {value:.3f} (ema {ema:.3f}), {elapsed:.0f} s")
    seconds = time.monotonic() - started
    model.eval()
    evaluation = {f"mask{r:.2f}": masked_ce(model, eval_windows, mask_id, r, args.batch) for r in EVAL_RATIOS}
    log("held-out masked CE: " + ", ".join(f"{k} {v['ce']:.3f}" for k, v in evaluation.items()))
    stats = {
        "params": params, "model": SIZES[args.size] | {"vocab_size": vocab, "max_position_embeddings": args.seq_len},
        "objective": "LLaDA masked diffusion: t~U(0,1) stratified, p=(1-eps)t+eps, CE on masked / p, / (B*L); "
                     "windows = <|bos|> + seq_len-1 tokens of the packed corpus, BOS never masked",
        "eps": EPS, "seq_len": args.seq_len, "batch_seqs": args.batch, "steps": step,
        "tokens_seen": step * args.batch * args.seq_len, "train_tokens": len(stream), "lr_peak": args.lr,
        "schedule": "5% linear warm-up, cosine to 10%, " + (f"{args.steps} steps" if args.steps else f"{args.minutes} min"),
        "weight_decay": 0.1, "train_seconds": round(seconds, 1), "device": torch.cuda.get_device_name()
        if device.type == "cuda" else "cpu", "torch": torch.__version__, "seed": args.seed,
        "first_loss": first, "final_loss_ema": ema, "heldout_eval": evaluation,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16 if device.type == "cuda" else torch.float32).save_pretrained(
        args.out, max_shard_size=f"{args.max_shard_mb}MB")
    tokenizer.save_pretrained(args.out)
    (args.out / "train_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    log(f"wrote {args.out}")
    return stats


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the trained model")
    parser.add_argument("--size", choices=sorted(SIZES), default="57m")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time (ignored with --steps)")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead of --minutes")
    parser.add_argument("--batch", type=int, default=128, help="windows per step")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=CORPUS)
    parser.add_argument("--heldout", type=Path, default=HELDOUT)
    parser.add_argument("--tokenizer", type=Path, default=TINY_DLM, help="folder of the shipped tokenizer")
    parser.add_argument("--max-chars", type=int, default=None, help="read at most this much of each corpus")
    parser.add_argument("--eval-windows", type=int, default=64)
    parser.add_argument("--max-shard-mb", type=int, default=15, help="largest weight file (the device returns <= 16 MiB each)")
    parser.add_argument("--log-every", type=int, default=50)
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny config, a few steps, on CPU: the same code")
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.size, args.steps, args.batch, args.seq_len = "smoke", args.steps or 4, 4, 32
        args.max_chars, args.eval_windows, args.log_every = args.max_chars or 200_000, 4, 1
    if args.steps is None and not args.minutes > 0:
        parser.error("--minutes must be > 0 (or give --steps)")
    return args


def main(argv=None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
