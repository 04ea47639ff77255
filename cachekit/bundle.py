"""Reading bundles (a folder or one .tar) without trusting them, and packing a folder into a tar.

A bundle is `manifest.json` plus `objects/<aa>/<sha256>`: every distinct file once, named by its
content. Readers never follow a link: a folder bundle is opened component by component relative
to its root with O_NOFOLLOW (every object a regular file inside the bundle), a tar is read member
by member as it streams, manifest first. What a reader finds that cachekit never writes (links,
devices, unlisted or duplicate members) is a `Problem`; after `NAMED_PROBLEMS` of them the rest
are only counted, and reading stops at `MEMBER_BOUND`, so a hostile archive of 200,000 members
costs milliseconds and a few lines. `cachekit.check` adds the manifest's objects and hashes.

Over 400 lines on purpose: the folder and the tar reader are two halves of one contract
(`BundleReader`: the same members, problems, tally and bounds); `pack_tar` writes what they read.
"""

from __future__ import annotations

import errno
import io
import os
import posixpath
import re
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import manifest as mf
from ._fs import remove_quietly, temp_sibling, write_error
from .errors import BundleError, NotFoundError

NAMED_PROBLEMS = 5  # unlisted or unsafe members named one by one
MEMBER_BOUND = 1000  # after this many unlisted or unsafe members, stop reading and report the count
_OBJECT_DIR = re.compile(r"^(objects(/[0-9a-f]{2})?|wheels)$")  # folders cachekit writes
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


@dataclass(frozen=True)
class Problem:
    """One defect found by verification. `kind`: missing, truncated, corrupt, unlisted, unsafe."""

    kind: str
    item: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.item}" + (f" ({self.detail})" if self.detail else "")

    @property
    def member(self) -> str:
        """The bundle member the problem is about (without the `[repo/file]` owner note)."""
        return self.item.split(" [", 1)[0]


class _Tally:
    """Member problems: the first few named, the rest counted up to MEMBER_BOUND."""

    def __init__(self) -> None:
        self.named: list[Problem] = []
        self.more = 0

    def add(self, problem: Problem) -> bool:
        """Record one; False once the bound is reached and reading should stop."""
        if len(self.named) < NAMED_PROBLEMS:
            self.named.append(problem)
        else:
            self.more += 1
        return len(self.named) + self.more < MEMBER_BOUND

    def problems(self, stopped: bool) -> list[Problem]:
        out = list(self.named)
        if self.more:
            why = f"reading stopped after {MEMBER_BOUND} members cachekit never writes" if stopped \
                else "not named one by one"
            out.append(Problem("unlisted", f"{self.more} more members", why))
        return out


class BundleReader:
    """Common interface of folder and tar bundles."""

    path: Path

    def manifest(self) -> mf.Manifest:
        """The parsed, validated manifest; BundleError if there is none or it is invalid."""
        raise NotImplementedError

    def member_problems(self, m: mf.Manifest) -> list[Problem]:
        """Everything in the bundle that is not manifest.json or one of its objects (bounded)."""
        raise NotImplementedError

    def member_size(self, rel: str) -> int | None:
        """Bytes available for a listed file (an object or a wheel), None when absent;
        BundleError when it is not a regular file of the bundle (a link, a device)."""
        raise NotImplementedError

    @contextmanager
    def member_fd(self, rel: str) -> Iterator[tuple[int, int, int]]:
        """(fd, byte offset, size) of a listed file's bytes, for in-kernel copies and pread."""
        raise NotImplementedError
        yield  # pragma: no cover

    def object_size(self, sha256: str) -> int | None:
        return self.member_size(mf.object_path(sha256))

    def object_fd(self, sha256: str):
        return self.member_fd(mf.object_path(sha256))

    @contextmanager
    def open_member(self, rel: str) -> Iterator[BinaryIO]:
        with self.member_fd(rel) as (fd, offset, size):
            yield _Slice(fd, offset, size)

    def open_object(self, sha256: str):
        return self.open_member(mf.object_path(sha256))

    def link_object(self, sha256: str, dst: Path) -> None:
        raise BundleError(f"{self.path}: only a folder bundle can be hard-linked into the cache",
                          hint="import without --link")

    def close(self) -> None:
        pass

    def __enter__(self) -> BundleReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_bundle(path: str | os.PathLike) -> BundleReader:
    """Open a folder or .tar bundle for reading; raise NotFoundError/BundleError if it is neither."""
    p = Path(path)
    if p.is_dir():
        return DirBundle(p)
    if p.is_file():
        return TarBundle(p)
    raise NotFoundError(f"no bundle at {p}", hint="give the folder or .tar that `cachekit prefetch --out` wrote")


class DirBundle(BundleReader):
    """A bundle folder. The folder itself may be reached through a link (the user named it);
    nothing inside it is: each component is opened relative to its parent with O_NOFOLLOW and
    checked with lstat first, so a link, device or fifo is refused without being opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise BundleError(f"cannot read the bundle folder {path}: {exc.strerror}") from None
        self._real = os.path.realpath(f"/proc/self/fd/{self._root}") if os.path.isdir("/proc/self/fd") \
            else os.path.realpath(path)

    def close(self) -> None:
        if self._root >= 0:
            os.close(self._root)
            self._root = -1

    def _open(self, rel: str, folder: bool = False) -> int:
        """A new fd for `rel` inside the bundle. FileNotFoundError when absent; BundleError when
        a component is a link, or the last one is not a regular file (a folder with `folder`)."""
        parts = rel.split("/")
        fd = self._root
        try:
            for i, part in enumerate(parts):
                here = "/".join(parts[: i + 1])
                want_dir = folder or i < len(parts) - 1
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise BundleError(f"{here} is a link; bundles hold regular files only")
                if want_dir != stat.S_ISDIR(st.st_mode) or not (want_dir or stat.S_ISREG(st.st_mode)):
                    raise BundleError(f"{here} is not a {'folder' if want_dir else 'regular file'}")
                try:
                    nfd = os.open(part, _OPEN | (os.O_DIRECTORY if want_dir else 0), dir_fd=fd)
                except OSError as exc:
                    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                        raise BundleError(f"{here} changed into a link or file while being read") from None
                    raise
                if fd != self._root:
                    os.close(fd)
                fd = nfd
                if os.fstat(fd).st_ino != st.st_ino:
                    raise BundleError(f"{here} changed while being read")
            self._check_inside(fd, rel)
            return fd
        except BaseException:
            if fd != self._root:
                os.close(fd)
            raise

    def _check_inside(self, fd: int, rel: str) -> None:
        if not os.path.isdir("/proc/self/fd"):
            return
        real = os.path.realpath(f"/proc/self/fd/{fd}")
        if not real.startswith(self._real.rstrip("/") + "/"):
            raise BundleError(f"{rel} resolves outside the bundle ({real})")

    def manifest(self) -> mf.Manifest:
        try:
            fd = self._open(mf.MANIFEST_NAME)
        except FileNotFoundError:
            raise BundleError(f"{self.path} has no manifest.json (an interrupted prefetch leaves none; rerun it)") from None
        except BundleError as exc:
            raise BundleError(f"{self.path}: {exc}") from None
        with open(fd, "rb") as f:
            return mf.parse(f.read())

    def member_problems(self, m: mf.Manifest) -> list[Problem]:
        listed = m.members()
        tally = _Tally()

        def walk(dir_fd: int, rel: str) -> bool:
            for name in sorted(os.listdir(dir_fd)):
                child = f"{rel}/{name}" if rel else name
                if child == ".partial":  # a prefetch in progress (never read by import)
                    continue
                problem = None
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(name, dir_fd=dir_fd)
                    inside = posixpath.normpath(posixpath.join(rel, target))
                    if target.startswith("/") or inside == ".." or inside.startswith("../"):
                        problem = Problem("unsafe", child, f"link leaving the bundle -> {target}")
                    else:
                        problem = Problem("unsafe", child, f"a link (-> {target}); bundles hold regular files only")
                elif stat.S_ISDIR(st.st_mode):
                    if _OBJECT_DIR.match(child):
                        sub = self._open(child, folder=True)
                        try:
                            if not walk(sub, child):
                                return False
                        finally:
                            os.close(sub)
                        continue
                    problem = Problem("unlisted", child + "/", "a folder cachekit never writes")
                elif not stat.S_ISREG(st.st_mode):
                    problem = Problem("unsafe", child, "not a regular file (device, fifo or socket)")
                elif child != mf.MANIFEST_NAME and child not in listed:
                    problem = Problem("unlisted", child)
                if problem and not tally.add(problem):
                    return False
            return True

        finished = walk(self._root, "")
        return tally.problems(stopped=not finished)

    def member_size(self, rel: str) -> int | None:
        try:
            fd = self._open(rel)
        except FileNotFoundError:
            return None
        try:
            return os.fstat(fd).st_size
        finally:
            os.close(fd)

    @contextmanager
    def member_fd(self, rel: str) -> Iterator[tuple[int, int, int]]:
        fd = self._open(rel)
        try:
            yield fd, 0, os.fstat(fd).st_size
        finally:
            os.close(fd)

    def link_object(self, sha256: str, dst: Path) -> None:
        """Hard-link the object to `dst` (never a link it might have become), checking that
        `dst` is the very inode that was opened without following links."""
        with self.object_fd(sha256) as (fd, _, _):
            dir_fd = self._open(posixpath.dirname(mf.object_path(sha256)), folder=True)
            try:
                os.link(sha256, dst, src_dir_fd=dir_fd, follow_symlinks=False)
            finally:
                os.close(dir_fd)
            want, got = os.fstat(fd), os.lstat(dst)
            if (want.st_dev, want.st_ino) != (got.st_dev, got.st_ino) or not stat.S_ISREG(got.st_mode):
                os.unlink(dst)
                raise BundleError(f"{mf.object_path(sha256)} changed while being linked")


class TarBundle(BundleReader):
    """A bundle in one uncompressed tar, manifest.json first. Members are checked as they
    stream (headers only; data is skipped), against the manifest, and reading stops at
    MEMBER_BOUND members cachekit never writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "rb")  # noqa: SIM115 (closed by close())
        self._file_size = os.fstat(self._f.fileno()).st_size
        try:
            self._tar = tarfile.open(fileobj=self._f, mode="r:")
        except (tarfile.TarError, OSError) as exc:
            self._f.close()
            raise BundleError(f"{path} is not a readable tar archive: {exc}") from None
        self._manifest: mf.Manifest | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._problems: list[Problem] | None = None

    def close(self) -> None:
        self._tar.close()
        self._f.close()

    def _next(self) -> tarfile.TarInfo | None:
        try:
            return self._tar.next()
        except (tarfile.TarError, OSError) as exc:
            raise BundleError(f"{self.path} is not a readable tar archive: {exc}") from None

    def manifest(self) -> mf.Manifest:
        if self._manifest is None:
            m = self._next()
            while m is not None and m.isdir() and m.name.rstrip("/") in ("", "."):
                m = self._next()
            if m is None or _member_name(m) != mf.MANIFEST_NAME:
                raise BundleError(f"{self.path}: the first member is {m.name if m else 'nothing'!r}, not "
                                  "manifest.json (cachekit writes it first so that a tar can be read as it streams)",
                                  hint="verify and import the bundle folder, or write the tar with `cachekit prefetch`")
            if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
                raise BundleError(f"{self.path}: manifest.json is not a regular file")
            self._manifest = mf.parse(self._tar.extractfile(m).read())
        return self._manifest

    def member_problems(self, m: mf.Manifest) -> list[Problem]:
        if self._problems is None:
            self._problems = self._scan(m)
        return list(self._problems)

    def _scan(self, m: mf.Manifest) -> list[Problem]:
        listed = m.members()
        tally = _Tally()
        while True:
            member = self._next()
            if member is None:
                return tally.problems(stopped=False)
            problem = self._check_member(member, listed)
            if problem and not tally.add(problem):
                return tally.problems(stopped=True)

    def _check_member(self, m: tarfile.TarInfo, listed: set[str]) -> Problem | None:
        name = _member_name(m)
        if not name or name == ".":
            return None
        try:
            mf.check_relpath(name, "archive member")
        except BundleError as exc:
            return Problem("unsafe", m.name, str(exc).split(": ", 1)[0])
        if m.issym() or m.islnk():
            return Problem("unsafe", name, f"link to {m.linkname!r}; bundles hold regular files only")
        if m.isdir():
            return None if _OBJECT_DIR.match(name) else Problem("unlisted", name + "/", "a folder cachekit never writes")
        if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            return Problem("unsafe", name, "not a regular file (device, fifo, socket or sparse file)")
        if name == mf.MANIFEST_NAME or name in self._members:
            return Problem("unsafe", name, "duplicate archive member")
        if name not in listed:
            return Problem("unlisted", name)
        self._members[name] = m
        return None

    def _member(self, rel: str) -> tarfile.TarInfo | None:
        self.member_problems(self.manifest())
        return self._members.get(rel)

    def member_size(self, rel: str) -> int | None:
        m = self._member(rel)
        if m is None:
            return None
        return max(0, min(m.size, self._file_size - m.offset_data))  # a cut archive: what is there

    @contextmanager
    def member_fd(self, rel: str) -> Iterator[tuple[int, int, int]]:
        m = self._member(rel)
        if m is None:
            raise BundleError(f"{rel} is not in {self.path}")
        yield self._f.fileno(), m.offset_data, self.member_size(rel) or 0


def _member_name(m: tarfile.TarInfo) -> str:
    name = m.name[2:] if m.name.startswith("./") else m.name
    return name.rstrip("/") if m.isdir() else name


class _Slice(io.RawIOBase):
    """`size` bytes at `offset` of an fd, read with pread (threads may share the fd)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        self._fd, self._pos, self._end = fd, offset, offset + size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = min(len(b), self._end - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._fd, n, self._pos)
        b[: len(data)] = data
        self._pos += len(data)
        return len(data)


def pack_tar(folder: Path, out: Path, progress: Callable[[int], None] | None = None) -> None:
    """Write `folder` (a complete bundle) as one uncompressed tar, manifest first, atomically."""
    tmp = temp_sibling(out, "partial")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, folder / mf.MANIFEST_NAME, mf.MANIFEST_NAME)
            for obj in [*sorted((folder / "objects").rglob("*")), *sorted((folder / mf.WHEELS_DIR).glob("*.whl"))]:
                if obj.is_file():
                    _add(tar, obj, obj.relative_to(folder).as_posix())
                    if progress:
                        progress(obj.stat().st_size)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except OSError as exc:
        remove_quietly(tmp)
        raise write_error(exc, out) from exc
    except BaseException:
        remove_quietly(tmp)
        raise


def _add(tar: tarfile.TarFile, path: Path, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.size = path.stat().st_size
    info.mode = 0o644
    info.mtime = 0
    with open(path, "rb") as f:
        tar.addfile(info, f)
