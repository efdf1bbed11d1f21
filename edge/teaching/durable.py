"""Files that survive a power cut, readable by the group only: the enrollment store's way of writing.

Every write is atomic — a temporary file in the same folder, fsync, rename, fsync of the folder — and gets
FILE_MODE whatever the umask; folders made here get FOLDER_MODE (the web service reads through the group).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from teachcam.edge.errors import StoreError, StoreFullError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


FILE_MODE, FOLDER_MODE = 0o640, 0o750  # whatever the umask: the group (the web service) reads, others nothing


def make_folder(path: Path) -> None:
    """``path`` (and missing parents) with FOLDER_MODE."""
    if not path.is_dir():
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, FOLDER_MODE)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one (mode FILE_MODE)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
        with open(fd, "wb") as handle:
            os.fchmod(fd, FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreFullError(f"the disk holding {path.parent} is full; nothing was changed — free some space") from None
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise StoreError(f"cannot write to {path.parent} ({exc.strerror}); check its permissions") from None
        raise StoreError(f"cannot write {path} ({exc.strerror or exc})") from None
