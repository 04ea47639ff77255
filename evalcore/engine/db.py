"""Opening evalcore's SQLite files safely: recognise, create, migrate; never touch a foreign file.

Every evalcore database carries an `application_id` (which kind of evalcore file it is) and a
`user_version` (its schema version). Before SQLite opens a file for writing, its 100-byte header
is read as plain bytes, so a corrupt file, another application's database (a cachekit index
included), an evalcore file of another kind, or a file written by a newer evalcore is refused
with a `LedgerError` and stays byte-for-byte unchanged (no -wal or -shm file appears either).
Then, before anything is written, `PRAGMA quick_check` reads every page: a file damaged inside
(garbage in a data page, a truncated file) is refused the same way. A write-ahead log left by a
crash is checked through a read-only connection first, which can never copy it into the file.

A new file is built under a temporary name and hard-linked into place complete, so a concurrent
opener sees either no file or a fully initialised one, never a half-made one.

Connections: WAL, `synchronous=NORMAL`, foreign keys on, a busy timeout, and
`isolation_level=None` (autocommit; writers use an explicit `BEGIN IMMEDIATE`). Open one
connection per process, after any fork.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalcore.errors import LedgerError

SQLITE_MAGIC = b"SQLite format 3\x00"
BUSY_TIMEOUT_S = 30.0

Migration = Callable[[sqlite3.Connection], None]


@dataclass(frozen=True)
class Schema:
    """One kind of evalcore file. `migrations[v]` upgrades a file from version v-1 to v; versions
    run 1..N without gaps, and the newest is the version this code writes."""

    label: str                      # "run ledger", "GPU lease table": used in messages
    application_id: int
    migrations: Mapping[int, Migration]

    @property
    def version(self) -> int:
        return max(self.migrations, default=0)

    def __post_init__(self) -> None:
        if sorted(self.migrations) != list(range(1, len(self.migrations) + 1)):
            raise ValueError(f"{self.label}: migrations must be numbered 1..N, got {sorted(self.migrations)}")


def script(statements: Sequence[str]) -> Migration:
    """A migration that runs SQL statements one by one, inside the caller's transaction
    (`executescript` would commit it first)."""
    def run(conn: sqlite3.Connection) -> None:
        for sql in statements:
            conn.execute(sql)
    return run


# Every application_id evalcore uses, so that one kind of evalcore file is not mistaken for another.
KNOWN_IDS: dict[int, str] = {
    0x4556434C: "evalcore run ledger",     # "EVCL"
    0x4556474C: "evalcore GPU lease table",  # "EVGL"
}


def connect(path: str | os.PathLike[str], *, create: bool, schema: Schema,
            readonly: bool = False) -> sqlite3.Connection:
    """Open (or, with `create`, make) an evalcore database of `schema`, migrated to its newest
    version. Raises LedgerError, leaving the file unchanged, when the file is not one we can use.
    `readonly`: an archived file in a folder nobody may write (opened immutable, never migrated)."""
    path = Path(path)
    if readonly:
        return _open_readonly(path, schema)
    if not os.path.lexists(path):
        if not create:
            raise LedgerError(f"{path}: no {schema.label} here (the file does not exist)",
                              hint="check the path; the run's ledger is <work_dir>/ledger.db")
        _create(path, schema)
    _check_header(path, schema)
    conn = _open(path, schema)
    try:
        _migrate(conn, path, schema)
    except BaseException:
        conn.close()
        raise
    return conn


def read_header(path: Path) -> tuple[int, int] | str:
    """(application_id, user_version) from the file's header, or why it is no SQLite database.

    Read through SQLite (immutable: no lock, no -wal or -shm file), never with a plain open():
    closing any descriptor of a file drops every POSIX lock this process holds on it, so a plain
    read by a process that already has the ledger open (a worker's heartbeat thread opening its
    own connection) would drop that connection's locks; another process could then take the
    file for its last user, checkpoint and delete the write-ahead log that is still being written,
    and those writes would be lost. SQLite keeps such descriptors open until its last lock goes."""
    import stat as _stat

    try:
        st = os.stat(path)
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if _stat.S_ISDIR(st.st_mode):
        return "is a directory"
    if not os.access(path, os.R_OK):
        return "cannot be read (Permission denied)"
    if st.st_size == 0:
        return "is an empty file, not an SQLite database"
    if st.st_size < 100:
        return "is not an SQLite database (corrupt, or another kind of file)"
    try:
        with closing(sqlite3.connect(Path(path).resolve().as_uri() + "?mode=ro&immutable=1", uri=True)) as conn:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError:
        return "is not an SQLite database (corrupt, or another kind of file)"
    return int(app_id) & 0xFFFFFFFF, int(version) & 0xFFFFFFFF


def _check_header(path: Path, schema: Schema) -> None:
    header = read_header(path)
    if isinstance(header, str):
        raise LedgerError(f"{path} {header}; it is not an evalcore {schema.label}")
    app_id, version = header
    if app_id == schema.application_id:
        if version > schema.version:
            raise _newer(path, schema, version)
        return
    if app_id in KNOWN_IDS:
        raise LedgerError(f"{path} is an {KNOWN_IDS[app_id]}, not an evalcore {schema.label}")
    raise LedgerError(f"{path} is {_describe_foreign(path, app_id)}, not an evalcore {schema.label}")


def _describe_foreign(path: Path, app_id: int) -> str:
    """A few words on what a foreign SQLite file is, read without locks or side files."""
    try:
        uri = path.resolve().as_uri() + "?mode=ro&immutable=1"
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
    except sqlite3.DatabaseError as exc:
        return f"a corrupt SQLite file ({exc})"
    if {"items", "refs", "splits"} <= set(tables):
        return "a cachekit store index"
    owner = f"application_id 0x{app_id:08X}" if app_id else "no evalcore application_id"
    shown = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
    return f"another application's SQLite database ({owner}; tables: {shown or 'none'})"


def _newer(path: Path, schema: Schema, version: int) -> LedgerError:
    return LedgerError(f"{path} was written by a newer evalcore ({schema.label} schema {version}; "
                       f"this evalcore reads up to {schema.version})",
                       hint="upgrade evalcore on this host (pip install -U cachekit-evalcore)")


def _damage(conn: sqlite3.Connection) -> str | None:
    """What `PRAGMA quick_check` finds wrong (its first lines), or None for a sound file."""
    try:
        rows = [str(r[0]) for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
    except sqlite3.DatabaseError as exc:
        return str(exc)
    if rows == ["ok"]:
        return None
    lines = [x for r in rows for x in r.splitlines() if x and not x.startswith("***")]
    return "; ".join(lines[:3]) or "quick_check failed"


def _refuse_damaged(path: Path, schema: Schema, problem: str) -> LedgerError:
    return LedgerError(f"{path}: the {schema.label} is damaged (SQLite quick_check: {problem[:200]}); "
                       "it was not modified",
                       hint="restore the file from a backup or start a new run; evalcore never writes "
                            "to a damaged ledger, so a resume of this run cannot work")


def _check_pages(path: Path, schema: Schema) -> None:
    """quick_check through a read-only connection, for a file with a write-ahead log already
    beside it (a read-only connection never checkpoints that log into the file)."""
    uri = path.resolve().as_uri() + "?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)) as conn:
            problem = _damage(conn)
    except sqlite3.Error as exc:
        problem = str(exc)
    if problem:
        raise _refuse_damaged(path, schema, problem)


def _open(path: Path, schema: Schema) -> sqlite3.Connection:
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        _check_pages(path, schema)
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None,
                               check_same_thread=False)
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot open the {schema.label}: {exc}") from None
    try:
        problem = _damage(conn)  # before any write: the journal-mode switch below may write
        if problem:
            raise _refuse_damaged(path, schema, problem)
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise LedgerError(f"{path}: this filesystem does not support SQLite WAL mode (got {mode})",
                              hint="put the work directory / EVALCORE_STATE_DIR on a local disk")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise LedgerError(f"{path}: the {schema.label} is unreadable: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _open_readonly(path: Path, schema: Schema) -> sqlite3.Connection:
    if not path.is_file():
        raise LedgerError(f"{path}: no {schema.label} here (the file does not exist)")
    _check_header(path, schema)
    got = read_header(path)
    if isinstance(got, tuple) and got[1] != schema.version:
        raise LedgerError(f"{path}: a read-only {schema.label} of schema {got[1]} (this evalcore reads "
                          f"{schema.version}); copy the run folder somewhere writable to read it")
    try:
        conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro&immutable=1", uri=True,
                               isolation_level=None, check_same_thread=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        raise LedgerError(f"{path}: cannot read the {schema.label}: {exc}") from None
    return conn


def _create(path: Path, schema: Schema) -> None:
    """Build the newest schema in a temporary file, then link it into place (no-clobber)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with closing(sqlite3.connect(str(tmp), isolation_level=None)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("BEGIN IMMEDIATE")
            for v in range(1, schema.version + 1):
                schema.migrations[v](conn)
            conn.execute(f"PRAGMA application_id={int(schema.application_id)}")
            conn.execute(f"PRAGMA user_version={int(schema.version)}")
            conn.execute("COMMIT")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass                                   # another process created it first: use theirs
        except OSError:                            # no hard links here (some network filesystems)
            if not os.path.lexists(path):
                os.replace(tmp, path)
    finally:
        for p in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def _migrate(conn: sqlite3.Connection, path: Path, schema: Schema) -> None:
    """Bring an existing file to the newest version in one transaction (all steps or none)."""
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path}: the {schema.label} is unreadable: {exc}") from None
    if app_id != schema.application_id:            # changed since the header was read
        raise LedgerError(f"{path} is not an evalcore {schema.label} (application_id 0x{app_id:08X})")
    if version > schema.version:
        raise _newer(path, schema, version)
    if version == schema.version:
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        version = conn.execute("PRAGMA user_version").fetchone()[0]   # someone may have migrated
        if version > schema.version:
            conn.execute("ROLLBACK")
            raise _newer(path, schema, version)
        for v in range(version + 1, schema.version + 1):
            schema.migrations[v](conn)
        conn.execute(f"PRAGMA user_version={int(schema.version)}")
        conn.execute("COMMIT")
    except LedgerError:
        raise
    except Exception as exc:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise LedgerError(f"{path}: upgrading the {schema.label} from schema {version} to "
                          f"{schema.version} failed, file left at schema {version}: {exc}") from None


class Handle:
    """This process's connection to one evalcore file, shared by its threads under a lock.

    After a fork the child opens its own connection on first use; the inherited one is never
    used or closed (SQLite connections must not cross a fork)."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool, schema: Schema,
                 readonly: bool = False) -> None:
        self.path = Path(path)
        self.schema = schema
        self._conn: sqlite3.Connection | None = connect(self.path, create=create, schema=schema, readonly=readonly)
        self._pid = os.getpid()
        self._lock = threading.RLock()
        self._inherited: list[sqlite3.Connection] = []

    @property
    def conn(self) -> sqlite3.Connection:
        if self._pid != os.getpid():
            if self._conn is not None:
                self._inherited.append(self._conn)
            self._lock = threading.RLock()
            self._conn = connect(self.path, create=False, schema=self.schema)
            self._pid = os.getpid()
        if self._conn is None:
            raise LedgerError(f"{self.path}: this {self.schema.label} handle was closed")
        return self._conn

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction: BEGIN IMMEDIATE takes the write lock up front (waiting up
        to the busy timeout), so the transaction never has to upgrade a read lock."""
        with self._lock:
            conn = self.conn
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise LedgerError(f"{self.path}: {self.schema.label} busy for {BUSY_TIMEOUT_S:.0f} s ({exc})",
                                  hint="another process holds its write lock; is the disk stuck?") from None
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def read(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[sqlite3.Row]:
        """All rows of one query (autocommit: a consistent snapshot for that statement)."""
        with self._lock:
            cur = self.conn.cursor()
            cur.row_factory = sqlite3.Row
            return cur.execute(sql, params).fetchall()
