"""Atomic checkpoint writing: a folder appears complete or not at all.

Everything is written into a hidden temporary sibling of the output folder and renamed
into place at the end, so an interrupted or failed save never leaves a half-written
checkpoint where a loader would find it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["METADATA_FILE", "OutputExistsError", "check_output_dir", "write_atomically"]

METADATA_FILE = "sink_modifier.json"


class OutputExistsError(FileExistsError):
    """The output folder exists and overwriting was not asked for."""


def check_output_dir(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Fail early (before any expensive work) if ``output_dir`` would be clobbered."""
    output = Path(output_dir)
    if output.exists() and not overwrite:
        raise OutputExistsError(
            f"output folder {output} already exists; pass --overwrite (overwrite=True) to replace it"
        )
    if output.exists() and not output.is_dir():
        raise OutputExistsError(f"output path {output} exists and is not a folder")
    return output


def _publishable_modes(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; give the checkpoint the user's normal modes."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def write_atomically(
    output_dir: str | Path,
    write: Callable[[Path], None],
    *,
    metadata: dict | None = None,
    overwrite: bool = False,
) -> Path:
    """Call ``write(tmp_dir)``, add ``sink_modifier.json``, then rename ``tmp_dir`` to ``output_dir``.

    An existing ``output_dir`` is replaced only with ``overwrite``; it is moved aside first
    and deleted only after the new folder is in place.
    """
    output = check_output_dir(output_dir, overwrite).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    try:
        write(tmp)
        if metadata is not None:
            (tmp / METADATA_FILE).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
        _publishable_modes(tmp)
        old = None
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{output.name}.old-", dir=output.parent))
            old.rmdir()
            output.rename(old)
        tmp.rename(output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
