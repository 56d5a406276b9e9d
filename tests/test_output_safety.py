"""Lose nothing: an output never destroys what the tool did not write, two runs never race.

Every case ends with the digests of the input model and of any previous output unchanged, and
exactly one result on disk (no ``.NAME.partial-*``, ``.NAME.old-*`` or ``.NAME.lock`` beside it).
Refusals run in-process (they happen before any work); kills, interrupts and concurrent writers
run in real subprocesses, stopped or signalled at the write phases named by
``SINK_MODIFIER_TEST_FAULT`` (``sink_modifier.export.output_guard.fault_point``).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sink_modifier.cli import main
from sink_modifier.export.output_guard import FAULT_VARIABLE
from tests.child_process import default_sigint
from tests.conftest import REPO

RECIPE = str(REPO / "recipes" / "sink_wanda_50.yaml")
PHASES = ("locked", "tmp-created", "written", "moved-aside", "published")


def digest(path: Path) -> str:
    """SHA-256 over every file's relative path and bytes (a folder) or the bytes (a file)."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
        return h.hexdigest()
    for item in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(item.relative_to(path)).encode() + b"\0" + item.read_bytes())
    return h.hexdigest()


def siblings(output: Path) -> list[str]:
    """What lies beside ``output`` that a write of it made: its temporaries and its lock."""
    return sorted(p.name for p in output.parent.iterdir() if p.name.startswith(f".{output.name}."))


def prune_args(model: Path, data: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", "--model", str(model), "--recipe", RECIPE, "--data", str(data), "--output", str(out),
            "--num-samples", "2", "--seq-len", "16", *extra]


def refused(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def model(tiny_llama_dir, tmp_path) -> Path:
    """A private copy of the tiny model (a test may point outputs at it), and its digest."""
    copy = tmp_path / "dense"
    copy.mkdir()
    for item in tiny_llama_dir.iterdir():
        (copy / item.name).write_bytes(item.read_bytes())
    return copy


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != FAULT_VARIABLE}
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), **extra)
    return env


def _start(argv: list[str], fault: str | None = None) -> subprocess.Popen:
    env = _env(**({FAULT_VARIABLE: fault} if fault else {}))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
                            preexec_fn=default_sigint)


def _wait_stopped(child: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``child`` stopped itself (SIGSTOP at its fault point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert child.poll() is None, child.communicate()[1][-3000:]
        state = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "T":
            return
        time.sleep(0.05)
    child.kill()
    raise AssertionError("the writer never reached its fault point")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "sink_modifier", *args]


# -- 1. the output is never an input, inside one, or around one --------------------------------------
@pytest.mark.parametrize("where", ["is-the-model", "inside-the-model", "contains-the-model", "symlink-to-model",
                                   "is-the-data"])
def test_prune_refuses_an_output_that_is_inside_or_around_its_input(model, text_file, tmp_path, capsys, where):
    before = digest(model)
    if where == "is-the-model":
        out = model
    elif where == "inside-the-model":
        out = model / "pruned"
    elif where == "contains-the-model":
        out = tmp_path  # holds dense/ ...
        (tmp_path / "sink_modifier.json").write_text("{}")  # ... and even looks like an output of ours
    elif where == "symlink-to-model":
        out = tmp_path / "link"
        out.symlink_to(model, target_is_directory=True)
    else:
        out = text_file
    line = refused(capsys, prune_args(model, text_file, out, "--overwrite"))
    relation = {"inside-the-model": "lies inside", "contains-the-model": "contains"}.get(where, "is")
    assert f"{relation} the input" in line and "pass an --output outside the input" in line, line
    assert digest(model) == before and siblings(model) == [] and not (model / "pruned").exists()


def test_every_writing_command_refuses_its_model_folder_as_output(model, text_file, capsys, tmp_path):
    before = digest(model)
    onnx = ["export-onnx", "--model", str(model), "--output"]
    analyze = ["analyze", "--model", str(model), "--data", str(text_file), "--output"]
    sweep = ["sweep", "--model", str(model), "--recipe", RECIPE, "--sparsities", "0.5", "--data", str(text_file),
             "--eval-data",
             str(text_file), "--output"]
    for argv in (onnx + [str(model), "--overwrite"], onnx + [str(model / "model.onnx"), "--overwrite"],
                 analyze + [str(model), "--overwrite"], sweep + [str(model / "sweep")],
                 analyze + [str(tmp_path / "a"), "--compare", str(tmp_path / "a" / "ar")]):
        if "--compare" in argv:
            (tmp_path / "a" / "ar").mkdir(parents=True)
        line = refused(capsys, argv)
        assert "the input" in line and "pass an --output outside the input" in line, (argv, line)
    assert digest(model) == before and siblings(model) == []


# -- 2. --overwrite replaces only what this tool wrote -------------------------------------------------
@pytest.mark.parametrize("command", ["prune", "export-onnx", "analyze", "lm-eval-tasks"])
def test_overwrite_refuses_a_folder_of_foreign_files_naming_them(model, text_file, tmp_path, capsys, command):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("notes.txt", "photo.jpg", "thesis.tex", "zz.bib"):
        (out / name).write_text(name)
    before = digest(out)
    argv = {"prune": prune_args(model, text_file, out),
            "export-onnx": ["export-onnx", "--model", str(model), "--output", str(out)],
            "analyze": ["analyze", "--model", str(model), "--data", str(text_file), "--output", str(out)],
            "lm-eval-tasks": None}[command]
    if argv is None:
        from sink_modifier.lm_eval.tasks import main as tasks_main

        assert tasks_main(["--data", str(text_file), "--output", str(out), "--overwrite"]) == 2
        line = capsys.readouterr().err.strip()
    else:
        line = refused(capsys, argv + ["--overwrite"])
    assert "did not write (notes.txt, photo.jpg, thesis.tex and 1 more;" in line, line
    assert "pass another --output, or remove the folder yourself" in line
    assert digest(out) == before and siblings(out) == []


def test_overwrite_replaces_an_empty_folder_and_an_onnx_file_only_if_it_is_ours(model, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export-onnx", "--model", str(model), "--output", str(empty), "--overwrite", "--no-check"]) == 0
    assert (empty / "onnx_export.json").is_file()
    foreign = tmp_path / "other.onnx"
    foreign.write_bytes(b"not ours")
    line = refused(capsys, ["export-onnx", "--model", str(model), "--output", str(foreign), "--overwrite"])
    assert "was not written by sink-modifier" in line and foreign.read_bytes() == b"not ours"
    ours = tmp_path / "ours.onnx"
    assert main(["export-onnx", "--model", str(model), "--output", str(ours), "--no-check"]) == 0
    assert main(["export-onnx", "--model", str(model), "--output", str(ours), "--no-check", "--overwrite"]) == 0
    capsys.readouterr()
    assert siblings(ours) == [] and siblings(empty) == []


# -- 3. one writer per output ----------------------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_running_pid(model, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    first = _start(_cli(*prune_args(model, text_file, out)), fault="locked:STOP")
    try:
        _wait_stopped(first)
        line = refused(capsys, prune_args(model, text_file, out, "--overwrite"))
        assert f"is being written by another sink-modifier run (pid {first.pid}@" in line, line
        assert "wait for it to finish, or pass another --output" in line
        first.send_signal(signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-3000:]
    assert "--overwrite" not in json.loads((out / "sink_modifier.json").read_text())["command"]  # the first run's
    assert siblings(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["dense", "pruned"]


def test_an_output_that_appears_during_the_run_is_never_replaced(model, text_file, tmp_path):
    out = tmp_path / "pruned"
    writer = _start(_cli(*prune_args(model, text_file, out)), fault="written:STOP")
    try:
        _wait_stopped(writer)
        out.mkdir()  # another program writes there meanwhile
        (out / "theirs.txt").write_text("theirs")
        writer.send_signal(signal.SIGCONT)
        _, stderr = writer.communicate(timeout=300)
    finally:
        writer.kill()
    assert writer.returncode == 2, stderr[-3000:]
    assert "appeared while this run was writing it" in stderr.strip().splitlines()[-1]
    assert [p.name for p in out.iterdir()] == ["theirs.txt"] and siblings(out) == []


# -- 4. killed or interrupted at every write phase: the previous output survives, exactly one result ------
@pytest.fixture
def previous_tasks(text_file, tmp_path) -> Path:
    from sink_modifier.lm_eval.tasks import write_local_tasks

    out = tmp_path / "tasks"
    write_local_tasks(text_file, out, num_docs=3)
    return out


@pytest.mark.parametrize("signal_name", ["KILL", "INT"])
@pytest.mark.parametrize("phase", PHASES)
def test_a_replacement_killed_at_any_phase_loses_nothing(previous_tasks, text_file, capsys, phase, signal_name):
    """The fast writer (the lm-eval task folder) through the same claim and atomic write as every command."""
    before, data = digest(previous_tasks), digest(text_file)
    argv = [sys.executable, "-m", "sink_modifier.lm_eval.tasks", "--data", str(text_file),
            "--output", str(previous_tasks), "--num-docs", "5", "--overwrite"]
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(**{FAULT_VARIABLE: f"{phase}:{signal_name}"}),
                          timeout=120, preexec_fn=default_sigint)
    assert done.returncode == (-signal.SIGKILL if signal_name == "KILL" else 130), done.stderr[-2000:]
    # The next run (without --overwrite) sweeps what a killed writer left, restores a moved-aside
    # output, and then refuses: the output exists, restored or not.
    from sink_modifier.lm_eval.tasks import main as tasks_main

    assert tasks_main(["--data", str(text_file), "--output", str(previous_tasks)]) == 2
    assert "already exists" in capsys.readouterr().err
    settings = json.loads((previous_tasks / "lm_eval_tasks.json").read_text())
    if phase == "published":  # the new output was complete and in place
        assert settings["num_docs"] == 5 and digest(previous_tasks) != before
    else:
        assert digest(previous_tasks) == before
    assert siblings(previous_tasks) == [] and digest(text_file) == data


def test_prune_killed_mid_replacement_keeps_the_previous_checkpoint(model, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(prune_args(model, text_file, out)) == 0
    before, dense = digest(out), digest(model)
    done = subprocess.run(_cli(*prune_args(model, text_file, out, "--overwrite")), capture_output=True, text=True,
                          env=_env(**{FAULT_VARIABLE: "moved-aside:KILL"}), timeout=300)
    assert done.returncode == -signal.SIGKILL
    assert not out.exists() and [s.split("-")[0] for s in siblings(out)] == [".pruned.lock", ".pruned.old", ".pruned.partial"]
    capsys.readouterr()
    # a rerun without --overwrite restores the checkpoint (saying so), then counts it as existing
    assert main(prune_args(model, text_file, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert f"restored {out}" in err[0] and "removed" in err[1] and "already exists" in err[-1], err
    assert digest(out) == before and digest(model) == dense and siblings(out) == []


def test_prune_interrupted_after_writing_leaves_the_previous_checkpoint(model, text_file, tmp_path, capsys):
    out = tmp_path / "pruned"
    assert main(prune_args(model, text_file, out)) == 0
    before = digest(out)
    done = subprocess.run(_cli(*prune_args(model, text_file, out, "--overwrite")), capture_output=True, text=True,
                          env=_env(**{FAULT_VARIABLE: "written:INT"}), timeout=300, preexec_fn=default_sigint)
    assert done.returncode == 130 and done.stderr.strip().splitlines()[-1] == "sink-modifier prune: interrupted"
    assert digest(out) == before and siblings(out) == []


def test_a_fresh_output_killed_before_publishing_is_swept_by_the_next_run(model, text_file, tmp_path, capsys):
    out = tmp_path / "fresh" / "pruned"
    done = subprocess.run(_cli(*prune_args(model, text_file, out)), capture_output=True, text=True,
                          env=_env(**{FAULT_VARIABLE: "written:KILL"}), timeout=300)
    assert done.returncode == -signal.SIGKILL and not out.exists()
    assert len([s for s in siblings(out) if ".partial-" in s]) == 1
    assert main(prune_args(model, text_file, out)) == 0  # not refused: nothing was published
    assert "removed" in capsys.readouterr().err
    assert (out / "sink_modifier.json").is_file() and siblings(out) == []


# -- 5. a recipe means one thing ---------------------------------------------------------------------------
DUPLICATES = {
    "two-calibration-blocks": ("calibration:\n  num_samples: 4\nsparsity_stage:\n  sparsity_modifiers:\n"
                               "    SinkAwareWandaPruningModifier:\n      sparsity: 0.5\ncalibration:\n"
                               "  num_samples: 8\n", ":1:1 and ", ":7:1: calibration appears twice"),
    "modifier-twice": ("sparsity_stage:\n  sparsity_modifiers:\n    SinkAwareWandaPruningModifier:\n"
                       "      sparsity: 0.5\n    SinkAwareWandaPruningModifier:\n      sparsity: 0.7\n",
                       ":3:5 and ", ":5:5: sparsity_stage.sparsity_modifiers.SinkAwareWandaPruningModifier appears"),
    "two-stages": ("sparsity_stage:\n  sparsity_modifiers:\n    SinkAwareWandaPruningModifier:\n      sparsity: 0.5\n"
                   "sparsity_stage:\n  sparsity_modifiers:\n    SinkAwareWandaPruningModifier:\n      sparsity: 0.7\n",
                   ":1:1 and ", ":5:1: sparsity_stage appears twice"),
    "field-twice": ("sparsity_stage:\n  sparsity_modifiers:\n    SinkAwareWandaPruningModifier:\n"
                    "      sparsity: 0.5\n      sparsity: 0.7\n", ":4:7 and ", ":5:7: sparsity_stage."),
}


@pytest.mark.parametrize("name", list(DUPLICATES))
def test_a_duplicated_key_in_a_recipe_is_refused_naming_both_places(model, text_file, tmp_path, capsys, name):
    from sink_modifier.commands.recipe_calibration import recipe_calibration

    text, first, second = DUPLICATES[name]
    recipe = tmp_path / "dup.yaml"
    recipe.write_text(text)
    argv = prune_args(model, text_file, tmp_path / "out")
    argv[argv.index(RECIPE)] = str(recipe)
    line = refused(capsys, argv)
    assert f"{recipe}{first}{recipe}{second}" in line and "remove one of them or merge them" in line, line
    with pytest.raises(ValueError, match="appears twice"):  # the Python reader of the block agrees
        recipe_calibration(recipe)
    assert not (tmp_path / "out").exists()


def test_calibration_origin_points_at_the_block_used(model, text_file, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("sparsity_stage:\n  sparsity_modifiers:\n    SinkAwareWandaPruningModifier:\n"
                      "      sparsity: 0.5\ncalibration:\n  num_samples: 2\n  timesteps: [0.5]\n")
    out = tmp_path / "out"
    argv = prune_args(model, text_file, out)
    argv[argv.index(RECIPE)] = str(recipe)
    del argv[argv.index("--num-samples"):argv.index("--num-samples") + 2]
    assert main(argv) == 0
    origin = json.loads((out / "sink_modifier.json").read_text())["calibration"]["origin"]
    assert origin == {"num_samples": f"recipe {recipe}:5:1", "timesteps": f"recipe {recipe}:5:1"}


# -- 6. generate: a prompt longer than the window ------------------------------------------------------------
def test_a_prompt_over_the_window_is_one_line_with_its_length_and_the_limit(tiny_llama_dir):
    long_prompt = " ".join(f"w{4 + i % 60}" for i in range(80))  # 80 tokens, window 64
    done = subprocess.run(_cli("generate", "--model", str(tiny_llama_dir), "--prompt", long_prompt),
                          capture_output=True, text=True, env=_env(), cwd=REPO, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("sink-modifier generate: error: the prompt alone is 80 tokens and the model's window is "
                           "64 positions (max_position_embeddings), leaving no room to generate; shorten the prompt "
                           "to at most 63 tokens\n")
