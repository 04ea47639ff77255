"""`cachekit import`: check, plan, then execute, all or nothing.

Check: the bundle's structure with the checker `cachekit verify` uses (`cachekit.check`), before
anything is created. Plan: every file of every entry is `new`, `present` (same bytes already
installed), `conflicting` (different bytes, or a file where a folder is needed, already there)
or `corrupt` (the bundle's object does not match its hash). Execute: copy and hash new objects
into a staging folder beside their destination (one pass), hash the bundle objects not copied,
and only when every one is good move them into place under a lock. Every change, from the first
folder on, is journalled (`Changes`), so any failure (disk full included) undoes all of them:
after a refused or failed import the HF home is as it was, folders and lock files included.

The jobs live in their own modules: `install_plan` (the plan), `install_stage` (staging and the
Arrow and evaluate caches), `install_commit` (moving into place under the locks).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from . import check, paths
from .bundle import BundleReader, DirBundle, open_bundle
from .changes import Changes
from .errors import ConflictError, UsageError
from .install_commit import commit
from .install_plan import (
    CONFLICTING,
    CORRUPT,
    NEW,
    PRESENT,
    SKIPPED,
    Plan,
    copied,
    make_plan,
    mark_corrupt,
)
from .install_stage import build_arrow, build_modules, stage

__all__ = ["CONFLICTING", "CORRUPT", "NEW", "PRESENT", "SKIPPED", "Plan", "import_bundle", "make_plan"]


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
            mark_corrupt(plan, check.hash_objects(reader, m, hashable, progress))
            show(plan)
            return plan
        if plan.conflicts():
            show(plan)
            more = len(plan.conflicts()) - 1
            raise ConflictError(f"import refused: {plan.conflicts()[0]}" + (f" (and {more} more)" if more else ""))
        to_copy = {s.file.sha256 for s in copied(plan)}
        problems = check.hash_objects(reader, m, hashable - to_copy, progress)  # as verify does
        changes = Changes()
        try:
            if problems:  # refused anyway: hash the rest from the bundle too, for verify's full list
                problems += check.hash_objects(reader, m, hashable & to_copy, progress)
            else:
                problems = stage(reader, m, plan, hub, store, changes, progress, link)
            if problems:
                mark_corrupt(plan, problems)
                show(plan)
                check.refuse(problems)
            show(plan)
            build_arrow(plan, arrow_root, changes)
            build_modules(plan, modules_root, changes)
            if not plan.nothing_to_do:
                commit(plan, hub, store, str(Path(bundle)), changes)
            changes.commit()
        except BaseException:
            changes.rollback()
            raise
        return plan


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
