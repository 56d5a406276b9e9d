"""Prune Dream-7B (Dream-org/Dream-v0-Base-7B; also -Instruct-7B) with sink-aware Wanda.

Not runnable on the project's offline machines (no hub weights there); the same code path is
tested on a tiny Dream-layout remote-code model in tests/test_model_families.py. Where the
weights can be downloaded (15 GB in bf16):

    python examples/prune_dream.py
    python examples/prune_dream.py --recipe recipes/sink_sparsegpt_50.yaml

Equivalent CLI:

    sink-modifier prune --model Dream-org/Dream-v0-Base-7B --trust-remote-code \\
        --recipe recipes/sink_wanda_50.yaml --data corpus.txt.gz --num-samples 128 --seq-len 2048 \\
        --output outputs/dream-7b-sink-wanda-50

What the dream family does: the folder's own code runs (``trust_remote_code``), repaired in
memory for transformers 5 (the dropped "default" RoPE, ``inv_freq`` recomputed after loading,
tied-weights list, integer attention masks); mask token 151666; a window's first/last token
is kept when it really is BOS/EOS; evaluation reads logits shifted by one.
"""

from hub_pruning import parse_args, run

if __name__ == "__main__":
    run(parse_args(__doc__, "Dream-org/Dream-v0-Base-7B", "sink_wanda_50.yaml", 2048, "dream-7b-sink-wanda-50"),
        trust_remote_code=True)
