"""The per-family rules on their own: detection, overrides, noising and scoring positions, repairs."""

from __future__ import annotations

import json

import pytest
import torch

from sink_modifier.cli import main
from sink_modifier.families import FAMILIES, detect_family, get_family, load_pretrained
from sink_modifier.families.dream import boolean_attention_mask
from sink_modifier.families.rotary import default_rope_parameters
from sink_modifier.process import MaskTokenProcess, build_calibration
from tests.conftest import MASK_ID, VOCAB, word_tokenizer
from tests.family_models.build import build_dream_checkpoint, build_llada_checkpoint


@pytest.mark.parametrize(
    ("config", "family"),
    [
        ({"model_type": "llada", "architectures": ["LLaDAModelLM"]}, "llada"),
        ({"model_type": "llada_moe", "architectures": ["LLaDAMoEModelLM"]}, "llada"),
        ({"model_type": "Dream", "architectures": ["DreamModel"]}, "dream"),
        ({"model_type": "diffusion_gemma", "architectures": ["DiffusionGemmaForBlockDiffusion"]}, "diffusion_gemma"),
        ({"model_type": "llama", "is_causal": False}, "bidirectional"),
        ({"model_type": "qwen2", "is_causal": False}, "bidirectional"),
        ({"model_type": "llama"}, "causal"),
        ({"model_type": "qwen2", "is_causal": True}, "causal"),
    ],
)
def test_detection_reads_model_type_architectures_and_is_causal(config, family):
    assert detect_family(config).name == family


def test_override_wins_and_unknown_names_are_rejected():
    assert detect_family({"model_type": "llama"}, "bidirectional").name == "bidirectional"
    with pytest.raises(ValueError, match="unknown model family 'gpt'.*llada"):
        get_family("gpt")


def test_dream_keeps_real_bos_and_eos_and_never_scores_position_zero():
    dream = FAMILIES["dream"]

    class Tok:
        bos_token_id, eos_token_id = 5, 6

    clean = torch.tensor([[5, 9, 9, 6], [7, 9, 9, 8]])
    maskable = dream.maskable(clean, Tok(), None)
    assert maskable.tolist() == [[False, True, True, False], [True, True, True, True]]
    scorable = dream.scorable(clean, Tok(), None)
    assert scorable.tolist() == [[False, True, True, False], [False, True, True, True]]
    # The noising rule reaches the calibration rows: a real BOS/EOS is never masked.
    windows = torch.tensor([[5] + [9] * 14 + [6]] * 3)
    calibration = build_calibration(
        windows, None, process=MaskTokenProcess(MASK_ID), seq_len=16, num_samples=3, timesteps=(1.0,),
        maskable=lambda ids: dream.maskable(ids, Tok(), None),
    )
    assert (calibration.input_ids[:, 0] == 5).all() and (calibration.input_ids[:, -1] == 6).all()
    assert (calibration.input_ids[:, 1:-1] == MASK_ID).float().mean() > 0.95


def test_llada_and_generic_families_mask_every_position():
    clean = torch.arange(8).reshape(2, 4)
    for name in ("llada", "bidirectional"):
        assert FAMILIES[name].maskable(clean, word_tokenizer(), None) is None
        assert FAMILIES[name].scorable(clean, word_tokenizer(), None) is None
    assert FAMILIES["causal"].mask_token_id(word_tokenizer(), None) is None


def test_llada_mask_token_falls_back_to_the_published_id_only_for_the_published_vocabulary():
    class Config:
        vocab_size = 126464

    class Other:
        vocab_size = 64

    class NoMask:
        mask_token_id = None

    assert FAMILIES["llada"].mask_token_id(NoMask(), Config()) == 126336
    with pytest.raises(ValueError, match="no mask token"):
        FAMILIES["llada"].mask_token_id(NoMask(), Other())


def test_boolean_attention_mask_lets_every_token_see_exactly_the_unpadded_keys():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    full = boolean_attention_mask(mask)
    assert full.shape == (2, 1, 3, 3) and full.dtype == torch.bool
    assert full[0, 0].tolist() == [[True, True, False]] * 3
    assert bool(full[1].all())


def test_default_rope_matches_the_original_formula():
    class Config:
        rope_parameters = {"rope_theta": 10000.0}
        head_dim, hidden_size, num_attention_heads = 8, 32, 4

    inv_freq, factor = default_rope_parameters(Config())
    assert factor == 1.0
    torch.testing.assert_close(inv_freq, 1.0 / 10000.0 ** (torch.arange(0, 8, 2).float() / 8))


def test_dream_repairs_give_deterministic_outputs_and_padding_masks(tmp_path):
    folder = build_dream_checkpoint(tmp_path / "dream")
    first = load_pretrained(folder, trust_remote_code=True)
    second = load_pretrained(folder, trust_remote_code=True)
    ids = torch.randint(4, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = first.family.logits(first.model, ids), second.family.logits(second.model, ids)
        torch.testing.assert_close(a, b)  # inv_freq recomputed, not uninitialised memory
        # A 2-D integer mask now works on a direct call; all ones equals no mask.
        ones = first.model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        torch.testing.assert_close(ones, a)
        padded = torch.ones_like(ids)
        padded[:, -4:] = 0
        changed = first.model(input_ids=ids, attention_mask=padded).logits
    assert not torch.allclose(changed[:, :8], a[:, :8])  # padding is honoured, bidirectionally
    assert first.family.logit_shift == 1 and first.mask_token_id == MASK_ID


def test_llada_loads_only_with_trust_and_the_folder_is_untouched(tmp_path):
    folder = build_llada_checkpoint(tmp_path / "llada")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="--trust-remote-code"):
        load_pretrained(folder)
    loaded = load_pretrained(folder, trust_remote_code=True)
    assert loaded.family.name == "llada" and loaded.mask_token_id == MASK_ID
    assert loaded.family.pruning_ignore(loaded.model) == [r"re:^model\.transformer\.ff_out\.?$"]
    after = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert after == before


def test_cli_lists_families_and_takes_a_family_override(tiny_llama_dir, text_file, capsys):
    assert main(["families"]) == 0
    listed = capsys.readouterr().out
    for name in FAMILIES:
        assert name in listed
    code = main([
        "eval", "--model", str(tiny_llama_dir), "--data", str(text_file), "--num-windows", "2",
        "--seq-len", "16", "--family", "causal", "--json",
    ])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["family"] == "causal" and result["kind"] == "causal" and result["ppl"] > 1


def test_cli_refuses_remote_code_without_the_flag(tmp_path, text_file, capsys):
    folder = build_llada_checkpoint(tmp_path / "llada")
    code = main(["eval", "--model", str(folder), "--data", str(text_file), "--num-windows", "2", "--seq-len", "16"])
    assert code == 2
    assert "--trust-remote-code" in capsys.readouterr().err


def test_diffusion_gemma_generates_with_its_own_sampler(tmp_path, capsys):
    from tests.family_models.diffusion_gemma import build_diffusion_gemma_checkpoint

    folder = build_diffusion_gemma_checkpoint(tmp_path / "dg")
    code = main(["generate", "--model", str(folder), "--prompt", "w5 w6 w7", "--gen-length", "8",
                 "--steps", "8", "--block-length", "8", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)  # stdout is the one JSON document
    assert len(result["token_ids"]) == 8
    assert result["forward_passes"] == 0  # not LLaDA's mask-token sampler: transformers' block diffusion
