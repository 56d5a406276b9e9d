"""The lm-eval model type ``sink_dlm``: ELBO estimator, rolling windows, generation, harness runs."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from torch import nn

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.registry import get_model  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from sink_modifier.generation import generate  # noqa: E402
from sink_modifier.lm_eval import DiffusionLM  # noqa: E402
from sink_modifier.lm_eval.tasks import TASKS, read_documents, write_local_tasks  # noqa: E402
from sink_modifier.scoring import elbo_masks, mc_loglikelihood, request_key  # noqa: E402
from tests.conftest import HELDOUT, MASK_ID, TINY_DLM, requires_shared  # noqa: E402

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


pytestmark = pytest.mark.usefixtures("one_thread")


class Spy(nn.Module):
    """Forwards to ``inner`` and records every ``input_ids`` batch it sees."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.seen: list[torch.Tensor] = []

    def forward(self, input_ids):
        self.seen.append(input_ids.detach().cpu().clone())
        return self.inner(input_ids=input_ids)


@pytest.fixture(scope="module")
def lm(tiny_llama_dir):
    return DiffusionLM(pretrained=str(tiny_llama_dir), mc_num=8, batch_size=5, dtype="float32", device="cpu",
                       gen_length=8, steps=8, block_length=4, seed=3)


def _logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0].float()


def _direct_elbo(model, context, continuation, *, mc_num, seed, cfg=0.0, logit_shift=0, strata_size=None):
    """One row at a time, straight from the definition (same masks as the estimator)."""
    masks, counts = elbo_masks(len(continuation), mc_num, seed, request_key(context, continuation), strata_size)
    length, losses = len(continuation), []
    for mask, k in zip(masks, counts.tolist()):
        noisy = list(context) + [MASK_ID if m else t for m, t in zip(mask.tolist(), continuation)]
        logits = _logits(model, noisy)
        if cfg > 0:
            uncond = _logits(model, [MASK_ID] * len(context) + noisy[len(context):])
            logits = uncond + (cfg + 1) * (logits - uncond)
        loss = 0.0
        for i, (m, t) in enumerate(zip(mask.tolist(), continuation)):
            if m:
                pos = len(context) + i - logit_shift
                loss -= float(torch.log_softmax(logits[pos], -1)[t])
        losses.append(loss * length / k)
    return -sum(losses) / len(losses)


# ---------------------------------------------------------------- masks


def test_masks_exact_counts_reference_strata_and_determinism():
    length, mc, strata = 13, 12, 4
    masks, counts = elbo_masks(length, mc, seed=5, key=77, strata_size=strata)
    assert torch.equal(masks.sum(-1), counts) and counts.min() >= 1 and counts.max() <= length
    # each stratum is the reference formula for some offset k0 in 1..L
    for group in counts.view(-1, strata).tolist():
        candidates = []
        for k0 in range(1, length + 1):
            grid = torch.linspace(k0, k0 + (strata - 1) * length / strata, strata, dtype=torch.float64)
            candidates.append(((torch.round(grid).long() - 1) % length + 1).tolist())
        assert group in candidates
    again, _ = elbo_masks(length, mc, seed=5, key=77, strata_size=strata)
    other, _ = elbo_masks(length, mc, seed=6, key=77, strata_size=strata)
    assert torch.equal(masks, again) and not torch.equal(masks, other)
    with pytest.raises(ValueError, match="multiple of strata_size"):
        elbo_masks(length, 10, seed=0, key=0, strata_size=4)


# ---------------------------------------------------------------- the estimator


def test_estimator_matches_direct_loop_and_never_masks_the_prompt(lm):
    model = lm.model
    pairs = [([5, 6, 7], [8, 9, 10, 11]), ([12, 13], [14, 15, 16, 17, 18]), ([20, 21, 22], [23, 24, 25, 26])]
    spy = Spy(model)
    got = mc_loglikelihood(spy, pairs, mask_token_id=MASK_ID, mc_num=6, batch_size=4, seed=11)
    want = [_direct_elbo(model, c, t, mc_num=6, seed=11) for c, t in pairs]
    assert got == pytest.approx(want, abs=1e-4)
    assert len({round(v, 3) for v in got}) == 3
    # the prompt is never masked; every continuation row has >= 1 mask; rows mix requests in a batch
    rows = torch.cat([b for b in spy.seen])
    assert rows.shape[0] == 3 * 6
    contexts = {tuple(c) for c, _ in pairs}
    for row in rows.tolist():
        ctx = next(c for c in contexts if tuple(row[: len(c)]) == c)
        assert MASK_ID not in ctx and MASK_ID in row[len(ctx):]
    # batch size and order do not change the result; an empty continuation scores 0
    again = mc_loglikelihood(model, [([5], [])] + pairs[::-1], mask_token_id=MASK_ID, mc_num=6, batch_size=1, seed=11)
    assert again[0] == 0.0 and again[1:][::-1] == pytest.approx(got, abs=1e-5)


def test_estimator_with_cfg_and_reference_strata_matches_direct_loop(lm):
    pairs = [([5, 6, 7, 8], [9, 10, 11])]
    got = mc_loglikelihood(lm.model, pairs, mask_token_id=MASK_ID, mc_num=4, batch_size=3, seed=2, cfg=0.7,
                           strata_size=2)
    want = _direct_elbo(lm.model, *pairs[0], mc_num=4, seed=2, cfg=0.7, strata_size=2)
    assert got[0] == pytest.approx(want, abs=1e-4)
    plain = mc_loglikelihood(lm.model, pairs, mask_token_id=MASK_ID, mc_num=4, batch_size=3, seed=2, strata_size=2)
    assert abs(plain[0] - got[0]) > 1e-3


@pytest.mark.parametrize("shift", [0, 1])
def test_single_token_continuation_is_exact(lm, shift):
    context, token = [5, 6, 7, 8, 9], 33
    logits = _logits(lm.model, context + [MASK_ID])
    exact = float(torch.log_softmax(logits[len(context) - shift], -1)[token])
    for seed in (0, 1):
        got = mc_loglikelihood(lm.model, [(context, [token])], mask_token_id=MASK_ID, mc_num=3, seed=seed,
                               logit_shift=shift)
        assert got[0] == pytest.approx(exact, abs=1e-5)


# ---------------------------------------------------------------- the lm-eval model


def _req(kind: str, args: tuple, idx: int = 0) -> Instance:
    return Instance(request_type=kind, doc={}, arguments=args, idx=idx)


def test_registered_and_tokenised_like_hf(lm, tiny_llama_dir):
    assert get_model("sink_dlm") is DiffusionLM and get_model("hf").__name__ == "HFLM"
    assert lm.mask_token_id == MASK_ID and lm.max_length == 64
    ctx, cont = lm._encode_pair("w5 w6 ", "w7 w8")
    assert (ctx, cont) == (lm.tok_encode("w5 w6"), lm.tok_encode("w5 w6 w7 w8")[2:])
    made = get_model("sink_dlm").create_from_arg_string(
        f"pretrained={tiny_llama_dir},mc_num=4,cfg=0.5,is_check_greedy=true", {"batch_size": 2, "device": "cuda:0"}
    )
    assert (made.mc_num, made.batch_size, made.cfg, made.is_check_greedy) == (4, 2, 0.5, True)
    assert made.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_family_defaults_and_causal_models_refused(lm, tmp_path):
    from transformers import LlamaForCausalLM

    from tests.conftest import tiny_llama_config, word_tokenizer

    assert (lm.family.name, lm.logit_shift) == ("bidirectional", 0)
    assert lm.get_model_info()["sink_dlm"]["family"] == "bidirectional"
    shifted = DiffusionLM(pretrained=lm.model, tokenizer=lm.tokenizer, logit_shift=1, mc_num=2, device="cpu")
    assert shifted.logit_shift == 1 and shifted.mask_token_id == MASK_ID
    LlamaForCausalLM(tiny_llama_config(is_causal=True)).save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="--model hf"):
        DiffusionLM(pretrained=str(tmp_path), device="cpu")


def test_loglikelihood_requests_and_greedy_check(tiny_llama_dir, lm):
    greedy_lm = DiffusionLM(pretrained=str(tiny_llama_dir), mc_num=4, batch_size=8, dtype="float32", device="cpu",
                            is_check_greedy=True, seed=3)
    context = "w5 w6 w7 w8"
    ids = greedy_lm.tok_encode(context)
    # the reference's suffix_greedy_prediction, written out: commit the single most confident position
    seq = ids + [MASK_ID] * 3
    for _ in range(3):
        logits = _logits(greedy_lm.model, seq)
        masked = [i for i, t in enumerate(seq) if t == MASK_ID]
        probs = torch.softmax(logits[masked], -1)
        conf, arg = probs.max(-1)
        best = int(conf.argmax())
        seq[masked[best]] = int(arg[best])
    greedy_text = " " + greedy_lm.tokenizer.decode(seq[len(ids):])
    wrong = " " + greedy_lm.tokenizer.decode([(t + 1 - 4) % 60 + 4 for t in seq[len(ids):]])
    out = greedy_lm.loglikelihood([_req("loglikelihood", (context, greedy_text)),
                                   _req("loglikelihood", (context, wrong))])
    assert [g for _, g in out] == [True, False]
    direct = mc_loglikelihood(greedy_lm.model, [(ids, seq[len(ids):])], mask_token_id=MASK_ID, mc_num=4, seed=3)
    assert out[0][0] == pytest.approx(direct[0], abs=1e-5)
    # is_check_greedy=False (the default) reports False without decoding
    assert lm.loglikelihood([_req("loglikelihood", (context, greedy_text))])[0][1] is False


def test_loglikelihood_rolling_scores_every_token_once(lm):
    text = " ".join(f"w{4 + (7 * i) % 59}" for i in range(150))
    tokens = lm.tok_encode(text)
    spy = Spy(lm.model)
    lm._model = spy
    try:
        total = lm.loglikelihood_rolling([_req("loglikelihood_rolling", (text,))])[0]
    finally:
        lm._model = spy.inner
    windows, scored = [], []
    for batch in spy.seen:
        for row in batch.tolist():
            windows.append(len(row))
    assert max(windows) <= lm.max_length
    # rebuild the windows lm-eval-style and score them directly
    from lm_eval import utils

    pairs = list(map(utils.make_disjoint_window, utils.get_rolling_token_windows(
        token_list=tokens, prefix_token=lm.prefix_token_id, max_seq_len=lm.max_length - 1, context_len=1)))
    for ctx, cont in pairs:
        scored += cont
        assert len(ctx) + len(cont) <= lm.max_length and len(ctx) >= 1
    assert scored == tokens and len(pairs) == 3
    want = sum(mc_loglikelihood(lm.model, pairs, mask_token_id=MASK_ID, mc_num=lm.mc_num, seed=lm.seed))
    assert total == pytest.approx(want, abs=1e-4)
    assert total < 0


def test_generate_until_uses_the_sampler_and_cuts(lm):
    contexts = ["w5 w6 w7", "w9 w10 w11", "w12 w13"]
    raw = []
    for c in contexts:
        ids = lm.tok_encode(c)
        out = generate(lm.model, torch.tensor([ids]), mask_token_id=MASK_ID, gen_length=8, steps=8, block_length=4,
                       eos_token_id=1)
        raw.append(out[0, len(ids):].tolist())
    # stop at the second generated word of the first request
    stop = lm.tokenizer.decode([raw[0][1]])
    reqs = [_req("generate_until", (c, {"until": [stop], "do_sample": False}), i) for i, c in enumerate(contexts)]
    got = lm.generate_until(reqs)
    for text, tokens in zip(got, raw):
        if 1 in tokens:
            tokens = tokens[: tokens.index(1)]
        assert text == lm.tokenizer.decode(tokens, skip_special_tokens=True).split(stop)[0]
    assert stop not in got[0] and len(got[0]) < len(lm.tokenizer.decode(raw[0], skip_special_tokens=True))
    assert lm._cut([7, 8, 1, 9], [], None) == lm.tokenizer.decode([7, 8])


# ---------------------------------------------------------------- lm-eval harness runs


@pytest.fixture(scope="module")
def word_tasks(tmp_path_factory, text_file):
    out = tmp_path_factory.mktemp("word_tasks") / "tasks"
    write_local_tasks(text_file, out, num_docs=6, context_words=8, continuation_words=5, rolling_words=30)
    return out


def test_local_tasks_are_well_formed(word_tasks, text_file):
    rows = [json.loads(line) for line in (word_tasks / "sink_heldout_mc.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    for row in rows:
        true, other = row["choices"][row["label"]], row["choices"][1 - row["label"]]
        assert sorted(true.split()) == sorted(other.split()) and true != other
        assert any(row["context"] + " " + true in " ".join(d.split()) for d in read_documents(text_file))


def test_simple_evaluate_all_task_types(lm, word_tasks):
    tm = TaskManager(include_path=str(word_tasks), include_defaults=False)
    res = lm_eval.simple_evaluate(model=lm, tasks=list(TASKS), limit=2, task_manager=tm, log_samples=True)
    r = res["results"]
    assert 0.0 <= r["sink_heldout_mc"]["acc,none"] <= 1.0
    assert r["sink_heldout_rolling"]["word_perplexity,none"] > 1.0
    assert r["sink_heldout_lastword"]["perplexity,none"] > 1.0
    assert "exact_match,none" in r["sink_heldout_gen"]
    # the harness's numbers are our loglikelihoods of the same requests
    sample = res["samples"]["sink_heldout_mc"][0]
    assert len(sample["arguments"]) == 2
    direct = lm.loglikelihood([_req("loglikelihood", tuple(a)) for a in sample["arguments"]])
    assert [float(r[0][0]) for r in sample["resps"]] == pytest.approx([v for v, _ in direct], abs=1e-6)


@requires_shared(TINY_DLM)
@requires_shared(HELDOUT)
def test_tiny_dlm_cli_run(tmp_path, monkeypatch):
    """``python -m sink_modifier.lm_eval`` (lm-eval's CLI, run in-process) on the shipped diffusion LM, offline.

    In-process because a fresh interpreter re-imports llmcompressor (~20 s on a busy 2-core box);
    the CLI itself still indexes lm-eval's built-in tasks, which is most of this test's time.
    """
    from sink_modifier.lm_eval.__main__ import main

    tasks = tmp_path / "tasks"
    write_local_tasks(HELDOUT, tasks, num_docs=4)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(sys, "argv", [
        "sink_modifier.lm_eval", "--model", "sink_dlm",
        "--model_args", f"pretrained={TINY_DLM},mc_num=4,dtype=float32",
        "--tasks", "sink_heldout_mc", "--include_path", str(tasks), "--limit", "2",
        "--batch_size", "8", "--device", "cpu", "--output_path", str(tmp_path / "out")])
    main()
    results = list((tmp_path / "out").rglob("results_*.json"))
    assert len(results) == 1
    data = json.loads(results[0].read_text())
    assert data["results"]["sink_heldout_mc"]["acc,none"] in (0.0, 0.5, 1.0)
    assert data["config"]["model"] == "sink_dlm"
    assert data["config"]["sink_dlm"]["mc_num"] == 4 and data["config"]["sink_dlm"]["mask_token_id"] == 2


# ---------------------------------------------------------------- families through the adapter


def _family_elbo(lm, noisy_rows, clean, context_len, masks, counts) -> float:
    """The ELBO written out from the rows the model saw: the family's logits, shift and masks."""
    losses = []
    for noisy, mask, k in zip(noisy_rows, masks, counts.tolist()):
        with torch.no_grad():
            logits = lm.family.logits(lm.model, noisy[None])[0].double()
        loss = 0.0
        for i in mask.nonzero().flatten().tolist():
            pos = context_len + i
            loss -= float(torch.log_softmax(logits[pos - lm.family.logit_shift], -1)[clean[pos]])
        losses.append(loss * len(mask) / k)
    return -sum(losses) / len(losses)


@pytest.fixture(scope="module")
def dream_lm(tmp_path_factory):
    from tests.family_models.build import build_dream_checkpoint

    folder = build_dream_checkpoint(tmp_path_factory.mktemp("dream"))
    return DiffusionLM(pretrained=str(folder), trust_remote_code=True, mc_num=4, batch_size=3, dtype="float32",
                       device="cpu", seed=7)


def test_dream_is_scored_with_its_shift_through_the_family(dream_lm):
    assert (dream_lm.family.name, dream_lm.logit_shift, dream_lm.mask_token_id) == ("dream", 1, MASK_ID)
    context, continuation = [5, 6, 7, 8], [9, 10, 11]
    got = dream_lm._loglikelihood_tokens([(None, context, continuation)])[0][0]
    masks, counts = elbo_masks(len(continuation), 4, 7, request_key(context, continuation))
    clean = torch.tensor(context + continuation)
    noisy = [clean.masked_fill(torch.cat([torch.zeros(len(context), dtype=torch.bool), m]), MASK_ID) for m in masks]
    assert got == pytest.approx(_family_elbo(dream_lm, noisy, clean, len(context), masks, counts), abs=1e-5)
    # the shift matters: reading the logits unshifted gives another number
    unshifted = mc_loglikelihood(dream_lm.model, [(context, continuation)], mask_token_id=MASK_ID, mc_num=4, seed=7)
    assert abs(unshifted[0] - got) > 1e-3


@pytest.fixture(scope="module")
def gemma_lm(tmp_path_factory):
    from tests.family_models.diffusion_gemma import build_diffusion_gemma_checkpoint

    folder = build_diffusion_gemma_checkpoint(tmp_path_factory.mktemp("diffusion_gemma"))
    return DiffusionLM(pretrained=str(folder), mc_num=4, batch_size=3, dtype="float32", device="cpu", seed=7)


def _recording(model):
    """Record the (prompt, canvas) of every DiffusionGemma forward, as one window each."""
    seen: list[torch.Tensor] = []

    def hook(_module, _args, kwargs):
        seen.append(torch.cat([kwargs["input_ids"], kwargs["decoder_input_ids"]], dim=1).clone())

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_diffusion_gemma_is_scored_on_its_canvas_with_uniform_noise(gemma_lm):
    assert gemma_lm.family.name == "diffusion_gemma" and gemma_lm.corruption is not None
    context, continuation = [5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15, 16, 17]
    seen, handle = _recording(gemma_lm.model)
    try:
        got = gemma_lm._loglikelihood_tokens([(None, context, continuation)])[0][0]
    finally:
        handle.remove()
    noisy = torch.cat(seen)
    masks, counts = elbo_masks(len(continuation), 4, 7, request_key(context, continuation))
    clean = torch.tensor(context + continuation)
    # the context and the unhidden continuation stay clean; the hidden positions hold uniform tokens
    assert noisy.shape == (4, len(clean)) and torch.equal(noisy[:, : len(context)], clean[None, : len(context)].expand(4, -1))
    tail = noisy[:, len(context):]
    assert torch.equal(tail[~masks], clean[len(context):].expand(4, -1)[~masks])
    assert not torch.equal(tail[masks], clean[len(context):].expand(4, -1)[masks])
    assert got == pytest.approx(_family_elbo(gemma_lm, noisy, clean, len(context), masks, counts), abs=1e-5)
    # replacement tokens are keyed by request and draw, not by batch
    gemma_lm.batch_size_per_gpu = 1
    try:
        seen_one, handle = _recording(gemma_lm.model)
        again = gemma_lm._loglikelihood_tokens([(None, [4] + context, continuation), (None, context, continuation)])
        handle.remove()
    finally:
        gemma_lm.batch_size_per_gpu = 3
    assert again[1][0] == got and torch.equal(torch.cat(seen_one[:4]), noisy)  # shorter rows go first


def test_diffusion_gemma_guidance_hides_the_context_and_refuses_what_it_cannot_score(gemma_lm):
    context, continuation = [5, 6, 7, 8, 9, 10], [13, 14, 15]
    gemma_lm.cfg = 0.5
    seen, handle = _recording(gemma_lm.model)
    try:
        guided = gemma_lm._loglikelihood_tokens([(None, context, continuation)])[0][0]
    finally:
        handle.remove()
        gemma_lm.cfg = 0.0
    rows = torch.cat(seen)
    assert rows.shape[0] == 2 * 4  # conditional and unconditional rows, one forward per batch
    unconditional = torch.cat([batch[batch.shape[0] // 2 :] for batch in seen])
    assert not torch.equal(unconditional[:, : len(context)], torch.tensor(context).expand(4, -1))
    plain = gemma_lm._loglikelihood_tokens([(None, context, continuation)])[0][0]
    assert abs(plain - guided) > 1e-4
    # a continuation longer than its context does not fit DiffusionGemma's canvas (the last T // 2 tokens)
    with pytest.raises(ValueError, match="cannot score"):
        gemma_lm._loglikelihood_tokens([(None, [5, 6], [7, 8, 9, 10])])
