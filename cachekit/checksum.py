"""File hashing: sha256 (the bundle's identity for content) and git blob sha1 (the hub's etag)."""

from __future__ import annotations

import errno
import hashlib
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_sha1(path: str | os.PathLike) -> str:
    """The git object id of a file, which the hub uses as the ETag of non-LFS files."""
    size = os.path.getsize(path)
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


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


def copy_range_and_hash(src: str | os.PathLike, offset: int, size: int, dst: str | os.PathLike,
                        progress: Callable[[int], None] | None = None) -> str:
    """Copy `size` bytes at `offset` of `src` into a new file `dst` in the kernel
    (copy_file_range; read/write where unsupported), fsync it, then hash what was written:
    the digest describes exactly the bytes that landed. Returns the sha256 of `dst`."""
    with open(src, "rb", buffering=0) as fin, open(dst, "xb", buffering=0) as fout:
        done = 0
        try:
            while done < size:
                n = os.copy_file_range(fin.fileno(), fout.fileno(), size - done, offset + done)
                if n == 0:
                    break  # source shorter than announced: the hash below will say so
                done += n
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL) or done:
                raise
            fin.seek(offset)
            _copy_slice(fin, fout, size)
        os.fsync(fout.fileno())
    with open(dst, "rb", buffering=0) as f:
        return sha256_stream(f, progress)[0]


def _copy_slice(fin, fout, size: int) -> None:
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    left = size
    while left:
        n = fin.readinto(view[: min(left, CHUNK)])
        if not n:
            break
        _write_all(fout, view[:n])
        left -= n


def _write_all(out, data: memoryview) -> None:
    """Raw writes may be short (a size limit, a full disk): loop so the error surfaces."""
    while data:
        written = out.write(data)
        if not written:
            raise OSError(28, "No space left on device")
        data = data[written:]


def hash_many(paths: Iterable[Path], workers: int | None = None,
              progress: Callable[[int], None] | None = None) -> dict[Path, str | OSError]:
    """sha256 of many files on several threads (hashlib releases the GIL on large buffers).

    A file that cannot be read maps to its OSError instead of a digest.
    """
    paths = list(paths)
    workers = workers or min(4, os.cpu_count() or 1)

    def one(p: Path) -> str | OSError:
        try:
            return sha256_file(p, progress)
        except OSError as exc:
            return exc

    if workers <= 1 or len(paths) <= 1:
        return {p: one(p) for p in paths}
    # Largest first, so one big file does not start last and leave the other threads idle.
    order = sorted(paths, key=lambda p: _size_or_zero(p), reverse=True)
    with ThreadPoolExecutor(workers) as pool:
        return dict(zip(order, pool.map(one, order), strict=True))


def _size_or_zero(p: Path) -> int:
    try:
        return p.stat().st_size
    except OSError:
        return 0
