"""Prune LLaDA-8B (GSAI-ML/LLaDA-8B-Base; also -Instruct, LLaDA-1.5, LLaDA-MoE) with sink-aware Wanda.

Not runnable on the project's offline machines (no hub weights there); the same code path is
tested on a tiny LLaDA-layout remote-code model in tests/test_model_families.py. Where the
weights can be downloaded (16 GB in bf16; one 40 GB+ GPU, or CPU offloading):

    python examples/prune_llada.py                                   # LLaDA-8B-Base, 50% unstructured
    python examples/prune_llada.py --model GSAI-ML/LLaDA-1.5 --recipe recipes/sink_wanda_2of4.yaml

Equivalent CLI:

    sink-modifier prune --model GSAI-ML/LLaDA-8B-Base --trust-remote-code \\
        --recipe recipes/sink_wanda_50.yaml --data corpus.txt.gz --num-samples 128 --seq-len 4096 \\
        --output outputs/llada-8b-sink-wanda-50

What the llada family does: the folder's own code runs (``trust_remote_code``; read it first),
repaired in memory for transformers 5 (``use_cache`` on the config, ``post_init``,
``tie_weights`` signature); mask token 126336; every position noised at the 10 LLaDA
timesteps; sinks read by intercepting its SDPA calls; the output head
``model.transformer.ff_out`` left dense.
"""

from hub_pruning import parse_args, run

if __name__ == "__main__":
    run(parse_args(__doc__, "GSAI-ML/LLaDA-8B-Base", "sink_wanda_50.yaml", 4096, "llada-8b-sink-wanda-50"),
        trust_remote_code=True)
