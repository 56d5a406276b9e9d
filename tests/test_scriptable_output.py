"""Output you can script: stdout holds only a command's result, logs go to stderr, quiet by default,
``-v`` for per-layer detail, and Ctrl-C ends a command with one line and exit code 130.

Subprocesses only where the process boundary is the point: a real shell pipe, the import-time
logging of llm-compressor in a fresh interpreter, and a real SIGINT.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

from sink_modifier.cli import main
from tests.child_process import default_sigint
from tests.conftest import HELDOUT, REPO, TINY_DLM, requires_shared

pytestmark = [requires_shared(TINY_DLM), requires_shared(HELDOUT)]

RECIPE = str(REPO / "recipes" / "sink_wanda_50.yaml")
# held-out text as calibration data: 270 KB read and tokenized in a blink (the corpus is 10 MB)
SMALL_PRUNE = ["--model", str(TINY_DLM), "--recipe", RECIPE, "--data", str(HELDOUT), "--num-samples", "1",
               "--seq-len", "64"]
SMALL_EVAL = ["--model", str(TINY_DLM), "--data", str(HELDOUT), "--num-windows", "2", "--mc-samples", "2",
              "--seq-len", "64"]
# What users met on stderr (or stdout) before: none of it may show by default.
UPSTREAM_NOISE = ("No accelerator available", "shard_size", "is_fx_tracing", "Resaved", ".partial", "\r",
                  "Disabling tokenizer parallelism", "torchvision")
SUMMARY = re.compile(r"wrote \S+: \d+ layers, overall sparsity 0\.\d{4}\n")


def _user_env() -> dict[str, str]:
    """The environment of a user who set nothing: conftest's log level and tqdm switches removed."""
    env = {k: v for k, v in os.environ.items()
           if k != "LLM_COMPRESSOR_LOG_LEVEL" and not k.startswith("TQDM_")}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sink_modifier", *args]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """A default (not verbose) prune of the shipped tiny DLM in a fresh interpreter: (folder, stdout, stderr)."""
    out = tmp_path_factory.mktemp("scriptable") / "pruned"
    done = subprocess.run(_cli("prune", *SMALL_PRUNE, "--output", str(out)), capture_output=True, text=True,
                          env=_user_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout, done.stderr


def test_prune_stdout_is_the_summary_line_and_stderr_a_few_phase_lines(pruned):
    out, stdout, stderr = pruned
    assert SUMMARY.fullmatch(stdout) and str(out) in stdout
    lines = stderr.splitlines()
    assert [noise for noise in UPSTREAM_NOISE if noise in stderr] == []
    assert 3 <= len(lines) <= 6, lines  # loading, calibrating, saving, wrote
    assert any(line.split(" ", 1)[1].startswith("Calibrating") for line in lines)
    assert not any("pruned model.layers" in line for line in lines)  # per-layer detail only with -v
    # the per-layer table is in the checkpoint's metadata, not on the console
    per_layer = json.loads((out / "sink_modifier.json").read_text())["sparsity"]["per_layer"]
    assert len(per_layer) == int(re.search(r"(\d+) layers", stdout).group(1))


def test_verbose_prune_adds_per_layer_lines_on_stderr_only(pruned, tmp_path, capfd):
    _, _, quiet_stderr = pruned
    assert main(["prune", "-v", *SMALL_PRUNE, "--output", str(tmp_path / "v")]) == 0
    stdout, stderr = capfd.readouterr()
    assert SUMMARY.fullmatch(stdout)
    layer_lines = [line for line in stderr.splitlines() if "pruned model.layers" in line]
    assert layer_lines and any("model.layers.0." in line for line in layer_lines)
    assert len(stderr.splitlines()) > len(quiet_stderr.splitlines()) + 8  # 8 decoder layers
    assert "\r" not in stderr and ".partial" not in stderr


def test_gptq_metrics_show_only_with_verbose(tmp_path, capfd, monkeypatch):
    """llm-compressor logs GPTQ's per-module error and time at its METRIC level (above WARNING)."""
    monkeypatch.delenv("LLM_COMPRESSOR_LOG_LEVEL", raising=False)  # as a user runs it: -v decides
    quantize = ["--recipe", str(REPO / "recipes" / "w4a16.yaml"), *SMALL_PRUNE[SMALL_PRUNE.index("--data"):],
                "--model", str(TINY_DLM)]
    assert main(["prune", *quantize, "--output", str(tmp_path / "quiet")]) == 0
    quiet = capfd.readouterr().err.splitlines()
    assert not [line for line in quiet if "metric:" in line or "METRIC" in line], quiet
    assert 3 <= len(quiet) <= 6, quiet
    assert main(["prune", "-v", *quantize, "--output", str(tmp_path / "verbose")]) == 0
    assert [line for line in capfd.readouterr().err.splitlines() if "METRIC" in line and "error" in line]


def test_eval_json_goes_through_a_shell_pipe():
    python = shlex.quote(sys.executable)
    command = " ".join([python, "-m", "sink_modifier", "eval", "--json", *map(shlex.quote, SMALL_EVAL),
                        "|", python, "-m", "json.tool"])
    done = subprocess.run(["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True,
                          env=_user_env(), cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["kind"] == "diffusion" and result["num_windows"] == 2
    assert [noise for noise in UPSTREAM_NOISE if noise in done.stderr] == []


@pytest.mark.parametrize("argv", [
    ["generate", "--model", str(TINY_DLM), "--prompt", "The river", "--gen-length", "8", "--steps", "4",
     "--block-length", "8", "--threads", "1", "--json"],
    ["verify", "PRUNED", "--json"],
])
def test_json_outputs_parse_as_a_whole_stream(argv, pruned, capfd):
    argv = [str(pruned[0]) if arg == "PRUNED" else arg for arg in argv]
    assert main(argv) == 0
    stdout, stderr = capfd.readouterr()
    assert isinstance(json.loads(stdout), dict)  # the whole stream, not one line of it
    assert "\r" not in stderr


def test_progress_bars_never_reach_stderr_that_is_not_a_terminal(capsys):
    # compressed-tensors draws "Dispatching model" with an explicit disable=False, as this bar does
    from tqdm import tqdm

    from sink_modifier import console

    console.configure(0)
    for _ in tqdm(range(3), desc="Dispatching model", disable=False, mininterval=0):
        print("a log line", file=sys.stderr)
    print("after the bar", file=sys.stderr)
    assert capsys.readouterr().err == "a log line\n" * 3 + "after the bar\n"


def test_sigint_during_prune_exits_130_with_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "pruned"
    argv = _cli("prune", *SMALL_PRUNE, "--num-samples", "4", "--seq-len", "128", "--output", str(out))
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_user_env(),
                             cwd=REPO, preexec_fn=default_sigint)
    before = []
    try:
        for line in child.stderr:
            before.append(line)
            if " Calibrating " in line:
                child.send_signal(signal.SIGINT)
                break
        stdout, after = child.communicate(timeout=120)
    finally:
        child.kill()
    assert before and " Calibrating " in before[-1], before
    assert child.returncode == 130, after[-3000:]
    assert after == "sink-modifier prune: interrupted\n" and stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == []  # no .pruned.partial-* beside it


def test_plain_import_keeps_upstream_logging():
    """A library user who never calls console.configure() keeps llm-compressor's own loguru sink (stdout)."""
    code = ("import sys\nimport sink_modifier\nimport llmcompressor\nfrom loguru import logger\n"
            "logger.info('probe')\n"
            "print('stderr wrapped:', type(sys.stderr).__module__ != '_io')\n"
            "print('tqdm env:', sorted(k for k in __import__('os').environ if k.startswith('TQDM_')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_user_env(),
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    # upstream's format on upstream's stream: "{time} | {function} | {level} - {message}" on stdout
    assert re.search(r"^\S+ \| <module> \| INFO - probe$", done.stdout, re.M), done.stdout
    assert "probe" not in done.stderr
    assert "stderr wrapped: False" in done.stdout and "tqdm env: []" in done.stdout
