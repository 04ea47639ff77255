"""A journal of every change an import makes to the cache, so that a failure takes all of them
back and leaves the HF home as it was: folders and lock files included.

Nothing here writes data during a rollback (a full disk cannot stop it): created paths are
removed, and a replaced file comes back by renaming the hard link kept of the original.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from ._fs import write_error


class Changes:
    def __init__(self) -> None:
        self._log: list[tuple[str, Path, Path | None]] = []

    def mkdirs(self, path: Path) -> None:
        """Create `path` and its missing parents one by one, recording those this call made."""
        missing = []
        p = Path(path)
        while not os.path.lexists(p):
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue  # made by a concurrent import: not ours to remove
            except OSError as exc:
                raise write_error(exc, d) from exc
            self._log.append(("dir", d, None))

    def created(self, path: Path) -> None:
        """`path` did not exist and this import made it (a file, link or lock file)."""
        self._log.append(("file", Path(path), None))

    def created_tree(self, path: Path) -> None:
        """A folder this import put in place with its content (removed on rollback)."""
        self._log.append(("tree", Path(path), None))

    def scratch(self, path: Path) -> None:
        """A staging folder this import made: removed with its content when the import ends."""
        self._log.append(("scratch", Path(path), None))

    def replace(self, path: Path, new_content: bytes) -> None:
        """Atomically replace `path` with `new_content`; the original (if any) is kept as a hard
        link until the import is done, so a rollback restores the very same file."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        keep = path.with_name(f".{path.name}.old-{uuid.uuid4().hex[:8]}") if os.path.lexists(path) else None
        try:
            self._log.append(("file", tmp, None))
            with open(tmp, "xb") as f:
                f.write(new_content)
                f.flush()
                os.fsync(f.fileno())
            if keep is not None:
                os.link(path, keep, follow_symlinks=False)
                self._log.append(("restore", path, keep))
            else:
                self._log.append(("file", path, None))
            os.replace(tmp, path)
        except OSError as exc:
            raise write_error(exc, path) from exc

    def commit(self) -> None:
        """The import succeeded: drop the staging folders and kept originals, forget the journal."""
        for kind, path, keep in self._log:
            if kind == "restore" and keep is not None:
                keep.unlink(missing_ok=True)
            elif kind == "scratch":
                shutil.rmtree(path, ignore_errors=True)
        self._log.clear()

    def rollback(self) -> None:
        """Undo everything recorded, newest first. Safe to call twice."""
        for kind, path, keep in reversed(self._log):
            try:
                if kind == "file":
                    path.unlink(missing_ok=True)
                elif kind in ("tree", "scratch"):
                    shutil.rmtree(path, ignore_errors=True)
                elif kind == "restore" and keep is not None:
                    os.replace(keep, path)
                elif kind == "dir":
                    path.rmdir()
            except OSError:
                pass  # e.g. a folder a concurrent import filled meanwhile: it stays
        self._log.clear()
