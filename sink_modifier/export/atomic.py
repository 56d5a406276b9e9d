"""Atomic writes: a folder, a file or a JSON document appears complete or not at all.

Everything is written into a hidden temporary sibling of the target and renamed into place
at the end, so an interrupted or failed save never leaves a half-written checkpoint,
``.onnx`` file or ``analysis.json`` where a reader would find it, nor the temporary sibling,
nor parent folders the write created. The one writer of the package: ``prune``,
``export-onnx`` and ``analyze`` all write through it.

The target is checked first (:func:`check_output_dir`, :func:`check_output_file`: not taken,
not inside a file, writable), so commands call those before any expensive work. Temporary
names carry the writer's pid (:mod:`.leftovers`); the siblings a killed writer left are swept
before the next write of the same target.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .leftovers import sweep_leftovers, temp_prefix
from .output_path import check_writable

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
    """Fail early (before any expensive work) if ``output_dir`` would be clobbered or cannot be written."""
    output = Path(output_dir)
    if output.exists() and not overwrite:
        raise OutputExistsError(
            f"output folder {output} already exists; pass --overwrite (overwrite=True) to replace it"
        )
    if output.exists() and not output.is_dir():
        raise OutputExistsError(
            f"output path {output} exists and is a file, not a folder; pass another --output path"
        )
    check_writable(output.parent, output)
    return output


def check_output_file(output_file: str | Path, overwrite: bool = False) -> Path:
    """Fail early if the file ``output_file`` would be clobbered, is a folder, or cannot be written."""
    output = Path(output_file)
    if output.exists() and output.is_dir():
        raise FileExistsError(
            f"{output} is a folder; pass a folder path without the {output.suffix or 'file'} suffix to write into it"
        )
    if output.exists() and not overwrite:
        raise FileExistsError(f"{output} already exists; pass --overwrite (overwrite=True) to replace it")
    check_writable(output.parent, output)
    return output


def _make_parents(folder: Path, created: list[Path]) -> None:
    """``mkdir -p folder``, appending each folder it creates to ``created`` (outermost first) as it
    goes, so a write that fails or is interrupted right here still removes them again."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        path.mkdir(exist_ok=True)
        created.append(path)


def _remove_created(created: list[Path]) -> None:
    for path in reversed(created):
        try:
            path.rmdir()
        except OSError:  # not empty: something else wrote there meanwhile
            return


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


def _non_finite_at(payload: Any, where: str = "") -> tuple[str, float] | None:
    """The key path and value of the first NaN/infinity in ``payload`` (``None``: there is none)."""
    if isinstance(payload, float) and not math.isfinite(payload):
        return where or "(the top level)", payload
    items = (payload.items() if isinstance(payload, dict)
             else enumerate(payload) if isinstance(payload, (list, tuple)) else ())
    for key, value in items:
        found = _non_finite_at(value, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def json_text(payload: Any, *, pretty: bool = False) -> str:
    """``payload`` as one strict JSON document (no NaN/Infinity, which JSON has not) with a final newline.

    ``pretty``: indented with sorted keys (records people read: ``sink_modifier.json``);
    otherwise compact (results programs read: ``analysis.json``). A non-finite number is a
    ``ValueError`` naming where it sits, so no invalid JSON is ever written.
    """
    options = {"indent": 2, "sort_keys": True} if pretty else {"separators": (",", ":")}
    try:
        return json.dumps(payload, allow_nan=False, **options) + "\n"
    except ValueError as err:
        found = _non_finite_at(payload)
        if found is None:
            raise
        raise ValueError(
            f"cannot write JSON: {found[0]} is {found[1]!r}, which JSON cannot hold; "
            "a non-finite result means a diverged computation (check the inputs and settings that produced it)"
        ) from err


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
    created: list[Path] = []
    tmp = old = None
    try:
        _make_parents(output.parent, created)
        sweep_leftovers(output.parent, output.name)
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(output.name), dir=output.parent))
        write(tmp)
        if metadata is not None:
            (tmp / METADATA_FILE).write_text(json_text(metadata, pretty=True))
        _publishable_modes(tmp)
        if output.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(output.name, "old"), dir=output.parent))
            old.rmdir()
            output.rename(old)
        tmp.rename(output)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        # Any failure, Ctrl-C included, at any step: the disk is as before, or (when it came
        # after the rename) holds the complete new output only.
        published = tmp is not None and not tmp.exists() and output.exists()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists():
            if published:
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.rename(output)  # the previous output, back in place
        if not output.exists():
            _remove_created(created)
        raise
    return output


def write_file_atomically(output_file: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_file)`` on a temporary sibling of ``output_file``, then rename it into place.

    The temporary file keeps the target's suffix (writers such as ``savefig`` or onnx choose
    the format by it); an existing ``output_file`` is replaced in one step.
    """
    output = Path(output_file).resolve()
    if output.is_dir():
        raise FileExistsError(f"{output_file} is a folder; pass the path of a file to write")
    check_writable(output.parent, output_file)
    created: list[Path] = []
    existed = output.exists()
    tmp = None
    try:
        _make_parents(output.parent, created)
        sweep_leftovers(output.parent, output.name)
        fd, name = tempfile.mkstemp(prefix=temp_prefix(output.name), suffix=output.suffix, dir=output.parent)
        tmp = Path(name)
        os.close(fd)
        write(tmp)
        tmp.chmod(0o666 & ~_umask())
        os.replace(tmp, output)
    except BaseException:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if not existed and not output.exists():
            _remove_created(created)
        raise
    return Path(output_file)


def write_json_atomically(output_file: str | Path, payload: Any, *, pretty: bool = False) -> Path:
    """Write ``payload`` (see :func:`json_text`) to ``output_file`` atomically."""
    text = json_text(payload, pretty=pretty)  # serialise first: a bad payload leaves no temporary file
    return write_file_atomically(output_file, lambda tmp: tmp.write_text(text, encoding="utf-8"))
