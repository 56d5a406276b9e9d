"""Prune a diffusion LM with calibration split over processes (torch.distributed, torchrun).

    torchrun --nproc_per_node 2 examples/prune_distributed.py            # 2 ranks (gloo on CPU, nccl on GPUs)
    python examples/prune_distributed.py --output outputs/single          # the same in one process

Every rank loads the model and builds the same calibration set (checked by fingerprint),
then calibrates on its own windows (``shard_calibration``: whole windows, every timestep of
each). The sink-aware modifiers combine the ranks' statistics before each layer is pruned
(Wanda: per-batch column statistics gathered and folded in order; SparseGPT: Hessians
reduced to the rank that prunes the module, weights broadcast), so the checkpoint is the one
a single process would write. Only rank 0 writes: ``model.save_pretrained`` is
llm-compressor's collective wrapper (every rank calls it, rank 0 writes), inside
``write_atomically`` on rank 0 (hidden temporary folder, renamed into place when complete).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForCausalLM, AutoTokenizer

import sink_modifier  # noqa: F401  (registers the modifiers for YAML recipes)
from sink_modifier.export import check_output_dir, sparsity_report, write_atomically
from sink_modifier.process import LLADA_TIMESTEPS, MaskTokenProcess, build_calibration, resolve_mask_token_id
from sink_modifier.process.sharding import calibration_fingerprint, shard_bounds, shard_calibration

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def init_distributed() -> tuple[int, int]:
    """Join the torchrun process group (if launched by torchrun); returns ``(rank, world_size)``."""
    if "RANK" not in os.environ or dist.is_initialized():
        return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl")
    else:
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size()


def save_from_rank0(model, tokenizer, output: Path, metadata: dict, overwrite: bool) -> Path | None:
    """Write the checkpoint once, from rank 0, atomically; every rank must call this."""
    distributed = dist.is_initialized()
    rank = dist.get_rank() if distributed else 0

    def write(folder: Path) -> None:
        if distributed:  # the other ranks join llm-compressor's collective save_pretrained
            dist.broadcast_object_list([str(folder)], src=0)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    if rank == 0:
        return write_atomically(output, write, metadata=metadata, overwrite=overwrite)
    folder = [None]
    dist.broadcast_object_list(folder, src=0)
    model.save_pretrained(folder[0])  # writes nothing on this rank
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "tiny-dlm"))
    parser.add_argument("--recipe", default=str(REPO / "recipes" / "sink_wanda_50.yaml"))
    parser.add_argument("--data", default=str(SHARED / "data" / "corpus.txt.gz"))
    parser.add_argument("--output", default=str(REPO / "outputs" / "tiny-dlm-sink-wanda-50-ddp"))
    parser.add_argument("--num-samples", type=int, default=4, help="calibration windows (shared out by rank)")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()

    rank, world_size = init_distributed()
    check_output_dir(args.output, args.overwrite, protected=(args.model, args.data))  # every rank, before work
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    calibration = build_calibration(
        args.data, tokenizer, process=MaskTokenProcess(resolve_mask_token_id(tokenizer, model.config)),
        seq_len=args.seq_len, num_samples=args.num_samples,
        timesteps=LLADA_TIMESTEPS, seed=args.seed, config=model.config, max_chars=2_000_000,
    )
    shard = shard_calibration(calibration)  # the whole set when not distributed
    batch_size = len(calibration.timesteps)  # one window's noised copies per batch
    print(f"[rank {rank}/{world_size}] windows {shard.window_index[::batch_size].tolist()} "
          f"({len(shard)} of {len(calibration)} rows)", flush=True)

    from llmcompressor import oneshot

    start = time.perf_counter()
    oneshot(model=model, processor=tokenizer, dataset=shard.dataloader(batch_size=batch_size),
            recipe=args.recipe, pipeline="sequential")
    seconds = time.perf_counter() - start

    report = sparsity_report(model)
    metadata = {
        "source_model": args.model,
        "recipe": Path(args.recipe).read_text(),
        "sparsity": report,
        "calibration": {**calibration.describe(), "data": args.data, "batch_size": batch_size,
                        "fingerprint": calibration_fingerprint(calibration)},
        "data_parallel": {"world_size": world_size,
                          "windows_per_rank": [list(range(*shard_bounds(calibration.num_samples, r, world_size)))
                                               for r in range(world_size)]},
        "seed": args.seed,
        "prune_seconds": round(seconds, 2),
        "command": sys.argv,
    }
    output = save_from_rank0(model, tokenizer, Path(args.output), metadata, args.overwrite)
    if output is not None:
        print(f"pruned in {seconds:.0f} s on {world_size} process(es); overall sparsity "
              f"{report['overall']:.2%} over {report['num_layers']} layers; wrote {output}", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
