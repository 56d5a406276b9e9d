"""``python -m sink_modifier.lm_eval [lm-eval arguments]``: lm-eval's CLI with ``sink_dlm`` registered."""

from __future__ import annotations

import sink_modifier.lm_eval  # noqa: F401  (registers the sink_dlm model type)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
