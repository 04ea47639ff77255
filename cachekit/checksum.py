"""File hashing: sha256 (the bundle's identity for content) and git blob sha1 (the hub's etag)."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable
from typing import BinaryIO

CHUNK = 4 * 1024 * 1024


def sha256_stream(stream: BinaryIO, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Hash a readable binary stream to the end; return (hex digest, bytes read)."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    while True:
        n = stream.readinto(view)
        if not n:
            break
        h.update(view[:n])
        total += n
        if progress:
            progress(n)
    return h.hexdigest(), total


def sha256_file(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> str:
    with open(path, "rb", buffering=0) as f:
        return sha256_stream(f, progress)[0]


def git_blob_sha1_bytes(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def copy_and_hash(src: BinaryIO, dst: str | os.PathLike, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """Copy a stream into a new file while hashing it, in one pass; fsync before returning."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    with open(dst, "xb", buffering=0) as out:
        while True:
            n = src.readinto(view)
            if not n:
                break
            h.update(view[:n])
            _write_all(out, view[:n])
            total += n
            if progress:
                progress(n)
        os.fsync(out.fileno())
    return h.hexdigest(), total


def copy_range_and_hash(src_fd: int, offset: int, size: int, dst: str | os.PathLike,
                        progress: Callable[[int], None] | None = None) -> str:
    """Copy `size` bytes at `offset` of the open file `src_fd` into a new file `dst` in the
    kernel (copy_file_range; pread/write where unsupported), fsync it, then hash what was
    written: the digest describes exactly the bytes that landed. Returns the sha256 of `dst`.
    The source's file position is never used, so threads may share `src_fd`."""
    with open(dst, "xb", buffering=0) as fout:
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(src_fd, fout.fileno(), size - done, offset + done)
                if n == 0:
                    break  # source shorter than announced: the hash below will say so
                done += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) or done:
                raise
            _copy_slice(src_fd, offset, fout, size)
        os.fsync(fout.fileno())
    with open(dst, "rb", buffering=0) as f:
        return sha256_stream(f, progress)[0]


def _copy_slice(src_fd: int, offset: int, fout, size: int) -> None:
    done = 0
    while done < size:
        data = os.pread(src_fd, min(CHUNK, size - done), offset + done)
        if not data:
            break
        _write_all(fout, memoryview(data))
        done += len(data)


def _write_all(out, data: memoryview) -> None:
    """Raw writes may be short (a size limit, a full disk): loop so the error surfaces."""
    while data:
        written = out.write(data)
        if not written:
            raise OSError(28, "No space left on device")
        data = data[written:]
