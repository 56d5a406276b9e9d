"""Sink-dynamics diagnostics: per-layer mass, trajectory analysis (diffusion and causal), token kinds, CLI."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from transformers import LlamaForCausalLM

from sink_modifier import diagnostics
from sink_modifier.commands.analyze import ANALYSIS_FILE, format_comparison
from sink_modifier.commands.analyze import add_parser as add_analyze_parser
from sink_modifier.commands.analyze import run as run_analyze
from sink_modifier.data import load_documents, token_windows
from sink_modifier.diagnostics.figures import STEP_AXIS, draw_heatmap, draw_ratio
from sink_modifier.diagnostics.window_stats import _masked_position_stability
from sink_modifier.families import FAMILIES, load_pretrained, load_tokenizer
from sink_modifier.process import MaskTokenProcess, noise_windows
from sink_modifier.sinks import global_attention_mass
from sink_modifier.sinks.per_layer import per_layer_attention_mass
from sink_modifier.sinks.stability import dominant_sink_movement, mask_stability
from tests.conftest import HELDOUT, MASK_ID, TINY_AR, TINY_DLM, _save, requires_shared, tiny_llama_config

LAYERS, HEADS = 2, 4  # tiny_llama_config
BIDIRECTIONAL, CAUSAL = FAMILIES["bidirectional"], FAMILIES["causal"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def load_model(path, dtype):
    return load_pretrained(path, dtype=dtype).model


@pytest.fixture(scope="module")
def causal_llama_dir(tmp_path_factory):
    torch.manual_seed(1)
    return _save(LlamaForCausalLM(tiny_llama_config(is_causal=True)), tmp_path_factory.mktemp("causal_llama"))


def windows_for(path, text_file, seq_len=32, n=3, seed=0):
    return token_windows(load_documents(text_file), load_tokenizer(path), seq_len, n, seed=seed)


def as_tensor(nested):
    return torch.tensor([[float("nan") if v is None else v for v in row] for row in nested])


# -- per-layer mass ------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_per_layer_mass_sums_to_global_mass(tiny_llama_dir, attn):
    model = load_model(tiny_llama_dir, "float32")
    model.set_attn_implementation(attn)
    ids = torch.randint(4, 64, (3, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[2, 15:] = 0  # one padded row
    per_layer = per_layer_attention_mass(model, ids, mask)
    assert per_layer.shape == (LAYERS, 3, 20) and per_layer.dtype == torch.float32
    torch.testing.assert_close(per_layer.sum(0), global_attention_mass(model, ids, mask))
    # every query row of every head sums to one: each layer's mean mass over real keys is the head count
    torch.testing.assert_close(per_layer[:, :2].mean(-1), torch.full((LAYERS, 2), float(HEADS)))
    torch.testing.assert_close(per_layer[:, 2, :15].sum(-1), torch.full((LAYERS,), 15.0 * HEADS))
    assert torch.all(per_layer[:, 2, 15:] == 0)
    assert not torch.allclose(per_layer[0], per_layer[1])  # layers really are kept apart


def test_per_layer_mass_and_analysis_on_an_sdpa_only_model(sdpa_lm_dir, text_file):
    model = load_model(sdpa_lm_dir, "float32")
    ids = torch.randint(4, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    per_layer = per_layer_attention_mass(model, ids)
    assert per_layer.shape == (model.config.n_layers, 2, 16)
    torch.testing.assert_close(per_layer.sum(0), global_attention_mass(model, ids))
    torch.testing.assert_close(per_layer.mean(-1), torch.full((model.config.n_layers, 2), float(model.config.n_heads)))
    # a remote-code-style DLM whose config lacks is_causal: the caller names its family
    result = diagnostics.analyze_sink_dynamics(model, load_tokenizer(sdpa_lm_dir), windows_for(sdpa_lm_dir, text_file, 16, 2),
                                   BIDIRECTIONAL, diagnostics.SinkDynamicsOptions(timesteps=(0.0, 1.0), progress=False))
    assert result["kind"] == "diffusion" and result["num_layers"] == model.config.n_layers
    # the all-mask canvas: its strongest key is a mask token, but the mass is flat: no sink
    assert [s["steps"][1]["top"][0]["kind"] for s in result["samples"]] == ["mask", "mask"]
    assert [s["steps"][1]["kind"] for s in result["samples"]] == [diagnostics.NO_SINK, diagnostics.NO_SINK]


# -- token kinds and steps -----------------------------------------------------------------
def test_sink_token_kinds_and_their_precedence():
    ids = dict(mask_token_id=2, eos_token_id=1, bos_token_id=5, pad_token_id=0)
    assert diagnostics.classify_sink_token(2, 7, **ids, text="<|mask|>") == "mask"
    assert diagnostics.classify_sink_token(2, 0, **ids, text=".") == "mask"  # special ids beat position and text
    assert diagnostics.classify_sink_token(1, 3, **ids, text="<|eos|>") == "eos"
    assert diagnostics.classify_sink_token(1, 3, **{**ids, "pad_token_id": 1}) == "eos"  # eos == pad id: eos wins
    assert diagnostics.classify_sink_token(5, 0, **ids) == "bos"
    assert diagnostics.classify_sink_token(0, 9, **ids) == "pad"
    assert diagnostics.classify_sink_token(40, 12, **ids, text=" ,") == "punctuation"
    assert diagnostics.classify_sink_token(40, 0, **ids, text="...") == "punctuation"  # punctuation beats first_position
    assert diagnostics.classify_sink_token(40, 0, **ids, text=" The") == "first_position"
    assert diagnostics.classify_sink_token(40, 4, **ids, text=" The") == "other"
    assert diagnostics.classify_sink_token(40, 4, **ids, text="\n") == "other"
    assert diagnostics.classify_sink_token(2, 4, text="x") == "other"  # unknown special ids never match
    assert [diagnostics.is_punctuation(t) for t in (".", " —", "?!", "'\"", "$", "\n", " a.", "", None, "\ufffd")] == [
        True, True, True, True, True, False, False, False, False, False]


def test_prefix_lengths():
    assert diagnostics.prefix_lengths(256, 11) == [23, 47, 70, 93, 116, 140, 163, 186, 209, 233, 256]
    assert diagnostics.prefix_lengths(10, 4) == [3, 5, 8, 10]  # 2.5 and 7.5 round up
    assert diagnostics.prefix_lengths(3, 5) == [1, 1, 2, 2, 3]
    with pytest.raises(ValueError):
        diagnostics.prefix_lengths(10, 0)


def test_masked_position_stability_matches_mask_stability_when_all_steps_are_valid():
    soft = torch.rand(6, 9, generator=torch.Generator().manual_seed(0))
    mean, std, present = _masked_position_stability(soft, torch.ones(6, 9, dtype=torch.bool))
    ref_mean, ref_std = mask_stability(soft)
    torch.testing.assert_close(mean, ref_mean)
    torch.testing.assert_close(std, ref_std)
    assert torch.all(present == 6)
    valid = torch.ones(6, 9, dtype=torch.bool)
    valid[:3, 4] = False  # position 4 is only present at the last 3 steps
    mean, std, present = _masked_position_stability(soft, valid)
    assert present[4] == 3
    torch.testing.assert_close(mean[4], soft[3:, 4].mean())
    torch.testing.assert_close(std[4], soft[3:, 4].std(unbiased=False))


# -- trajectory analysis ---------------------------------------------------------------------
def test_trajectory_of_a_bidirectional_model(tiny_llama_dir, text_file):
    model, tok = load_model(tiny_llama_dir, "float32"), load_tokenizer(tiny_llama_dir)
    windows = windows_for(tiny_llama_dir, text_file)
    # sink_floor=1: every step counts as a sink (this random model's mass is flat: max/mean ~1.00x)
    result = diagnostics.analyze_sink_dynamics(model, tok, windows, BIDIRECTIONAL, diagnostics.SinkDynamicsOptions(
        timesteps=diagnostics.TRAJECTORY_TIMESTEPS, seed=3, top_k=2, progress=False, batch_size=5, store_layer_samples=1,
        sink_floor=1.0))
    json.dumps(result, allow_nan=False)  # strict JSON
    n, k, t = 3, len(diagnostics.TRAJECTORY_TIMESTEPS), 32
    assert result["kind"] == "diffusion" and result["num_windows"] == n and result["seq_len"] == t
    assert result["timesteps"] == list(diagnostics.TRAJECTORY_TIMESTEPS) and result["seed"] == 3
    assert result["num_layers"] == LAYERS and result["special_token_ids"]["mask"] == MASK_ID
    assert [s["prefix_len"] for s in result["steps"]] == [t] * k
    assert result["steps"][0]["mask_rate"] == 0.0 and result["steps"][-1]["mask_rate"] == 1.0

    noised, _, _ = noise_windows(windows, diagnostics.TRAJECTORY_TIMESTEPS, MaskTokenProcess(MASK_ID), 3)
    masses = []
    for s, sample in enumerate(result["samples"]):
        mass = as_tensor(sample["mass"])
        assert mass.shape == (k, t)
        torch.testing.assert_close(mass.mean(-1), torch.full((k,), float(LAYERS * HEADS)), atol=2e-3, rtol=0)
        # the stored mass is the model's global mass of the noised rows of this window
        expected = global_attention_mass(model, noised[s * k:(s + 1) * k])
        masses.append(expected)
        torch.testing.assert_close(mass, expected, atol=1e-3, rtol=0)
        assert sample["dominant_positions"] == expected.argmax(-1).tolist()
        assert sample["movement"] == pytest.approx({**dominant_sink_movement(expected), "steps": k}, abs=1e-4)
        assert sample["movement_all_steps"] == sample["movement"]
        for j, step in enumerate(sample["steps"]):
            assert len(step["top"]) == 2 and step["top"][0]["position"] == sample["dominant_positions"][j]
            assert step["top"][0]["ratio"] >= step["top"][1]["ratio"] >= 1.0
            assert step["top"][0]["token_id"] == int(noised[s * k + j, step["top"][0]["position"]])
        assert sample["steps"][-1]["kind"] == "mask"  # t = 1: every token is the mask token
        assert sample["steps"][0]["kind"] != "mask"  # t = 0: the clean window has none
        assert ("layer_mass" in sample) == (s == 0)
        stab = sample["mask_stability"]
        assert 0 <= stab["stable"] + stab["unstable"] <= t and stab["sink_positions"] >= 1
    layer_mass = torch.tensor(result["samples"][0]["layer_mass"])
    assert layer_mass.shape == (LAYERS, k, t)
    torch.testing.assert_close(layer_mass.sum(0), as_tensor(result["samples"][0]["mass"]), atol=3e-3, rtol=0)

    agg = result["aggregate"]
    assert sum(agg["kinds"].values()) == n * k and agg["kinds"]["mask"] >= n
    assert [sum(c.values()) for c in agg["kinds_per_step"]] == [n] * k
    stds = [s["movement"]["position_std"] for s in result["samples"]]
    assert agg["position_std"]["mean"] == pytest.approx(sum(stds) / n)
    assert agg["ratio_per_step"][-1]["mean"] < agg["ratio_per_step"][0]["mean"]  # all-mask canvas: no sink
    assert len(agg["per_layer"]) == LAYERS
    # deterministic for a seed, whatever the batch size
    again = diagnostics.analyze_sink_dynamics(model, tok, windows, BIDIRECTIONAL, diagnostics.SinkDynamicsOptions(
        timesteps=diagnostics.TRAJECTORY_TIMESTEPS, seed=3, top_k=2, progress=False, batch_size=7, store_layer_samples=1,
        sink_floor=1.0))
    for a, b in zip(again["samples"], result["samples"]):
        torch.testing.assert_close(as_tensor(a["mass"]), as_tensor(b["mass"]), atol=2e-3, rtol=0)
        assert a["dominant_positions"] == b["dominant_positions"]

    # the default floor: this flat mass has no sink at any step, so nothing moves and nothing is counted
    flat = diagnostics.apply_sink_floor(result, diagnostics.SINK_FLOOR)
    json.dumps(flat, allow_nan=False)
    assert (result["sink_floor"], flat["sink_floor"]) == (1.0, diagnostics.SINK_FLOOR)  # a copy: result is unchanged
    assert all(step["sink"] for sample in result["samples"] for step in sample["steps"])
    for sample, before in zip(flat["samples"], result["samples"]):
        assert all(step["kind"] == diagnostics.NO_SINK and not step["sink"] for step in sample["steps"])
        assert sample["dominant_positions"] == [None] * k
        assert sample["movement"] == {"position_std": None, "stay_fraction": None, "distinct_positions": 0, "steps": 0}
        assert sample["movement_all_steps"] == before["movement_all_steps"]  # the argmax, for comparison
    agg = flat["aggregate"]
    assert agg["kinds"] == {**{kind: 0 for kind in agg["kinds"]}, diagnostics.NO_SINK: n * k}
    assert agg["position0_share"] is None and agg["top_tokens"] == []
    assert agg["position_std"]["mean"] is None and agg["stay_fraction"]["mean"] is None
    assert agg["distinct_positions"]["mean"] == 0 and agg["sink_steps"]["mean"] == 0
    assert [r["sink_share"] for r in agg["ratio_per_step"]] == [0.0] * k
    assert "n/a" in format_comparison([flat]) and f"{diagnostics.NO_SINK} 100%" in format_comparison([flat])

    # a floor inside this model's range of ratios: only the steps at or above it have a sink
    ratios = sorted(step["ratio"] for sample in result["samples"] for step in sample["steps"])
    floor = ratios[len(ratios) // 2]
    split = diagnostics.apply_sink_floor(result, floor)
    for sample, mass in zip(split["samples"], masses):
        sink = torch.tensor([step["ratio"] >= floor for step in sample["steps"]])
        assert [step["sink"] for step in sample["steps"]] == sink.tolist()
        assert [step["kind"] == diagnostics.NO_SINK for step in sample["steps"]] == (~sink).tolist()
        assert sample["dominant_positions"] == [p if ok else None for p, ok in
                                                zip(mass.argmax(-1).tolist(), sink.tolist())]
        if sink.sum() > 1:  # counted over the steps with a sink only (stay: consecutive ones)
            assert sample["movement"] == pytest.approx(
                {**dominant_sink_movement(mass[sink]), "steps": int(sink.sum())}, abs=1e-4)
    sinkless = sum(not step["sink"] for sample in split["samples"] for step in sample["steps"])
    assert 0 < sinkless < n * k and split["aggregate"]["kinds"][diagnostics.NO_SINK] == sinkless
    # the heatmap circles exactly the steps with a sink and labels the others
    figure = draw_heatmap(split, "split")
    try:
        for ax, sample in zip(figure.axes, split["samples"]):  # one panel per stored window, then the colour bar
            circled = [tuple(xy) for xy in ax.collections[0].get_offsets().tolist()]
            assert circled == [(p, j) for j, p in enumerate(sample["dominant_positions"]) if p is not None]
            ticks = [t.get_text() for t in ax.get_yticklabels()]
            assert [diagnostics.NO_SINK in t for t in ticks] == [p is None for p in sample["dominant_positions"]]
    finally:
        import matplotlib.pyplot as plt

        plt.close(figure)
    with pytest.raises(ValueError, match="sink_floor must be a finite number >= 1"):
        diagnostics.apply_sink_floor(result, 0.5)
    with pytest.raises(ValueError, match="sink_floor must be a finite number >= 1"):
        diagnostics.SinkDynamicsOptions(sink_floor=float("nan"))


def test_trajectory_noises_through_the_family_forward_process(tiny_llama_dir, text_file):
    class KeepsFirstToken(type(BIDIRECTIONAL)):
        def maskable(self, clean_ids, tokenizer, config):
            maskable = torch.ones_like(clean_ids, dtype=torch.bool)
            maskable[:, 0] = False
            return maskable

    model, tok = load_model(tiny_llama_dir, "float32"), load_tokenizer(tiny_llama_dir)
    windows = windows_for(tiny_llama_dir, text_file, n=2)
    result = diagnostics.analyze_sink_dynamics(model, tok, windows, KeepsFirstToken(), diagnostics.SinkDynamicsOptions(
        timesteps=(1.0,), progress=False, top_k=32))
    for s, sample in enumerate(result["samples"]):
        tokens = {key["position"]: key["token_id"] for key in sample["steps"][0]["top"]}
        assert tokens[0] == int(windows[s, 0]) and all(tokens[p] == MASK_ID for p in range(1, 32))
    assert result["steps"][0]["mask_rate"] == pytest.approx(31 / 32)
    with pytest.raises(ValueError, match="top_k must be a positive int"):
        diagnostics.SinkDynamicsOptions(top_k=0)


def test_trajectory_of_a_causal_model_uses_growing_prefixes(causal_llama_dir, text_file):
    model, tok = load_model(causal_llama_dir, "float32"), load_tokenizer(causal_llama_dir)
    windows = windows_for(causal_llama_dir, text_file, n=2)
    result = diagnostics.analyze_sink_dynamics(model, tok, windows, CAUSAL, diagnostics.SinkDynamicsOptions(
        timesteps=(0.25, 0.5, 0.75, 1.0), progress=False, store_mass_samples=1))
    json.dumps(result, allow_nan=False)
    assert result["kind"] == "causal"
    assert [s["prefix_len"] for s in result["steps"]] == [8, 16, 24, 32]
    assert all(s["timestep"] is None for s in result["steps"])
    assert "mass" in result["samples"][0] and "mass" not in result["samples"][1]
    mass = result["samples"][0]["mass"]
    for j, length in enumerate([8, 16, 24, 32]):
        assert all(v is not None for v in mass[j][:length]) and all(v is None for v in mass[j][length:])
        expected = global_attention_mass(model, windows[:1, :length])[0]
        torch.testing.assert_close(torch.tensor(mass[j][:length]), expected, atol=1e-3, rtol=0)
    for sample in result["samples"]:
        assert all(p < length for p, length in zip(sample["dominant_positions"], [8, 16, 24, 32]))
        assert all(step["kind"] != "mask" for step in sample["steps"])
    assert sum(result["aggregate"]["kinds"].values()) == 2 * 4


# -- the published facts on the shipped models (cheap: a few rows) -----------------------------
@requires_shared(TINY_DLM)
@requires_shared(TINY_AR)
def test_shipped_models_show_the_published_sink_strengths():
    tok = load_tokenizer(TINY_DLM)
    windows = token_windows(load_documents(HELDOUT, max_chars=200_000), tok, 256, 2, seed=0)
    options = dict(progress=False, store_mass_samples=0, store_layer_samples=0)
    dlm = diagnostics.analyze_sink_dynamics(load_model(TINY_DLM, "float32"), tok, windows, BIDIRECTIONAL,
                                diagnostics.SinkDynamicsOptions(timesteps=(0.0, 0.9, 1.0), **options))
    ar = diagnostics.analyze_sink_dynamics(load_model(TINY_AR, "float32"), tok, windows, CAUSAL,
                               diagnostics.SinkDynamicsOptions(timesteps=(0.0,), **options))
    clean, noisy, all_mask = (r["mean"] for r in dlm["aggregate"]["ratio_per_step"])
    # the sink floor sits between the all-mask canvas (flat mass, 1.04x) and every step with real tokens
    for sample in dlm["samples"]:
        assert [step["sink"] for step in sample["steps"]] == [True, True, False]
        assert sample["steps"][0]["ratio"] >= diagnostics.SINK_FLOOR > 1.1 > sample["steps"][2]["ratio"]
        assert sample["steps"][2]["kind"] == diagnostics.NO_SINK and sample["dominant_positions"][2] is None
        assert sample["movement"]["steps"] == 2 and sample["movement"]["distinct_positions"] <= 2
    assert dlm["aggregate"]["ratio_per_step"][2]["sink_share"] == 0.0
    assert f"| 1 (1.00) | {all_mask:.2f} ± 0.00 | {diagnostics.NO_SINK} 100% |" in format_comparison([dlm])
    assert all(step["sink"] for sample in ar["samples"] for step in sample["steps"])
    # models/README: DLM 2.1x on clean text rising to 5.5x at mask ratio 0.9; AR 4.1x on clean text
    assert 1.5 < clean < 3.0 and noisy > 1.5 * clean
    assert 3.0 < ar["aggregate"]["ratio_per_step"][0]["mean"] < 5.5
    assert ar["aggregate"]["ratio_per_step"][0]["prefix_len"] == 256
    # "top key at position 0 or an <|eos|>" (or, we find, a full stop near the start)
    assert all(s["steps"][0]["kind"] in ("first_position", "eos", "punctuation") for s in ar["samples"])


# -- the CLI subcommand --------------------------------------------------------------------------
def analyze_args(*argv):
    parser = argparse.ArgumentParser(prog="sink-modifier")
    add_analyze_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["analyze", *map(str, argv)])


def test_analyze_parser_defaults_and_bad_timesteps(tmp_path):
    args = analyze_args("--model", "m", "--data", "d", "--output", tmp_path)
    assert (args.num_windows, args.seed, args.seq_len, args.compare) == (16, 0, None, None)
    assert args.timesteps == diagnostics.TRAJECTORY_TIMESTEPS and not args.trust_remote_code
    assert args.sink_floor == diagnostics.SINK_FLOOR
    assert analyze_args("--model", "m", "--data", "d", "--output", tmp_path, "--sink-floor", "2").sink_floor == 2.0
    with pytest.raises(SystemExit):
        analyze_args("--model", "m", "--data", "d", "--output", tmp_path, "--timesteps", "0.5,2")
    for bad in ("0.9", "inf", "nan", "high"):
        with pytest.raises(SystemExit):
            analyze_args("--model", "m", "--data", "d", "--output", tmp_path, "--sink-floor", bad)


def test_analyze_help_documents_the_sink_floor(capsys):
    with pytest.raises(SystemExit):
        analyze_args("--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "--sink-floor SINK_FLOOR" in text and f"(default {diagnostics.SINK_FLOOR:g}" in text and "no sink" in text


def check_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5_000, path


def test_run_analyze_with_compare_writes_json_and_figures(tiny_llama_dir, causal_llama_dir, text_file, tmp_path, capsys):
    out = tmp_path / "analysis" / "nested"
    args = analyze_args("--model", tiny_llama_dir, "--compare", causal_llama_dir, "--data", text_file,
                        "--output", out, "--num-windows", 2, "--seq-len", 16, "--timesteps", "0,0.5,1",
                        "--seed", 4, "--no-progress")
    assert run_analyze(args) == 0
    report = json.loads((out / ANALYSIS_FILE).read_text())
    dlm, ar = report["models"]
    assert (dlm["kind"], ar["kind"]) == ("diffusion", "causal")
    assert dlm["model"] == str(tiny_llama_dir) and ar["model"] == str(causal_llama_dir)
    for model in report["models"]:
        assert (model["num_windows"], model["seq_len"], model["seed"]) == (2, 16, 4)
        assert model["timesteps"] == [0.0, 0.5, 1.0] and len(model["samples"]) == 2
        assert {"position_std", "stay_fraction", "distinct_positions", "kinds", "ratio_per_step"} <= set(model["aggregate"])
    assert dlm["windows_digest"] == ar["windows_digest"]  # same tokenizer, same windows
    assert [s["prefix_len"] for s in ar["steps"]] == [5, 11, 16]
    labels = report["labels"]
    assert len(set(labels)) == 2
    names = {f"heatmap_{labels[0]}.png", f"heatmap_{labels[1]}.png", "sink_variance.png", "sink_kinds.png", "sink_ratio.png"}
    assert {p.name for p in out.iterdir()} == names | {ANALYSIS_FILE}  # no temporary files left
    for name in names:
        check_png(out / name)
    printed = capsys.readouterr().out
    assert all(label in printed for label in labels) and "stay fraction" in printed
    assert all(step["kind"] == diagnostics.NO_SINK for s in dlm["samples"] for step in s["steps"])  # random model: flat mass
    assert all(step["sink"] for s in ar["samples"] for step in s["steps"])  # causal: the first position collects
    assert "| n/a | n/a | 0.0 ± 0.0 | 0.0 ± 0.0 of 3 |" in printed  # the DLM row: nothing to move

    # sink_ratio.png: one panel per kind of trajectory, each x-axis naming its own quantity
    import matplotlib.pyplot as plt

    figure = draw_ratio(report["models"], labels)
    try:
        assert [ax.get_xlabel() for ax in figure.axes] == [STEP_AXIS["diffusion"], STEP_AXIS["causal"]]
        assert "timestep t" in STEP_AXIS["diffusion"] and "prefix fraction L / T" in STEP_AXIS["causal"]
        assert figure.axes[0].get_ylabel() == "max / mean mass of the step"
        floors = [line for line in figure.axes[0].get_lines() if list(line.get_ydata()) == [diagnostics.SINK_FLOOR] * 2]
        assert len(floors) == 1 and "sink floor" in floors[0].get_label()
    finally:
        plt.close(figure)
    figure = draw_ratio(report["models"][:1], labels[:1])
    assert [ax.get_xlabel() for ax in figure.axes] == [STEP_AXIS["diffusion"]]
    plt.close(figure)


def test_run_analyze_single_model_and_bad_output(tiny_llama_dir, text_file, tmp_path):
    out = tmp_path / "one"
    assert run_analyze(analyze_args("--model", tiny_llama_dir, "--data", text_file, "--output", out,
                                    "--num-windows", 1, "--seq-len", 12, "--timesteps", "0.2,0.8",
                                    "--no-progress", "--sink-floor", 1)) == 0
    report = json.loads((out / ANALYSIS_FILE).read_text())
    assert len(report["models"]) == 1 and len(report["models"][0]["steps"]) == 2
    assert report["models"][0]["sink_floor"] == 1.0  # --sink-floor 1: every step has a sink
    assert all(step["sink"] and step["kind"] != diagnostics.NO_SINK for step in report["models"][0]["samples"][0]["steps"])
    check_png(out / f"heatmap_{report['labels'][0]}.png")
    check_png(out / "sink_variance.png")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(FileExistsError, match="is a file, not a folder"):
        run_analyze(analyze_args("--model", tiny_llama_dir, "--data", text_file, "--output", blocker,
                                 "--num-windows", 1, "--seq-len", 12, "--no-progress"))
