"""Reading bundles (a folder or one .tar) safely, verifying them, and packing a folder into a tar.

A bundle is `manifest.json` plus `objects/<aa>/<sha256>`: every distinct file once, named by its
content. Readers refuse hostile members (absolute paths, `..`, links leaving the bundle, device
files, duplicates) before any byte is used.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from . import manifest as mf
from ._fs import remove_quietly, temp_sibling, write_error
from .checksum import hash_many, sha256_stream
from .errors import BundleError, NotFoundError, VerificationError


@dataclass(frozen=True)
class Problem:
    """One defect found by verification. `kind`: missing, truncated, corrupt, unlisted, unsafe, manifest."""

    kind: str
    item: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.kind}: {self.item}" + (f" ({self.detail})" if self.detail else "")


class BundleReader:
    """Common interface of folder and tar bundles."""

    path: Path

    def manifest(self) -> mf.Manifest:
        raise NotImplementedError

    def object_size(self, sha256: str) -> int | None:
        """Size of the stored object, or None when it is absent."""
        raise NotImplementedError

    @contextmanager
    def open_object(self, sha256: str) -> Iterator[BinaryIO]:
        raise NotImplementedError
        yield  # pragma: no cover

    def unlisted(self, listed: set[str]) -> list[Problem]:
        raise NotImplementedError

    def object_location(self, sha256: str) -> tuple[Path, int, int]:
        """(file, byte offset, size) of an object's bytes, for in-kernel copies."""
        raise NotImplementedError

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
    def __init__(self, path: Path) -> None:
        self.path = path

    def manifest(self) -> mf.Manifest:
        m = self.path / mf.MANIFEST_NAME
        if m.is_symlink() or (m.exists() and not m.is_file()):
            raise BundleError(f"{m} is not a regular file")
        try:
            return mf.parse(m.read_bytes())
        except FileNotFoundError:
            raise BundleError(f"{self.path} has no manifest.json (an interrupted prefetch leaves none; rerun it)") from None

    def _object(self, sha256: str) -> Path:
        return self.path / mf.object_path(sha256)

    def object_size(self, sha256: str) -> int | None:
        p = self._object(sha256)
        try:
            st = p.lstat()
        except FileNotFoundError:
            return None
        if not stat.S_ISREG(st.st_mode):
            raise BundleError(f"object {mf.object_path(sha256)} is not a regular file")
        return st.st_size

    def object_location(self, sha256: str) -> tuple[Path, int, int]:
        p = self._object(sha256)
        if p.is_symlink():
            raise BundleError(f"object {mf.object_path(sha256)} is a link")
        return p, 0, p.stat().st_size

    @contextmanager
    def open_object(self, sha256: str) -> Iterator[BinaryIO]:
        p = self._object(sha256)
        if p.is_symlink():
            raise BundleError(f"object {mf.object_path(sha256)} is a link")
        with open(p, "rb", buffering=0) as f:
            yield f

    def unlisted(self, listed: set[str]) -> list[Problem]:
        problems = []
        root = self.path.resolve()
        for dirpath, dirnames, filenames in os.walk(self.path):
            for name in sorted(dirnames + filenames):
                full = Path(dirpath, name)
                rel = full.relative_to(self.path).as_posix()
                if rel == ".partial" or rel.startswith(".partial/"):
                    continue
                st = full.lstat()
                if stat.S_ISLNK(st.st_mode):
                    target = (full.parent / os.readlink(full)).resolve()
                    if root != target and root not in target.parents:
                        problems.append(Problem("unsafe", rel, f"link leaving the bundle -> {os.readlink(full)}"))
                    else:
                        problems.append(Problem("unlisted", rel, "a link; bundles hold regular files only"))
                elif stat.S_ISDIR(st.st_mode):
                    continue
                elif not stat.S_ISREG(st.st_mode):
                    problems.append(Problem("unsafe", rel, "not a regular file (device, fifo or socket)"))
                elif rel != mf.MANIFEST_NAME and rel not in listed:
                    problems.append(Problem("unlisted", rel))
        return problems


class TarBundle(BundleReader):
    """A bundle in one uncompressed tar. Members are checked once, when the file is opened."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, "r:")
            members = self._tar.getmembers()
        except (tarfile.TarError, OSError) as exc:
            raise BundleError(f"{path} is not a readable tar archive: {exc}") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._unsafe: list[Problem] = []
        for m in members:
            name = m.name[2:] if m.name.startswith("./") else m.name
            name = name.rstrip("/") if m.isdir() else name
            if not name or name == ".":
                continue
            try:
                mf.check_relpath(name, "archive member")
            except BundleError as exc:
                self._unsafe.append(Problem("unsafe", m.name, str(exc).split(": ", 1)[0]))
                continue
            if m.issym() or m.islnk():
                self._unsafe.append(Problem("unsafe", name, f"link to {m.linkname!r}; bundles hold regular files only"))
                continue
            if m.isdir():
                continue
            if not m.isfile():
                self._unsafe.append(Problem("unsafe", name, "not a regular file (device, fifo or socket)"))
                continue
            if name in self._members:
                self._unsafe.append(Problem("unsafe", name, "duplicate archive member"))
                continue
            self._members[name] = m

    def close(self) -> None:
        self._tar.close()

    def _check_safe(self) -> None:
        if self._unsafe:
            raise VerificationError([str(p) for p in self._unsafe],
                                    hint="the archive holds members cachekit never writes; do not import it")

    def manifest(self) -> mf.Manifest:
        self._check_safe()
        m = self._members.get(mf.MANIFEST_NAME)
        if m is None:
            raise BundleError(f"{self.path} has no manifest.json")
        return mf.parse(self._tar.extractfile(m).read())

    def object_size(self, sha256: str) -> int | None:
        m = self._members.get(mf.object_path(sha256))
        return None if m is None else m.size

    def object_location(self, sha256: str) -> tuple[Path, int, int]:
        self._check_safe()
        m = self._members[mf.object_path(sha256)]
        return self.path, m.offset_data, m.size

    @contextmanager
    def open_object(self, sha256: str) -> Iterator[BinaryIO]:
        self._check_safe()
        m = self._members[mf.object_path(sha256)]
        f = self._tar.extractfile(m)
        try:
            yield _Readinto(f)
        finally:
            f.close()

    def unlisted(self, listed: set[str]) -> list[Problem]:
        extra = [Problem("unlisted", n) for n in self._members if n != mf.MANIFEST_NAME and n not in listed]
        return list(self._unsafe) + extra


class _Readinto(io.RawIOBase):
    """Give tarfile's member stream a readinto() for the hashing loops."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        data = self._f.read(len(b))
        b[: len(data)] = data
        return len(data)


def _owners(m: mf.Manifest) -> dict[str, str]:
    """sha256 -> a human name of the first file that uses it (repo@commit:path)."""
    out: dict[str, str] = {}
    for e in m.entries:
        for f in e.files:
            out.setdefault(f.sha256, f"{e.repo_id}/{f.path}")
    return out


def verify(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> tuple[mf.Manifest, list[Problem]]:
    """Hash every object of a bundle against its manifest; return the manifest and all problems.

    Raises BundleError only when no manifest can be read at all (nothing else can be checked).
    """
    with open_bundle(path) as reader:
        try:
            m = reader.manifest()
        except VerificationError as exc:
            return None, [Problem("unsafe", p) for p in exc.problems]  # type: ignore[return-value]
        objects = m.objects()
        owners = _owners(m)
        listed = {mf.object_path(s) for s in objects}
        problems = reader.unlisted(listed)
        to_hash = []
        for sha, size in sorted(objects.items()):
            item = f"{mf.object_path(sha)} [{owners[sha]}]"
            actual = reader.object_size(sha)
            if actual is None:
                problems.append(Problem("missing", item))
            elif actual < size:
                problems.append(Problem("truncated", item, f"{actual} of {size} bytes"))
            elif actual > size:
                problems.append(Problem("corrupt", item, f"{actual} bytes, expected {size}"))
            else:
                to_hash.append(sha)
        if isinstance(reader, DirBundle):
            paths = {reader.path / mf.object_path(s): s for s in to_hash}
            digests = {paths[p]: d for p, d in hash_many(paths, progress=progress).items()}
        else:
            digests = {}
            for sha in to_hash:
                with reader.open_object(sha) as f:
                    digests[sha] = sha256_stream(f, progress)[0]
        for sha in to_hash:
            got = digests[sha]
            if isinstance(got, OSError):
                problems.append(Problem("corrupt", f"{mf.object_path(sha)} [{owners[sha]}]", f"unreadable: {got}"))
            elif got != sha:
                problems.append(Problem("corrupt", f"{mf.object_path(sha)} [{owners[sha]}]", f"sha256 {got[:12]}…, expected {sha[:12]}…"))
        return m, problems


def verify_or_raise(path: str | os.PathLike, progress: Callable[[int], None] | None = None) -> mf.Manifest:
    m, problems = verify(path, progress)
    if problems:
        raise VerificationError([str(p) for p in problems])
    return m


def pack_tar(folder: Path, out: Path, progress: Callable[[int], None] | None = None) -> None:
    """Write `folder` (a complete bundle) as one uncompressed tar, manifest first, atomically."""
    tmp = temp_sibling(out, "partial")
    try:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, folder / mf.MANIFEST_NAME, mf.MANIFEST_NAME)
            for obj in sorted((folder / "objects").rglob("*")):
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
