"""The calibration study's protocol (benchmarks/calibration_study.py): matched compute, grids, verdicts, merging.

No model runs: these are the rules every arm of the study is held to.
"""

from __future__ import annotations

import pytest

from tests.conftest import load_benchmark, tiny_llama_config, word_tokenizer


@pytest.fixture(scope="module")
def study():
    return load_benchmark("calibration_study")


@pytest.fixture(scope="module")
def protocol(study):
    return load_benchmark("study_protocol")  # the rules calibration_study and quantization_study share


def test_every_calibrated_arm_sees_the_same_rows_and_tokens(study, protocol, monkeypatch):
    monkeypatch.setattr(protocol, "SEQ_LEN", 16)
    documents = [" ".join(f"w{4 + (i * 7 + j) % 60}" for j in range(40)) for i in range(200)]
    config = tiny_llama_config()
    shapes = {}
    for arm in study.arms_for(list(study.PLANS), ["wanda"]):
        if arm.data_free:
            continue
        cal = protocol.calibration_set(arm.calibration, arm.grid, documents, word_tokenizer(), config,
                                       rows=40, timesteps=10, seed=0)
        shapes[arm.key] = (tuple(cal.input_ids.shape), cal.num_samples, len(cal.timesteps))
    assert {s[0] for s in shapes.values()} == {(40, 16)}  # matched: rows x tokens
    assert shapes["wanda_clean_off"][1:] == (40, 1)  # 40 distinct clean windows
    assert shapes["wanda_noised_off"][1:] == (4, 10)  # 4 windows x 10 timesteps
    assert shapes["wanda_mixed_off"][1:] == (8, 5)  # in between


def test_timestep_grids_have_their_documented_shape(protocol):
    llada = protocol.timestep_grid("llada", 10, seed=0)
    assert llada == tuple(round(0.1 * j, 4) for j in range(1, 11))
    low, high = protocol.timestep_grid("low", 10, 0), protocol.timestep_grid("high", 10, 0)
    assert all(0 < t <= 1 for t in low + high) and len(low) == len(high) == 10
    mean = lambda grid: sum(grid) / len(grid)  # noqa: E731
    assert mean(low) < 0.4 < mean(llada) < 0.6 < mean(high)  # low-t-heavy, even, high-t-heavy
    assert sum(t < 0.25 for t in low) == 5 and sum(t > 0.75 for t in high) == 5  # 3x denser at one end
    assert protocol.timestep_grid("uniform", 10, 0) != protocol.timestep_grid("uniform", 10, 1)  # a fresh draw per seed
    assert protocol.timestep_grid("uniform", 10, 3) == protocol.timestep_grid("uniform", 10, 3)


def _entry(heldout, handbook):
    return {"heldout": {"vs_reference": heldout}, "handbook": {"vs_reference": handbook}}


def test_a_verdict_needs_both_domains_beyond_two_standard_errors(protocol):
    assert protocol.verdict(_entry((-0.03, 0.01), (-0.025, 0.01))) == "better"
    assert protocol.verdict(_entry((0.03, 0.01), (0.03, 0.01))) == "worse"
    assert protocol.verdict(_entry((-0.01, 0.01), (0.005, 0.01))) == "neutral"
    assert protocol.verdict(_entry((-0.03, 0.01), (0.001, 0.01))).startswith("mixed")
    # significant but tiny on both domains: not called a loss or a win
    assert protocol.verdict(_entry((0.0001, 0.00004), (0.0001, 0.00004))).startswith("negligible")
    assert protocol.verdict(_entry((0.0001, 0.00004), (0.003, 0.001))) == "worse"


def test_stores_merge_only_with_identical_settings(protocol):
    base = {"settings": {"rows": 160}, "seeds": [0, 1, 2], "dense": {"x": 1}, "runs": {"a": 1}}
    other = {"settings": {"rows": 160}, "seeds": [0, 1, 2], "dense": {"x": 1}, "runs": {"a": 2, "b": 3}}
    assert protocol.merge_stores(base, other) == 1 and base["runs"] == {"a": 1, "b": 3}  # existing runs kept
    with pytest.raises(SystemExit, match="different settings"):
        protocol.merge_stores(base, {**other, "settings": {"rows": 80}})
    with pytest.raises(SystemExit, match="dense evaluations differ"):
        protocol.merge_stores(base, {**other, "dense": {"x": 2}})


def test_each_finished_run_is_saved_and_a_store_of_other_settings_refused(protocol, tmp_path):
    path = tmp_path / "study.json"
    store = protocol.load_store({"rows": 160}, path, notes=[])
    assert store == {"settings": {"rows": 160}, "dense": None, "runs": {}, "notes": []} and not path.exists()
    protocol.record_run(store, "dense|w4a16|clean|0", {"eval": {"dev": {"nelbo": 4.5}}}, path, cpu="test ISA")
    saved = protocol.load_store({"rows": 160}, path)
    assert saved["runs"] == {"dense|w4a16|clean|0": {"eval": {"dev": {"nelbo": 4.5}}}}
    assert saved["environment"]["cpu"] == "test ISA" and {"torch", "python", "threads", "cpus"} <= set(saved["environment"])
    with pytest.raises(SystemExit, match="other settings"):
        protocol.load_store({"rows": 80}, path)
