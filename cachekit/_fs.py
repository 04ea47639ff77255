"""Small filesystem helpers: atomic writes, temp names next to their target, tidy removal."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from .errors import WriteError


def temp_sibling(path: Path, tag: str = "tmp") -> Path:
    """A unique name in the same folder as `path`, so a rename onto `path` is atomic."""
    return path.with_name(f".{path.name}.{tag}-{uuid.uuid4().hex[:12]}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file, fsync and rename: readers see old or new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        remove_quietly(tmp)
        raise write_error(exc, path) from exc


def remove_quietly(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        pass


def write_error(exc: OSError, path: Path | str) -> WriteError:
    """Turn an OSError raised while writing into a WriteError that names the file."""
    reason = {
        errno.ENOSPC: "no space left on device",
        errno.EDQUOT: "disk quota exceeded",
        errno.EFBIG: "file too large for this filesystem or limit",
        errno.EACCES: "permission denied",
        errno.EROFS: "read-only filesystem",
    }.get(exc.errno or 0, exc.strerror or str(exc))
    return WriteError(f"could not write {path}: {reason}")
