"""Bad input is refused before any weights are read, in one line that names the problem and the fix.

One test per kind of bad input (issue 12): each runs the command in-process
(``sink_modifier.cli.main``), expects exit code 2 and ``sink-modifier CMD: error: ...``,
checks that the option the message names exists in that command's parser, that nothing was
written (no output, no ``.partial`` sibling), and that no model was loaded (a counting spy on
``ModelFamily.load_model``, the one place weights are read, and on ``load_pretrained``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import LlamaForCausalLM

from sink_modifier.cli import build_parser, main
from tests.conftest import REPO, tiny_llama_config, word_tokenizer

RECIPE = str(REPO / "recipes" / "sink_wanda_50.yaml")


# -- helpers ------------------------------------------------------------------------------------
@pytest.fixture
def loads(monkeypatch) -> list[str]:
    """Every model load attempted during the test (weights read through the family, or load_pretrained)."""
    import sink_modifier.families as families
    from sink_modifier.families import ModelFamily, loading

    seen: list[str] = []
    original_model, original_pretrained = ModelFamily.load_model, loading.load_pretrained

    def load_model(self, folder, *args, **kwargs):
        seen.append(f"load_model {folder}")
        return original_model(self, folder, *args, **kwargs)

    def load_pretrained(path, *args, **kwargs):
        seen.append(f"load_pretrained {path}")
        return original_pretrained(path, *args, **kwargs)

    monkeypatch.setattr(ModelFamily, "load_model", load_model)
    monkeypatch.setattr(loading, "load_pretrained", load_pretrained)
    monkeypatch.setattr(families, "load_pretrained", load_pretrained)
    return seen


def refused(capsys, argv: list[str]) -> str:
    """Run the command; it must exit 2 with one ``sink-modifier CMD: error:`` line; return that line."""
    capsys.readouterr()
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("sink-modifier ")]
    assert len(lines) == 1 and lines[0].startswith(f"sink-modifier {argv[0]}: error: "), captured.err
    assert captured.out == ""
    return lines[0]


def has_option(command: str, option: str) -> bool:
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return option in sub._option_string_actions


def nothing_written(output: Path) -> bool:
    """No output, and no temporary sibling of it."""
    siblings = list(output.parent.glob(f".{output.name}.*")) if output.parent.exists() else []
    return not output.exists() and not siblings


def prune_args(model, data, output, *extra) -> list[str]:
    return ["prune", "--model", str(model), "--recipe", RECIPE, "--data", str(data), "--output", str(output),
            "--num-samples", "2", "--seq-len", "16", *extra]


# -- 1. checked in order, before the load ------------------------------------------------------------
def test_causal_model_with_noise_timesteps_is_refused_from_config_alone(tmp_path, text_file, tiny_llama_dir,
                                                                        capsys, loads):
    out = tmp_path / "o"
    line = refused(capsys, prune_args(tiny_llama_dir, text_file, out, "--family", "causal", "--timesteps", "0.5"))
    assert "causal model" in line and "--timesteps" in line and "--family" in line
    assert has_option("prune", "--timesteps") and has_option("prune", "--family")
    assert nothing_written(out) and loads == []

    # the order: output before recipe before model folder before data
    (tmp_path / "taken").mkdir()
    broken_recipe = tmp_path / "r.yaml"
    broken_recipe.write_text("")
    argv = ["prune", "--model", str(tmp_path / "no-model"), "--recipe", str(broken_recipe), "--data",
            str(tmp_path / "no.txt"), "--output"]
    assert "already exists" in refused(capsys, argv + [str(tmp_path / "taken")])
    assert "defines no modifiers" in refused(capsys, argv + [str(out)])
    argv[4] = RECIPE
    assert "no-model does not exist" in refused(capsys, argv + [str(out)])
    argv[2] = str(tiny_llama_dir)
    assert "document file not found" in refused(capsys, argv + [str(out)])
    assert nothing_written(out) and loads == []


# -- 2. the output path ----------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["inside-a-file", "proc", "onnx-inside-a-file", "analyze-inside-a-file"])
def test_unwritable_output_is_refused_first(tmp_path, text_file, tiny_llama_dir, capsys, loads, where):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file")
    if where == "proc":
        if not Path("/proc").is_dir():
            pytest.skip("no /proc here")
        out = Path("/proc/sink-modifier-out")
    else:
        out = blocker / ("model.onnx" if where.startswith("onnx") else "out")
    if where.startswith("onnx"):
        argv = ["export-onnx", "--model", str(tiny_llama_dir), "--output", str(out)]
    elif where.startswith("analyze"):
        argv = ["analyze", "--model", str(tiny_llama_dir), "--data", str(text_file), "--output", str(out)]
    else:
        argv = prune_args(tiny_llama_dir, text_file, out)
    line = refused(capsys, argv)
    assert f"cannot write --output {out}" in line and "pass an --output path" in line
    assert ("is a file, not a folder" in line) if where != "proc" else ("nothing can be created in /proc" in line)
    assert ".partial" not in line and has_option(argv[0], "--output")
    assert loads == [] and blocker.read_text() == "a file"


def test_missing_parents_are_still_created_and_removed_again_on_failure(tmp_path):
    from sink_modifier.export import write_atomically

    out = tmp_path / "fresh" / "outputs" / "ckpt"
    assert write_atomically(out, lambda folder: (folder / "w").write_text("x")) == out.resolve()
    assert (out / "w").read_text() == "x"

    def fail(folder):
        raise ValueError("bad input found while writing")

    with pytest.raises(ValueError):
        write_atomically(tmp_path / "new" / "deeper" / "ckpt", fail)
    assert not (tmp_path / "new").exists()


# -- 3. temporary folders of killed writers; Ctrl-C leaves nothing -------------------------------------
def test_a_killed_writers_temp_folder_is_removed_and_a_live_ones_reported(tmp_path):
    from loguru import logger

    from sink_modifier.export import write_atomically
    from sink_modifier.export.leftovers import temp_prefix

    writer = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(writer.stdout)  # that process has exited: a writer killed mid-save
    dead = tmp_path / f"{temp_prefix('ckpt', pid=dead_pid)}abcd1234"
    live = tmp_path / f"{temp_prefix('ckpt', pid=os.getpid())}efgh5678"  # a run still writing
    for folder in (dead, live):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half a checkpoint")

    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING", format="{message}")
    try:
        write_atomically(tmp_path / "ckpt", lambda folder: (folder / "w").write_text("x"))
    finally:
        logger.remove(sink)
    assert not dead.exists() and live.exists() and (tmp_path / "ckpt" / "w").exists()
    assert any(f"removed {dead}" in m and f"pid {dead_pid} is gone" in m for m in messages), messages
    assert any(f"left alone {live}" in m and "still running" in m for m in messages), messages
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".ckpt.")] == [live.name]
    # this process's own temporary name carries its pid
    assert temp_prefix("ckpt").startswith(f".ckpt.partial-{os.getpid()}@")


@pytest.mark.parametrize("when", ["writing", "moving-the-old-output-aside", "renaming-into-place"])
def test_ctrl_c_at_any_step_of_a_save_leaves_the_disk_as_it_was(tmp_path, monkeypatch, when):
    from sink_modifier.export import atomic, write_atomically

    out = tmp_path / "parent" / "ckpt"
    out.mkdir(parents=True)
    (out / "old.txt").write_text("previous checkpoint")
    (out / "sink_modifier.json").write_text("{}")  # an output of ours: --overwrite may replace it
    renames = {"moving-the-old-output-aside": 1, "renaming-into-place": 2}.get(when)
    original_rename, original_no_replace = Path.rename, atomic._rename_no_replace
    calls = []

    def counted(original):
        def rename(source, target):
            calls.append(source)
            if len(calls) == renames:
                raise KeyboardInterrupt
            return original(source, target)
        return rename

    # moving aside is a plain rename; the rename into place one that never replaces
    monkeypatch.setattr(Path, "rename", counted(original_rename))
    monkeypatch.setattr(atomic, "_rename_no_replace", counted(original_no_replace))

    def write(folder):
        (folder / "new.txt").write_text("new")
        if when == "writing":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(out, write, metadata={"a": 1}, overwrite=True)
    assert sorted(p.name for p in out.parent.iterdir()) == ["ckpt"]
    assert sorted(p.name for p in out.iterdir()) == ["old.txt", "sink_modifier.json"]
    assert (out / "old.txt").read_text() == "previous checkpoint"

    # and a fresh target: nothing at all, not even the parent folders the write created
    fresh = tmp_path / "made" / "ckpt"
    calls.clear()
    renames = None if when == "writing" else 1  # no old output: the first rename is the one into place
    with pytest.raises(KeyboardInterrupt):
        write_atomically(fresh, write)
    assert not (tmp_path / "made").exists()


# -- 4. recipes --------------------------------------------------------------------------------------
RECIPES = {
    "empty": ("", ["defines no modifiers", "_stage", "_modifiers", "sparsity_stage: {sparsity_modifiers:"]),
    "no-suffix": ("sparsity:\n  modifiers:\n    SinkAwareWandaPruningModifier:\n      sparsity: 0.5\n",
                  ["would skip sparsity", "defines no modifiers", "ending in _stage"]),
    "quantization-first": (
        "quant_stage:\n  quant_modifiers:\n    QuantizationModifier:\n      targets: [Linear]\n      scheme: W8A8\n"
        "sparsity_stage:\n  sparsity_modifiers:\n    SinkAwareWandaPruningModifier:\n      sparsity: 0.5\n",
        ["stages run in file order: quant_stage, sparsity_stage", "quantizing before pruning",
         "put them as: sparsity_stage, quant_stage"]),
    "malformed": ("sparsity_stage:\n  sparsity_modifiers: [1,\n    b: 2\n", [":4:1: ", "not valid YAML"]),
    "nan-field": ("sparsity_stage:\n  sparsity_modifiers:\n    SinkAwareWandaPruningModifier:\n"
                  "      sparsity: 0.5\n      sink_std: .nan\n",
                  [":5:7: SinkAwareWandaPruningModifier in sparsity_stage.sparsity_modifiers: sink_std:", "nan",
                   "fix it in the recipe"]),
}


@pytest.mark.parametrize("name", list(RECIPES))
def test_a_recipe_that_would_not_run_as_written_is_one_line(tmp_path, text_file, tiny_llama_dir, capsys, loads,
                                                             name):
    text, expected = RECIPES[name]
    recipe = tmp_path / f"{name}.yaml"
    recipe.write_text(text)
    out = tmp_path / "o"
    argv = prune_args(tiny_llama_dir, text_file, out)
    argv[argv.index("--recipe") + 1] = str(recipe)
    line = refused(capsys, argv)
    for part in expected:
        assert part in line, (part, line)
    assert str(recipe) in line and "<unicode string>" not in line and "Traceback" not in line
    assert nothing_written(out) and loads == []


# -- 5. non-finite numbers ---------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["generate", "--model", "m", "--prompt", "p", "--temperature", "inf"],
    ["verify", "d", "--tolerance", "nan"],
    ["export-onnx", "--model", "m", "--output", "o", "--atol", "nan"],
    ["analyze", "--model", "m", "--data", "d", "--output", "o", "--sink-std", "nan"],
])
def test_non_finite_numbers_are_refused_by_the_parser(capsys, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "finite number" in capsys.readouterr().err


def test_no_invalid_json_is_ever_written(tmp_path):
    from sink_modifier.export.atomic import write_atomically, write_json_atomically

    for pretty in (True, False):
        with pytest.raises(ValueError, match=r"sparsity\.overall is nan, which JSON cannot hold"):
            write_json_atomically(tmp_path / "a.json", {"sparsity": {"overall": math.nan}}, pretty=pretty)
    with pytest.raises(ValueError, match=r"per_layer\.1 is inf"):
        write_atomically(tmp_path / "ckpt", lambda folder: None, metadata={"per_layer": [0.5, math.inf]})
    assert list(tmp_path.iterdir()) == []


# -- 6. text that is not text, or too little of it -------------------------------------------------------
@pytest.mark.parametrize("kind", ["binary.txt", "binary.txt.gz", "short"])
def test_bad_or_short_text_is_named_with_the_fix(tmp_path, text_file, tiny_llama_dir, capsys, loads, kind):
    import gzip

    body = b"w5 w6 w7\n\n" * 500 + b"\xbe\xef w8\n"
    data = tmp_path / kind
    if kind == "binary.txt":
        data.write_bytes(body)
    elif kind == "binary.txt.gz":
        data.write_bytes(gzip.compress(body))
    else:
        data = text_file
    out = tmp_path / "o"
    line = refused(capsys, prune_args(tiny_llama_dir, data, out, *(["--max-chars", "40"] if kind == "short" else [])))
    if kind == "short":
        assert "not enough for one window of 16 tokens" in line and "--max-chars" in line and "--seq-len" in line
        assert has_option("prune", "--max-chars") and has_option("eval", "--max-chars")
    else:
        where = "of the decompressed text" if kind.endswith(".gz") else "of the file"
        assert f"{data} is not UTF-8 text: byte 0xbe at offset {len(body) - 6} {where}" in line
        assert "--data" in line and "codec" not in line
    assert nothing_written(out) and loads == []


# -- 7. no mask token --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def maskless_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("maskless")
    LlamaForCausalLM(tiny_llama_config(mask_token_id=None)).save_pretrained(folder)
    tokenizer = word_tokenizer()
    tokenizer.mask_token = None
    tokenizer.save_pretrained(folder)
    return folder


def test_missing_mask_token_names_mask_token_id(tmp_path, text_file, maskless_dir, capsys, loads):
    out = tmp_path / "o"
    line = refused(capsys, prune_args(maskless_dir, text_file, out))
    assert "no mask token" in line and "--mask-token-id N" in line and "mask_token_id=..." not in line
    for command in ("prune", "eval", "analyze", "generate", "export-onnx"):
        assert has_option(command, "--mask-token-id"), command
    # with the option the mask check passes: the next check (too little text) is what refuses now
    short = tmp_path / "short.txt"
    short.write_text("w5 w6 w7\n")
    line = refused(capsys, ["eval", "--model", str(maskless_dir), "--data", str(short), "--seq-len", "16",
                            "--mask-token-id", "2"])
    assert "not enough for one window" in line
    assert "outside the model's vocabulary" in refused(capsys, prune_args(maskless_dir, text_file, out,
                                                                          "--mask-token-id", "64"))
    assert nothing_written(out) and loads == []


# -- 8. the folder's own code ----------------------------------------------------------------------------
def _with_auto_map(source: Path, target: Path, **config_changes) -> Path:
    shutil.copytree(source, target)
    config = json.loads((target / "config.json").read_text())
    config.update(auto_map={"AutoModelForCausalLM": "modeling_mine.MyLM"}, **config_changes)
    (target / "config.json").write_text(json.dumps(config))
    (target / "modeling_mine.py").write_text("raise SystemExit('the folder code ran')\n")
    return target


def test_custom_code_is_refused_naming_trust_remote_code(tmp_path, tiny_llama_dir, text_file, capsys, loads):
    folder = _with_auto_map(tiny_llama_dir, tmp_path / "custom", model_type="my_lm")
    line = refused(capsys, ["eval", "--model", str(folder), "--data", str(text_file)])
    assert "--trust-remote-code" in line and "trust_remote_code=True in Python" in line
    assert "my_lm" in line and "modeling_mine.MyLM" in line and "hf.co" not in line
    assert has_option("eval", "--trust-remote-code") and loads == []


def test_custom_code_beside_a_builtin_model_type_is_ignored_out_loud(tmp_path, tiny_llama_dir):
    from loguru import logger

    from sink_modifier.families import load_pretrained

    folder = _with_auto_map(tiny_llama_dir, tmp_path / "custom")  # model_type stays "llama"
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING", format="{message}")
    try:
        loaded = load_pretrained(folder)
    finally:
        logger.remove(sink)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"
    assert any("AutoModelForCausalLM: modeling_mine.MyLM" in m and "LlamaForCausalLM" in m
               and "--trust-remote-code" in m for m in messages), messages


# -- 9. broken weight files ----------------------------------------------------------------------------
def test_truncated_weights_are_one_line_naming_the_file(tmp_path, tiny_llama_dir, text_file, capsys, loads):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_llama_dir, folder)
    weights = folder / "model.safetensors"
    os.truncate(weights, weights.stat().st_size // 2)
    for argv in (["eval", "--model", str(folder), "--data", str(text_file)],
                 prune_args(folder, text_file, tmp_path / "o"),
                 ["generate", "--model", str(folder), "--prompt", "w5"]):
        line = refused(capsys, argv)
        assert f"{weights} is truncated or corrupted" in line and "re-save or re-download the checkpoint" in line
    assert loads == [] and nothing_written(tmp_path / "o")


def test_weights_that_pass_the_header_check_but_fail_to_load_are_one_value_error(tmp_path, tiny_llama_dir):
    import struct

    from sink_modifier.families import load_pretrained

    folder = tmp_path / "odd"
    shutil.copytree(tiny_llama_dir, folder)
    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    name = next(k for k in header if k != "__metadata__")
    header[name]["dtype"] = "Q9"  # no such dtype: the sizes still add up, the loader refuses it
    text = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    weights.write_bytes(raw[:8] + text + raw[8 + length:])
    with pytest.raises(ValueError, match=r"cannot load the weights of .*odd.*re-save or re-download the checkpoint"):
        load_pretrained(folder)


# -- a modifier option the model's calibration rows cannot serve (issue 13's options) -------------
@pytest.mark.parametrize("option, extra, expected", [
    ("masked_position_weight: 0.8", ["--family", "causal"], "leave masked_position_weight unset"),
    ("timestep_weighting: elbo", ["--timesteps", "0,0.5"], "t = 0"),
])
def test_a_diffusion_option_on_clean_rows_is_refused_before_loading(tmp_path, text_file, tiny_llama_dir, capsys,
                                                                    loads, option, extra, expected):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(Path(RECIPE).read_text().replace("statistic: rms", f"statistic: rms\n      {option}"))
    out = tmp_path / "o"
    argv = prune_args(tiny_llama_dir, text_file, out, *extra)  # clean rows: a causal model, or t = 0
    argv[argv.index("--recipe") + 1] = str(recipe)
    line = refused(capsys, argv)
    assert expected in line, line
    assert nothing_written(out) and loads == []
