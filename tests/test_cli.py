"""The CLI end to end: prune -> atomic checkpoint -> reload -> eval, and its error messages."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from sink_modifier.cli import main
from sink_modifier.commands.prune import prune_checkpoint
from sink_modifier.export import METADATA_FILE, write_atomically
from tests.conftest import CORPUS, REPO, TINY_DLM, VOCAB, _save, requires_shared, tiny_llama_config

RECIPE_50 = str(REPO / "recipes" / "sink_wanda_50.yaml")
PAPER_50 = str(REPO / "recipes" / "paper_sink_wanda_50.yaml")  # sink weighting on: the sink pass runs
# `text_file` (60 random documents over the test vocabulary) is the shared fixture in conftest.py


def block_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and "lm_head" not in n}


def test_prune_writes_a_checkpoint_that_reloads_with_identical_logits(tiny_llama_dir, text_file, tmp_path):
    out = tmp_path / "pruned"
    result = prune_checkpoint(tiny_llama_dir, RECIPE_50, text_file, out, num_samples=3, seq_len=32, seed=1)
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["sparsity"]["num_layers"] == 14
    assert all(v == 0.5 for v in meta["sparsity"]["per_layer"].values())
    assert meta["calibration"]["rows"] == 30 and meta["seed"] == 1
    assert meta["modifiers"][0]["type"] == "SinkAwareWandaPruningModifier"
    assert {"torch", "transformers", "llmcompressor"} <= set(meta["versions"])
    assert (out / "recipe.yaml").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["is_causal"] is False and not config.get("sparsity_config")

    reloaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = torch.randint(3, VOCAB, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = result.model.float()(ids).logits
        got = reloaded(ids).logits
    torch.testing.assert_close(got, expected)
    for name, module in block_linears(reloaded).items():
        assert torch.all((module.weight == 0).sum(1) == module.in_features // 2), name
    assert not list(tmp_path.glob(".pruned.partial-*"))


def test_existing_output_is_kept_unless_overwrite_of_an_output_of_ours(tiny_llama_dir, text_file, tmp_path, capsys):
    def args(out):
        return ["prune", "--model", str(tiny_llama_dir), "--recipe", RECIPE_50, "--data", str(text_file),
                "--output", str(out), "--num-samples", "2", "--seq-len", "16"]

    foreign = tmp_path / "taken"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert main(args(foreign)) == 2
    assert "already exists" in capsys.readouterr().err and (foreign / "keep.txt").exists()
    # --overwrite replaces only what this tool wrote: a user's folder is refused, naming its files
    assert main(args(foreign) + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "did not write (keep.txt;" in err and "pass another --output" in err
    assert [p.name for p in foreign.iterdir()] == ["keep.txt"] and (foreign / "keep.txt").read_text() == "mine"

    ours = tmp_path / "pruned"
    assert main(args(ours)) == 0
    first = (ours / METADATA_FILE).read_text()
    assert main(args(ours)) == 2 and "already exists" in capsys.readouterr().err
    # a run with other settings, so the replaced manifest differs whatever the clock's resolution
    rerun = [a if a != "2" else "3" for a in args(ours)]
    assert main(rerun + ["--overwrite"]) == 0
    replaced = json.loads((ours / METADATA_FILE).read_text())
    assert replaced != json.loads(first) and replaced["calibration"]["num_samples"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned", "taken"]


def test_failed_write_leaves_nothing_behind(tmp_path):
    def explode(folder):
        (folder / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomically(tmp_path / "ckpt", explode, metadata={"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_eval_json_for_diffusion_and_causal_models(tiny_llama_dir, text_file, tmp_path, capsys):
    assert main(["eval", "--model", str(tiny_llama_dir), "--data", str(text_file), "--num-windows", "3",
                 "--seq-len", "32", "--mc-samples", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "diffusion"
    assert {"nelbo", "nelbo_stderr", "masked_ce"} <= set(result)
    assert set(result["masked_ce"]) == {"0.15", "0.5", "0.9"}
    # a random model over 64 tokens is near log(64) nats
    assert 3.0 < result["masked_ce"]["0.5"] < 6.0

    causal = _save(LlamaForCausalLM(tiny_llama_config(is_causal=True)), tmp_path / "causal")
    assert main(["eval", "--model", str(causal), "--data", str(text_file), "--num-windows", "3",
                 "--seq-len", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "causal" and result["ppl"] == pytest.approx(2.718281828 ** result["ce"], rel=1e-6)


@pytest.mark.parametrize(
    "make_data,extra,message",
    [
        (lambda p: p.write_text("\n\n\n"), [], "no text documents"),
        (None, ["--seq-len", "1000"], "1000"),
        (None, ["--recipe", "missing.yaml"], "missing.yaml"),
    ],
)
def test_bad_input_is_a_clear_error(tiny_llama_dir, text_file, tmp_path, capsys, make_data, extra, message):
    data = text_file
    if make_data is not None:
        data = tmp_path / "empty.txt"
        make_data(data)
    args = ["prune", "--model", str(tiny_llama_dir), "--recipe", RECIPE_50, "--data", str(data),
            "--output", str(tmp_path / "o"), "--num-samples", "2", "--seq-len", "16"]
    code = main(args + extra)
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_diffusion_model_without_mask_token_is_refused(tmp_path, text_file, capsys):
    from tests.conftest import word_tokenizer

    model_dir = tmp_path / "nomask"
    LlamaForCausalLM(tiny_llama_config(mask_token_id=None)).save_pretrained(model_dir)
    tok = word_tokenizer()
    tok.mask_token = None
    tok.save_pretrained(model_dir)
    code = main(["prune", "--model", str(model_dir), "--recipe", RECIPE_50, "--data", str(text_file),
                 "--output", str(tmp_path / "o"), "--num-samples", "2", "--seq-len", "16"])
    assert code == 2 and "mask token" in capsys.readouterr().err


@requires_shared(TINY_DLM)
def test_recipe_on_shipped_tiny_dlm_gives_exactly_half_in_every_linear(tmp_path, capsys):
    out = tmp_path / "tiny-dlm-50"
    assert main(["prune", "--model", str(TINY_DLM), "--recipe", RECIPE_50, "--data", str(CORPUS),
                 "--output", str(out), "--num-samples", "2", "--seq-len", "128"]) == 0
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["sparsity"]["num_layers"] == 8 * 7
    assert all(v == 0.5 for v in meta["sparsity"]["per_layer"].values())
    model = AutoModelForCausalLM.from_pretrained(out)
    for name, module in block_linears(model).items():
        assert torch.all((module.weight == 0).sum(1) == module.in_features // 2), name


# -- the family chosen by the command reaches the modifiers --------------------------------------
@pytest.mark.parametrize("family, expected", [(None, "bidirectional"), ("causal", "causal")])
def test_family_option_reaches_the_sink_modifier(tiny_llama_dir, text_file, tmp_path, monkeypatch, family, expected):
    """tiny_llama is detected as bidirectional; ``--family causal`` must be the family whose sink-pass
    rules the modifier runs (and the one recorded), not a re-detection from ``model.config``."""
    from sink_modifier.families import ModelFamily

    used: list[str] = []
    original = ModelFamily.sink_pass

    def spy(self, model, token_ids, call_kwargs):
        used.append(self.name)
        return original(self, model, token_ids, call_kwargs)

    monkeypatch.setattr(ModelFamily, "sink_pass", spy)
    args = ["prune", "--model", str(tiny_llama_dir), "--recipe", PAPER_50, "--data", str(text_file),
            "--output", str(tmp_path / "o"), "--num-samples", "2", "--seq-len", "16"]
    assert main(args + (["--family", family] if family else [])) == 0
    assert used and set(used) == {expected}
    meta = json.loads((tmp_path / "o" / METADATA_FILE).read_text())
    assert meta["family"] == expected and meta["calibration"]["diffusion"] is (expected != "causal")


# -- shared argument types ------------------------------------------------------------------------
@pytest.mark.parametrize("command", ["prune", "analyze"])
@pytest.mark.parametrize("timesteps", ["1.5", "-0.1", "x", ","])
def test_timesteps_outside_zero_one_are_refused_by_every_command(command, timesteps, capsys):
    from sink_modifier.cli import build_parser

    required = {"prune": ["--recipe", "r", "--output", "o"], "analyze": ["--output", "o"]}[command]
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([command, "--model", "m", "--data", "d", *required, "--timesteps", timesteps])
    assert exit_info.value.code == 2 and "[0, 1]" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["prune", "eval", "verify", "analyze", "generate", "export-onnx"])
def test_every_model_command_takes_family(command):
    from sink_modifier.cli import build_parser
    from sink_modifier.families import DTYPES, FAMILIES

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    options = {action.dest: action for action in sub._actions}
    assert list(options["family"].choices) == list(FAMILIES)
    if "dtype" in options:
        assert sorted(options["dtype"].choices) == sorted(DTYPES)


# -- a light package import (fresh interpreters) --------------------------------------------------
def _fresh(code: str) -> str:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


HEAVY = "sorted(m for m in sys.modules if m.split('.')[0] in ('llmcompressor', 'transformers'))"


def test_help_and_families_import_no_llm_compressor():
    out = _fresh(
        "import contextlib, io, sys\n"
        "from sink_modifier.cli import main\n"
        "for argv in (['--help'], ['families'], ['prune', '--help'], ['analyze', '--help']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        main(argv)\n"
        f"print({HEAVY})"
    )
    assert out == "[]"


def test_pure_modules_import_without_llm_compressor():
    modules = ["sink_modifier", "sink_modifier.data", "sink_modifier.process", "sink_modifier.families",
               "sink_modifier.sinks", "sink_modifier.scoring", "sink_modifier.sparsity_pattern"]
    out = _fresh("import sys\n" + "".join(f"import {m}\n" for m in modules) +
                 "print(sorted(m for m in sys.modules if m.split('.')[0] == 'llmcompressor'))")
    assert out == "[]"


RECIPE = str(REPO / "recipes" / "sink_wanda_50.yaml")
# After either import order: the factory knows our classes, a YAML recipe naming one parses, and the
# package's lazy attribute gives the class (one fresh interpreter per order: each costs seconds).
REGISTERED = (
    "from llmcompressor.modifiers.factory import ModifierFactory\n"
    "from llmcompressor.recipe import Recipe\n"
    "from sink_modifier import SinkAwareWandaPruningModifier\n"
    "names = ('SinkAwareWandaPruningModifier', 'SinkAwareSparseGPTModifier', 'MaskPreservingGPTQModifier')\n"
    "print('RESULT', all(name in ModifierFactory._registered_registry for name in names))\n"
    f"print('RESULT', [type(m).__name__ for m in Recipe.create_instance({RECIPE!r}).modifiers])\n"
    "print('RESULT', SinkAwareWandaPruningModifier.__name__)"
)


@pytest.mark.parametrize("order", ["import sink_modifier\nimport llmcompressor\n",
                                   "import llmcompressor\nimport sink_modifier\n",
                                   "import sink_modifier.data\nimport llmcompressor.modifiers.factory\n"])
def test_modifiers_register_in_either_import_order(order):
    # A plain import keeps llm-compressor's own logging (only the CLI moves it to stderr), and 0.14 logs
    # its accelerator warning on stdout: keep only our lines.
    results = [line[len("RESULT "):] for line in _fresh(order + REGISTERED).splitlines() if line.startswith("RESULT ")]
    assert results == ["True", "['SinkAwareWandaPruningModifier']", "SinkAwareWandaPruningModifier"]
