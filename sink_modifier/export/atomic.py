"""Atomic writes: a folder, a file or a JSON document appears complete or not at all.

Everything is written into a hidden temporary sibling of the target and renamed into place
at the end, so an interrupted or failed save never leaves a half-written checkpoint,
``.onnx`` file or ``analysis.json`` where a reader would find it, nor the temporary sibling,
nor parent folders the write created. The one writer of the package: ``prune``, ``sweep``,
``export-onnx``, ``analyze`` and the lm-eval task writer all write through it.

What may be written where is :mod:`.output_guard`'s rule (not an input, not taken unless
``--overwrite`` of an output of ours, one writer at a time): :func:`write_atomically` publishes
under the claim the command took before its work, or claims the output itself for the write.
The final rename never replaces an output that appeared meanwhile unless overwriting was asked
for (``renameat2(RENAME_NOREPLACE)`` where the filesystem has it). Temporary names carry the
writer's pid (:mod:`.leftovers`); the siblings a killed writer left are swept under the claim.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .leftovers import temp_prefix
from .output_guard import (
    OutputClaim,
    OutputExistsError,
    OutputKind,
    _make_parents,
    _refuse_inputs,
    _remove_created,
    claim_output,
    fault_point,
    held_claim,
)
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


def check_output_dir(output_dir: str | Path, overwrite: bool = False, protected: Iterable = ()) -> Path:
    """Fail early (before any expensive work) if writing the folder ``output_dir`` breaks the output rule.

    The rule of :mod:`.output_guard` without taking the lock (a command holds it with
    :func:`~.output_guard.claim_output` for the whole run).
    """
    return _check(output_dir, overwrite, protected, OutputKind.FOLDER)


def check_output_file(output_file: str | Path, overwrite: bool = False, protected: Iterable = (),
                      recognise: Callable[[Path], bool] | None = None) -> Path:
    """Fail early if writing the file ``output_file`` breaks the output rule (see :func:`check_output_dir`)."""
    return _check(output_file, overwrite, protected, OutputKind.FILE, recognise)


def _check(output: str | Path, overwrite: bool, protected: Iterable, kind: OutputKind,
           recognise: Callable[[Path], bool] | None = None) -> Path:
    path = Path(output)
    resolved = Path(os.path.realpath(path))
    _refuse_inputs(resolved, protected, "--output", output)
    check_writable(resolved.parent, output)
    if held_claim(resolved) is None:
        OutputClaim(resolved, kind, overwrite, "--output", recognise, given=str(output)).check_replaceable()
    return path


def _rename_no_replace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``; ``FileExistsError`` if ``target`` exists (atomic where the
    filesystem supports ``RENAME_NOREPLACE``, else a check right before a plain rename)."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is not None:
        at_fdcwd, rename_noreplace = -100, 1
        if renameat2(at_fdcwd, os.fsencode(source), at_fdcwd, os.fsencode(target), rename_noreplace) == 0:
            return
        code = ctypes.get_errno()
        if code == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, os.strerror(code), str(target))
        if code not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
            raise OSError(code, os.strerror(code), str(source), None, str(target))
    if os.path.lexists(target):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def _appeared(output: str | Path, option: str) -> OutputExistsError:
    return OutputExistsError(f"{option} {output} appeared while this run was writing it; it was left as it is and "
                             f"this run's result discarded: pass another {option}, or --overwrite to replace it")


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
    protected: Iterable = (),
) -> Path:
    """Call ``write(tmp_dir)``, add ``sink_modifier.json``, then rename ``tmp_dir`` to ``output_dir``.

    Under the claim the caller holds on ``output_dir`` (else one taken here with ``overwrite``
    and ``protected``, see :func:`~.output_guard.claim_output`). An existing output is replaced
    only when the claim allows it (checked again right before): it is moved aside first and
    deleted only after the new folder is in place.
    """
    with claim_output(output_dir, protected=protected, overwrite=overwrite) as claim:
        output = claim.output
        tmp = old = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(output.name), dir=output.parent))
            fault_point("tmp-created")
            write(tmp)
            if metadata is not None:
                (tmp / METADATA_FILE).write_text(json_text(metadata, pretty=True))
            _publishable_modes(tmp)
            fault_point("written")
            if not claim.overwrite and os.path.lexists(output):
                raise _appeared(claim.given, claim.option)
            claim.check_replaceable()  # under --overwrite too: what appeared meanwhile may not be ours
            if os.path.lexists(output):
                old = Path(tempfile.mkdtemp(prefix=temp_prefix(output.name, "old"), dir=output.parent))
                old.rmdir()
                output.rename(old)
                fault_point("moved-aside")
            try:
                _rename_no_replace(tmp, output)
            except FileExistsError:
                raise _appeared(claim.given, claim.option) from None
            fault_point("published")
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
                elif not os.path.lexists(output):
                    old.rename(output)  # the previous output, back in place
            raise
    return output


def write_file_atomically(output_file: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_file)`` on a temporary sibling of ``output_file``, then rename it into place.

    The temporary file keeps the target's suffix (writers such as ``savefig`` or onnx choose
    the format by it). Under a claim on ``output_file`` (a command's single-file output) an
    existing file is replaced only when the claim allows it; otherwise (a file inside a folder
    being written) it is replaced in one step.
    """
    output = Path(output_file).resolve()
    if output.is_dir():
        raise FileExistsError(f"{output_file} is a folder; pass the path of a file to write")
    claim = held_claim(output)
    check_writable(output.parent, output_file)
    created: list[Path] = []
    existed = output.exists()
    tmp = None
    try:
        _make_parents(output.parent, created)
        fd, name = tempfile.mkstemp(prefix=temp_prefix(output.name), suffix=output.suffix, dir=output.parent)
        tmp = Path(name)
        os.close(fd)
        write(tmp)
        tmp.chmod(0o666 & ~_umask())
        if claim is None:
            os.replace(tmp, output)
        else:
            fault_point("written")
            if not claim.overwrite and os.path.lexists(output):
                raise _appeared(claim.given, claim.option)
            claim.check_replaceable()
            try:
                os.replace(tmp, output) if os.path.lexists(output) else _rename_no_replace(tmp, output)
            except FileExistsError:
                raise _appeared(claim.given, claim.option) from None
            fault_point("published")
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
