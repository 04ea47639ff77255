"""`cachekit import`: check, plan, then execute, all or nothing.

Check: the bundle's structure with the checker `cachekit verify` uses (`cachekit.check`), before
anything is created. Plan: every file of every entry is `new`, `present` (same bytes already
installed), `conflicting` (different bytes, or a file where a folder is needed, already there)
or `corrupt` (the bundle's object does not match its hash). Execute: copy and hash new objects
into a staging folder beside their destination (one pass), hash the bundle objects not copied,
and only when every one is good move them into place under a lock. Every change, from the first
folder on, is journalled (`Changes`), so any failure (disk full included) undoes all of them:
after a refused or failed import the HF home is as it was, folders and lock files included.
"""

from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import stat
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import check, dataset_cache, evaluate_modules, paths
from . import manifest as mf
from ._fs import write_error
from .bundle import BundleReader, DirBundle, Problem, open_bundle
from .changes import Changes
from .checksum import copy_range_and_hash, git_blob_sha1_bytes, sha256_file
from .errors import BundleError, CachekitError, ConflictError, UsageError, WriteError
from .index import INDEX_FILES, Index
from .lock import exclusive

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
    root: Path | None = None  # the hub cache or the store: where its staging folder goes

    @property
    def name(self) -> str:
        return f"{self.entry.repo_id}@{self.entry.commit[:12]}/{self.file.path}"


@dataclass
class CardStep:
    """A dataset's README.md in the hub layout: its `configs:` header, made from the manifest."""

    entry: mf.Entry
    blob: Path
    link: Path
    data: bytes
    status: str = NEW


@dataclass
class ArrowStep:
    """One config of a dataset in the `datasets` Arrow cache (what load_dataset reads offline)."""

    entry: mf.Entry
    config: str
    target: Path
    status: str = NEW
    built: Path | None = None


@dataclass
class ModuleStep:
    """An `evaluate` metric in evaluate's module cache (what evaluate.load reads offline)."""

    entry: mf.Entry
    target: Path  # .../evaluate_modules/metrics/<org--name>
    status: str = NEW
    built: Path | None = None


SKIPPED = "skipped"  # evaluate is not installed here: the metric is in the hub layout only


@dataclass
class Plan:
    steps: list[FileStep]
    refs: list[tuple[Path, str | None, str]] = field(default_factory=list)  # (ref file, old, new)
    entries: tuple[mf.Entry, ...] = ()
    cards: list[CardStep] = field(default_factory=list)
    arrow: list[ArrowStep] = field(default_factory=list)
    modules: list[ModuleStep] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for s in self.steps if s.status == status)

    @property
    def nothing_to_do(self) -> bool:
        return all(s.status in (PRESENT, SKIPPED) for s in [*self.steps, *self.cards, *self.arrow, *self.modules]) \
            and not self.refs

    def problems(self) -> list[str]:
        return [f"{s.status}: {s.name}" + (f" ({s.detail})" if s.detail else "")
                for s in self.steps if s.status in (CONFLICTING, CORRUPT)] + \
               [f"{CONFLICTING}: {c.link} (a different README.md is already in the cache)"
                for c in self.cards if c.status == CONFLICTING]

    def conflicts(self) -> list[str]:
        return [p for p in self.problems() if p.startswith(CONFLICTING)]


def _same_content(path: Path, sha256: str, size: int) -> bool | None:
    """True/False if `path` holds (or not) these bytes; None if nothing readable is there."""
    try:
        if not path.exists():
            return None
        if not path.is_file() or path.stat().st_size != size:
            return False
        return sha256_file(path) == sha256
    except OSError:
        return False


def _obstacle(root: Path, target: Path, folder: bool = False) -> str | None:
    """Why `target` cannot be created under `root`: a file or link where a folder is needed, or
    a folder where the file goes (or a file where the folder `target` goes)."""
    rel = target.relative_to(root).parts
    p = root
    for i, part in enumerate(rel):
        p = p / part
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return None
        except OSError as exc:
            return f"{p} cannot be read: {exc.strerror}"
        last = i == len(rel) - 1
        if last and not folder:
            return f"{p} is a folder" if stat.S_ISDIR(st.st_mode) else None
        if not stat.S_ISDIR(st.st_mode):
            return f"{p} is a {'link' if stat.S_ISLNK(st.st_mode) else 'file'} where a folder is needed"
    return None


def _hub_step(e: mf.Entry, f: mf.FileRecord, hub: Path) -> FileStep:
    """A file in the hub layout: blobs/<etag> and a snapshots/<commit>/<path> link to it."""
    link = paths.snapshot_path(hub, e.repo_type, e.repo_id, e.commit, f.path)
    step = FileStep(e, f, paths.blob_path(hub, e.repo_type, e.repo_id, f.etag), link, root=hub)
    blocked = _obstacle(hub, link.parent, folder=True) or _obstacle(hub, step.blob)
    same = None if blocked else _same_content(link, f.sha256, f.size)
    if same is None and not blocked and not link.is_symlink() and os.path.lexists(link):
        same = False
    if same is None and not blocked:
        same = _same_content(step.blob, f.sha256, f.size)
        if same:  # bytes there, link missing: only the link is new
            step.detail = "link only"
            return step
    return _verdict(step, blocked, same)


def _verdict(step: FileStep, blocked: str | None, same: bool | None) -> FileStep:
    if blocked:
        step.status, step.detail = CONFLICTING, blocked
    elif same is True:
        step.status = PRESENT
    elif same is False:
        step.status, step.detail = CONFLICTING, "different bytes already in the cache"
    return step


def _card_step(e: mf.Entry, hub: Path) -> CardStep:
    data = dataset_cache.readme(e)
    link = paths.snapshot_path(hub, "dataset", e.repo_id, e.commit, "README.md")
    card = CardStep(e, paths.blob_path(hub, "dataset", e.repo_id, git_blob_sha1_bytes(data)), link, data)
    if os.path.lexists(link) or _obstacle(hub, link.parent, folder=True):
        same = link.is_file() and link.read_bytes() == data
        card.status = PRESENT if same else CONFLICTING
    return card


def make_plan(m: mf.Manifest, hub: Path, store: Path, arrow_root: Path | None = None,
              modules_root: Path | None = None) -> Plan:
    """What an import would do. Datasets go to the store (evalcore's index), to the hub layout
    (with a README `configs:` header) and, when `arrow_root` is given, to the datasets cache;
    evaluate metrics to the hub layout and, when `modules_root` is given, to evaluate's module
    cache (if evaluate is installed)."""
    steps: list[FileStep] = []
    refs: list[tuple[Path, str | None, str]] = []
    cards: list[CardStep] = []
    arrow: list[ArrowStep] = []
    modules: list[ModuleStep] = []
    have_evaluate = importlib.util.find_spec("evaluate") is not None
    for e in m.entries:
        for f in e.files:
            if e.kind == "dataset":
                step = FileStep(e, f, paths.dataset_file(store, e.repo_id, e.commit, f.path), None, root=store)
                blocked = _obstacle(store, step.blob)
                steps.append(_verdict(step, blocked, None if blocked else _same_content(step.blob, f.sha256, f.size)))
            steps.append(_hub_step(e, f, hub))
        if e.kind == "dataset" and e.splits:
            cards.append(_card_step(e, hub))
            for config in sorted(e.splits) if arrow_root is not None else ():
                target = dataset_cache.arrow_dir(arrow_root, e.repo_id, config, e.commit)
                arrow.append(ArrowStep(e, config, target, PRESENT if os.path.lexists(target) else NEW))
        script = evaluate_modules.script_of(e)
        if script is not None and modules_root is not None:
            step = ModuleStep(e, evaluate_modules.module_dir(modules_root, e.repo_id))
            if not have_evaluate:
                step.status = SKIPPED
            elif evaluate_modules.installed(modules_root, e, script):
                step.status = PRESENT
            modules.append(step)
        for name in e.ref_names:
            ref = paths.ref_path(hub, e.repo_type, e.repo_id, name)
            blocked = _obstacle(hub, ref)
            if blocked:
                steps.append(FileStep(e, mf.FileRecord(f"refs/{name}", 0, "", ""), ref, None,
                                      CONFLICTING, blocked))
                continue
            old = ref.read_text().strip() if ref.is_file() else None
            if old != e.commit:
                refs.append((ref, old, e.commit))
    return Plan(steps, refs, m.entries, cards, arrow, modules)


def _copied(plan: Plan) -> list[FileStep]:
    """The steps whose bytes this import copies from the bundle."""
    return [s for s in plan.steps if s.status == NEW and s.detail != "link only"]


def _mark_corrupt(plan: Plan, problems: list[Problem]) -> None:
    bad = {p.member.rsplit("/", 1)[-1]: p.detail or p.kind for p in problems}
    for s in plan.steps:
        if s.status in (NEW, PRESENT) and s.file.sha256 in bad:
            s.status, s.detail = CORRUPT, bad[s.file.sha256]


def import_bundle(bundle: str | os.PathLike, *, dry_run: bool = False, link: bool = False,
                  show: Callable[[Plan], None] = lambda p: None,
                  progress: Callable[[int], None] | None = None) -> Plan:
    """Install a bundle into the hub cache and the dataset store; return the executed plan."""
    hub, store, arrow_root = paths.hub_cache(), paths.store_root(), paths.datasets_cache()
    modules_root = paths.modules_cache()
    with open_bundle(bundle) as reader:
        m, problems, hashable = check.structure(reader)
        check.refuse(problems)  # what verify refuses, before anything is created
        if link:
            _check_link(reader, hub, store)
        plan = make_plan(m, hub, store, arrow_root, modules_root)
        if dry_run:
            _mark_corrupt(plan, check.hash_objects(reader, m, hashable, progress))
            show(plan)
            return plan
        if plan.conflicts():
            show(plan)
            more = len(plan.conflicts()) - 1
            raise ConflictError(f"import refused: {plan.conflicts()[0]}" + (f" (and {more} more)" if more else ""))
        copied = {s.file.sha256 for s in _copied(plan)}
        problems = check.hash_objects(reader, m, hashable - copied, progress)  # as verify does
        changes = Changes()
        try:
            if problems:  # refused anyway: hash the rest from the bundle too, for verify's full list
                problems += check.hash_objects(reader, m, hashable & copied, progress)
            else:
                problems = _stage(reader, m, plan, hub, store, changes, progress, link)
            if problems:
                _mark_corrupt(plan, problems)
                show(plan)
                check.refuse(problems)
            show(plan)
            _build_arrow(plan, arrow_root, changes)
            _build_modules(plan, modules_root, changes)
            if not plan.nothing_to_do:
                _commit(plan, hub, store, str(Path(bundle)), changes)
            changes.commit()
        except BaseException:
            changes.rollback()
            raise
        return plan


def _stage(reader: BundleReader, m: mf.Manifest, plan: Plan, hub: Path, store: Path, changes: Changes,
           progress, link: bool = False) -> list[Problem]:
    """Copy each new object into a staging folder on its destination's filesystem (in the
    kernel where possible), then hash the copy: a file is accepted only for what actually landed.
    With `link` (folder bundles on the same filesystem), hard-link the object instead (zero-copy)
    and hash the link. Files are handled on a few threads; hashing and copy_file_range release
    the GIL. Returns the objects whose bytes are not what the manifest says."""
    jobs: dict[tuple[Path, str], FileStep] = {}
    for s in _copied(plan):
        jobs.setdefault((s.root, s.file.sha256), s)
    dirs: dict[Path, Path] = {}
    for root, _sha in jobs:  # staging folders up front, on the main thread, journalled
        if root not in dirs:
            changes.mkdirs(root)
            d = root / f".cachekit-staging-{uuid.uuid4().hex[:12]}"
            try:
                d.mkdir()
            except OSError as exc:
                raise write_error(exc, root) from exc
            changes.scratch(d)
            dirs[root] = d

    def run(key: tuple[Path, str]) -> Path | str | BaseException:
        root, sha = key
        tmp = dirs[root] / sha
        try:
            if link:
                reader.link_object(sha, tmp)
                got = sha256_file(tmp, progress)
            else:
                with reader.object_fd(sha) as (fd, offset, size):
                    got = copy_range_and_hash(fd, offset, size, tmp, progress)
        except CachekitError as exc:
            return exc
        except OSError as exc:
            return write_error(exc, jobs[key].blob)
        return tmp if got == sha else got

    workers = min(4, os.cpu_count() or 1, max(1, len(jobs)))
    order = sorted(jobs, key=lambda k: jobs[k].file.size, reverse=True)
    with ThreadPoolExecutor(workers) as pool:
        done = dict(zip(order, pool.map(run, order), strict=True))
    for result in done.values():
        if isinstance(result, WriteError):
            raise result
    names = check.owners(m)
    problems = [p for (_root, sha), r in done.items() if not isinstance(r, Path)
                if (p := check.content_problem(names, sha, r))]
    for s in _copied(plan):
        result = done[(s.root, s.file.sha256)]
        if isinstance(result, Path):
            s.staged = result
    return problems


def _new_scratch(root: Path, changes: Changes) -> Path:
    """A fresh staging folder under `root`, journalled (removed if the import fails)."""
    scratch = root / f".cachekit-staging-{uuid.uuid4().hex[:12]}"
    try:
        scratch.mkdir()
    except OSError as exc:
        raise write_error(exc, root) from exc
    changes.scratch(scratch)
    return scratch


def _build_arrow(plan: Plan, root: Path, changes: Changes) -> None:
    """Prepare each new config's Arrow cache in a scratch folder beside its target, from the
    staged (or already installed) Parquet files of the store; `_commit` moves it into place."""
    todo = [a for a in plan.arrow if a.status == NEW]
    if not todo:
        return
    changes.mkdirs(root)
    for a in todo:
        scratch = _new_scratch(root, changes)
        files = {s.file.path: _bytes_of(plan, s) for s in plan.steps
                 if s.entry is a.entry and s.root is not None and s.link is None}
        wanted = {info["path"] for info in a.entry.splits[a.config].values()}
        try:
            a.built = dataset_cache.prepare_arrow(a.entry, {k: v for k, v in files.items() if k in wanted},
                                                  a.config, scratch)
        except Exception as exc:  # the datasets library wraps a full disk in its own errors
            cause = _os_error(exc)
            if cause is not None:
                raise write_error(cause, a.target) from exc
            raise BundleError(f"dataset {a.entry.repo_id} config {a.config}: the datasets library could not "
                              f"prepare its cache: {type(exc).__name__}: {exc}") from exc


def _bytes_of(plan: Plan, step: FileStep) -> Path:
    """Where a step's verified bytes are now: its staged copy, another step's staged copy of the
    same object on the same root, or the installed file."""
    if step.staged is not None:
        return step.staged
    twin = next((s.staged for s in plan.steps if s.staged is not None and s.root == step.root
                 and s.file.sha256 == step.file.sha256), None)
    return twin or step.blob


def _build_modules(plan: Plan, root: Path, changes: Changes) -> None:
    """Build each new metric's evaluate module in a scratch folder; `_commit` moves it."""
    todo = [s for s in plan.modules if s.status == NEW]
    if not todo:
        return
    changes.mkdirs(root)
    for step in todo:
        scratch = _new_scratch(root, changes)
        files = {s.file.path: _bytes_of(plan, s) for s in plan.steps if s.entry is step.entry and s.link is not None}
        try:
            step.built = evaluate_modules.build(step.entry, files, scratch)
        except Exception as exc:
            cause = _os_error(exc)
            if cause is not None and not isinstance(exc, FileNotFoundError):
                raise write_error(cause, step.target) from exc
            raise BundleError(f"metric {step.entry.repo_id}: evaluate could not prepare its module: "
                              f"{type(exc).__name__}: {exc}") from exc


def _os_error(exc: BaseException | None) -> OSError | None:
    """The OSError at the root of an exception chain, if any."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, OSError) and exc.errno:
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _check_link(reader: BundleReader, hub: Path, store: Path) -> None:
    """--link takes effect or is refused: a folder bundle on the filesystem of both roots."""
    if not isinstance(reader, DirBundle):
        raise UsageError(f"--link needs a bundle folder; {reader.path} is a tar", hint="import without --link")
    dev = os.stat(reader.path).st_dev
    for root in (hub, store):
        existing = root
        while not os.path.exists(existing):
            existing = existing.parent
        if os.stat(existing).st_dev != dev:
            raise UsageError(f"--link: {reader.path} and {root} are on different filesystems (hard links cannot cross)",
                             hint="import without --link, or put the bundle on the cache's filesystem")


def _commit(plan: Plan, hub: Path, store: Path, bundle: str, changes: Changes) -> None:
    """Move staged objects into place, create links and refs, update the index, under the
    locks of both roots; on any failure roll back (while still holding them) and re-raise."""
    changes.mkdirs(hub)
    changes.mkdirs(store)
    with exclusive(hub / ".cachekit.lock", changes), exclusive(store / ".cachekit.lock", changes):
        try:
            for s in plan.steps:
                if s.status != NEW:
                    continue
                if s.staged is not None and not os.path.lexists(s.blob):
                    changes.mkdirs(s.blob.parent)
                    changes.created(s.blob)
                    if s.staged.exists():
                        os.replace(s.staged, s.blob)
                    else:  # the same object serves two paths: the first took the staged file
                        shutil.copyfile(_installed(plan, s), s.blob)
                if s.link is not None and not os.path.lexists(s.link):
                    changes.mkdirs(s.link.parent)
                    changes.created(s.link)
                    _link(s.blob, s.link)
            for c in plan.cards:
                if c.status != NEW:
                    continue
                if not os.path.lexists(c.blob):
                    changes.mkdirs(c.blob.parent)
                    changes.created(c.blob)
                    with open(c.blob, "xb") as f:
                        f.write(c.data)
                        os.fsync(f.fileno())
                changes.mkdirs(c.link.parent)
                changes.created(c.link)
                _link(c.blob, c.link)
            for a in plan.arrow:
                if a.built is not None and not os.path.lexists(a.target):
                    changes.mkdirs(a.target.parent)
                    changes.created_tree(a.target)
                    os.rename(a.built, a.target)
            for step in plan.modules:
                if step.built is None:
                    continue
                changes.mkdirs(step.target)
                for d in (step.target.parent.parent, step.target.parent, step.target):  # packages for import
                    if not os.path.lexists(d / "__init__.py"):
                        changes.created(d / "__init__.py")
                        (d / "__init__.py").touch()
                dst = step.target / step.built.name
                if not os.path.lexists(dst):
                    changes.created_tree(dst)
                    os.rename(step.built, dst)
            for ref, _old, new in plan.refs:
                changes.mkdirs(ref.parent)
                changes.replace(ref, new.encode())
            changes.mkdirs(store)
            for name in INDEX_FILES:
                if not os.path.lexists(store / name):
                    changes.created(store / name)
            Index(store).record_import(plan.entries, bundle, datetime.now(UTC).isoformat(timespec="seconds"))
        except BaseException as exc:
            changes.rollback()
            if isinstance(exc, OSError) and not isinstance(exc, CachekitError):
                # os.symlink/os.replace name the link or destination second: that is what failed
                raise write_error(exc, getattr(exc, "filename2", None) or getattr(exc, "filename", None) or hub) from exc
            raise


def _installed(plan: Plan, step: FileStep) -> Path:
    for s in plan.steps:
        if s.file.sha256 == step.file.sha256 and s.blob.exists() and s.blob != step.blob:
            return s.blob
    raise WriteError(f"staged object for {step.name} disappeared during import")


def _link(blob: Path, link: Path) -> None:
    """A relative link snapshots/<commit>/<path> -> ../../blobs/<etag>; a copy only where the
    filesystem has no links (a full disk is an error, never a reason to copy)."""
    try:
        os.symlink(os.path.relpath(blob, link.parent), link)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        shutil.copyfile(blob, link)
