"""What a session says when its files cannot be written: a full disk, a read-only file system.

The exceptions::

    OSError
     └── RegistryUnwritable      the registry (or a job's files) cannot be written: errno EROFS, EACCES, ...
          └── DiskFull           ... because the disk is full: errno ENOSPC

Both are ``OSError`` (with an ``errno``) so that ``except OSError`` code keeps working; their text
starts with what happened ("disk full: ...", "read-only file system: ..."), not with SQLite's words.
:func:`unwritable_reason` tells such a condition from other errors, whether SQLite or the OS raised it.
"""

from __future__ import annotations

import errno
import os
import sqlite3

__all__ = ["DISK_FULL", "DiskFull", "READ_ONLY", "RegistryUnwritable", "unwritable", "unwritable_reason"]

DISK_FULL = "disk full"
READ_ONLY = "read-only file system"
NO_PERMISSION = "no permission to write"
# SQLite reports a full disk as a "disk I/O error" when it cannot size its shared-memory file
# (32 KiB): below this much free space a vague I/O error is taken for a full disk.
LOW_SPACE_BYTES = 1 << 20

_ERRNOS = {errno.ENOSPC: DISK_FULL, errno.EDQUOT: DISK_FULL, errno.EROFS: READ_ONLY, errno.EACCES: NO_PERMISSION,
           errno.EPERM: NO_PERMISSION}
_REASON_ERRNO = {DISK_FULL: errno.ENOSPC, READ_ONLY: errno.EROFS, NO_PERMISSION: errno.EACCES}


class RegistryUnwritable(OSError):
    """The registry or a job's files cannot be written (its text says why, then what could not be done)."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.errno = code  # type: ignore[misc]
        self.reason = reason or message.partition(":")[0]  # e.g. "disk full"


class DiskFull(RegistryUnwritable):
    """The disk holding the registry or a job's files is full (``errno.ENOSPC``)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, errno.ENOSPC, DISK_FULL)


def unwritable(reason: str, message: str) -> RegistryUnwritable:
    """The exception for ``reason`` (:data:`DISK_FULL` gives a :class:`DiskFull`), its text ``reason: message``."""
    text = f"{reason}: {message}"
    return DiskFull(text) if reason == DISK_FULL else RegistryUnwritable(text, _REASON_ERRNO.get(reason), reason)


def unwritable_reason(folder: str, exc: BaseException) -> str | None:
    """Why ``exc`` says that ``folder`` cannot be written (e.g. :data:`DISK_FULL`), or None for other errors."""
    if isinstance(exc, RegistryUnwritable):
        return exc.reason
    if isinstance(exc, OSError):
        return _ERRNOS.get(exc.errno or 0)
    if not isinstance(exc, sqlite3.Error):
        return None
    name = getattr(exc, "sqlite_errorname", "")  # Python >= 3.11; the message otherwise
    text = str(exc)
    if name == "SQLITE_FULL" or "disk is full" in text:
        return DISK_FULL
    readonly = name.startswith("SQLITE_READONLY") or "readonly database" in text
    if readonly or name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR")) or "unable to open" in text \
            or "disk I/O error" in text:
        return _probe(folder) or ("read-only registry" if readonly else None)
    return None


def _probe(folder: str) -> str | None:
    """What the file system says of ``folder``: read-only, full, not ours to write — or None."""
    while folder and not os.path.exists(folder):
        folder = os.path.dirname(folder)
    try:
        stats = os.statvfs(folder or "/")
    except OSError:
        return None
    if stats.f_flag & os.ST_RDONLY:
        return READ_ONLY
    if stats.f_bavail * stats.f_frsize < LOW_SPACE_BYTES:
        return DISK_FULL
    if not os.access(folder, os.W_OK):
        return NO_PERMISSION
    return None
