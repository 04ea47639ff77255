"""The bytes of a `cachekit import`, made ready beside their destinations before anything is
moved into place: new objects copied (or hard-linked) into staging folders and hashed as they
land, then each new dataset config's Arrow cache and each metric's evaluate module built in a
scratch folder. Every folder is journalled in `Changes`, so a failed import removes them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from . import check, dataset_cache, evaluate_modules
from . import manifest as mf
from ._fs import write_error
from .bundle import BundleReader, Problem
from .changes import Changes
from .checksum import copy_range_and_hash, sha256_file
from .errors import BundleError, CachekitError, WriteError
from .install_plan import NEW, FileStep, Plan, copied

T = TypeVar("T")


def stage(reader: BundleReader, m: mf.Manifest, plan: Plan, hub: Path, store: Path, changes: Changes,
          progress, link: bool = False) -> list[Problem]:
    """Copy each new object into a staging folder on its destination's filesystem (in the
    kernel where possible), then hash the copy: a file is accepted only for what actually landed.
    With `link` (folder bundles on the same filesystem), hard-link the object instead (zero-copy)
    and hash the link. Files are handled on a few threads; hashing and copy_file_range release
    the GIL. Returns the objects whose bytes are not what the manifest says."""
    jobs: dict[tuple[Path, str], FileStep] = {}
    for s in copied(plan):
        jobs.setdefault((s.root, s.file.sha256), s)
    dirs: dict[Path, Path] = {}
    for root, _sha in jobs:  # staging folders up front, on the main thread, journalled
        if root not in dirs:
            changes.mkdirs(root)
            dirs[root] = new_scratch(root, changes)

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
    for s in copied(plan):
        result = done[(s.root, s.file.sha256)]
        if isinstance(result, Path):
            s.staged = result
    return problems


def new_scratch(root: Path, changes: Changes) -> Path:
    """A fresh staging folder under `root`, journalled (removed if the import fails)."""
    scratch = root / f".cachekit-staging-{uuid.uuid4().hex[:12]}"
    try:
        scratch.mkdir()
    except OSError as exc:
        raise write_error(exc, root) from exc
    changes.scratch(scratch)
    return scratch


def _each_with_scratch(todo: list[T], root: Path, changes: Changes) -> Iterator[tuple[T, Path]]:
    """Each item of `todo` with a fresh journalled scratch folder under `root` (made only when
    there is something to do)."""
    if todo:
        changes.mkdirs(root)
    for item in todo:
        yield item, new_scratch(root, changes)


def build_arrow(plan: Plan, root: Path, changes: Changes) -> None:
    """Prepare each new config's Arrow cache in a scratch folder beside its target, from the
    staged (or already installed) Parquet files of the store; `install_commit.commit` moves it into place."""
    for a, scratch in _each_with_scratch([a for a in plan.arrow if a.status == NEW], root, changes):
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


def build_modules(plan: Plan, root: Path, changes: Changes) -> None:
    """Build each new metric's evaluate module in a scratch folder; `install_commit.commit` moves it."""
    for step, scratch in _each_with_scratch([s for s in plan.modules if s.status == NEW], root, changes):
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
