"""Atomic writes: a folder, a file or a JSON document appears complete or not at all.

Everything is written into a hidden temporary sibling of the target and renamed into place
at the end, so an interrupted or failed save never leaves a half-written checkpoint,
``.onnx`` file or ``analysis.json`` where a reader would find it. The one writer of the
package: ``prune``, ``export-onnx`` and ``analyze`` all write through it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "METADATA_FILE",
    "OutputExistsError",
    "check_output_dir",
    "check_output_file",
    "json_text",
    "write_atomically",
    "write_file_atomically",
    "write_json_atomically",
]

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


def check_output_file(output_file: str | Path, overwrite: bool = False) -> Path:
    """Fail early if the file ``output_file`` would be clobbered, or is a folder."""
    output = Path(output_file)
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite (overwrite=True) to replace it")
    if output.exists() and output.is_dir():
        raise FileExistsError(
            f"{output} is a folder; pass a folder path without the {output.suffix or 'file'} suffix to write into it"
        )
    return output


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publishable_modes(folder: Path) -> None:
    """mkdtemp makes a private (0700) folder; give the checkpoint the user's normal modes."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def json_text(payload: Any, *, pretty: bool = False) -> str:
    """``payload`` as one JSON document with a final newline.

    ``pretty``: indented with sorted keys (records people read: ``sink_modifier.json``);
    otherwise compact strict JSON (no NaN/Infinity; results programs read: ``analysis.json``).
    """
    if pretty:
        return json.dumps(payload, indent=2, sort_keys=True) + "\n"
    return json.dumps(payload, allow_nan=False, separators=(",", ":")) + "\n"


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
            (tmp / METADATA_FILE).write_text(json_text(metadata, pretty=True))
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


def write_file_atomically(output_file: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_file)`` on a temporary sibling of ``output_file``, then rename it into place.

    The temporary file keeps the target's suffix (writers such as ``savefig`` or onnx choose
    the format by it); an existing ``output_file`` is replaced in one step.
    """
    output = Path(output_file).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{output.name}.partial-", suffix=output.suffix, dir=output.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Path(output_file)


def write_json_atomically(output_file: str | Path, payload: Any, *, pretty: bool = False) -> Path:
    """Write ``payload`` (see :func:`json_text`) to ``output_file`` atomically."""
    text = json_text(payload, pretty=pretty)  # serialise first: a bad payload leaves no temporary file
    return write_file_atomically(output_file, lambda tmp: tmp.write_text(text, encoding="utf-8"))
