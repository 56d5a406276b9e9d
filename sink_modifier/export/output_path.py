"""Can an output be written at a path? Asked before any expensive work, answered by trying.

Missing parent folders are fine (they are created at write time, e.g. a fresh ``outputs/``),
so the question goes to the nearest folder that exists: it must be a folder, not a file, and
this process must be able to create entries in it. That is probed by really creating and
removing a temporary folder there: ``os.access`` says yes to root everywhere, also in
``/proc`` or on a read-only mount, where creating fails.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["OutputNotWritableError", "check_writable", "nearest_existing"]


class OutputNotWritableError(ValueError):
    """Nothing can be created where the output would go."""


def nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists, else its closest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(folder: str | Path, output: str | Path, option: str = "--output") -> None:
    """Raise unless entries can be created in ``folder`` (created at write time if missing).

    ``output`` (the path the user gave) and ``option`` name them in the message.
    """
    existing = nearest_existing(Path(folder))
    if not existing.is_dir():
        raise NotADirectoryError(
            f"cannot write {option} {output}: {existing} is a file, not a folder; "
            f"pass an {option} path that is not inside a file"
        )
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".sink-modifier-write-probe-", dir=existing))
    except OSError as err:
        # /proc answers ENOENT to mkdir: say what it means rather than "no such file"
        reason = ("the filesystem takes no new entries" if isinstance(err, FileNotFoundError)
                  else err.strerror or type(err).__name__)
        raise OutputNotWritableError(
            f"cannot write {option} {output}: nothing can be created in {existing} ({reason}); "
            f"pass an {option} path in a folder you can write to"
        ) from None
