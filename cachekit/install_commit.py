"""The last step of a `cachekit import`: under the locks of the hub cache and the dataset
store, move staged objects, Arrow caches and evaluate modules into place, create the snapshot
links and refs, and record the import in the index; on any failure roll every change back.
"""

from __future__ import annotations

import errno
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path

from ._fs import write_error
from .changes import Changes
from .errors import CachekitError, WriteError
from .index import INDEX_FILES, Index
from .install_plan import NEW, FileStep, Plan
from .lock import exclusive


def commit(plan: Plan, hub: Path, store: Path, bundle: str, changes: Changes) -> None:
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
