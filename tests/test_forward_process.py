"""The forward processes and the one calibration-set type: draws as first released, layouts, row tables."""

from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch

from sink_modifier.process import (
    CalibrationLoader,
    CalibrationSet,
    ForwardProcess,
    MaskTokenProcess,
    RowTable,
    UniformSubstitution,
    build_calibration,
    canvas_size,
    noise_rate,
    noise_windows,
    row_generator,
)

VOCAB, MASK = 50, 2


def released_generator(key: str, keep: str) -> torch.Generator:
    """The keyed generator as first released: blake2b-64 of the key, 63 low or high bits."""
    value = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")
    return torch.Generator().manual_seed(value & ((1 << 63) - 1) if keep == "low" else value >> 1)


def released_row_generator(seed: int, s: int, j: int) -> torch.Generator:
    return released_generator(f"sink_modifier.diffusion.row:{seed}:{s}:{j}", "low")


def released_mask_noise(row, t, mask_id, generator, eps=1e-3):
    """Today's ``noise_tokens``: T uniforms on the CPU, masked where ``< (1-eps) t + eps``."""
    p = 0.0 if t == 0 else (1 - eps) * t + eps
    return row.masked_fill(torch.rand(row.shape[0], generator=generator) < p, mask_id)


def released_uniform_noise(row, t, vocab, generator, eps=1e-3):
    """Today's ``uniform_noise_tokens``: T uniforms, then T replacement tokens (used or not)."""
    p = 0.0 if t == 0 else (1 - eps) * t + eps
    noised = torch.rand(row.shape[0], generator=generator) < p
    tokens = torch.randint(0, vocab, row.shape, generator=generator)
    return torch.where(noised, tokens, row)


def clean_windows(n=4, seq_len=16, seed=0):
    return torch.randint(3, VOCAB, (n, seq_len), generator=torch.Generator().manual_seed(seed))


def test_both_processes_are_forward_processes_and_evaluation_corruptions():
    for process in (MaskTokenProcess(MASK), UniformSubstitution(VOCAB, seed=1)):
        assert isinstance(process, ForwardProcess)
        clean, hidden = clean_windows(2, 8), torch.zeros(2, 8, dtype=torch.bool)
        hidden[:, 3] = True
        rows = torch.tensor([5, 9])
        assert torch.equal(process(clean, hidden, rows, "nelbo"), process.corrupt(clean, hidden, rows, "nelbo"))
        assert torch.equal(process(clean, hidden, rows, "nelbo")[~hidden], clean[~hidden])
    with pytest.raises(ValueError, match="mask_token_id"):
        MaskTokenProcess(-1)
    with pytest.raises(ValueError, match="vocab_size"):
        UniformSubstitution(1)
    with pytest.raises(ValueError, match="eps"):
        MaskTokenProcess(MASK, eps=1.0)


def test_row_generator_is_the_released_key():
    for key in [(0, 0, 0), (7, 3, 9), (11, 2**40, 1)]:
        assert torch.equal(torch.rand(16, generator=row_generator(*key)),
                           torch.rand(16, generator=released_row_generator(*key)))


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_mask_token_rows_equal_the_released_draws(t):
    window = clean_windows(1, 64)[0]
    got = MaskTokenProcess(MASK, eps=0.01).noise_row(window, t, row_generator(3, 1, 2))
    assert torch.equal(got, released_mask_noise(window, t, MASK, released_row_generator(3, 1, 2), eps=0.01))


@pytest.mark.parametrize("t", [0.0, 0.3, 1.0])
def test_uniform_rows_equal_the_released_draws(t):
    window = clean_windows(1, 64)[0]
    got = UniformSubstitution(VOCAB).noise_row(window, t, row_generator(3, 1, 2))
    assert torch.equal(got, released_uniform_noise(window, t, VOCAB, released_row_generator(3, 1, 2)))
    changed = (UniformSubstitution(VOCAB).noise_row(clean_windows(1, 4000)[0], 0.5, torch.Generator().manual_seed(0))
               != clean_windows(1, 4000)[0]).float().mean()
    assert float(changed) == pytest.approx(noise_rate(0.5) * (1 - 1 / VOCAB), abs=0.03)


def test_uniform_evaluation_tokens_are_the_released_stream():
    process = UniformSubstitution(VOCAB, seed=3)
    clean, hidden = clean_windows(2, 10), torch.ones(2, 10, dtype=torch.bool)
    got = process.corrupt(clean, hidden, torch.tensor([4, 7]), "nelbo")
    expected = torch.stack([
        torch.randint(0, VOCAB, (10,), generator=released_generator(f"sink_modifier.evaluation:3:{r}:uniform:nelbo", "high"))
        for r in (4, 7)
    ])
    assert torch.equal(got, expected)


def test_whole_window_set_equals_the_released_rows_and_record():
    windows = clean_windows()
    grid = (0.0, 0.5, 1.0)
    cal = build_calibration(windows, None, process=MaskTokenProcess(MASK), seq_len=16, num_samples=4,
                            timesteps=grid, seed=5)
    for s in range(4):
        for j, t in enumerate(grid):
            assert torch.equal(cal.input_ids[s * 3 + j],
                               released_mask_noise(windows[s], t, MASK, released_row_generator(5, s, j)))
    assert cal.window_index.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    info = json.loads(json.dumps(cal.describe()))
    assert set(info) == {"num_samples", "seq_len", "timesteps", "seed", "eps", "mask_token_id", "rows",
                         "mask_rate_per_timestep"}
    assert [r["observed_mask_rate"] for r in info["mask_rate_per_timestep"]][::2] == [0.0, 1.0]


def test_prompt_canvas_layout_noises_only_the_canvas_as_released():
    windows = clean_windows(3, 16)
    cal = build_calibration(windows, None, process=UniformSubstitution(VOCAB), seq_len=16, num_samples=3,
                            timesteps=(0.3, 1.0), seed=7, canvas_length=12)
    assert canvas_size(16, 12) == 8 and cal.prompt_length == 8 and cal.canvas_length == 8
    assert torch.equal(cal.input_ids[:, :8], windows[:, :8].repeat_interleave(2, dim=0))
    # row (s=2, j=1) is window 2's canvas alone, noised by its own generator
    assert torch.equal(cal.input_ids[5, 8:], released_uniform_noise(windows[2, 8:], 1.0, VOCAB, released_row_generator(7, 2, 1)))
    batches = list(cal.dataloader(batch_size=2))
    assert all(set(b) == {"input_ids", "decoder_input_ids"} for b in batches)
    assert torch.equal(torch.cat([b["decoder_input_ids"] for b in batches]), cal.input_ids[:, 8:])
    info = cal.describe()
    assert set(info) == {"num_samples", "seq_len", "prompt_length", "canvas_length", "noise", "vocab_size",
                         "timesteps", "seed", "eps", "rows", "noise_rate_per_timestep"}
    assert info["noise"] == "uniform" and info["prompt_length"] == 8
    with pytest.raises(ValueError, match="columns must include"):
        cal.dataloader(columns=("input_ids",))


def test_clean_rows_need_no_process_and_keep_their_record():
    windows = clean_windows()
    cal = build_calibration(windows, None, process=None, seq_len=16, num_samples=4, timesteps=(0.0,))
    assert torch.equal(cal.input_ids, windows)
    info = cal.describe()
    assert info["mask_token_id"] == -1 and info["mask_rate_per_timestep"][0]["observed_mask_rate"] == 0.0
    with pytest.raises(ValueError, match="no forward process"):
        noise_windows(windows, (0.5,), None, 0)


def test_dataloader_carries_the_row_table_through_a_deepcopy():
    cal = build_calibration(clean_windows(), None, process=MaskTokenProcess(MASK), seq_len=16, num_samples=4,
                            timesteps=(0.25, 0.75), seed=0)
    loader = copy.deepcopy(cal.dataloader(batch_size=2))  # llm-compressor deep-copies state.data.calib
    assert isinstance(loader, CalibrationLoader) and isinstance(loader.rows, RowTable)
    assert loader.batch_size == 2 and loader.rows.num_batches == len(loader) == 4
    windows, times = loader.rows.batch(3)
    assert windows.tolist() == [3, 3] and times.tolist() == [0.25, 0.75]
    assert loader.rows.one_window_problem(3) is None
    mixed = cal.row_table(3)
    assert "mixes windows [1, 2]" in mixed.one_window_problem(1)
    assert "holds 1 row" in cal.row_table(1).one_window_problem(0)
    assert "not at each of" in RowTable(torch.tensor([0, 0]), torch.tensor([0.25, 0.25]), (0.25, 0.75), 2).one_window_problem(0)


def test_calibration_set_type_is_one():
    cal = build_calibration(clean_windows(), None, process=UniformSubstitution(VOCAB), seq_len=16, num_samples=4,
                            timesteps=(0.5,), canvas_length=4)
    assert type(cal) is CalibrationSet and cal.mask_token_id is None
