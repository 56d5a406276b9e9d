"""The calibration study's protocol (benchmarks/calibration_study.py): matched compute, grids, verdicts, merging.

No model runs: these are the rules every arm of the study is held to.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_llama_config, word_tokenizer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module")
def study():
    name = "calibration_study"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_every_calibrated_arm_sees_the_same_rows_and_tokens(study, monkeypatch):
    monkeypatch.setattr(study, "SEQ_LEN", 16)
    documents = [" ".join(f"w{4 + (i * 7 + j) % 60}" for j in range(40)) for i in range(200)]
    config = tiny_llama_config()
    shapes = {}
    for arm in study.arms_for(list(study.PLANS), ["wanda"]):
        if arm.data_free:
            continue
        cal = study.calibration_set(arm, documents, word_tokenizer(), config, rows=40, timesteps=10, seed=0)
        shapes[arm.key] = (tuple(cal.input_ids.shape), cal.num_samples, len(cal.timesteps))
    assert {s[0] for s in shapes.values()} == {(40, 16)}  # matched: rows x tokens
    assert shapes["wanda_clean_off"][1:] == (40, 1)  # 40 distinct clean windows
    assert shapes["wanda_noised_off"][1:] == (4, 10)  # 4 windows x 10 timesteps
    assert shapes["wanda_mixed_off"][1:] == (8, 5)  # in between


def test_timestep_grids_have_their_documented_shape(study):
    llada = study.timestep_grid("llada", 10, seed=0)
    assert llada == tuple(round(0.1 * j, 4) for j in range(1, 11))
    low, high = study.timestep_grid("low", 10, 0), study.timestep_grid("high", 10, 0)
    assert all(0 < t <= 1 for t in low + high) and len(low) == len(high) == 10
    mean = lambda grid: sum(grid) / len(grid)  # noqa: E731
    assert mean(low) < 0.4 < mean(llada) < 0.6 < mean(high)  # low-t-heavy, even, high-t-heavy
    assert sum(t < 0.25 for t in low) == 5 and sum(t > 0.75 for t in high) == 5  # 3x denser at one end
    assert study.timestep_grid("uniform", 10, 0) != study.timestep_grid("uniform", 10, 1)  # a fresh draw per seed
    assert study.timestep_grid("uniform", 10, 3) == study.timestep_grid("uniform", 10, 3)


def _entry(heldout, handbook):
    return {"heldout": {"vs_reference": heldout}, "handbook": {"vs_reference": handbook}}


def test_a_verdict_needs_both_domains_beyond_two_standard_errors(study):
    assert study.verdict(_entry((-0.03, 0.01), (-0.025, 0.01))) == "better"
    assert study.verdict(_entry((0.03, 0.01), (0.03, 0.01))) == "worse"
    assert study.verdict(_entry((-0.01, 0.01), (0.005, 0.01))) == "neutral"
    assert study.verdict(_entry((-0.03, 0.01), (0.001, 0.01))).startswith("mixed")
    # significant but tiny on both domains: not called a loss or a win
    assert study.verdict(_entry((0.0001, 0.00004), (0.0001, 0.00004))).startswith("negligible")
    assert study.verdict(_entry((0.0001, 0.00004), (0.003, 0.001))) == "worse"


def test_stores_merge_only_with_identical_settings(study):
    base = {"settings": {"rows": 160}, "seeds": [0, 1, 2], "dense": {"x": 1}, "runs": {"a": 1}}
    other = {"settings": {"rows": 160}, "seeds": [0, 1, 2], "dense": {"x": 1}, "runs": {"a": 2, "b": 3}}
    assert study.merge_stores(base, other) == 1 and base["runs"] == {"a": 1, "b": 3}  # existing runs kept
    with pytest.raises(SystemExit, match="different settings"):
        study.merge_stores(base, {**other, "settings": {"rows": 80}})
    with pytest.raises(SystemExit, match="dense evaluations differ"):
        study.merge_stores(base, {**other, "dense": {"x": 2}})
