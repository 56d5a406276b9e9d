"""Prune DiffusionGemma (google/diffusiongemma-26B-A4B-it) with sink-aware Wanda: canvas decoder and experts.

Not runnable on the project's offline machines (no hub weights there); the same code path is
tested on a tiny DiffusionGemmaForBlockDiffusion built from a config (with MoE and a vision
tower) in tests/test_model_families.py. Where the weights can be downloaded (52 GB in bf16:
use a GPU with CPU offloading, or several GPUs):

    python examples/prune_diffusion_gemma.py

Equivalent CLI:

    sink-modifier prune --model google/diffusiongemma-26B-A4B-it \\
        --recipe recipes/sink_wanda_50.yaml --data corpus.txt.gz --num-samples 128 --seq-len 2048 \\
        --output outputs/diffusiongemma-sink-wanda-50

What the diffusion_gemma family does: loads with AutoModelForImageTextToText (native in
transformers, no remote code); each calibration window is a clean prompt plus a noised canvas
(``decoder_input_ids``); llm-compressor linearises the MoE experts for calibration and they are
repacked before saving; the vision tower, which sees no text, stays dense. vLLM serves the
pruned checkpoint (dense weights with zeros in place, optionally quantized).
"""

from hub_pruning import parse_args, run

if __name__ == "__main__":
    run(parse_args(__doc__, "google/diffusiongemma-26B-A4B-it", "sink_wanda_50.yaml", 2048,
                   "diffusiongemma-sink-wanda-50"), trust_remote_code=False)
