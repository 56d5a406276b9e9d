"""The temporary siblings of an atomic write, and what to do with those a killed writer left.

An atomic write builds ``.NAME.partial-PID@HOST-XXXXXXXX`` (and, while replacing an existing
output, moves the old one to ``.NAME.old-PID@HOST-XXXXXXXX``) beside ``NAME``. A writer that is
interrupted cleans up after itself, but one killed outright (``kill -9``, out of memory, power
loss) cannot, so before the next write of ``NAME`` its siblings are looked at: those whose
writer's pid is no longer alive on this host are removed (one line on stderr says so), except
an ``.old`` folder while ``NAME`` itself is missing: that is the previous output, killed
mid-replacement, and it is renamed back. Those of a live process, of another host (a shared
filesystem) or without a recorded pid (written by an older version) are only reported, since
another run may still be writing them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Leftover", "find_leftovers", "sweep_leftovers", "temp_prefix"]

KINDS = ("partial", "old")


def _host() -> str:
    # Only [A-Za-z0-9._] so the name splits unambiguously at the "-" before mkdtemp's suffix
    # (whose characters are [a-z0-9_]).
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"


def temp_prefix(name: str, kind: str = "partial", pid: int | None = None) -> str:
    """The prefix of the temporary sibling of ``name`` that process ``pid`` (default: this one)
    writes on this host; ``mkdtemp(prefix=...)`` adds the random rest."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return f".{name}.{kind}-{os.getpid() if pid is None else pid}@{_host()}-"


@dataclass(frozen=True)
class Leftover:
    """A temporary sibling of an output, and who wrote it (``pid``/``host`` ``None``: not recorded)."""

    path: Path
    kind: str  # "partial" (being written) or "old" (the replaced output, moved aside)
    pid: int | None
    host: str | None

    @property
    def writer_gone(self) -> bool:
        """Its writer ran on this host and that process no longer exists."""
        return self.pid is not None and self.host == _host() and not _alive(self.pid)

    def describe(self) -> str:
        if self.pid is None:
            return f"{self.path} (no writer pid recorded: left by an older sink-modifier, or still being written)"
        where = "this host" if self.host == _host() else f"host {self.host}"
        state = "gone" if self.writer_gone else "still running" if self.host == _host() else "not checkable here"
        return f"{self.path} (written by pid {self.pid} on {where}, {state})"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def find_leftovers(parent: Path, name: str) -> list[Leftover]:
    """The temporary siblings of ``parent / name`` that some write left, oldest name first."""
    pattern = re.compile(
        rf"^\.{re.escape(name)}\.(?P<kind>{'|'.join(KINDS)})-(?:(?P<pid>\d+)@(?P<host>[A-Za-z0-9._]*)-)?[a-z0-9_]+"
    )
    found = []
    try:
        entries = sorted(parent.iterdir())
    except OSError:
        return []
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None:
            continue
        pid = int(match["pid"]) if match["pid"] else None
        found.append(Leftover(entry, match["kind"], pid, match["host"] if pid is not None else None))
    return found


def sweep_leftovers(parent: Path, name: str) -> list[Leftover]:
    """Remove the siblings of ``parent / name`` whose writer is gone; return (and report) the others."""
    from loguru import logger

    kept = []
    for leftover in find_leftovers(parent, name):
        target = parent / name
        if leftover.writer_gone and leftover.kind == "old" and not target.exists():
            leftover.path.rename(target)
            logger.warning(f"restored {target} from {leftover.path}: a replacement of it was killed "
                           f"(pid {leftover.pid} is gone) before the new {name} was in place")
        elif leftover.writer_gone:
            if leftover.path.is_dir() and not leftover.path.is_symlink():
                shutil.rmtree(leftover.path, ignore_errors=True)
            else:
                leftover.path.unlink(missing_ok=True)
            logger.warning(f"removed {leftover.path}: an interrupted write of {name} (pid {leftover.pid} is gone)")
        else:
            kept.append(leftover)
            logger.warning(f"left alone {leftover.describe()}; remove it by hand if no other run is writing {name}")
    return kept
