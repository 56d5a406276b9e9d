"""DiffusionGemma's family rules: prompt/canvas split, uniform noise, evaluation corruption, and the sink pass.

The end-to-end recipe run (prune -> save -> reload -> evaluate) is in test_model_families.py.
"""

from __future__ import annotations

import pytest
import torch

from sink_modifier.families import FAMILIES, family_of_model
from sink_modifier.process import UniformSubstitution, build_calibration, canvas_size, mask_probability, row_generator
from sink_modifier.sinks import global_attention_mass
from tests.family_models.diffusion_gemma import CANVAS_LENGTH, tiny_diffusion_gemma_model

VOCAB = 64
FAMILY = FAMILIES["diffusion_gemma"]
UNIFORM = UniformSubstitution(VOCAB)


def test_canvas_is_the_model_block_but_at_most_half_the_window():
    assert canvas_size(16, 8) == 8
    assert canvas_size(10, 8) == 5
    assert canvas_size(600, 256) == 256
    cal = build_calibration(torch.arange(20).reshape(2, 10), None, process=UNIFORM, seq_len=10, num_samples=2,
                            timesteps=(0.0,), canvas_length=8)
    batch = next(iter(cal.dataloader(batch_size=2)))
    assert batch["input_ids"].tolist() == [[0, 1, 2, 3, 4], [10, 11, 12, 13, 14]]
    assert batch["decoder_input_ids"].tolist() == [[5, 6, 7, 8, 9], [15, 16, 17, 18, 19]]
    with pytest.raises(ValueError):
        canvas_size(1, 8)


def test_uniform_noise_replaces_at_the_timestep_rate_with_tokens_of_the_whole_vocabulary():
    clean = torch.full((20_000,), 5)
    noised = UNIFORM.noise_row(clean, 0.5, torch.Generator().manual_seed(0))
    changed = (noised != clean).float().mean().item()
    assert changed == pytest.approx(mask_probability(0.5) * (1 - 1 / VOCAB), abs=0.01)
    assert set(noised[noised != 5].tolist()) == set(range(VOCAB)) - {5}  # 0..V-1, specials included
    assert torch.equal(UNIFORM.noise_row(clean, 0.0, torch.Generator().manual_seed(0)), clean)
    again = UNIFORM.noise_row(clean, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(noised, again)
    keep = torch.zeros_like(clean, dtype=torch.bool)
    keep[:100] = True
    partial = UNIFORM.noise_row(clean, 1.0, torch.Generator().manual_seed(0), maskable=keep)
    assert torch.equal(partial[100:], clean[100:]) and (partial[:100] != 5).any()


def test_calibration_rows_keep_the_prompt_clean_and_noise_each_canvas_with_its_own_generator():
    clean = torch.randint(4, VOCAB, (3, 16), generator=torch.Generator().manual_seed(0))
    config = tiny_diffusion_gemma_model().config
    cal = FAMILY.build_calibration(clean, None, config, seq_len=16, num_samples=3, timesteps=(0.3, 1.0), seed=7,
                                   max_chars=None)
    assert config.canvas_length == CANVAS_LENGTH and cal.process == UniformSubstitution(VOCAB, seed=7)
    assert len(cal) == 6 and cal.prompt_length == 8 and cal.canvas_length == 8
    prompts, canvases = cal.input_ids[:, :8], cal.input_ids[:, 8:]
    assert torch.equal(prompts, clean[:, :8].repeat_interleave(2, dim=0))
    # row (s=2, j=1) is window 2's canvas noised at t=1.0 by row_generator(7, 2, 1), alone
    expected = UNIFORM.noise_row(clean[2, 8:], 1.0, row_generator(7, 2, 1))
    assert torch.equal(canvases[5], expected)
    assert (canvases[1::2] != clean[:, 8:]).float().mean() > 0.8  # t = 1: almost every token changed
    batch = next(iter(cal.dataloader(batch_size=4)))
    assert set(batch) == {"input_ids", "decoder_input_ids"}
    assert batch["input_ids"].shape == (4, 8) and batch["decoder_input_ids"].shape == (4, 8)
    described = cal.describe()
    assert (described["prompt_length"], described["canvas_length"], described["noise"]) == (8, 8, "uniform")


def test_uniform_evaluation_corruption_is_a_function_of_seed_row_and_stream_only():
    corrupt = FAMILY.evaluation_corruption(None, tiny_diffusion_gemma_model().config, 3)
    assert corrupt == UniformSubstitution(VOCAB, seed=3)
    clean = torch.full((4, 10), 5)
    mask = torch.zeros(4, 10, dtype=torch.bool)
    mask[:, 6:] = True
    whole = corrupt(clean, mask, torch.arange(4), "nelbo")
    assert torch.equal(whole[:, :6], clean[:, :6])
    assert torch.equal(corrupt(clean[2:], mask[2:], torch.arange(2, 4), "nelbo"), whole[2:])  # batch-independent
    assert not torch.equal(corrupt(clean, mask, torch.arange(4), "other"), whole)


def test_family_is_found_from_a_loaded_model_and_scores_only_the_canvas():
    model = tiny_diffusion_gemma_model()
    assert family_of_model(model) is FAMILY
    ids = torch.randint(4, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    scorable = FAMILY.scorable(ids, None, model.config)
    assert scorable[:, :8].sum() == 0 and scorable[:, 8:].all()
    with torch.no_grad():
        logits = FAMILY.logits(model, ids)
        direct = model(input_ids=ids[:, :8], decoder_input_ids=ids[:, 8:]).logits
    assert logits.shape == (2, 16, VOCAB)
    assert torch.equal(logits[:, 8:], direct) and not logits[:, :8].any()


def _reference_canvas_mass(model, prompt, canvas):
    """Sum over decoder layers, heads and canvas queries of the eager probabilities on canvas keys."""
    with torch.no_grad():
        out = model(input_ids=prompt, decoder_input_ids=canvas, output_attentions=True)
    layers = [a for a in out.attentions if a is not None]
    assert len(layers) == len(model.model.decoder.layers)
    return sum(a[..., prompt.shape[1]:].float().sum(dim=(1, 2)) for a in layers)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_sink_pass_measures_canvas_self_attention_of_the_decoder_only(attn):
    model = tiny_diffusion_gemma_model()
    g = torch.Generator().manual_seed(1)
    prompt, canvas = torch.randint(4, VOCAB, (2, 12), generator=g), torch.randint(0, VOCAB, (2, CANVAS_LENGTH), generator=g)
    reference_model = tiny_diffusion_gemma_model()
    reference_model.config._attn_implementation = "eager"
    reference = _reference_canvas_mass(reference_model, prompt, canvas)

    model.config._attn_implementation = attn
    extra = FAMILY.sink_pass(model, canvas, {"input_ids": prompt})
    mass = global_attention_mass(model, canvas, None, **extra)
    assert mass.shape == (2, CANVAS_LENGTH)
    torch.testing.assert_close(mass, reference, rtol=1e-4, atol=1e-4)
    # canvas keys get less than all the mass (the prompt takes the rest) but more than none
    heads = model.config.text_config.num_attention_heads
    total = len(model.model.decoder.layers) * heads * CANVAS_LENGTH
    assert 0.05 * total < float(mass[0].sum()) < total
    assert FAMILY.sink_embedding(model) is model.model.decoder.embed_tokens


def test_sink_pass_needs_the_prompt_from_the_whole_model_call():
    model = tiny_diffusion_gemma_model()
    with pytest.raises(ValueError, match="basic"):
        FAMILY.sink_pass(model, torch.zeros(1, CANVAS_LENGTH, dtype=torch.long), None)
