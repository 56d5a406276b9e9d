"""Analytic cost of sink-aware pruning at real scale: pure arithmetic over a model shape, no model runs.

For a model shape (a preset: ``llada-8b``, ``dream-7b``, ``tiny-dlm``, or any HF ``config.json``),
sequence length ``T``, ``N`` calibration windows and ``K`` timesteps (``R = N*K`` noised rows),
counts forward passes, matmul FLOPs and peak memory of four procedures:

* ``paper``       the reference code's ``sink`` (reference-spec §1.9, §7.3): per (sample, timestep)
                  a dense forward with the attention collector (full ``T x T`` scores per layer,
                  bf16 ``QK^T`` + fp32 copy + fp32 softmax, 10 bytes per element) and a second dense
                  forward with the statistic hooks; both compute the full-vocabulary logits; the
                  whole model stays on the device; one-shot (no sequential propagation).
* ``ours``        ``SinkAwareWandaPruningModifier`` in llm-compressor's sequential pipeline: per
                  batch one extra dense forward from the embedding pre-hook (the sink pass; the LM
                  head is on the meta device during calibration, so it costs nothing), then per
                  layer a calibration pass and a propagation pass. Mass from the real ``q``/``k`` in
                  fp32 query chunks (SDPA models such as LLaDA/Dream: ``O(chunk * T)`` memory and
                  one extra ``QK^T`` per layer) or reduced from eager probabilities (HF models,
                  which llm-compressor forces to eager attention: no extra matmul).
* ``ours_basic``  the same modifier in the basic pipeline (sink pass + one calibration forward).
* ``llmc``        llm-compressor's ``WandaPruningModifier``, sequential, on the same ``R`` rows.

FLOPs are matmul FLOPs (2 per multiply-add): q/k/v/o projections, SwiGLU MLP, attention
``QK^T`` and ``AV``, the LM head when it really runs, and the mass recomputation. Memory is in
bytes for the model dtype (bf16 by default), batch ``B`` rows per forward:

* weights: per layer and whole model; device weights depend on placement: ``resident`` (the
  whole model on the device) or ``onload`` (llm-compressor 0.14's default when the model is
  loaded on the CPU: each subgraph is onloaded for its calibration and propagation). With
  ``onload``, our sink pass runs the whole model from inside the embedding subgraph; it lifts
  that subgraph's ``disable_offloading()`` for its own forward (``sink_modifier.sinks.onload``),
  so each weight is onloaded for the operation that reads it and released after: the device
  holds one block at a time, as for llm-compressor's Wanda. The price is a host-to-device copy
  of every decoder weight per calibration batch (not counted in FLOPs).
* per-layer activations (residual, norm output, q/k/v, attention output, three MLP-wide
  tensors), the attention core (0 for SDPA/flash; ``B*H*T^2*(2b+4)`` bytes for eager), the mass
  buffers (paper ``B*H*T^2*10``; ours chunked: three fp32 score blocks of ``DEFAULT_CHUNK_BYTES``
  plus an fp32 copy of the keys; ours from eager probabilities: a ``B*T^2`` fp32 head sum),
  full-vocabulary logits (paper only), and the host-side cache of layer-boundary activations
  of all ``R`` rows that the sequential pipeline keeps (ours and llmc).

Unit-tested against hand-computed counts in ``tests/test_cost_model.py``; rendered by
``cost_report.py``; run through ``python benchmarks/cost.py --analytic-only``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

TINY_DLM = Path(__file__).resolve().parents[2] / "shared" / "models" / "tiny-dlm"

# Mirrors sink_modifier.sinks.mass.DEFAULT_CHUNK_BYTES (read from the package in measured runs;
# not imported here so that the analytic model stays import-light for its tests).
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024

PROCEDURES = ("paper", "ours", "ours_basic", "llmc")


@dataclass(frozen=True)
class ModelShape:
    """Transformer shape (Llama-style: q/k/v/o projections, SwiGLU MLP, untied LM head)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    vocab: int
    attention: str = "sdpa"  # "sdpa" (q/k to SDPA; mass recomputed in chunks) or "eager" (probabilities)

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


PRESETS: dict[str, ModelShape] = {
    # LLaDA-8B-Base: 32 blocks, d=4096, 32 heads of 128 (no GQA), SwiGLU 12288, vocab 126464;
    # its remote code calls scaled_dot_product_attention directly (no eager path).
    "llada-8b": ModelShape("LLaDA-8B", 4096, 32, 32, 32, 128, 12288, 126464, "sdpa"),
    # Dream-7B = Qwen2-7B shape: d=3584, 28 layers, 28 query / 4 kv heads of 128, MLP 18944.
    "dream-7b": ModelShape("Dream-7B", 3584, 28, 28, 4, 128, 18944, 152064, "sdpa"),
}


def shape_from_config(path: str | Path, name: str | None = None, attention: str | None = None) -> ModelShape:
    """A :class:`ModelShape` from a HF ``config.json`` (Llama/Qwen2/LLaDA key names)."""
    cfg = json.loads(Path(path).read_text())
    hidden = cfg.get("hidden_size") or cfg.get("d_model")
    heads = cfg.get("num_attention_heads") or cfg.get("n_heads")
    kv_heads = cfg.get("num_key_value_heads") or cfg.get("n_kv_heads") or heads
    head_dim = cfg.get("head_dim") or hidden // heads
    mlp = cfg.get("intermediate_size") or cfg.get("mlp_hidden_size")  # LLaDA: mlp_hidden_size
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layers")
    vocab = cfg.get("embedding_size") or cfg.get("vocab_size")
    if attention is None:
        # transformers' own Llama/Qwen models are forced to eager by llm-compressor's calibration
        attention = "eager" if cfg.get("model_type") in ("llama", "qwen2", "mistral") else "sdpa"
    return ModelShape(name or Path(path).parent.name, int(hidden), int(layers), int(heads), int(kv_heads),
                      int(head_dim), int(mlp), int(vocab), attention)


def resolve_shape(spec: str) -> ModelShape:
    """A preset name (``llada-8b``, ``dream-7b``, ``tiny-dlm``) or a path to a ``config.json``."""
    key = spec.lower()
    if key in PRESETS:
        return PRESETS[key]
    if key == "tiny-dlm":
        return shape_from_config(TINY_DLM / "config.json", "tiny-dlm")
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ValueError(f"unknown model {spec!r}: use one of {sorted([*PRESETS, 'tiny-dlm'])} or a config.json path")
    return shape_from_config(path)


# -- parameters and FLOPs ------------------------------------------------------------------------
def layer_linear_params(s: ModelShape) -> int:
    """Weights of the seven Linear layers of one block (q, k, v, o, gate, up, down)."""
    return s.hidden * s.q_dim + 2 * s.hidden * s.kv_dim + s.q_dim * s.hidden + 3 * s.hidden * s.mlp


def layer_params(s: ModelShape) -> int:
    """One block: its Linear weights plus two RMSNorm weights."""
    return layer_linear_params(s) + 2 * s.hidden


def model_params(s: ModelShape) -> int:
    """Embedding, blocks, final norm and an untied LM head."""
    return 2 * s.vocab * s.hidden + s.layers * layer_params(s) + s.hidden


def layer_flops(s: ModelShape, T: int, batch: int = 1) -> dict[str, int]:
    """Matmul FLOPs of one block's forward over ``batch`` sequences of ``T`` tokens."""
    tokens = batch * T
    projections = 2 * tokens * (s.hidden * s.q_dim + 2 * s.hidden * s.kv_dim + s.q_dim * s.hidden)
    mlp = 2 * tokens * 3 * s.hidden * s.mlp
    qk = 2 * batch * s.heads * s.head_dim * T * T
    av = 2 * batch * s.heads * s.head_dim * T * T
    return {"projections": projections, "mlp": mlp, "attention_qk": qk, "attention_av": av,
            "total": projections + mlp + qk + av}


def lm_head_flops(s: ModelShape, T: int, batch: int = 1) -> int:
    return 2 * batch * T * s.hidden * s.vocab


def mass_flops(s: ModelShape, T: int, source: str, batch: int = 1) -> int:
    """Matmul FLOPs of one layer's attention-mass computation: a recomputed ``QK^T``, or none
    when the mass is reduced from probabilities the eager forward already produced."""
    return 0 if source == "probabilities" else 2 * batch * s.heads * s.head_dim * T * T


def mass_source(procedure: str, s: ModelShape) -> str | None:
    if procedure == "llmc":
        return None
    if procedure == "paper":
        return "collector"  # bf16 QK^T recomputed, full T x T, fp32 softmax
    return "probabilities" if s.attention == "eager" else "query_key"


# -- memory --------------------------------------------------------------------------------------
def layer_activation_bytes(s: ModelShape, T: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """Live tensors of one block's forward, attention core excluded: residual and its norm
    (2d), q/k/v (d_q + 2 d_kv), attention output (d_q) and three MLP-wide tensors (gate,
    up, their product): ``B*T*b*(2d + 2 d_q + 2 d_kv + 3 m)``. An estimate, not a trace."""
    per_token = 2 * s.hidden + 2 * s.q_dim + 2 * s.kv_dim + 3 * s.mlp
    return batch * T * dtype_bytes * per_token


def attention_core_bytes(s: ModelShape, T: int, batch: int = 1, dtype_bytes: int = 2) -> int:
    """SDPA/flash: O(T) (counted as 0). Eager: scores in the model dtype, their fp32 softmax,
    and the probabilities cast back: ``B*H*T^2*(2b + 4)``."""
    return 0 if s.attention != "eager" else batch * s.heads * T * T * (2 * dtype_bytes + 4)


def chunk_rows(s: ModelShape, T: int, batch: int = 1, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Queries per block in ``mass_from_query_key`` (``query_chunk_size``), at most ``T``."""
    return min(T, max(1, chunk_bytes // max(1, batch * s.heads * T * 4)))


def mass_buffer_bytes(s: ModelShape, T: int, source: str | None, batch: int = 1, dtype_bytes: int = 2,
                      chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Transient bytes of one layer's attention-mass computation, on top of the forward.

    * ``collector`` (paper, §7.3): bf16 scores + fp32 copy + fp32 probabilities, ``B*H*T^2*10``
      (a short-lived second bf16 copy from the scaling step can add 2 more bytes per element).
    * ``query_key`` (ours, SDPA models): three fp32 ``[B, H, chunk, T]`` blocks alive at once
      (scaled scores, softmax, its NaN-cleaned copy), fp32 keys (and a GQA-expanded copy in
      the model dtype), the fp32 query block, and the ``[B, chunk, T]`` head sum.
    * ``probabilities`` (ours, eager models): the eager forward already holds the probabilities
      (counted in :func:`attention_core_bytes`); the reduction adds a ``[B, T, T]`` fp32 head sum
      (and an fp32 copy of the probabilities when the model is not fp32).
    """
    if source is None:
        return 0
    if source == "collector":
        return batch * s.heads * T * T * 10
    if source == "probabilities":
        extra_copy = batch * s.heads * T * T * 4 if dtype_bytes != 4 else 0
        return batch * T * T * 4 + extra_copy
    if source != "query_key":
        raise ValueError(f"unknown mass source {source!r}")
    c = chunk_rows(s, T, batch, chunk_bytes)
    keys = batch * s.heads * T * s.head_dim * 4
    gqa_copy = batch * s.heads * T * s.head_dim * dtype_bytes if s.kv_heads != s.heads else 0
    query_block = batch * s.heads * c * s.head_dim * 4
    return 3 * batch * s.heads * c * T * 4 + keys + gqa_copy + query_block + batch * c * T * 4 + batch * T * 4


def procedure_cost(
    s: ModelShape,
    T: int,
    N: int,
    K: int,
    procedure: str,
    *,
    batch: int = 1,
    dtype_bytes: int = 2,
    placement: str = "resident",
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> dict:
    """Passes, FLOPs and memory of one procedure over ``R = N*K`` noised rows of ``T`` tokens.

    ``batch`` rows per forward (the paper's default and our CLI's default is 1);
    ``placement``: ``resident`` (whole model on the device) or ``onload`` (llm-compressor's
    sequential onloading; the paper's code has no such mode and is always ``resident``).
    """
    if procedure not in PROCEDURES:
        raise ValueError(f"procedure must be one of {PROCEDURES}, got {procedure!r}")
    if placement not in ("resident", "onload"):
        raise ValueError(f"placement must be 'resident' or 'onload', got {placement!r}")
    rows = N * K
    batches = math.ceil(rows / batch)
    source = mass_source(procedure, s)
    # forward passes, counted in rows (one row through one block = one layer forward)
    per_row_layer_passes = {"paper": 2, "ours": 3, "ours_basic": 2, "llmc": 2}[procedure]
    lm_head_passes = 2 * rows if procedure == "paper" else 0  # llm-compressor puts lm_head on meta
    sink_passes = rows if procedure != "llmc" else 0
    passes = {
        "rows": rows,
        "batches": batches,
        "layer_forwards_per_layer": per_row_layer_passes * rows,
        "layer_forwards": per_row_layer_passes * rows * s.layers,
        "full_forward_equivalents": per_row_layer_passes * rows,
        "sink_forwards": sink_passes,
        "lm_head_forwards": lm_head_passes,
        "mass_computations": sink_passes * s.layers,
    }
    lf = layer_flops(s, T)
    flops = {
        "layers": passes["layer_forwards"] * lf["total"],
        "attention": passes["layer_forwards"] * (lf["attention_qk"] + lf["attention_av"]),
        "lm_head": lm_head_passes * lm_head_flops(s, T),
        "mass": passes["mass_computations"] * (mass_flops(s, T, source) if source else 0),
    }
    flops["total"] = flops["layers"] + flops["lm_head"] + flops["mass"]

    w_layer = layer_params(s) * dtype_bytes
    w_model = model_params(s) * dtype_bytes
    w_embed = s.vocab * s.hidden * dtype_bytes
    if procedure == "paper" or placement == "resident":
        w_device = w_model
    elif procedure == "ours_basic":
        # the basic pipeline runs whole-model forwards inside disable_offloading()
        w_device = w_model - w_embed  # the LM head's weight is on meta during calibration
    else:
        # one subgraph at a time (embedding or one block); our sink pass lifts the
        # subgraph's disable_offloading(), so it too holds one module's weights at a time
        w_device = max(w_layer, w_embed)
    act = layer_activation_bytes(s, T, batch, dtype_bytes)
    core = attention_core_bytes(s, T, batch, dtype_bytes)
    mass = mass_buffer_bytes(s, T, source, batch, dtype_bytes, chunk_bytes)
    logits = batch * T * s.vocab * dtype_bytes if procedure == "paper" else 0
    hidden_states = 2 * batch * T * s.hidden * dtype_bytes  # block input and output
    stats = s.layers * (3 * s.hidden + s.q_dim + s.mlp) * 4  # one fp32 scale per input column per Linear
    if procedure in ("ours", "llmc"):
        stats = (3 * s.hidden + s.q_dim + s.mlp) * 4  # sequential: one block's statistics at a time
    token_weights = rows * T * 4 if procedure in ("ours", "ours_basic") else 0
    transient = max(act + core + mass, logits)
    memory = {
        "weights_layer": w_layer,
        "weights_model": w_model,
        "weights_device": w_device,
        "activations_layer": act,
        "attention_core": core,
        "mass_buffer": mass,
        "logits": logits,
        "hidden_states": hidden_states,
        "statistics": stats,
        "token_weights": token_weights,
        "peak_device": w_device + hidden_states + transient + stats + token_weights,
        # llm-compressor's IntermediatesCache: every row's layer-boundary activations (offloaded to
        # the CPU by default; ``sequential_offload_device``)
        "intermediates_host": rows * T * s.hidden * dtype_bytes if procedure in ("ours", "llmc") else 0,
    }
    return {
        "procedure": procedure,
        "model": s.name,
        "T": T,
        "N": N,
        "K": K,
        "batch": batch,
        "placement": placement if procedure != "paper" else "resident",
        "mass_source": source,
        "chunk_rows": chunk_rows(s, T, batch, chunk_bytes) if source == "query_key" else None,
        "passes": passes,
        "flops": flops,
        "memory": memory,
    }


def analytic_report(s: ModelShape, T: int, N: int, K: int, *, batch: int = 1, dtype_bytes: int = 2,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict:
    """Every procedure under both placements, plus ratios against llm-compressor's Wanda."""
    out: dict = {"shape": asdict(s), "T": T, "N": N, "K": K, "batch": batch, "dtype_bytes": dtype_bytes,
                 "params": model_params(s), "procedures": {}}
    for placement in ("resident", "onload"):
        per = {p: procedure_cost(s, T, N, K, p, batch=batch, dtype_bytes=dtype_bytes, placement=placement,
                                 chunk_bytes=chunk_bytes) for p in PROCEDURES}
        base = per["llmc"]
        for cost in per.values():
            cost["ratio_vs_llmc"] = {
                "flops": cost["flops"]["total"] / base["flops"]["total"],
                "peak_device": cost["memory"]["peak_device"] / base["memory"]["peak_device"],
            }
        out["procedures"][placement] = per
    return out
