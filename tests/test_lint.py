"""``ruff check`` (the config in pyproject.toml: pycodestyle, pyflakes, import sorting) passes on the repo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_is_clean():
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert "No module named ruff" not in done.stderr, "ruff is in the dev extra: pip install -e '.[dev]'"
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
