"""The one output-safety rule of every command that writes: nothing it did not write is ever lost.

Every writer (``prune``, ``sweep``, ``export-onnx``, ``analyze``, the lm-eval task writer) claims
its output with :func:`claim_output` before any work and holds the claim until the final rename
(:func:`~sink_modifier.export.atomic.write_atomically` finds it). A claim refuses, in one line
naming the fix (exit 2 on the command line):

* an output that **is** one of the command's inputs, lies **inside** one, or **contains** one
  (the model folder, the data, the recipe), compared by device and inode along the resolved paths,
  so symlinks, ``..``, hard links and bind mounts cannot hide it;
* an existing output without ``--overwrite``;
* under ``--overwrite``, an output this tool did not write: a folder is replaceable only when it is
  empty or holds one of :data:`MANIFESTS` (a file only when its ``recognise`` check says ours);
* a second writer: an exclusive OS lock (``flock``) on ``.NAME.lock`` beside the output, taken
  before the checks above are final and released after the rename; a run that finds it taken stops
  at once naming the PID that holds it. A lock whose process died is released by the kernel, so a
  stale lock file never blocks (the next run takes it over).

Under the lock the leftovers of a killed writer are swept (:mod:`.leftovers`), and a previous
output restored from a killed replacement counts as existing: it is checked again like any output.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import socket
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from .output_path import check_writable

__all__ = [
    "MANIFESTS",
    "ForeignOutputError",
    "OutputBusyError",
    "OutputClaim",
    "OutputExistsError",
    "OutputIsInputError",
    "OutputKind",
    "claim_output",
    "fault_point",
    "held_claim",
    "lock_path",
]

# The files by which a folder says "sink-modifier wrote me" (prune, export-onnx, sweep, analyze,
# the lm-eval task writer); --overwrite replaces a non-empty folder only when it holds one.
MANIFESTS = ("sink_modifier.json", "onnx_export.json", "sweep.json", "analysis.json", "lm_eval_tasks.json")
_SHOWN_ENTRIES = 3
# Test-only fault injection (tests/test_output_safety.py): "PHASE:SIGNAL", e.g. "published:KILL".
FAULT_VARIABLE = "SINK_MODIFIER_TEST_FAULT"


class OutputKind(str, Enum):
    FOLDER = "folder"
    FILE = "file"


class OutputExistsError(FileExistsError):
    """The output exists and overwriting was not asked for (or it appeared during the run)."""


class OutputIsInputError(ValueError):
    """The output is, lies inside, or contains one of the command's inputs."""


class ForeignOutputError(ValueError):
    """``--overwrite`` of something this tool did not write."""


class OutputBusyError(ValueError):
    """Another process holds the output's lock."""


@dataclass
class OutputClaim:
    """A checked, locked output; :func:`~sink_modifier.export.atomic.write_atomically` publishes into it."""

    output: Path  # resolved
    kind: OutputKind
    overwrite: bool
    option: str
    recognise: Callable[[Path], bool] | None
    given: str = ""  # the path as the user wrote it, for messages
    created: list[Path] = field(default_factory=list)  # parent folders made for the lock, outermost first
    _fd: int | None = None
    _depth: int = 0

    def check_replaceable(self) -> None:
        """Refuse unless the output is absent or (``overwrite``) ours to replace; asked again at the rename."""
        if not os.path.lexists(self.output):
            return
        given = f"{self.option} {self.given or self.output}"
        if self.kind is OutputKind.FOLDER and not self.output.is_dir():
            raise OutputExistsError(f"{given} exists and is a file, not a folder; pass another {self.option} path")
        if self.kind is OutputKind.FILE and self.output.is_dir():
            raise OutputExistsError(f"{given} is a folder; pass the path of a file to write")
        if not self.overwrite:
            raise OutputExistsError(f"{given} already exists; pass --overwrite to replace it (only outputs "
                                    "sink-modifier wrote are replaced), or another " + self.option)
        foreign = self._foreign_entries()
        if foreign is None:
            return
        if self.kind is OutputKind.FILE:
            raise ForeignOutputError(f"{given} exists and was not written by sink-modifier, so --overwrite leaves "
                                     f"it alone; pass another {self.option}, or remove it yourself")
        shown = ", ".join(foreign[:_SHOWN_ENTRIES]) + (f" and {len(foreign) - _SHOWN_ENTRIES} more"
                                                        if len(foreign) > _SHOWN_ENTRIES else "")
        raise ForeignOutputError(
            f"{given} holds files sink-modifier did not write ({shown}; no {' / '.join(MANIFESTS[:3])} of ours), "
            f"so --overwrite leaves it alone; pass another {self.option}, or remove the folder yourself"
        )

    def _foreign_entries(self) -> list[str] | None:
        """``None`` when replacing is fine (empty, or ours); else the entries that are not ours."""
        if self.kind is OutputKind.FILE:
            return None if self.recognise is not None and self.recognise(self.output) else [self.output.name]
        entries = sorted(os.listdir(self.output))
        if not entries or any((self.output / name).is_file() for name in MANIFESTS):
            return None
        if self.recognise is not None and self.recognise(self.output):
            return None
        return entries


_claims: dict[Path, OutputClaim] = {}


def lock_path(output: Path) -> Path:
    return output.parent / f".{output.name}.lock"


def held_claim(output: str | Path) -> OutputClaim | None:
    """The claim this process holds on ``output``, if any."""
    return _claims.get(_resolved(Path(output)))


@contextmanager
def claim_output(
    output: str | Path,
    *,
    protected: Iterable[str | Path | None] = (),
    overwrite: bool = False,
    kind: OutputKind = OutputKind.FOLDER,
    option: str = "--output",
    recognise: Callable[[Path], bool] | None = None,
) -> Iterator[OutputClaim]:
    """Check ``output`` against the rule (module docstring), lock it, and hold it for the ``with`` block.

    ``protected``: the command's inputs (``None`` entries and tensors' placeholders are skipped).
    Re-entrant within a process (a command and the library function it calls both claim the same
    output): the inner claim re-checks the inputs it names and shares the lock.
    """
    path = _resolved(Path(output))
    held = _claims.get(path)
    _refuse_inputs(path, protected, option, output)
    if held is not None:
        held._depth += 1
        try:
            yield held
        finally:
            held._depth -= 1
        return
    check_writable(path.parent, output, option)
    claim = OutputClaim(path, kind, overwrite, option, recognise, given=str(output))
    from .leftovers import sweep_leftovers

    try:
        _make_parents(path.parent, claim.created)
        claim._fd = _lock(path, option, output)
        fault_point("locked")
        # Under the lock no live writer of ours is at work here: what a killed one left is swept
        # (also when this run is refused next), and a restored previous output counts as existing.
        sweep_leftovers(path.parent, path.name)
        claim.check_replaceable()
        _claims[path] = claim
        yield claim
    finally:
        _claims.pop(path, None)
        _unlock(path, claim._fd)
        if not os.path.lexists(path):
            _remove_created(claim.created)


def _resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _existing_chain(path: Path) -> list[tuple[int, int]]:
    """The (device, inode) of ``path`` (if it exists) and of every ancestor, nearest first."""
    chain, current = [], Path(os.path.realpath(path))
    while True:
        identity = _identity(current)
        if identity is not None:
            chain.append(identity)
        if current.parent == current:
            return chain
        current = current.parent


def _relation(output: Path, protected: Path) -> str | None:
    """How ``output`` stands to the input ``protected``: ``"is"``, ``"inside"``, ``"contains"`` or ``None``."""
    target = _identity(protected)
    if target is None:
        return None
    out = _identity(output)
    if out is not None and out == target:
        return "is"
    if target in _existing_chain(output)[1 if out is not None else 0:]:
        return "inside"
    if out is not None and out in _existing_chain(protected)[1:]:
        return "contains"
    return None


def _refuse_inputs(path: Path, protected: Iterable, option: str, given: str | Path) -> None:
    for item in protected:
        if not isinstance(item, (str, os.PathLike)):
            continue  # in-memory inputs (token tensors) have no path
        relation = _relation(path, Path(item))
        if relation is None:
            continue
        how = {"is": "is", "inside": "lies inside", "contains": "contains"}[relation]
        raise OutputIsInputError(
            f"{option} {given} {how} the input {item}: writing there would destroy what the command reads; "
            f"pass an {option} outside the input"
        )


def _make_parents(folder: Path, created: list[Path]) -> None:
    """``mkdir -p folder``, appending each folder it creates to ``created`` (outermost first) as it
    goes, so a run that fails or is interrupted right here still removes them again."""
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


def _writer_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}"


def _lock(path: Path, option: str, given: str | Path) -> int:
    """Take the exclusive lock of ``path``; refuse at once naming the holder if another process has it."""
    lock = lock_path(path)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = _read_holder(fd)
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise OutputBusyError(
                f"{option} {given} is being written by another sink-modifier run ({holder or 'pid unknown'}, lock "
                f"{lock}); wait for it to finish, or pass another {option}"
            ) from None
        # The holder before us may have unlinked the file between our open and our flock: then the
        # lock we hold is on a name nobody else sees, so take the lock of the current file instead.
        if _identity(lock) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {_writer_tag()}\n".encode())
    return fd


def _read_holder(fd: int) -> str:
    try:
        return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        return ""


def _unlock(path: Path, fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.unlink(lock_path(path))  # while still holding it: see _lock for the race this leaves safe
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


_SIGNALS = {"KILL": signal.SIGKILL, "INT": signal.SIGINT, "STOP": signal.SIGSTOP}


def fault_point(phase: str) -> None:
    """Test-only: signal this process at ``phase`` when ``SINK_MODIFIER_TEST_FAULT`` is ``PHASE:SIGNAL``.

    Phases: ``locked`` (claimed, before any work), ``tmp-created``, ``written`` (the new output
    complete in its temporary folder), ``moved-aside`` (a replaced output moved to ``.NAME.old-*``),
    ``published`` (the new output in place, the old not yet deleted).
    """
    wanted = os.environ.get(FAULT_VARIABLE)
    if not wanted:
        return
    at, _, name = wanted.partition(":")
    if at == phase:
        os.kill(os.getpid(), _SIGNALS[name or "KILL"])
