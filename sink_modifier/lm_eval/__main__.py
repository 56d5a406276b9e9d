"""``python -m sink_modifier.lm_eval [lm-eval arguments]``: lm-eval's CLI with ``sink_dlm`` registered.

Like ``sink-modifier``: lm-eval's results table on stdout, loguru's records (llm-compressor's,
when a compressed checkpoint pulls it in) on stderr, and Ctrl-C ends with one line and exit 130.
"""

from __future__ import annotations

import sys

import sink_modifier.lm_eval  # noqa: F401  (registers the sink_dlm model type)
from sink_modifier import console
from sink_modifier.cli import EXIT_INTERRUPTED


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    console.configure()
    try:
        cli_evaluate()
    except KeyboardInterrupt:
        print("python -m sink_modifier.lm_eval: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
