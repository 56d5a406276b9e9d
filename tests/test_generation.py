"""The LLaDA low-confidence remasking sampler: schedule, invariants, instrumentation, errors, CLI."""

from __future__ import annotations

import pytest
import torch

from sink_modifier.generation import generate, generate_with_stats, get_num_transfer_tokens
from tests.conftest import MASK_ID, TINY_DLM, VOCAB, requires_shared

EOS = 1


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    from sink_modifier.families import load_pretrained

    return load_pretrained(tiny_llama_dir, dtype="float32").model


@pytest.fixture(scope="module")
def tiny_dlm():
    from sink_modifier.families import load_pretrained

    loaded = load_pretrained(TINY_DLM, dtype="float32")
    return loaded.model, loaded.tokenizer


def _prompt(batch=2, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, VOCAB, (batch, length), generator=g)


class Recorder:
    """A logits_fn that records each canvas it is called with."""

    def __init__(self, fn):
        self.fn, self.inputs = fn, []

    def __call__(self, ids):
        self.inputs.append(ids.clone())
        return self.fn(ids)


def _fixed_logits(preferred: torch.Tensor, strength: torch.Tensor, vocab: int = VOCAB):
    """logits_fn predicting ``preferred[j]`` at position j with logit ``strength[j]`` (others 0)."""

    def fn(ids):
        b, length = ids.shape
        logits = torch.zeros(b, length, vocab)
        logits[:, torch.arange(length), preferred[:length]] = strength[:length]
        return logits

    return fn


# --- schedule -------------------------------------------------------------------------------


def test_schedule_matches_hand_computed_values():
    mask = torch.zeros(4, 12, dtype=torch.bool)
    mask[0, :10] = True  # 10 over 4 steps: 3 3 2 2
    mask[1, :3] = True  # 3 over 4 steps: 1 1 1 0
    mask[2, :] = True  # 12 over 4 steps: 3 3 3 3
    expected = torch.tensor([[3, 3, 2, 2], [1, 1, 1, 0], [3, 3, 3, 3], [0, 0, 0, 0]])
    assert torch.equal(get_num_transfer_tokens(mask, 4), expected)
    assert torch.equal(get_num_transfer_tokens(mask[:1], 1), torch.tensor([[10]]))
    assert torch.equal(get_num_transfer_tokens(mask[:1, :7], 3), torch.tensor([[3, 2, 2]]))
    assert get_num_transfer_tokens(mask, 4).dtype == torch.int64


def test_schedule_rejects_bad_input():
    with pytest.raises(ValueError, match="boolean"):
        get_num_transfer_tokens(torch.ones(2, 4), 2)
    with pytest.raises(ValueError, match="steps must be a positive"):
        get_num_transfer_tokens(torch.ones(2, 4, dtype=torch.bool), 0)


# --- invariants on a random bidirectional Llama ---------------------------------------------


def test_fills_every_mask_and_keeps_prompt(tiny_llama):
    prompt = _prompt()
    out = generate(tiny_llama, prompt, mask_token_id=MASK_ID, gen_length=16, steps=8, block_length=8)
    assert out.shape == (2, 21) and out.dtype == torch.long
    assert torch.equal(out[:, :5], prompt)
    assert not (out == MASK_ID).any()


@pytest.mark.parametrize("remasking", ["low_confidence", "random"])
def test_seeded_sampling_is_deterministic(tiny_llama, remasking):
    prompt = _prompt()
    kwargs = dict(mask_token_id=MASK_ID, gen_length=16, steps=16, block_length=8, temperature=1.5,
                  remasking=remasking)
    runs = [generate(tiny_llama, prompt, generator=torch.Generator().manual_seed(s), **kwargs) for s in (0, 0, 1)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    assert not (runs[0] == MASK_ID).any()


def test_greedy_needs_no_generator_and_repeats(tiny_llama):
    prompt = _prompt(batch=1)
    a = generate(tiny_llama, prompt, mask_token_id=MASK_ID, gen_length=8, steps=8, block_length=8)
    b = generate(tiny_llama, prompt, mask_token_id=MASK_ID, gen_length=8, steps=8, block_length=8)
    assert torch.equal(a, b)


def test_one_token_per_step_when_steps_equal_gen_length(tiny_llama):
    rec = Recorder(lambda ids: tiny_llama(input_ids=ids).logits)
    out = generate(tiny_llama, _prompt(), mask_token_id=MASK_ID, gen_length=12, steps=12, block_length=12,
                   logits_fn=rec)
    assert len(rec.inputs) == 12
    canvases = rec.inputs + [out]
    for step, (before, after) in enumerate(zip(canvases, canvases[1:])):
        assert ((before == MASK_ID).sum(dim=1) == 12 - step).all()
        changed = before != after
        assert (changed.sum(dim=1) == 1).all(), f"step {step} committed {changed.sum(dim=1).tolist()} tokens"
        assert (before[changed] == MASK_ID).all()  # only masked positions change, never remasked


def test_blocks_are_decoded_left_to_right(tiny_llama):
    rec = Recorder(lambda ids: tiny_llama(input_ids=ids).logits)
    generate(tiny_llama, _prompt(), mask_token_id=MASK_ID, gen_length=16, steps=8, block_length=8, logits_fn=rec)
    assert len(rec.inputs) == 8  # 4 steps per block, 2 tokens per step
    for i, ids in enumerate(rec.inputs):
        first, second = ids[:, 5:13], ids[:, 13:]
        assert ((first == MASK_ID).sum(dim=1) == 8 - 2 * min(i, 4)).all()
        assert ((second == MASK_ID).sum(dim=1) == 8 - 2 * max(i - 4, 0)).all()


def test_more_steps_than_tokens_skips_empty_steps(tiny_llama):
    result = generate_with_stats(tiny_llama, _prompt(), mask_token_id=MASK_ID, gen_length=4, steps=8,
                                 block_length=4)
    assert result.forward_passes == 4  # 8 steps for 4 tokens: 1,1,1,1,0,0,0,0
    assert result.steps == 4  # what the schedule ran, not the 8 asked
    assert not (result.generated == MASK_ID).any()
    assert result.new_tokens == 8 and result.tokens_per_second > 0


def test_scheduled_steps_is_at_most_one_token_per_step():
    from sink_modifier.generation.sampler import scheduled_steps

    assert scheduled_steps(64, 100_000) == 64
    assert scheduled_steps(64, 64) == 64 and scheduled_steps(64, 32) == 32
    assert generate_with_stats(None, _prompt(1), mask_token_id=MASK_ID, gen_length=4, steps=2, block_length=4,
                               logits_fn=lambda ids: torch.zeros(*ids.shape, VOCAB)).steps == 2
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        scheduled_steps(8, 0)


def test_cli_generate_warns_when_steps_are_capped(tiny_llama_dir, capfd):
    import json

    from sink_modifier.cli import main

    argv = ["generate", "--model", str(tiny_llama_dir), "--prompt", "w5 w6 w7", "--gen-length", "8",
            "--block-length", "4", "--threads", "1", "--json"]
    assert main([*argv, "--steps", "1000"]) == 0
    out, err = capfd.readouterr()
    report = json.loads(out)  # stdout holds only the result
    assert (report["steps"], report["steps_requested"], report["forward_passes"]) == (8, 1000, 8)
    warning = [line for line in err.splitlines() if "--steps" in line]
    assert len(warning) == 1 and "--steps 1000 is more than the 8 tokens to generate" in warning[0]
    assert "used 8 steps (one token per step" in warning[0]
    assert main([*argv, "--steps", "4"]) == 0
    out, err = capfd.readouterr()
    assert (json.loads(out)["steps"], json.loads(out)["steps_requested"]) == (4, 4) and "--steps" not in err


def test_low_confidence_commits_the_most_confident_first():
    # position j of the canvas tail prefers token 10 + j with confidence rising with j
    preferred = torch.tensor([0, 0] + [10 + j for j in range(6)])
    strength = torch.tensor([0.0, 0.0] + [1.0 + j for j in range(6)])
    rec = Recorder(_fixed_logits(preferred, strength))
    out = generate(None, torch.tensor([[5, 6]]), mask_token_id=MASK_ID, gen_length=6, steps=6, block_length=6,
                   logits_fn=rec)
    assert out[0, 2:].tolist() == [10, 11, 12, 13, 14, 15]
    order = [int((a != b).nonzero()[0, 1]) for a, b in zip(rec.inputs, rec.inputs[1:] + [out])]
    assert order == [7, 6, 5, 4, 3, 2]


def test_logit_shift_reads_the_previous_position(tiny_llama):
    def base(ids):
        return tiny_llama(input_ids=ids).logits

    def dream_style(ids):  # logits[:, i] predict token i + 1; the last row predicts nothing
        logits = base(ids)
        return torch.cat([logits[:, 1:], torch.randn_like(logits[:, :1]) * 100], dim=1)

    prompt = _prompt()
    kwargs = dict(mask_token_id=MASK_ID, gen_length=8, steps=8, block_length=8)
    reference = generate(tiny_llama, prompt, logits_fn=base, **kwargs)
    assert torch.equal(generate(tiny_llama, prompt, logits_fn=dream_style, logit_shift=1, **kwargs), reference)
    assert not torch.equal(generate(tiny_llama, prompt, logits_fn=dream_style, logit_shift=0, **kwargs), reference)


def test_classifier_free_guidance_masks_the_prompt_and_extrapolates():
    A, B = 10, 11

    def fn(ids):  # conditional rows (prompt visible) slightly prefer A; unconditional strongly prefer A
        logits = torch.zeros(ids.shape[0], ids.shape[1], VOCAB)
        conditional = (ids[:, :2] != MASK_ID).all(dim=1)
        logits[conditional, :, A], logits[conditional, :, B] = 1.0, 0.9
        logits[~conditional, :, A], logits[~conditional, :, B] = 2.0, 0.0
        return logits

    rec = Recorder(fn)
    prompt = torch.tensor([[5, 6]])
    plain = generate(None, prompt, mask_token_id=MASK_ID, gen_length=4, steps=4, block_length=4, logits_fn=fn)
    guided = generate(None, prompt, mask_token_id=MASK_ID, gen_length=4, steps=4, block_length=4, cfg_scale=1.0,
                      logits_fn=rec)
    assert plain[0, 2:].tolist() == [A] * 4
    assert guided[0, 2:].tolist() == [B] * 4  # un + 2(cond - un): A -> 0, B -> 1.8
    first = rec.inputs[0]
    assert first.shape == (2, 6) and (first[1, :2] == MASK_ID).all() and torch.equal(first[0, :2], prompt[0])
    assert all(torch.equal(ids[0, 2:], ids[1, 2:]) for ids in rec.inputs)


def test_eos_stops_after_the_block_that_produced_it():
    preferred = torch.full((64,), EOS)
    rec = Recorder(_fixed_logits(preferred, torch.ones(64)))
    out = generate(None, torch.tensor([[5, 6]]), mask_token_id=MASK_ID, gen_length=12, steps=12, block_length=4,
                   eos_token_id=EOS, logits_fn=rec)
    assert len(rec.inputs) == 4  # only the first block was decoded
    assert out[0, 2:].tolist() == [EOS] * 12


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(gen_length=10, block_length=4), "multiple of block_length"),
        (dict(gen_length=16, block_length=4, steps=6), "multiple of the number of blocks"),
        (dict(gen_length=64), "exceeds the model's max_position_embeddings \\(64\\)"),
        (dict(remasking="lowest"), "remasking must be one of"),
        (dict(logit_shift=2), "logit_shift must be 0"),
        (dict(temperature=-1.0), "temperature must be >= 0"),
        (dict(cfg_scale=float("nan")), "cfg_scale must be >= 0"),
        (dict(steps=0), "steps must be a positive integer"),
        (dict(mask_token_id=VOCAB + 5), "outside the model's vocabulary"),
        (dict(eos_token_id=MASK_ID), "eos_token_id must be None"),
    ],
)
def test_bad_arguments_are_named(tiny_llama, kwargs, match):
    args = dict(mask_token_id=MASK_ID, gen_length=8, steps=8, block_length=8)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(tiny_llama, _prompt(), **args)


def test_bad_prompts_are_named(tiny_llama):
    with pytest.raises(ValueError, match="unsqueeze"):
        generate(tiny_llama, torch.tensor([5, 6]), mask_token_id=MASK_ID, gen_length=8, steps=8, block_length=8)
    with pytest.raises(ValueError, match="integer token ids"):
        generate(tiny_llama, torch.ones(1, 3), mask_token_id=MASK_ID, gen_length=8, steps=8, block_length=8)
    with pytest.raises(ValueError, match=r"mask token 2 at \(row 0, position 1\)"):
        generate(tiny_llama, torch.tensor([[5, MASK_ID]]), mask_token_id=MASK_ID, gen_length=8, steps=8,
                 block_length=8)
    with pytest.raises(ValueError, match="at least one token"):
        generate(tiny_llama, torch.zeros(1, 0, dtype=torch.long), mask_token_id=MASK_ID, gen_length=8, steps=8,
                 block_length=8, logit_shift=1)
    with pytest.raises(ValueError, match="needs a model or a logits_fn"):
        generate(None, _prompt(), mask_token_id=MASK_ID, gen_length=8, steps=8, block_length=8)
    with pytest.raises(ValueError, match=r"must return \[batch, seq_len, vocab\]"):
        generate(None, _prompt(), mask_token_id=MASK_ID, gen_length=8, steps=8, block_length=8,
                 logits_fn=lambda ids: torch.zeros(ids.shape[0], VOCAB))


# --- the real tiny diffusion LM -------------------------------------------------------------


@requires_shared(TINY_DLM)
def test_tiny_dlm_generation(tiny_dlm):
    model, tokenizer = tiny_dlm
    prompt = torch.tensor([tokenizer(text).input_ids[:3] for text in ("The river flows", "In the year")])
    kwargs = dict(mask_token_id=tokenizer.mask_token_id, gen_length=16, steps=8, block_length=8)
    greedy = generate(model, prompt, **kwargs)
    assert torch.equal(greedy[:, :3], prompt) and not (greedy == tokenizer.mask_token_id).any()
    sampled = [generate(model, prompt, temperature=1.0, generator=torch.Generator().manual_seed(7), **kwargs)
               for _ in range(2)]
    assert torch.equal(sampled[0], sampled[1])
    # a trained model continues text: most greedy tokens are ordinary words, not special tokens
    special = set(tokenizer.all_special_ids)
    assert sum(t not in special for t in greedy[:, 3:].flatten().tolist()) >= 24


@requires_shared(TINY_DLM)
def test_cli_generate_prints_text_and_speed(capsys):
    from sink_modifier.cli import main

    code = main(["generate", "--model", str(TINY_DLM), "--prompt", "The river", "--gen-length", "8",
                 "--steps", "8", "--block-length", "8", "--threads", "1"])
    captured = capsys.readouterr()
    out, err = captured.out, captured.err
    assert code == 0
    assert out.startswith("The river") and len(out.splitlines()[0]) > len("The river")
    assert "tokens/s" not in out  # stdout is the text alone
    assert "tokens/s" in err and "8 forward passes" in err


@requires_shared(TINY_DLM)
def test_cli_generate_names_bad_block_length(capsys):
    from sink_modifier.cli import main

    code = main(["generate", "--model", str(TINY_DLM), "--prompt", "The river", "--gen-length", "10",
                 "--block-length", "4", "--threads", "1"])
    assert code == 2
    assert "multiple of block_length" in capsys.readouterr().err
