"""The store index (SQLite): what was imported, and how to resolve it.

Tables: `items` (one row per repo at a commit), `refs` (revision -> commit), `splits` (dataset
config/split -> Parquet file). evalcore resolves models and datasets through `Index.resolve_*`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from . import manifest as mf
from . import paths
from .errors import BundleError, CachekitError, NotFoundError, WriteError

SCHEMA = 1
INDEX_FILES = ("index.db", "index.db-wal", "index.db-shm", "index.db-journal")  # the database and its side files
_DAMAGED_HINT = "the index is damaged: restore it from a backup, or move it aside and import your bundles again"
_SCHEMA = """
CREATE TABLE items (repo_type TEXT, repo_id TEXT, "commit" TEXT, kind TEXT, size INTEGER, files INTEGER,
    trust_remote_code INTEGER, license TEXT, source TEXT, imported_at TEXT, bundle TEXT, manifest_entry TEXT,
    PRIMARY KEY (repo_type, repo_id, "commit"));
CREATE TABLE refs (repo_type TEXT, repo_id TEXT, revision TEXT, "commit" TEXT,
    PRIMARY KEY (repo_type, repo_id, revision));
CREATE TABLE splits (repo_id TEXT, "commit" TEXT, config TEXT, split TEXT, path TEXT, rows INTEGER, sha256 TEXT,
    PRIMARY KEY (repo_id, "commit", config, split));
"""


@dataclass(frozen=True)
class Item:
    kind: str
    repo_type: str
    repo_id: str
    commit: str
    revisions: tuple[str, ...]
    size: int
    files: int
    trust_remote_code: bool
    imported_at: str
    bundle: str


@dataclass(frozen=True)
class SplitInfo:
    path: Path
    sha256: str
    rows: int
    commit: str
    config: str


class Index:
    def __init__(self, store: Path | None = None) -> None:
        self.store = Path(store) if store is not None else paths.store_root()
        self.path = self.store / "index.db"

    def _db(self) -> sqlite3.Connection:
        """Open (creating the schema on first use, in one transaction). Plain sqlite3: sqlite-utils
        imports pandas and numpy at import time (0.3-0.45 s here), too slow for every `cachekit ls`
        and import."""
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if version == 0 and not tables:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version={SCHEMA}; COMMIT;")
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        if version != 0 and (version != SCHEMA or not {"items", "refs", "splits"} <= tables):
            conn.close()
            raise BundleError(f"{self.path} is not a cachekit index (schema {version}, this cachekit reads {SCHEMA})",
                              hint="use the cachekit version that wrote it, or move it aside and import your bundles again")
        return conn

    def _error(self, exc: sqlite3.Error) -> CachekitError:
        """sqlite's error as cachekit's: a full disk or I/O failure is a write error (exit 5; the
        index is fine and stays), only a file that is not a database is a damaged index."""
        name = getattr(exc, "sqlite_errorname", "") or ""
        if name.startswith(("SQLITE_NOTADB", "SQLITE_CORRUPT")):
            return BundleError(f"{self.path} is not a cachekit index: {exc}", hint=_DAMAGED_HINT)
        reason = {"SQLITE_FULL": "no space left on device"}.get(name, f"{exc} ({name or 'sqlite error'})")
        if name.startswith("SQLITE_IOERR"):
            reason = f"disk full or I/O error ({name})"
        return WriteError(f"could not write {self.path}: {reason}")

    def record_import(self, entries: tuple[mf.Entry, ...], bundle: str, when: str) -> None:
        """Record entries in one transaction (called under the store lock by the importer)."""
        self.store.mkdir(parents=True, exist_ok=True)
        conn = self._db()
        try:
            conn.execute("BEGIN IMMEDIATE")
            for e in entries:
                conn.execute(
                    "INSERT OR IGNORE INTO items VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                    (e.repo_type, e.repo_id, e.commit, e.kind, e.size, len(e.files), int(e.trust_remote_code),
                     e.license, e.source, when, bundle, json.dumps(mf._entry_to_dict(e))))
                for rev in {e.commit, *e.ref_names}:
                    conn.execute("INSERT OR REPLACE INTO refs VALUES (?,?,?,?)", (e.repo_type, e.repo_id, rev, e.commit))
                sha_of = {f.path: f.sha256 for f in e.files}
                for config, by_split in e.splits.items():
                    for split, info in by_split.items():
                        conn.execute("INSERT OR REPLACE INTO splits VALUES (?,?,?,?,?,?,?)",
                                     (e.repo_id, e.commit, config, split, info["path"], info.get("rows"),
                                      sha_of[info["path"]]))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise self._error(exc) from None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()

    def _rows(self, sql: str, params: tuple = ()) -> list[sqlite3.Row]:
        conn = self._db()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        finally:
            conn.close()

    def items(self) -> list[Item]:
        if not self.path.exists():
            return []
        revs: dict[tuple, list[str]] = {}
        for r in self._rows("SELECT * FROM refs"):
            if r["revision"] != r["commit"]:
                revs.setdefault((r["repo_type"], r["repo_id"], r["commit"]), []).append(r["revision"])
        out = [Item(r["kind"], r["repo_type"], r["repo_id"], r["commit"],
                    tuple(sorted(revs.get((r["repo_type"], r["repo_id"], r["commit"]), []))),
                    r["size"], r["files"], bool(r["trust_remote_code"]), r["imported_at"], r["bundle"])
               for r in self._rows("SELECT * FROM items ORDER BY kind, repo_id, imported_at")]
        return out

    def entry(self, repo_type: str, repo_id: str, commit: str) -> mf.Entry:
        """The manifest entry an installed item was imported from (what `cachekit export` re-bundles)."""
        rows = self._rows('SELECT manifest_entry FROM items WHERE repo_type=? AND repo_id=? AND "commit"=?',
                          (repo_type, repo_id, commit))
        if not rows:
            raise NotFoundError(f"{repo_type} {repo_id}@{commit[:12]} is not installed in {self.store}")
        return mf.parse_entry(json.loads(rows[0]["manifest_entry"]), f"{repo_type} {repo_id} in {self.path}")

    def resolve_commit(self, repo_type: str, repo_id: str, revision: str | None = None) -> str:
        """The installed commit for a repo at a revision (default: main, else the only one)."""
        if self.path.exists():
            rows = self._rows("SELECT * FROM refs WHERE repo_type=? AND repo_id=?", (repo_type, repo_id))
            wanted = revision or "main"
            for r in rows:
                if r["revision"] == wanted:
                    return r["commit"]
            commits = {r["commit"] for r in rows}
            if revision is None and len(commits) == 1:
                return commits.pop()
        rev = f"@{revision}" if revision else ""
        raise NotFoundError(f"{repo_type} {repo_id}{rev} is not installed in {self.store}",
                            hint=f"on a host with internet: cachekit prefetch --{'model' if repo_type == 'model' else repo_type} "
                                 f"{repo_id}{rev} --out BUNDLE; here: cachekit import BUNDLE")

    def resolve_split(self, repo_id: str, config: str | None, split: str, revision: str | None = None) -> Path:
        """Path of the Parquet file of one dataset split."""
        return self.split_info(repo_id, config, split, revision).path

    def split_info(self, repo_id: str, config: str | None, split: str, revision: str | None = None) -> SplitInfo:
        """Where one installed dataset split is, with its sha256, row count and commit."""
        commit = self.resolve_commit("dataset", repo_id, revision)
        rows = self._rows("SELECT * FROM splits WHERE repo_id=? AND \"commit\"=?", (repo_id, commit))
        configs = sorted({r["config"] for r in rows})
        cfg = config or (configs[0] if len(configs) == 1 else "default")
        for r in rows:
            if r["config"] == cfg and r["split"] == split:
                return SplitInfo(paths.dataset_file(self.store, repo_id, commit, r["path"]), r["sha256"],
                                 r["rows"], commit, cfg)
        have = ", ".join(f"{r['config']}/{r['split']}" for r in rows) or "none"
        raise NotFoundError(f"dataset {repo_id}@{commit[:12]} has no split {cfg}/{split} (installed: {have})",
                            hint=f"on a host with internet: cachekit prefetch --dataset {repo_id} --out BUNDLE")
