"""Child processes for the tests that send a real Ctrl-C (SIGINT).

A shell starts a background job (``cmd &``, nohup) with SIGINT ignored and children inherit that:
Python then installs no KeyboardInterrupt handler and the signal does nothing. The children these
tests interrupt restore the default before they exec, so the tests mean the same wherever they run.
"""

from __future__ import annotations

import signal


def default_sigint() -> None:
    """``preexec_fn`` for ``subprocess``: the child starts with SIGINT at its default, whatever we inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
