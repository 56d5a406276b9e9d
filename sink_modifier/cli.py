"""``sink-modifier``: prune, evaluate, verify and analyze diffusion LMs from the command line.

Builds the parser from the command modules (:mod:`sink_modifier.commands`) and dispatches;
each command's options, run and workflow live in its own module. stdout carries only the
command's result (JSON with ``--json``); logs, warnings and progress bars go to stderr
(:mod:`sink_modifier.console`), one line per phase unless ``-v``.
Exit codes: 0 success, 1 a check failed (``verify`` found a problem, ``export-onnx``'s ONNX Runtime
check exceeded ``--atol``), 2 usage or input error, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import sys

from sink_modifier import console
from sink_modifier.commands import analyze, evaluate, export_onnx, families, generate, prune, sweep, verify
from sink_modifier.errors import CheckFailedError

__all__ = ["build_parser", "main"]

# Sub-command name -> its module, in --help order.
COMMANDS = {
    "prune": prune,
    "eval": evaluate,
    "sweep": sweep,
    "verify": verify,
    "families": families,
    "analyze": analyze,
    "generate": generate,
    "export-onnx": export_onnx,
}

# Other names of a sub-command: `compress` runs any recipe (pruning, quantization or both), as prune does.
ALIASES = {"compress": "prune"}

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)
EXIT_CHECK_FAILED = 1  # a check of the command's own result failed (verify's problems, prune's coverage)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sink-modifier", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        _add_verbose_argument(module.add_parser(subparsers))
    return parser


def _add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log lines on stderr: -v per-layer detail and llm-compressor's INFO, "
                        "-vv everything (also the upstream notes hidden by default)")


def _root_cause(err: BaseException) -> BaseException:
    """llm-compressor's sequential pipeline re-raises a layer's error as RuntimeError from it."""
    while isinstance(err, RuntimeError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def main(argv: list[str] | None = None) -> int:
    command = "sink-modifier"
    try:
        console.quiet_progress_bars()  # before build_parser: its --family choices import torch, which imports tqdm
        args = build_parser().parse_args(argv)
        command = f"sink-modifier {args.command}"
        console.configure(args.verbose)
        return COMMANDS[ALIASES.get(args.command, args.command)].run(args)
    except KeyboardInterrupt:
        # Ctrl-C: one line, no traceback; writers clean up their temporary files on the way out
        print(f"{command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except CheckFailedError as err:
        print(f"{command}: check failed: {err}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    except (*USER_ERRORS, RuntimeError) as err:
        cause = _root_cause(err)
        if isinstance(cause, CheckFailedError):
            print(f"{command}: check failed: {cause}", file=sys.stderr)
            return EXIT_CHECK_FAILED
        if not isinstance(cause, USER_ERRORS):
            raise
        print(f"{command}: error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
