"""The store index (SQLite through sqlite-utils): what was imported, and how to resolve it.

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
from .errors import BundleError, NotFoundError

SCHEMA = 1


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


class Index:
    def __init__(self, store: Path | None = None) -> None:
        self.store = Path(store) if store is not None else paths.store_root()
        self.path = self.store / "index.db"

    def _db(self):
        import sqlite_utils

        try:
            conn = sqlite3.connect(self.path, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            db = sqlite_utils.Database(conn)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise BundleError(f"{self.path} is not a cachekit index: {exc}",
                              hint="move the file away; `cachekit import` rebuilds it from your bundles") from None
        if version == 0 and "items" not in db.table_names():
            db["items"].create({"repo_type": str, "repo_id": str, "commit": str, "kind": str, "size": int,
                                "files": int, "trust_remote_code": int, "license": str, "source": str,
                                "imported_at": str, "bundle": str, "manifest_entry": str},
                               pk=("repo_type", "repo_id", "commit"))
            db["refs"].create({"repo_type": str, "repo_id": str, "revision": str, "commit": str},
                              pk=("repo_type", "repo_id", "revision"))
            db["splits"].create({"repo_id": str, "commit": str, "config": str, "split": str, "path": str,
                                 "rows": int, "sha256": str}, pk=("repo_id", "commit", "config", "split"))
            conn.execute(f"PRAGMA user_version={SCHEMA}")
        elif version != SCHEMA:
            raise BundleError(f"{self.path} has index schema {version}, this cachekit reads {SCHEMA}")
        return db

    def record_import(self, entries: tuple[mf.Entry, ...], bundle: str, when: str) -> None:
        """Record entries in one transaction (called under the store lock by the importer)."""
        self.store.mkdir(parents=True, exist_ok=True)
        db = self._db()
        with db.conn:
            for e in entries:
                old = db["items"].rows_where("repo_type=? and repo_id=? and [commit]=?",
                                             [e.repo_type, e.repo_id, e.commit])
                if next(iter(old), None) is None:
                    db["items"].insert({
                        "repo_type": e.repo_type, "repo_id": e.repo_id, "commit": e.commit, "kind": e.kind,
                        "size": e.size, "files": len(e.files), "trust_remote_code": int(e.trust_remote_code),
                        "license": e.license, "source": e.source, "imported_at": when, "bundle": bundle,
                        "manifest_entry": json.dumps(mf._entry_to_dict(e)),
                    })
                for rev in {e.revision, e.commit}:
                    db["refs"].upsert({"repo_type": e.repo_type, "repo_id": e.repo_id, "revision": rev,
                                       "commit": e.commit}, pk=("repo_type", "repo_id", "revision"))
                sha_of = {f.path: f.sha256 for f in e.files}
                for config, by_split in e.splits.items():
                    for split, info in by_split.items():
                        db["splits"].upsert({"repo_id": e.repo_id, "commit": e.commit, "config": config,
                                             "split": split, "path": info["path"], "rows": info.get("rows"),
                                             "sha256": sha_of[info["path"]]},
                                            pk=("repo_id", "commit", "config", "split"))
        db.conn.close()

    def items(self) -> list[Item]:
        if not self.path.exists():
            return []
        db = self._db()
        revs: dict[tuple, list[str]] = {}
        for r in db["refs"].rows:
            if r["revision"] != r["commit"]:
                revs.setdefault((r["repo_type"], r["repo_id"], r["commit"]), []).append(r["revision"])
        out = [Item(r["kind"], r["repo_type"], r["repo_id"], r["commit"],
                    tuple(sorted(revs.get((r["repo_type"], r["repo_id"], r["commit"]), []))),
                    r["size"], r["files"], bool(r["trust_remote_code"]), r["imported_at"], r["bundle"])
               for r in db["items"].rows_where(order_by="kind, repo_id, imported_at")]
        db.conn.close()
        return out

    def resolve_commit(self, repo_type: str, repo_id: str, revision: str | None = None) -> str:
        """The installed commit for a repo at a revision (default: main, else the only one)."""
        if self.path.exists():
            db = self._db()
            try:
                rows = list(db["refs"].rows_where("repo_type=? and repo_id=?", [repo_type, repo_id]))
            finally:
                db.conn.close()
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
        commit = self.resolve_commit("dataset", repo_id, revision)
        db = self._db()
        try:
            rows = list(db["splits"].rows_where("repo_id=? and [commit]=?", [repo_id, commit]))
        finally:
            db.conn.close()
        configs = sorted({r["config"] for r in rows})
        cfg = config or (configs[0] if len(configs) == 1 else "default")
        for r in rows:
            if r["config"] == cfg and r["split"] == split:
                return paths.dataset_file(self.store, repo_id, commit, r["path"])
        have = ", ".join(f"{r['config']}/{r['split']}" for r in rows) or "none"
        raise NotFoundError(f"dataset {repo_id}@{commit[:12]} has no split {cfg}/{split} (installed: {have})")
