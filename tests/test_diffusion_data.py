"""Masked-diffusion calibration data: documents, windows, mask-token noising, calibration sets."""

from __future__ import annotations

import gzip
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch

from sink_modifier.data import check_seq_len, load_documents, token_windows
from sink_modifier.process import (
    LLADA_TIMESTEPS,
    CalibrationSet,
    MaskTokenProcess,
    build_calibration,
    mask_probability,
    noise_windows,
    resolve_mask_token_id,
    row_generator,
    timestep_grid,
)

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"
TINY_DLM = SHARED / "models" / "tiny-dlm"
CORPUS = SHARED / "data" / "corpus.txt.gz"
MASK = 2
PROCESS = MaskTokenProcess(MASK)


class CharTokenizer:
    """Deterministic char-level stand-in: id = ord(c) % 997 + 3 (never 0, 1 or 2)."""

    def __init__(self, eos_token_id: int | None = 1, mask_token_id: int | None = None):
        self.eos_token_id = eos_token_id
        self.mask_token_id = mask_token_id
        self.calls: list[dict] = []

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 997 + 3 for c in text]

    def __call__(self, texts, add_special_tokens=True, **kwargs):
        assert isinstance(texts, list), "must tokenize in batches"
        self.calls.append({"add_special_tokens": add_special_tokens, "n": len(texts)})
        return {"input_ids": [self.encode(t) for t in texts]}


def reference_stream(documents, encode, separator):
    stream: list[int] = []
    for doc in documents:
        stream += encode(doc) + ([] if separator is None else [separator])
    return stream


def window_positions(windows: torch.Tensor, stream: list[int], seq_len: int) -> list[int]:
    """Index k of the stream slice [k*L, (k+1)*L) equal to each window (asserts one exists)."""
    slices = {
        tuple(stream[k * seq_len : (k + 1) * seq_len]): k for k in range(len(stream) // seq_len)
    }
    positions = []
    for row in windows.tolist():
        assert tuple(row) in slices, "window is not an aligned slice of the token stream"
        positions.append(slices[tuple(row)])
    return positions


def random_clean(n: int, seq_len: int, seed: int = 123) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 5000, (n, seq_len), generator=g)


# --------------------------------------------------------------------------- noising


def test_timestep_grid_matches_paper_grid():
    assert LLADA_TIMESTEPS == timestep_grid() == timestep_grid(50, 5)
    assert LLADA_TIMESTEPS == tuple(k / 50 for k in range(5, 51, 5))
    assert LLADA_TIMESTEPS[0] == 0.1 and LLADA_TIMESTEPS[-1] == 1.0 and len(LLADA_TIMESTEPS) == 10
    assert timestep_grid(4, 1) == (0.25, 0.5, 0.75, 1.0)
    assert timestep_grid(10, 3) == (0.3, 0.6, 0.9)
    for bad in [(0, 5), (50, 0), (-1, 1), (5, 10)]:
        with pytest.raises(ValueError, match="diffusion_steps|sample_interval"):
            timestep_grid(*bad)


def test_mask_probability_formula_and_validation():
    for t in LLADA_TIMESTEPS:
        assert mask_probability(t) == pytest.approx((1 - 1e-3) * t + 1e-3)
    assert mask_probability(0.5, eps=0.2) == pytest.approx(0.8 * 0.5 + 0.2)
    assert mask_probability(0.0) == 0.0  # clean row, not eps
    assert mask_probability(1.0) == 1.0
    for t in (-0.01, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"t must be a number in \[0, 1\]"):
            mask_probability(t)
    with pytest.raises(ValueError, match="eps"):
        mask_probability(0.5, eps=1.0)


def test_row_generator_depends_only_on_its_triple():
    def draws(*key):
        return torch.rand(32, generator=row_generator(*key))

    assert torch.equal(draws(0, 3, 4), draws(0, 3, 4))
    keys = [(0, 3, 4), (1, 3, 4), (0, 4, 3), (0, 3, 5), (0, 0, 0), (2**40, 0, 0)]
    outs = [draws(*k) for k in keys]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not torch.equal(outs[i], outs[j]), (keys[i], keys[j])
    with pytest.raises(ValueError, match="sample_index"):
        row_generator(0, -1, 0)
    with pytest.raises(ValueError, match="seed must be an int"):
        row_generator(0.5, 0, 0)


def test_mask_noise_row_matches_naive_reference():
    x = torch.arange(3, 3 + 200)
    for t in (0.0, 0.1, 0.5, 0.9, 1.0):
        out = PROCESS.noise_row(x, t, row_generator(7, 1, 2))
        u = torch.rand(200, generator=row_generator(7, 1, 2))
        p = 0.0 if t == 0 else (1 - 1e-3) * t + 1e-3
        expected = torch.tensor([MASK if ui < p else xi for ui, xi in zip(u.tolist(), x.tolist())])
        assert torch.equal(out, expected)
    assert torch.equal(x, torch.arange(3, 203)), "input must not be modified in place"


def test_mask_noise_row_t0_is_clean_and_t1_masks_everything():
    x = random_clean(1, 4096)[0]
    clean = PROCESS.noise_row(x, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(clean, x) and clean is not x
    full = PROCESS.noise_row(x, 1.0, torch.Generator().manual_seed(0))
    assert bool((full == MASK).all())


def test_mask_noise_row_respects_maskable_and_only_writes_mask_id():
    x = random_clean(1, 5000)[0]
    maskable = torch.zeros(5000, dtype=torch.bool)
    maskable[::3] = True
    out = PROCESS.noise_row(x, 0.8, torch.Generator().manual_seed(1), maskable=maskable)
    assert torch.equal(out[~maskable], x[~maskable])
    changed = out != x
    assert bool((out[changed] == MASK).all())
    assert int(changed.sum()) > 1000  # ~0.8 * 1667 masked: not vacuous
    with pytest.raises(ValueError, match="maskable"):
        PROCESS.noise_row(x, 0.5, torch.Generator(), maskable=maskable[:10])
    with pytest.raises(ValueError, match="1-D"):
        PROCESS.noise_row(x.view(50, 100), 0.5, torch.Generator())


def test_empirical_mask_rate_within_binomial_tolerance():
    eps = 1e-3
    clean = random_clean(64, 256)
    timesteps = (0.0,) + LLADA_TIMESTEPS
    ids, _, _ = noise_windows(clean, timesteps, MaskTokenProcess(MASK, eps=eps), seed=11)
    k = len(timesteps)
    n = clean.numel()
    rates = []
    for j, t in enumerate(timesteps):
        rows = ids[j::k]
        assert rows.shape == clean.shape
        p = mask_probability(t, eps)
        rate = float((rows == MASK).float().mean())
        rates.append(rate)
        tol = 5 * math.sqrt(p * (1 - p) / n) + 1e-12
        assert abs(rate - p) <= tol, (t, rate, p, tol)
        # the unmasked positions keep their clean tokens
        keep = rows != MASK
        assert torch.equal(rows[keep], clean[keep])
    assert rates[0] == 0.0 and rates[-1] == 1.0
    assert rates == sorted(rates)


# --------------------------------------------------------------------------- noise_windows


def test_noise_windows_layout_and_batch_independence():
    clean = random_clean(6, 128)
    ts = (0.0, 0.3, 0.7)
    ids, window_index, timestep = noise_windows(clean, ts, PROCESS, seed=5)
    assert ids.shape == (18, 128) and ids.dtype == torch.long
    assert window_index.tolist() == [s for s in range(6) for _ in ts]
    assert timestep.dtype == torch.float64
    assert timestep.tolist() == list(ts) * 6
    # each row equals the row built alone from its (seed, sample, timestep) coordinates
    for r in range(18):
        s, j = divmod(r, 3)
        alone = PROCESS.noise_row(clean[s], ts[j], row_generator(5, s, j))
        assert torch.equal(ids[r], alone)
    # t=0 rows are clean copies
    assert torch.equal(ids[0::3], clean)
    # fewer samples -> the same rows, as a prefix
    fewer, _, _ = noise_windows(clean[:2], ts, PROCESS, seed=5)
    assert torch.equal(fewer, ids[:6])
    # a different seed gives different masks
    other, _, _ = noise_windows(clean, ts, PROCESS, seed=6)
    assert not torch.equal((other == MASK)[1::3], (ids == MASK)[1::3])


def test_noise_windows_validation():
    clean = random_clean(2, 8)
    with pytest.raises(ValueError, match="timesteps is empty"):
        noise_windows(clean, (), PROCESS, 0)
    with pytest.raises(ValueError, match="timesteps must all lie in"):
        noise_windows(clean, (0.5, 1.5), PROCESS, 0)
    with pytest.raises(ValueError, match="clean_ids must be a 2-D"):
        noise_windows(clean[0], (0.5,), PROCESS, 0)
    with pytest.raises(ValueError, match="dtype"):
        noise_windows(clean.float(), (0.5,), PROCESS, 0)


# --------------------------------------------------------------------------- windows


def random_documents(n: int, seed: int = 0) -> list[str]:
    """Random-letter documents of varied length: every aligned stream slice is distinct."""
    g = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ.,"
    docs = []
    for _ in range(n):
        length = int(torch.randint(5, 90, (), generator=g))
        picks = torch.randint(len(letters), (length,), generator=g)
        docs.append("".join(letters[i] for i in picks))
    return docs


DOCS = random_documents(20)


def test_token_windows_are_aligned_slices_of_the_eos_joined_stream():
    tok = CharTokenizer(eos_token_id=1)
    seq_len = 16
    stream = reference_stream(DOCS, tok.encode, 1)
    available = len(stream) // seq_len
    windows = token_windows(DOCS, tok, seq_len, available, seed=3)
    assert windows.shape == (available, seq_len) and windows.dtype == torch.long
    positions = window_positions(windows, stream, seq_len)
    assert sorted(positions) == list(range(available))  # a permutation, no replacement
    assert positions != sorted(positions)  # random order is kept
    assert all(call["add_special_tokens"] is False for call in tok.calls)
    assert int((windows == 1).sum()) == stream[: available * seq_len].count(1) > 0


def test_token_windows_seeded_prefix_stable_and_separator_options():
    tok = CharTokenizer(eos_token_id=1)
    a = token_windows(DOCS, tok, 12, 5, seed=9)
    assert torch.equal(a, token_windows(DOCS, tok, 12, 5, seed=9))
    assert torch.equal(a[:3], token_windows(DOCS, tok, 12, 3, seed=9))
    assert not torch.equal(a, token_windows(DOCS, tok, 12, 5, seed=10))
    # explicit separator
    sep = token_windows(DOCS, tok, 12, 8, seed=0, separator_token_id=999)
    window_positions(sep, reference_stream(DOCS, tok.encode, 999), 12)
    assert int((sep == 999).sum()) > 0 and int((sep == 1).sum()) == 0
    # tokenizer without eos -> documents joined directly
    no_eos = CharTokenizer(eos_token_id=None)
    joined = token_windows(DOCS, no_eos, 12, 8, seed=0)
    window_positions(joined, reference_stream(DOCS, no_eos.encode, None), 12)


def test_token_windows_errors():
    tok = CharTokenizer()
    with pytest.raises(ValueError, match="seq_len must be an int >= 2"):
        token_windows(DOCS, tok, 1, 1)
    with pytest.raises(ValueError, match=r"found only 4 tokens.*--max-chars.*smaller --seq-len"):
        token_windows(["abc"], tok, 8, 1)
    stream_len = len(reference_stream(DOCS, tok.encode, 1))
    with pytest.raises(ValueError, match=rf"only {stream_len // 100} windows"):
        token_windows(DOCS, tok, 100, stream_len // 100 + 1)
    with pytest.raises(ValueError, match="num_windows"):
        token_windows(DOCS, tok, 8, 0)


def test_check_seq_len():
    check_seq_len(256, SimpleNamespace(max_position_embeddings=256))
    check_seq_len(10_000, SimpleNamespace())  # no declared limit: nothing to check
    for attr in ("max_position_embeddings", "max_sequence_length", "n_positions"):
        with pytest.raises(ValueError, match=r"seq_len=300 .* 256.*--seq-len"):
            check_seq_len(300, SimpleNamespace(**{attr: 256}))


# --------------------------------------------------------------------------- mask token


def test_resolve_mask_token_id_order_and_error():
    tok = SimpleNamespace(mask_token_id=5)
    cfg = SimpleNamespace(mask_token_id=7)
    assert resolve_mask_token_id(tok, cfg) == 5
    assert resolve_mask_token_id(SimpleNamespace(mask_token_id=None), cfg) == 7
    assert resolve_mask_token_id(None, cfg) == 7
    with pytest.raises(ValueError, match=r"has no mask token.*mask_token_id=.*126336"):
        resolve_mask_token_id(SimpleNamespace(mask_token_id=None), SimpleNamespace())
    with pytest.raises(ValueError, match="has no mask token"):
        resolve_mask_token_id()


# --------------------------------------------------------------------------- documents


TXT = "first doc line one\nfirst doc line two\n\n\n  \nsecond doc\r\n\n   \n\nthird\n"
EXPECTED = ["first doc line one\nfirst doc line two", "second doc", "third"]


def test_load_documents_txt_and_gz(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text(TXT)
    assert load_documents(path) == EXPECTED
    assert load_documents(str(path)) == EXPECTED
    gz = tmp_path / "c.txt.gz"
    with gzip.open(gz, "wt") as f:
        f.write(TXT)
    assert load_documents(gz) == EXPECTED


def test_load_documents_jsonl(tmp_path):
    rows = [{"text": "alpha"}, {"text": "   "}, {"text": "beta\ngamma", "id": 3}]
    body = "\n".join(json.dumps(r) for r in rows[:2]) + "\n\n" + json.dumps(rows[2]) + "\n"
    path = tmp_path / "c.jsonl"
    path.write_text(body)
    assert load_documents(path) == ["alpha", "beta\ngamma"]
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(body)
    assert load_documents(gz) == ["alpha", "beta\ngamma"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": "ok"}\n{"content": "x"}\n')
    with pytest.raises(ValueError, match="line 3 has no 'text' field"):
        load_documents(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "ok"}\n{not json\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        load_documents(broken)
    # limits stop reading before the broken line
    assert load_documents(broken, max_documents=1) == ["ok"]


def test_load_documents_dataset_and_list():
    ds = datasets.Dataset.from_dict({"text": ["a b", "", "c d"], "other": [1, 2, 3]})
    assert load_documents(ds) == ["a b", "c d"]
    assert load_documents(["x", " \n ", "y"]) == ["x", "y"]
    assert load_documents(("x", "y")) == ["x", "y"]
    with pytest.raises(ValueError, match="no 'text' column"):
        load_documents(datasets.Dataset.from_dict({"content": ["a"]}))
    with pytest.raises(ValueError, match="item 1 is a int"):
        load_documents(["a", 3])


def test_load_documents_limits():
    docs = [f"doc{i:02d} " * 3 for i in range(20)]  # 18 chars each
    assert load_documents(docs, max_documents=4) == docs[:4]
    capped = load_documents(docs, max_chars=40)
    assert capped == [docs[0], docs[1], docs[2][:4]]
    assert sum(map(len, capped)) == 40
    with pytest.raises(ValueError, match="max_chars must be a positive int"):
        load_documents(docs, max_chars=0)


def test_load_documents_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_documents(tmp_path / "missing.txt")
    odd = tmp_path / "c.csv"
    odd.write_text("a,b\n")
    with pytest.raises(ValueError, match=r"unsupported file extension '.csv'.*\.txt\.gz.*\.jsonl"):
        load_documents(odd)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    with pytest.raises(ValueError, match="contains no text documents"):
        load_documents(empty)
    with pytest.raises(ValueError, match="contains no text documents"):
        load_documents(["", "  "])
    with pytest.raises(ValueError, match="unsupported document source"):
        load_documents(42)


# --------------------------------------------------------------------------- calibration set


def small_set(**overrides) -> CalibrationSet:
    kwargs = dict(seq_len=32, num_samples=3, timesteps=(0.0, 0.5, 1.0), seed=4, process=PROCESS)
    kwargs.update(overrides)
    return build_calibration(random_clean(5, 32), None, **kwargs)


def test_build_from_tensor_layout():
    windows = random_clean(5, 32)
    cal = small_set()
    assert len(cal) == 9 and cal.input_ids.shape == (9, 32)
    assert torch.equal(cal.clean_ids, windows[:3])
    assert torch.equal(cal.attention_mask, torch.ones(9, 32, dtype=torch.long))
    assert cal.window_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert cal.timestep.tolist() == [0.0, 0.5, 1.0] * 3
    assert cal.timesteps == (0.0, 0.5, 1.0) and cal.mask_token_id == MASK and cal.seed == 4
    assert torch.equal(cal.input_ids[0::3], windows[:3])
    assert bool((cal.input_ids[2::3] == MASK).all())
    ref, _, _ = noise_windows(windows[:3], (0.0, 0.5, 1.0), PROCESS, 4)
    assert torch.equal(cal.input_ids, ref)


def test_to_dataset_and_dataloader():
    cal = small_set()
    ds = cal.to_dataset()
    assert ds.column_names == ["input_ids", "attention_mask"]
    assert ds.num_rows == len(cal)
    assert all(str(ds.features[c].feature) == str(datasets.Value("int64")) for c in ds.column_names)
    assert ds[4]["input_ids"] == cal.input_ids[4].tolist()
    assert ds.with_format("torch")[4]["input_ids"].dtype == torch.int64
    batches = list(cal.dataloader(batch_size=4))
    assert [b["input_ids"].shape for b in batches] == [(4, 32), (4, 32), (1, 32)]
    assert all(set(b) == {"input_ids", "attention_mask"} for b in batches)
    assert all(b["input_ids"].dtype == torch.long == b["attention_mask"].dtype for b in batches)
    assert torch.equal(torch.cat([b["input_ids"] for b in batches]), cal.input_ids)
    singles = torch.cat([b["input_ids"] for b in cal.dataloader()])
    assert torch.equal(singles, cal.input_ids)
    with pytest.raises(ValueError, match="batch_size"):
        cal.dataloader(batch_size=0)


def test_describe_is_json_and_reports_rates():
    cal = small_set(num_samples=5, timesteps=(0.0, 0.25, 1.0))
    info = json.loads(json.dumps(cal.describe()))
    assert info["num_samples"] == 5 and info["seq_len"] == 32 and info["rows"] == 15
    assert info["timesteps"] == [0.0, 0.25, 1.0] and info["seed"] == 4
    assert info["mask_token_id"] == MASK
    rates = info["mask_rate_per_timestep"]
    assert [r["t"] for r in rates] == [0.0, 0.25, 1.0]
    assert rates[0]["observed_mask_rate"] == 0.0 and rates[2]["observed_mask_rate"] == 1.0
    observed = float((cal.input_ids[1::3] == MASK).float().mean())
    assert rates[1]["observed_mask_rate"] == pytest.approx(observed)
    assert rates[1]["expected_mask_rate"] == pytest.approx(mask_probability(0.25))


def test_build_validation_errors():
    windows = random_clean(5, 32)
    cases = [
        (dict(num_samples=0), "num_samples must be >= 1"),
        (dict(timesteps=()), "timesteps is empty"),
        (dict(timesteps=(0.5, -0.1)), "timesteps must all lie in"),
        (dict(seq_len=16), "length 32 but seq_len=16"),
        (dict(num_samples=6), "5 windows but num_samples=6"),
        (dict(config=SimpleNamespace(max_position_embeddings=16)), "--seq-len 16"),
        (dict(config=SimpleNamespace(vocab_size=2)), "outside the model's vocab"),
        (dict(process=None), "no forward process was given"),
        (dict(canvas_length=0), "canvas_length must be >= 1"),
    ]
    for overrides, message in cases:
        kwargs = dict(seq_len=32, num_samples=2, process=PROCESS)
        kwargs.update(overrides)
        with pytest.raises(ValueError, match=message):
            build_calibration(windows, None, **kwargs)


def test_build_from_text_is_prefix_stable():
    tok = CharTokenizer(eos_token_id=1)
    cfg = SimpleNamespace(mask_token_id=MASK, max_position_embeddings=64, vocab_size=1000)
    process = MaskTokenProcess(resolve_mask_token_id(tok, cfg))
    small = build_calibration(DOCS, tok, process=process, seq_len=16, num_samples=4, config=cfg, seed=2)
    big = build_calibration(DOCS, tok, process=process, seq_len=16, num_samples=8, config=cfg, seed=2)
    assert small.mask_token_id == MASK
    assert torch.equal(small.clean_ids, big.clean_ids[:4])
    assert torch.equal(small.input_ids, big.input_ids[: len(small)])
    window_positions(small.clean_ids, reference_stream(DOCS, tok.encode, 1), 16)


# --------------------------------------------------------------------- real tokenizer + corpus


@pytest.fixture(scope="module")
def tiny_tokenizer():
    if not TINY_DLM.exists():
        pytest.skip(f"tiny-dlm tokenizer not found at {TINY_DLM}")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(TINY_DLM))


def test_real_tokenizer_and_corpus(tiny_tokenizer):
    if not CORPUS.exists():
        pytest.skip(f"corpus not found at {CORPUS}")
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(TINY_DLM))
    assert resolve_mask_token_id(tiny_tokenizer, config) == MASK
    cal = build_calibration(
        CORPUS, tiny_tokenizer, process=MaskTokenProcess(MASK), seq_len=64, num_samples=4, config=config, max_chars=200_000
    )
    k = len(LLADA_TIMESTEPS)
    assert cal.input_ids.shape == (4 * k, 64) and cal.clean_ids.shape == (4, 64)
    assert cal.mask_token_id == MASK and cal.timesteps == LLADA_TIMESTEPS
    assert not bool((cal.clean_ids == MASK).any())
    clean = cal.clean_ids.repeat_interleave(k, dim=0)
    changed = cal.input_ids != clean
    assert bool((cal.input_ids[changed] == MASK).all())
    assert bool((cal.input_ids[k - 1 :: k] == MASK).all())  # t = 1.0 rows
    assert int(changed[0::k].sum()) < int(changed[k // 2 :: k].sum())
    # windows are aligned slices of the EOS-joined stream of the same text prefix
    docs = load_documents(CORPUS, max_chars=200_000)
    assert sum(map(len, docs)) == 200_000
    encoded = tiny_tokenizer(docs, add_special_tokens=False)["input_ids"]
    stream = [i for ids in encoded for i in ids + [tiny_tokenizer.eos_token_id]]
    window_positions(cal.clean_ids, stream, 64)
    with pytest.raises(ValueError, match="seq_len=512 exceeds .* 256"):
        build_calibration(
            CORPUS, tiny_tokenizer, process=PROCESS, seq_len=512, num_samples=1, config=config
        )


def test_reading_text_files_needs_no_datasets_library():
    """The scoring and data layers import without `datasets` (the GPU image has none); Datasets still work."""
    code = ("import sys\nimport sink_modifier.scoring, sink_modifier.data\n"
            "assert 'datasets' not in sys.modules, 'datasets imported'\n"
            "import datasets\nfrom sink_modifier.data import load_documents\n"
            "assert load_documents(datasets.Dataset.from_dict({'text': ['a b', 'c']})) == ['a b', 'c']\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
