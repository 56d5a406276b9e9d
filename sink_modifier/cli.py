"""``sink-modifier``: prune, evaluate, verify and analyze diffusion LMs from the command line.

Builds the parser from the command modules (:mod:`sink_modifier.commands`) and dispatches;
each command's options, run and workflow live in its own module.
Exit codes: 0 success, 1 ``verify`` found a problem, 2 usage or input error.
"""

from __future__ import annotations

import argparse
import sys

from sink_modifier.commands import analyze, evaluate, export_onnx, families, generate, prune, verify

__all__ = ["build_parser", "main"]

# Sub-command name -> its module, in --help order.
COMMANDS = {
    "prune": prune,
    "eval": evaluate,
    "verify": verify,
    "families": families,
    "analyze": analyze,
    "generate": generate,
    "export-onnx": export_onnx,
}

USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sink-modifier", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS.values():
        module.add_parser(subparsers)
    return parser


def _root_cause(err: BaseException) -> BaseException:
    """llm-compressor's sequential pipeline re-raises a layer's error as RuntimeError from it."""
    while isinstance(err, RuntimeError) and err.__cause__ is not None:
        err = err.__cause__
    return err


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (*USER_ERRORS, RuntimeError) as err:
        cause = _root_cause(err)
        if not isinstance(cause, USER_ERRORS):
            raise
        print(f"sink-modifier {args.command}: error: {cause}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
