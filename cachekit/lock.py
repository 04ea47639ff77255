"""An exclusive lock file that a failed import may remove again.

filelock cannot be used here: removing a lock file other processes may be waiting on is only
safe with the lock-then-check protocol (after flock, the path must still name the locked inode,
else retry), which it does not do.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ._fs import write_error
from .changes import Changes


@contextmanager
def exclusive(path: Path, changes: Changes) -> Iterator[None]:
    """Hold an exclusive flock on `path` (created if absent, recorded in `changes`). Roll back
    inside the `with` block: a lock file this import created is then removed while still held."""
    while True:
        existed = os.path.lexists(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            raise write_error(exc, path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                now = os.stat(path, follow_symlinks=False)
                same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # removed by a failed import while we waited: lock the new one
    if not existed:
        changes.created(path)
    try:
        yield
    finally:
        os.close(fd)
