"""Writing a bundle folder: content-addressed objects, a resume journal, the manifest last.

Layout while writing (`.partial/` is removed by `finish`):

    BUNDLE/objects/<aa>/<sha256>     every distinct file once (objects of an earlier prefetch)
    BUNDLE/.partial/objects/         objects stored by this run, moved to objects/ by `finish`
    BUNDLE/.partial/journal.jsonl    one line per file already stored, so a rerun skips it
    BUNDLE/.partial/hub/             the hub client's download cache (it resumes .incomplete files)
    BUNDLE/manifest.json             written last and atomically: its presence means "complete"
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from . import manifest as mf
from ._fs import atomic_write_bytes, remove_quietly, write_error
from .bundle import BundleReader
from .checksum import copy_and_hash, sha256_file
from .errors import BundleError


class BundleWriter:
    """Stages objects in a bundle folder; `known()` lets a rerun skip what is already stored."""

    def __init__(self, folder: Path, previous: BundleReader | None = None) -> None:
        self.folder = folder
        self.partial = folder / ".partial"
        self.hub_cache = self.partial / "hub"
        self.previous = previous
        self.old_manifest: mf.Manifest | None = None
        self._known: dict[str, tuple[str, int]] = {}  # "type/repo/commit/path" -> (sha256, size)
        try:
            self.partial.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, self.partial) from exc
        self._journal_path = self.partial / "journal.jsonl"
        self._load_previous_state()
        self._journal = open(self._journal_path, "a", encoding="utf-8")

    # -- what is already there -------------------------------------------------------------
    def _load_previous_state(self) -> None:
        if self.previous is not None:
            try:
                self.old_manifest = self.previous.manifest()
            except BundleError as exc:
                raise BundleError(f"cannot add to {self.previous.path}: {exc}",
                                  hint="choose another --out, or delete the damaged bundle") from None
            for e in self.old_manifest.entries:
                for f in e.files:
                    self._known[_key(e.repo_type, e.repo_id, e.commit, f.path)] = (f.sha256, f.size)
        if self._journal_path.exists():
            for line in self._journal_path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    self._known[rec["key"]] = (rec["sha256"], rec["size"])
                except (ValueError, KeyError):
                    continue  # a line cut by a crash: that file is fetched again

    def known(self, repo_type: str, repo_id: str, commit: str, path: str) -> mf.FileRecord | None:
        """The stored record for this file if its object is present and verified, else None."""
        hit = self._known.get(_key(repo_type, repo_id, commit, path))
        if hit is None:
            return None
        sha, size = hit
        if self.has_object(sha, size):
            return mf.FileRecord(path, size, sha)
        return None

    def has_object(self, sha256: str, size: int) -> bool:
        """True when the object is in the bundle (checked by hash), copying it from the previous
        bundle (a .tar being extended) when needed."""
        for p in (self.folder / mf.object_path(sha256), self.partial / mf.object_path(sha256)):
            if p.is_file() and not p.is_symlink() and p.stat().st_size == size:
                if sha256_file(p) == sha256:
                    return True
                remove_quietly(p)
        if self.previous is not None and self.previous.path != self.folder:
            if self.previous.object_size(sha256) == size:
                with self.previous.open_object(sha256) as src:
                    return self.add_stream(src) == sha256
        return False

    # -- adding ----------------------------------------------------------------------------
    def add_file(self, src: Path, move: bool = False) -> tuple[str, int]:
        """Store a file as an object; with `move`, rename it into place instead of copying."""
        if move:
            sha = sha256_file(src)
            dst = self.partial / mf.object_path(sha)
            try:
                dst.parent.mkdir(parents=True, exist_ok=True)
                size = src.stat().st_size
                if dst.exists():
                    src.unlink()
                else:
                    os.replace(src, dst)
            except OSError as exc:
                raise write_error(exc, dst) from exc
            return sha, size
        with open(src, "rb", buffering=0) as f:
            sha = self.add_stream(f)
        return sha, src.stat().st_size

    def add_stream(self, src) -> str:
        tmp = self.partial / f"incoming-{os.getpid()}-{id(src)}"
        try:
            sha, _ = copy_and_hash(src, tmp)
            dst = self.partial / mf.object_path(sha)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, dst)
        except OSError as exc:
            remove_quietly(tmp)
            raise write_error(exc, self.folder / "objects") from exc
        return sha

    def add_wheel(self, src: Path) -> mf.FileRecord:
        """Stage a wheel file under its own name (pip's --find-links reads the folder)."""
        rel = mf.wheel_path(src.name)
        dst = self.partial / rel
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            with open(src, "rb") as f:
                sha, size = copy_and_hash(f, dst)
        except OSError as exc:
            remove_quietly(dst)
            raise write_error(exc, self.folder / mf.WHEELS_DIR) from exc
        return mf.FileRecord(rel, size, sha)

    def _keep_old_wheels(self) -> tuple[mf.FileRecord, ...]:
        """The wheels of the bundle being extended, present in this folder (copied from a .tar)."""
        old = self.old_manifest.wheels if self.old_manifest else ()
        for w in old:
            here = self.folder / w.path
            if here.is_file() and not here.is_symlink() and here.stat().st_size == w.size and sha256_file(here) == w.sha256:
                continue
            if self.previous is None or self.previous.path == self.folder or self.previous.member_size(w.path) != w.size:
                raise BundleError(f"the bundle being extended lacks its wheel {w.path}",
                                  hint="run `cachekit verify` on it, or write to a new --out")
            dst = self.partial / w.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            with self.previous.open_member(w.path) as src:
                sha, _ = copy_and_hash(src, dst)
            if sha != w.sha256:
                raise BundleError(f"the bundle being extended has a corrupt wheel {w.path}",
                                  hint="run `cachekit verify` on it, or write to a new --out")
        return old

    @property
    def stored_anything(self) -> bool:
        """True once this or an earlier run stored a file worth keeping for a rerun."""
        return self._journal_path.exists() and self._journal_path.stat().st_size > 0

    def record(self, repo_type: str, repo_id: str, commit: str, path: str, sha256: str, size: int) -> None:
        """Note in the journal that this file is stored, so an interrupted run can skip it."""
        key = _key(repo_type, repo_id, commit, path)
        self._known[key] = (sha256, size)
        self._journal.write(json.dumps({"key": key, "sha256": sha256, "size": size}) + "\n")
        self._journal.flush()

    # -- finishing -------------------------------------------------------------------------
    def finish(self, entries: list[mf.Entry], libraries: dict,
               wheels: tuple[mf.FileRecord, ...] | None = None, wheels_target: dict | None = None) -> mf.Manifest:
        """Write the manifest (last, atomically), drop unreferenced objects and `.partial/`.
        `wheels` (staged by add_wheel) replace the bundle's wheel set; None keeps the old one."""
        all_entries = mf.merge(self.old_manifest, entries)
        if wheels is None:
            wheels = self._keep_old_wheels()
            wheels_target = self.old_manifest.wheels_target if self.old_manifest else {}
        m = mf.Manifest(
            wheels=tuple(sorted(wheels, key=lambda w: w.path)), wheels_target=wheels_target or {},
            entries=tuple(all_entries),
            created=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            tool_version=__version__,
            libraries={"python": sys.version.split()[0], **libraries},
        )
        mf.parse(m.to_json())  # never write a manifest we would refuse to read
        wanted = m.members()
        try:
            for top in ("objects", mf.WHEELS_DIR):
                staged = self.partial / top
                for p in sorted(staged.rglob("*")) if staged.is_dir() else ():
                    if p.is_file() and p.relative_to(self.partial).as_posix() in wanted:
                        dst = self.folder / p.relative_to(self.partial)
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(p, dst)
                here = self.folder / top
                for p in here.rglob("*") if here.is_dir() else ():
                    if p.is_file() and p.relative_to(self.folder).as_posix() not in wanted:
                        p.unlink()
            if (self.folder / mf.WHEELS_DIR).is_dir() and not m.wheels:
                (self.folder / mf.WHEELS_DIR).rmdir()
        except OSError as exc:
            raise write_error(exc, self.folder / "objects") from exc
        atomic_write_bytes(self.folder / mf.MANIFEST_NAME, m.to_json().encode())
        self.close()
        shutil.rmtree(self.partial, ignore_errors=True)
        return m

    def close(self) -> None:
        if not self._journal.closed:
            self._journal.close()


def _key(repo_type: str, repo_id: str, commit: str, path: str) -> str:
    return f"{repo_type}/{repo_id}/{commit}/{path}"


def staging_for(out: Path) -> Path:
    """Folder a prefetch writes into: the bundle folder itself, or `<out>.partial` for a tar."""
    return out.with_name(out.name + ".partial") if out.suffix == ".tar" else out
