"""One recipe through every family's tiny model: detect → load (with repairs) → prune → save → reload → eval.

The LLaDA- and Dream-style models are remote code written to reproduce the published
layouts and their transformers-5 breakages (tests/family_models); the registry must repair
them in memory without touching the folder.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from sink_modifier.commands.evaluate import evaluate_checkpoint
from sink_modifier.commands.prune import prune_checkpoint
from sink_modifier.families import FAMILIES, detect_family, load_pretrained
from tests.conftest import REPO, VOCAB, _save, tiny_llama_config
from tests.family_models.build import build_dream_checkpoint, build_llada_checkpoint
from tests.family_models.diffusion_gemma import build_diffusion_gemma_checkpoint

# Sink weighting on, so each family's sink pass runs: the paper's Wanda recipe, and the shipped
# SparseGPT recipe (whose evidence-chosen default is sink weighting off) with it switched on.
RECIPES = {
    "wanda": REPO / "recipes" / "paper_sink_wanda_50.yaml",
    "sparsegpt": REPO / "recipes" / "sink_sparsegpt_50.yaml",
}


def _sink_on(recipe: Path, folder: Path) -> Path:
    text = recipe.read_text()
    if "sink_weighting: false" not in text:
        return recipe
    path = folder / f"{recipe.stem}-sink-on.yaml"
    path.write_text(text.replace("sink_weighting: false", "sink_weighting: true"))
    return path


def _causal_llama(path: Path) -> Path:
    torch.manual_seed(0)
    return _save(LlamaForCausalLM(tiny_llama_config(is_causal=True, mask_token_id=None)), path)


def _causal_qwen2(path: Path) -> Path:
    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0, eos_token_id=1, bos_token_id=None,
        tie_word_embeddings=False,
    )
    return _save(Qwen2ForCausalLM(config), path)


def _bidirectional_llama(path: Path) -> Path:
    torch.manual_seed(0)
    return _save(LlamaForCausalLM(tiny_llama_config()), path)


BUILDERS = {
    "llada": (build_llada_checkpoint, True),
    "dream": (build_dream_checkpoint, True),
    "bidirectional": (_bidirectional_llama, False),
    "causal-llama": (_causal_llama, False),
    "causal-qwen2": (_causal_qwen2, False),
    "diffusion_gemma": (build_diffusion_gemma_checkpoint, False),
}
EXPECTED_FAMILY = {"causal-llama": "causal", "causal-qwen2": "causal"}


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory) -> dict[str, tuple[Path, bool]]:
    return {name: (build(tmp_path_factory.mktemp(name)), remote) for name, (build, remote) in BUILDERS.items()}


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()


def _pruned_by_rule(model: torch.nn.Module, family) -> list[str]:
    """The Linears a ``targets: [Linear]`` recipe prunes under the family's ``pruning_ignore``."""
    patterns = [re.compile(p[3:]) for p in family.pruning_ignore(model) if p.startswith("re:")]
    return [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(p.match(name) or p.match(name + ".") for p in patterns)
    ]


def _fused_expert_zeros_over_half(model: torch.nn.Module) -> dict[str, list[int]]:
    """Per fused 3-D expert parameter: zeros beyond half, per expert matrix (gate_up = two matrices)."""
    return {
        name: [int((w == 0).sum()) - w.numel() // 2 for w in param]
        for name, param in model.named_parameters(remove_duplicate=False)
        if param.dim() == 3 and name.endswith(("gate_up_proj", "down_proj"))
    }


def _linear_zero_fractions(model: torch.nn.Module, ignore: tuple[str, ...]) -> dict[str, float]:
    return {
        name: float((module.weight == 0).float().mean())
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.endswith(ignore)
    }


@pytest.mark.parametrize("name", list(BUILDERS))
def test_family_is_detected_from_the_config(family_dirs, name):
    folder, _ = family_dirs[name]
    assert detect_family(folder).name == EXPECTED_FAMILY.get(name, name)


def test_remote_code_never_runs_without_trust(family_dirs):
    for name in ("llada", "dream"):
        folder, _ = family_dirs[name]
        with pytest.raises(ValueError, match="trust_remote_code"):
            load_pretrained(folder)


@pytest.mark.parametrize("method", list(RECIPES))
@pytest.mark.parametrize("name", list(BUILDERS))
def test_recipe_prunes_every_family_exactly_and_reloads(family_dirs, text_file, tmp_path, name, method):
    folder, remote = family_dirs[name]
    before = _digest(folder)
    result = prune_checkpoint(
        folder, _sink_on(RECIPES[method], tmp_path), text_file, tmp_path / "pruned",
        num_samples=2, seq_len=16, timesteps=(0.3, 0.7) if EXPECTED_FAMILY.get(name) != "causal" else (0.0,),
        trust_remote_code=remote,
    )
    assert _digest(folder) == before, "the user's checkpoint folder must never be modified"
    family = FAMILIES[EXPECTED_FAMILY.get(name, name)]
    meta = json.loads((result.output_dir / "sink_modifier.json").read_text())
    assert meta["family"] == family.name

    loaded = load_pretrained(result.output_dir, trust_remote_code=remote)
    assert loaded.family.name == family.name
    head = loaded.model.get_output_embeddings()
    modules = dict(loaded.model.named_modules())
    pruned = _pruned_by_rule(loaded.model, family)
    fractions = {n: z for n, z in _linear_zero_fractions(loaded.model, ()).items() if n in pruned}
    # 2 layers x (q, k, v, o, gate/ff, up, down); DiffusionGemma: the decoder's, and its layer 1
    # (full attention) has no v_proj; the shared encoder copies, vision tower, routers and
    # self-conditioning are left dense by the family's rules
    assert len(fractions) == (13 if name == "diffusion_gemma" else 14), sorted(fractions)
    dense = {n: m for n, m in modules.items() if isinstance(m, torch.nn.Linear) and n not in pruned and m is not head}
    for n, m in dense.items():
        shared = any(m.weight is modules[p].weight for p in pruned)
        assert shared or not bool((m.weight == 0).any()), n  # ignored and not tied to a pruned one: dense
    if method == "wanda":
        assert all(z == 0.5 for z in fractions.values()), fractions  # exact per row
    else:
        # SparseGPT (upstream's rule) thresholds each block of columns with `<=`, which
        # takes the threshold weight itself too: exactly one weight over 50% per block.
        over = {n: round((z - 0.5) * modules[n].weight.numel()) for n, z in fractions.items()}
        assert set(over.values()) == {1}, over
    experts = _fused_expert_zeros_over_half(loaded.model)
    if name == "diffusion_gemma":
        # 2 stacks (encoder re-tied to decoder) x 2 layers x (gate_up, down); per expert matrix
        # Wanda prunes exactly half of every row, SparseGPT one weight more (gate_up holds two)
        assert len(experts) == 8
        for n, over in experts.items():
            assert over == [0 if method == "wanda" else (2 if n.endswith("gate_up_proj") else 1)] * 4, (n, over)
            if method == "wanda":
                w = loaded.model.get_parameter(n)
                assert bool(((w == 0).sum(-1) == w.shape[-1] // 2).all()), n
        enc, dec = loaded.model.model.encoder.language_model.layers[0], loaded.model.model.decoder.layers[0]
        assert torch.equal(enc.experts.down_proj, dec.experts.down_proj)  # the encoder runs the pruned experts
    else:
        assert not experts
    assert float((head.weight == 0).float().mean()) < 0.5  # the output head stays dense
    assert set(fractions) <= set(meta["sparsity"]["per_layer"])
    if name != "diffusion_gemma":
        assert meta["sparsity"]["num_layers"] == 14

    # The pruned model still runs: same logits as the in-memory model after oneshot.
    ids = torch.randint(4, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = family.logits(result.model, ids)
        got = loaded.family.logits(loaded.model, ids)
    torch.testing.assert_close(got, expected.to(got.dtype), rtol=1e-4, atol=1e-4)

    scores = evaluate_checkpoint(
        result.output_dir, text_file, num_windows=2, seq_len=16, mc_samples=2, batch_size=4,
        progress=False, trust_remote_code=remote,
    )
    assert scores["family"] == family.name
    key = "nelbo" if family.diffusion else "ppl"
    assert scores["kind"] == ("diffusion" if family.diffusion else "causal")
    assert torch.isfinite(torch.tensor(scores[key])) and scores[key] > 0
