"""Every command the README and docs/ show matches today's code: sub-commands, options, scripts, lm-eval args, paths.

Commands come from the documents' shell code blocks (README.md, then the docs/ pages in reading
order, :data:`DOCUMENTS`; each run from the repository root) (``bash``/``sh``/``shell``/``console`` or
untagged; ``\\`` continuations joined, ``# comments`` and ``$`` prompts dropped) and from inline
code spans that start with ``sink-modifier`` or run a script of ``examples/`` / ``benchmarks/``.
Optional parts written ``[--seed 0]`` are checked like the rest; upper-case words (``N``,
``PATH``) and ``<...>`` are placeholders. The checks:

* ``sink-modifier SUB ...`` / ``python -m sink_modifier ...`` parse with
  :func:`sink_modifier.cli.build_parser` (an inline span: the sub-command and its options exist);
* ``... -m sink_modifier.lm_eval`` / ``sink-lm-eval`` / ``lm_eval`` with ``--model sink_dlm``: every
  ``--model_args`` key is a parameter of :class:`sink_modifier.lm_eval.model.DiffusionLM`;
* ``python examples/X.py`` (also through ``torchrun``), ``python -m sink_modifier.<module>``,
  ``bash X.sh``: the file exists and every option it is given is one its parser defines;
* a model, checkpoint or ``--include_path`` argument is a path an earlier README command writes
  (``--output``) or a shared asset (``../shared/...``, checked when that folder is present);
  ``--data`` and ``--recipe`` exist.

Source files are read with ``ast`` (no lm-eval import), so the test runs without the extras.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import posixpath
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from sink_modifier.cli import build_parser
from tests.conftest import REPO, SHARED

README = REPO / "README.md"
# read in this order: a path one page writes (--output) may be read by a later one
DOCUMENTS = [README] + [REPO / "docs" / f"{name}.md" for name in
                        ("usage", "recipes", "deploying", "scaling", "how-it-works", "benchmarks", "architecture")]
SHELL_TAGS = {"", "bash", "sh", "shell", "console"}
# first words that make a line of an untagged block a command (the others are diagrams or output)
PROGRAMS = {"sink-modifier", "sink-lm-eval", "lm_eval", "python", "python3", "torchrun", "accelerate", "bash", "pip"}
LM_EVAL_MODULE = "sink_modifier.lm_eval"
ADAPTER = REPO / "sink_modifier" / "lm_eval" / "model.py"


@dataclass(frozen=True)
class Command:
    """One shell command of the README: its words and where it is (line number, fenced or inline)."""

    argv: tuple[str, ...]
    line: int
    fenced: bool = True
    document: str = "README.md"

    def __str__(self) -> str:
        return f"{self.document}:{self.line}: {shlex.join(self.argv)}"


# -- extraction ------------------------------------------------------------------------------
def fenced_commands(text: str) -> list[Command]:
    """Commands of the shell code blocks (see the module docstring), in README order."""
    commands: list[Command] = []
    tag: str | None = None  # None: outside a code block
    pending, start = "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            tag = line.strip()[3:].strip().split(" ")[0].lower() if tag is None else None
            pending = ""
            continue
        if tag not in SHELL_TAGS:
            continue
        body = line.strip()
        if tag == "console":
            if not pending and not body.startswith("$ "):
                continue  # console output
            body = body[2:] if not pending else body
        if not pending:
            start = number
        if body.endswith("\\"):
            pending += body[:-1] + " "
            continue
        joined, pending = pending + body, ""
        words = joined.split()
        if not words or (tag == "" and words[0] not in PROGRAMS):
            continue
        argv = shlex.split(joined, comments=True)
        if argv:
            commands.append(Command(tuple(argv), start))
    return commands


INLINE = re.compile(r"`((?:sink-modifier |python (?:examples|benchmarks)/|bash (?:examples|benchmarks)/)[^`\n]*)`")


def inline_commands(text: str) -> list[Command]:
    """Inline code spans naming a sub-command or a script, outside the code blocks."""
    commands, in_block = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            commands += [Command(tuple(shlex.split(m.group(1))), number, fenced=False) for m in INLINE.finditer(line)]
    return commands


def is_placeholder(word: str) -> bool:
    return bool(re.fullmatch(r"[A-Z][A-Z_]*|<[^<>]+>", word))


def concrete(argv: tuple[str, ...]) -> list[str]:
    """The words as a user would type them: ``[--seed 0]`` without brackets, placeholders as ``1``."""
    words = []
    for word in argv:
        word = word.removeprefix("[").removesuffix("]")
        if word:
            words.append("1" if is_placeholder(word) else word)
    return words


# -- what the code offers ---------------------------------------------------------------------
def sub_commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def script_options(path: Path) -> set[str]:
    """Option strings a script defines: ``add_argument("--x", ...)`` calls (Python), or its text (shell)."""
    source = path.read_text()
    if path.suffix == ".sh":
        return set(re.findall(r"--[A-Za-z0-9][A-Za-z0-9-]*", source))
    options = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            options |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return options | ({"-h", "--help"} if options else set())


def adapter_interface() -> tuple[set[str], set[str]]:
    """The names ``sink_dlm`` is registered under and the parameters of ``DiffusionLM.__init__``."""
    tree = ast.parse(ADAPTER.read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "DiffusionLM")
    names = {a.value for d in cls.decorator_list if isinstance(d, ast.Call) for a in d.args
             if isinstance(a, ast.Constant)}
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    params = {a.arg for a in init.args.args + init.args.kwonlyargs} - {"self"}
    return names, params


def module_file(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.exists():
            return candidate
    return None


# -- classification ---------------------------------------------------------------------------
def sink_modifier_args(words: list[str]) -> list[str] | None:
    """The CLI's argv if the command is ``sink-modifier ...`` or ``python -m sink_modifier ...``."""
    if words[0] == "sink-modifier":
        return words[1:]
    if words[0] in ("python", "python3") and words[1:3] == ["-m", "sink_modifier"]:
        return words[3:]
    return None


def lm_eval_args(words: list[str]) -> list[str] | None:
    """lm-eval's argv if the command runs lm-eval (directly, via ``-m sink_modifier.lm_eval`` or a launcher)."""
    if words[0] in ("sink-lm-eval", "lm_eval"):
        return words[1:]
    if "-m" in words:
        at = words.index("-m")
        if at + 1 < len(words) and words[at + 1] == LM_EVAL_MODULE:
            return words[at + 2:]
    return None


def script_of(words: list[str]) -> tuple[Path, str, list[str]] | None:
    """``(file, as written, its arguments)`` of a Python/shell script or a ``python -m sink_modifier.<module>``."""
    if words[0] in ("python", "python3") and len(words) > 2 and words[1] == "-m":
        if not words[2].startswith("sink_modifier.") or words[2] == LM_EVAL_MODULE:
            return None  # python -m pytest etc.
        return module_file(words[2]) or REPO / words[2], words[2], words[3:]
    if words[0] in ("python", "python3", "torchrun", "bash"):
        for i, word in enumerate(words[1:], 1):
            if word.endswith((".py", ".sh")):
                return REPO / word, word, words[i + 1:]
    return None


def options_of(words: list[str]) -> list[str]:
    return [w.split("=", 1)[0] for w in words if w.startswith("-") and not re.fullmatch(r"-\d.*", w)]


# -- the checks: each returns the problems it finds ------------------------------------------------
def check_command(command: Command) -> list[str]:
    words = concrete(command.argv)
    cli = sink_modifier_args(words)
    if cli is not None:
        return check_cli(command, cli)
    lm_eval = lm_eval_args(words)
    if lm_eval is not None:
        return check_lm_eval(command, lm_eval)
    script = script_of(words)
    if script is not None:
        return check_script(command, *script)
    return []


def check_cli(command: Command, argv: list[str]) -> list[str]:
    if not command.fenced:  # an inline mention: the sub-command and the options it names exist
        subs = sub_commands()
        if not argv or argv[0] not in subs:
            return [f"{command}: no sub-command {argv[:1]} (have {sorted(subs)})"]
        known = set(subs[argv[0]]._option_string_actions)
        return [f"{command}: `sink-modifier {argv[0]}` has no option {o}" for o in options_of(argv[1:])
                if o not in known]
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            build_parser().parse_args(argv)
    except SystemExit:
        return [f"{command}: the CLI rejects it: {stderr.getvalue().strip().splitlines()[-1]}"]
    return []


def model_args_of(argv: list[str]) -> dict[str, str]:
    for i, word in enumerate(argv):
        value = word.split("=", 1)[1] if word.startswith("--model_args=") else (
            argv[i + 1] if word == "--model_args" and i + 1 < len(argv) else None)
        if value is not None:
            return dict(item.split("=", 1) if "=" in item else (item, "") for item in value.split(",") if item)
    return {}


def option_value(argv: list[str], option: str) -> str | None:
    for i, word in enumerate(argv):
        if word == option and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(option + "="):
            return word.split("=", 1)[1]
    return None


def check_lm_eval(command: Command, argv: list[str]) -> list[str]:
    names, params = adapter_interface()
    if option_value(argv, "--model") not in names:
        return []  # another lm-eval model type (e.g. hf): not ours to check
    return [f"{command}: sink_dlm has no model arg {key!r} (DiffusionLM.__init__ takes {sorted(params)})"
            for key in model_args_of(argv) if key not in params]


def check_script(command: Command, path: Path, written: str, argv: list[str]) -> list[str]:
    if not path.exists():
        return [f"{command}: {written} does not exist"]
    known = script_options(path)
    return [f"{command}: {written} has no option {o}" + ("" if known else " (it takes no options)")
            for o in options_of(argv) if o not in known]


def check_paths(commands: list[Command]) -> list[str]:
    """Inputs are written by an earlier command (``--output``) or are shared assets / repo files."""
    problems, written = [], set()
    for command in (c for c in commands if c.fenced):
        words = concrete(command.argv)
        raw = [w.removeprefix("[").removesuffix("]") for w in command.argv]
        models, files, output = [], [], option_value(words, "--output")
        cli, lm_eval = sink_modifier_args(words), lm_eval_args(words)
        if cli is not None:
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    args = build_parser().parse_args(cli)
            except SystemExit:
                continue  # check_command reports it
            models += [getattr(args, key) for key in ("model", "compare", "dir") if getattr(args, key, None)]
            files += [getattr(args, key) for key in ("data", "recipe") if getattr(args, key, None)]
        elif lm_eval is not None:
            models += [v for k, v in model_args_of(lm_eval).items() if k == "pretrained"]
            models += [v for v in [option_value(lm_eval, "--include_path")] if v]
        elif script_of(words) is not None:
            files += [v for v in [option_value(words, "--data")] if v]
        placeholders = {w for w in raw if is_placeholder(w)} | {"1"}
        for path in models:
            if path in placeholders or posixpath.normpath(path) in written:
                continue
            if not is_shared(path):
                problems.append(f"{command}: {path} is neither written by an earlier README command (--output) "
                                f"nor under ../shared/ (written so far: {sorted(written)})")
            elif SHARED.exists() and not (REPO / path).exists():
                problems.append(f"{command}: {path} does not exist")
        for path in files:
            if path not in placeholders and not (REPO / path).exists() and not (is_shared(path) and not SHARED.exists()):
                problems.append(f"{command}: {path} does not exist")
        if output:
            written.add(posixpath.normpath(output))
    return problems


def is_shared(path: str) -> bool:
    return posixpath.normpath(path).startswith("../shared/")


# -- tests ------------------------------------------------------------------------------------------
def readme_commands() -> list[Command]:
    from dataclasses import replace

    commands = []
    for document in DOCUMENTS:
        text = document.read_text()
        name = str(document.relative_to(REPO))
        commands += [replace(c, document=name) for c in fenced_commands(text) + inline_commands(text)]
    return commands


COMMANDS = readme_commands()


def test_the_readme_shows_the_commands_this_test_checks():
    programs = {c.argv[0] for c in COMMANDS if c.fenced}
    assert {"sink-modifier", "python", "torchrun"} <= programs
    subs = {concrete(c.argv)[1] for c in COMMANDS if c.fenced and c.argv[0] == "sink-modifier"}
    assert {"prune", "eval", "verify", "analyze", "generate", "export-onnx"} <= subs
    assert any(lm_eval_args(list(c.argv)) is not None for c in COMMANDS)  # the lm-eval section


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"{Path(c.document).stem}-L{c.line}-{'-'.join(c.argv[:2])}")
def test_readme_command_matches_the_code(command):
    assert check_command(command) == []


def test_readme_paths_are_written_before_they_are_read():
    assert check_paths(COMMANDS) == []


# -- the checker itself: it finds what it should ----------------------------------------------------------
SAMPLE = """
Intro `sink-modifier verify` and `sink-modifier eval --no-such-flag`.

```bash
sink-modifier prune --model ../shared/models/tiny-dlm --recipe recipes/sink_wanda_50.yaml \\
    --data ../shared/data/corpus.txt.gz --output outputs/a [--seed 0]   # a comment
sink-modifier eval --model outputs/b --data ../shared/data/heldout.txt.gz
```
```console
$ sink-modifier verify outputs/a --json
{"ok": true}
```
```
data/        a diagram line that isn't a command; it's prose
python -m sink_modifier.lm_eval --model sink_dlm --model_args pretrained=outputs/a,mc_num=4,no_such_arg=1 \\
    --tasks t --include_path outputs/tasks
```
```python
sink-modifier prune --model never-checked
```
"""


def test_extraction_joins_continuations_and_skips_non_commands():
    fenced = fenced_commands(SAMPLE)
    assert [c.line for c in fenced] == [5, 7, 10, 15]
    assert fenced[0].argv[-4:] == ("--output", "outputs/a", "[--seed", "0]")  # comment dropped, lines joined
    assert concrete(fenced[0].argv)[-2:] == ["--seed", "0"]
    assert fenced[2].argv == ("sink-modifier", "verify", "outputs/a", "--json")  # prompt dropped, output skipped
    assert [c.argv[:2] for c in inline_commands(SAMPLE)] == [("sink-modifier", "verify"), ("sink-modifier", "eval")]
    assert concrete(("--mask-token-id", "N", "--model", "<model>")) == ["--mask-token-id", "1", "--model", "1"]


def test_checks_catch_unknown_options_model_args_scripts_and_unwritten_paths():
    fenced, inline = fenced_commands(SAMPLE), inline_commands(SAMPLE)
    assert check_command(inline[0]) == []  # an inline mention may leave out required options
    assert "`sink-modifier eval` has no option --no-such-flag" in " ".join(check_command(inline[1]))
    assert check_command(fenced[0]) == [] and check_command(fenced[2]) == []
    assert "unrecognized arguments: --bogus" in " ".join(
        check_command(Command(("sink-modifier", "verify", "x", "--bogus"), 1)))
    assert "the CLI rejects it" in " ".join(check_command(Command(("sink-modifier", "no-such-command"), 1)))
    assert check_command(fenced[3]) == [
        f"{fenced[3]}: sink_dlm has no model arg 'no_such_arg' (DiffusionLM.__init__ takes "
        f"{sorted(adapter_interface()[1])})"]
    assert check_command(Command(("python", "examples/no_such_example.py"), 1)) == [
        "README.md:1: python examples/no_such_example.py: examples/no_such_example.py does not exist"]
    assert "has no option --bogus" in " ".join(
        check_command(Command(("python", "benchmarks/sink_dynamics.py", "--reuse-json", "--bogus"), 1)))
    assert check_command(Command(("torchrun", "--nproc_per_node", "2", "examples/prune_distributed.py",
                                  "--num-samples", "4"), 1)) == []
    assert check_command(Command(("python", "-m", "sink_modifier.lm_eval.tasks", "--data", "d", "--output", "o"), 1)) == []
    problems = check_paths(fenced)
    assert len(problems) == 2, problems  # eval reads outputs/b; lm-eval's include_path outputs/tasks: neither written
    assert "outputs/b is neither written" in problems[0] and "outputs/tasks is neither written" in problems[1]
