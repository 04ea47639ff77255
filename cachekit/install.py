"""`cachekit import`: plan, then execute, all or nothing.

Plan: every file of every entry is `new`, `present` (same bytes already installed), `conflicting`
(different bytes already at that place) or `corrupt` (the bundle's object does not match its
hash). Execute: copy and hash new objects into a staging folder beside their destination (one
pass), and only when every one is good move them into place under a file lock, recording each
step so that any failure undoes all of them: after a failed import the cache is as it was.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from . import manifest as mf
from . import paths
from ._fs import prune_empty_dirs, remove_quietly, write_error
from .bundle import BundleReader, open_bundle
from .checksum import copy_range_and_hash, sha256_file, sha256_stream
from .errors import CachekitError, ConflictError, VerificationError, WriteError
from .index import Index

NEW, PRESENT, CONFLICTING, CORRUPT = "new", "present", "conflicting", "corrupt"


@dataclass
class FileStep:
    entry: mf.Entry
    file: mf.FileRecord
    blob: Path  # where the bytes go (hub blob, or dataset file in the store)
    link: Path | None  # snapshot link to create (hub repos only)
    status: str = NEW
    detail: str = ""
    staged: Path | None = None

    @property
    def name(self) -> str:
        return f"{self.entry.repo_id}@{self.entry.commit[:12]}/{self.file.path}"


@dataclass
class Plan:
    steps: list[FileStep]
    refs: list[tuple[Path, str | None, str]] = field(default_factory=list)  # (ref file, old, new)
    entries: tuple[mf.Entry, ...] = ()

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    @property
    def nothing_to_do(self) -> bool:
        return all(s.status == PRESENT for s in self.steps) and not self.refs

    def problems(self) -> list[str]:
        return [f"{s.status}: {s.name}" + (f" ({s.detail})" if s.detail else "")
                for s in self.steps if s.status in (CONFLICTING, CORRUPT)]


def _same_content(path: Path, sha256: str, size: int) -> bool | None:
    """True/False if `path` holds (or not) these bytes; None if nothing readable is there."""
    try:
        if not path.exists():
            return None
        if path.stat().st_size != size:
            return False
        return sha256_file(path) == sha256
    except OSError:
        return False


def make_plan(m: mf.Manifest, hub: Path, store: Path) -> Plan:
    steps: list[FileStep] = []
    refs: list[tuple[Path, str | None, str]] = []
    for e in m.entries:
        for f in e.files:
            if e.kind == "dataset":
                step = FileStep(e, f, paths.dataset_file(store, e.repo_id, e.commit, f.path), None)
                same = _same_content(step.blob, f.sha256, f.size)
            else:
                link = paths.snapshot_path(hub, e.repo_type, e.repo_id, e.commit, f.path)
                step = FileStep(e, f, paths.blob_path(hub, e.repo_type, e.repo_id, f.etag or f.sha256), link)
                same = _same_content(link, f.sha256, f.size)
                if same is None and not link.is_symlink() and os.path.lexists(link):
                    same = False
                if same is None:
                    same = _same_content(step.blob, f.sha256, f.size)
                    if same:  # bytes there, link missing: only the link is new
                        step.status, step.detail = NEW, "link only"
                        steps.append(step)
                        continue
            if same is True:
                step.status = PRESENT
            elif same is False:
                step.status, step.detail = CONFLICTING, "different bytes already in the cache"
            steps.append(step)
        if e.kind != "dataset" and e.revision != e.commit:
            ref = paths.ref_path(hub, e.repo_type, e.repo_id, e.revision)
            old = ref.read_text().strip() if ref.is_file() else None
            if old != e.commit:
                refs.append((ref, old, e.commit))
    return Plan(steps, refs, m.entries)


def check_objects(reader: BundleReader, plan: Plan, progress: Callable[[int], None] | None = None) -> None:
    """For --dry-run: hash the bundle objects the import would copy and mark corrupt ones."""
    seen: dict[str, str | None] = {}
    for s in plan.steps:
        if s.status != NEW or s.detail == "link only":
            continue
        sha = s.file.sha256
        if sha not in seen:
            seen[sha] = _object_problem(reader, s.file, progress)
        if seen[sha]:
            s.status, s.detail = CORRUPT, seen[sha]


def _object_problem(reader: BundleReader, f: mf.FileRecord, progress) -> str | None:
    size = reader.object_size(f.sha256)
    if size is None:
        return "missing from the bundle"
    if size != f.size:
        return f"{size} bytes in the bundle, expected {f.size}"
    with reader.open_object(f.sha256) as src:
        got, _ = sha256_stream(src, progress)
    return None if got == f.sha256 else "sha256 mismatch in the bundle"


class _Undo:
    """Records each change to the cache so a failure can take all of them back."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Path, str | None]] = []

    def created(self, path: Path) -> None:
        self._steps.append(("created", path, None))

    def replaced(self, path: Path, old: str | None) -> None:
        self._steps.append(("replaced", path, old))

    def mkdirs(self, path: Path) -> None:
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        path.mkdir(parents=True, exist_ok=True)
        for d in reversed(missing):
            self._steps.append(("dir", d, None))

    def rollback(self) -> None:
        for kind, path, old in reversed(self._steps):
            try:
                if kind == "created":
                    path.unlink(missing_ok=True)
                elif kind == "replaced":
                    if old is None:
                        path.unlink(missing_ok=True)
                    else:
                        path.write_text(old)
                elif kind == "dir":
                    path.rmdir()
            except OSError:
                pass


def import_bundle(bundle: str | os.PathLike, *, dry_run: bool = False, link: bool = False,
                  show: Callable[[Plan], None] = lambda p: None,
                  progress: Callable[[int], None] | None = None) -> Plan:
    """Install a bundle into the hub cache and the dataset store; return the executed plan."""
    hub, store = paths.hub_cache(), paths.store_root()
    with open_bundle(bundle) as reader:
        m = reader.manifest()
        plan = make_plan(m, hub, store)
        if dry_run:
            check_objects(reader, plan, progress)
            show(plan)
            return plan
        staging: list[Path] = []
        try:
            _stage(reader, plan, hub, store, staging, progress, link)
            show(plan)
            if plan.problems():
                err = ConflictError if any(s.status == CONFLICTING for s in plan.steps) else VerificationError
                if err is ConflictError:
                    raise ConflictError(f"import refused: {plan.problems()[0]}"
                                        + (f" (and {len(plan.problems()) - 1} more)" if len(plan.problems()) > 1 else ""))
                raise VerificationError(plan.problems())
            _commit(plan, hub, store, str(Path(bundle)))
        finally:
            for d in staging:
                shutil.rmtree(d, ignore_errors=True)
        return plan


def _stage(reader: BundleReader, plan: Plan, hub: Path, store: Path, staging: list[Path], progress,
           link: bool = False) -> None:
    """Copy each new object into a staging folder on its destination's filesystem (in the
    kernel where possible), then hash the copy: a file is accepted only for what actually landed.
    With `link` (folder bundles on the same filesystem), hash the object and hard-link it instead:
    zero-copy. Files are handled on a few threads; hashing and copy_file_range release the GIL."""
    dirs: dict[Path, Path] = {}

    def staging_dir(root: Path) -> Path:
        if root not in dirs:
            try:
                root.mkdir(parents=True, exist_ok=True)
                d = root / f".cachekit-staging-{uuid.uuid4().hex[:12]}"
                d.mkdir()
            except OSError as exc:
                raise write_error(exc, root) from exc
            dirs[root] = d
            staging.append(d)
        return dirs[root]

    jobs: dict[tuple[Path, str], FileStep] = {}
    for s in plan.steps:
        if s.status == NEW and s.detail != "link only":
            root = store if s.entry.kind == "dataset" else hub
            jobs.setdefault((root, s.file.sha256), s)

    def run(key: tuple[Path, str]) -> Path | str:
        root, sha = key
        f = jobs[key].file
        size = reader.object_size(sha)
        if size is None:
            return "missing from the bundle"
        if size != f.size:
            return f"{size} bytes in the bundle, expected {f.size}"
        src, offset, _ = reader.object_location(sha)
        tmp = staging_dir(root) / sha
        try:
            if link and offset == 0 and _same_device(src, tmp.parent):
                got = sha256_file(src, progress)
                if got == sha:
                    os.link(src, tmp)
            else:
                got = copy_range_and_hash(src, offset, size, tmp, progress)
        except OSError as exc:
            raise write_error(exc, jobs[key].blob) from exc
        return tmp if got == sha else "sha256 mismatch in the bundle"

    for key in jobs:  # create staging folders up front (not thread-safe)
        staging_dir(key[0])
    workers = min(4, os.cpu_count() or 1, max(1, len(jobs)))
    order = sorted(jobs, key=lambda k: jobs[k].file.size, reverse=True)
    with ThreadPoolExecutor(workers) as pool:
        done = dict(zip(order, pool.map(run, order), strict=True))
    for s in plan.steps:
        if s.status != NEW or s.detail == "link only":
            continue
        result = done[(store if s.entry.kind == "dataset" else hub, s.file.sha256)]
        if isinstance(result, str):
            s.status, s.detail = CORRUPT, result
        else:
            s.staged = result


def _same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _commit(plan: Plan, hub: Path, store: Path, bundle: str) -> None:
    """Move staged objects into place, create links and refs, update the index; undo on failure."""
    hub.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    undo = _Undo()
    with FileLock(str(hub / ".cachekit.lock")), FileLock(str(store / ".cachekit.lock")):
        try:
            for s in plan.steps:
                if s.status != NEW:
                    continue
                if s.staged is not None and not s.blob.exists():
                    undo.mkdirs(s.blob.parent)
                    if s.staged.exists():
                        os.replace(s.staged, s.blob)
                    else:  # the same object serves two paths: the first took the staged file
                        shutil.copyfile(_installed(plan, s), s.blob)
                    undo.created(s.blob)
                if s.link is not None and not os.path.lexists(s.link):
                    undo.mkdirs(s.link.parent)
                    _link(s.blob, s.link)
                    undo.created(s.link)
            for ref, _old, new in plan.refs:
                undo.mkdirs(ref.parent)
                current = ref.read_text().strip() if ref.is_file() else None
                tmp = ref.with_name(f".{ref.name}.tmp-{uuid.uuid4().hex[:8]}")
                tmp.write_text(new)
                os.replace(tmp, ref)
                undo.replaced(ref, current)
            Index(store).record_import(plan.entries, bundle, datetime.now(UTC).isoformat(timespec="seconds"))
        except CachekitError:
            undo.rollback()
            raise
        except OSError as exc:
            undo.rollback()
            raise write_error(exc, hub) from exc
        except BaseException:
            undo.rollback()
            raise


def _installed(plan: Plan, step: FileStep) -> Path:
    for s in plan.steps:
        if s.file.sha256 == step.file.sha256 and s.blob.exists() and s.blob != step.blob:
            return s.blob
    raise WriteError(f"staged object for {step.name} disappeared during import")


def _link(blob: Path, link: Path) -> None:
    """A relative link snapshots/<commit>/<path> -> ../../blobs/<etag>, or a copy where links fail."""
    try:
        os.symlink(os.path.relpath(blob, link.parent), link)
    except OSError:
        shutil.copyfile(blob, link)


def remove_staging_leftovers(root: Path) -> None:
    """Drop staging folders left by an import that was killed (not needed for correctness)."""
    for d in root.glob(".cachekit-staging-*"):
        remove_quietly(d)
        prune_empty_dirs(d.parent, root)
