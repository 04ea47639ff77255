"""The run ledger (one SQLite file per work directory): runs, partitions, samples, results.

Workers in many processes share it. A worker claims a partition (one atomic
`UPDATE ... RETURNING` inside `BEGIN IMMEDIATE`), which gives it a fresh random token and a lease
that it renews by heartbeat. Every later write for that partition (samples, complete, fail)
matches on the partition id AND the token AND status 'running', checked inside the writing
transaction; a False return means the claim was lost (the lease expired and someone else took
the partition), and nothing was changed. Samples are one row per finished sample, keyed by
index, so a re-run of a crashed partition skips what is done and never records a sample twice.

Time is always a parameter (`now`, epoch seconds): nothing here reads the clock, so lease expiry
is tested without sleeping.

Tables: runs, partitions (status, attempts, claim, lease, last error, timings), attempts (one row
per claim: who, when, outcome, error — the history that `requeue` keeps), samples, results (in
versions: `result_versions` says which computed them, eval or a rescore; per subtask too), loads
(every model load a worker did), backend_paths (the scoring / generation paths each worker's
backend took for a model, with the reason of every fallback). Their SQL: `ledger_schema`.

Over 400 lines on purpose: one class holds every statement on these tables, so that each write
checks the claim token in its own transaction and no other module writes a ledger row.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from evalcore.engine import db
from evalcore.engine.ledger_schema import SCHEMA
from evalcore.errors import LedgerError

STATUSES = ("pending", "running", "done", "failed")
RUN_STATUSES = ("running", "done", "failed", "interrupted")
PAGE = 1000  # rows per read when iterating samples


@dataclass(frozen=True)
class PartitionRow:
    """One unit of work as the planner produced it. `key_hash` covers everything the answers
    depend on (model commit, dtype, tokenizer/template, prompt spec, data, generation settings)."""

    partition_id: str
    model_key: str
    dataset_key: str
    key_hash: str
    key_json: str
    spec_json: str
    sample_start: int
    sample_end: int  # exclusive
    cost: float
    n_gpus: int = 1
    max_attempts: int = 3


@dataclass(frozen=True)
class Claim:
    """A partition this worker holds until `expires_at` (renew with `heartbeat`)."""

    run_id: str
    partition_id: str
    token: str
    attempt: int
    model_key: str
    dataset_key: str
    key_hash: str
    spec_json: str
    sample_start: int
    sample_end: int
    n_gpus: int
    expires_at: float


_CLAIM_COLUMNS = ("partition_id, attempts, model_key, dataset_key, key_hash, spec_json, "
                  "sample_start, sample_end, n_gpus, expires_at")


def partitions_hash(partitions: Sequence[PartitionRow]) -> str:
    """A stable digest of a run's partition list (order-independent)."""
    rows = sorted((asdict(p) for p in partitions), key=lambda r: r["partition_id"])
    return hashlib.sha256(json.dumps(rows, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _reopen(path: str) -> Ledger:
    return Ledger(path, create=False)


class Ledger:
    """One process's handle on a ledger file. Safe to share between threads of one process (a
    heartbeat thread, say); after a fork the child transparently opens its own connection."""

    def __init__(self, path: str | os.PathLike[str], *, create: bool = True, run_id: str | None = None,
                 readonly: bool = False) -> None:
        """`run_id`: the run whose folder this file is in; a ledger recording any other run is
        refused (LedgerError, file unchanged), so a ledger copied from another run is never used.
        `readonly`: an archived file nobody may write (opened immutable, never migrated)."""
        self.path = Path(path)
        self._h = db.Handle(self.path, create=create, schema=SCHEMA, readonly=readonly)
        self._write = self._h.write
        self._read = self._h.read
        if run_id is not None:
            self._check_owner(run_id)

    def _check_owner(self, run_id: str) -> None:
        others = [r[0] for r in self._read("SELECT run_id FROM runs WHERE run_id != ? ORDER BY run_id", (run_id,))]
        if others:
            self.close()
            raise LedgerError(f"{self.path} is the ledger of run {others[0]}, not of run {run_id} whose folder "
                              "it is in; it was not modified",
                              hint="a ledger is only used in its own run's folder: put the original ledger.db "
                                   "back, or start a new run")

    def __reduce__(self):  # a Ledger sent to a spawned process reopens the file there
        return (_reopen, (str(self.path),))

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._h.close()

    @classmethod
    def for_reading(cls, path: str | os.PathLike[str], run_id: str | None = None) -> Ledger:
        """status and report: an archived run folder that cannot be written is opened read-only."""
        p = Path(path)
        writable = os.access(p.parent, os.W_OK) and (not p.exists() or os.access(p, os.W_OK))
        return cls(p, create=False, run_id=run_id, readonly=not writable)

    # ---- runs ------------------------------------------------------------------------------

    def create_run(self, run_id: str, work_dir: str, plan_json: str, argv: Sequence[str],
                   partitions: Sequence[PartitionRow], now: float) -> None:
        """Record a run and its partitions. Calling it again with the same partitions does
        nothing; with different ones it raises LedgerError (the plan changed under this id)."""
        if not run_id:
            raise ValueError("run_id must not be empty")
        ids = [p.partition_id for p in partitions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"run {run_id}: duplicate partition ids")
        for p in partitions:
            if p.sample_end < p.sample_start or p.n_gpus < 0 or p.max_attempts < 1:
                raise ValueError(f"run {run_id}: bad partition {p.partition_id}: samples "
                                 f"[{p.sample_start}, {p.sample_end}), n_gpus {p.n_gpus}, max_attempts {p.max_attempts}")
        digest = partitions_hash(partitions)
        with self._write() as conn:
            row = conn.execute("SELECT partitions_hash, n_partitions FROM runs WHERE run_id=?", (run_id,)).fetchone()
            if row is not None:
                if row[0] == digest:
                    return
                raise LedgerError(
                    f"run {run_id} already exists in {self.path} with different partitions "
                    f"({row[1]} recorded, {len(partitions)} now): the plan or its settings changed",
                    hint="resume with the original plan, or start a new run (new run id or work directory)")
            conn.execute("INSERT INTO runs (run_id, created_at, updated_at, work_dir, plan_json, argv_json, "
                         "status, partitions_hash, n_partitions) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                         (run_id, now, now, str(work_dir), plan_json, json.dumps(list(argv)), digest,
                          len(partitions)))
            conn.executemany(
                "INSERT INTO partitions (run_id, partition_id, model_key, dataset_key, key_hash, key_json, "
                "spec_json, sample_start, sample_end, n_samples, cost, n_gpus, max_attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(run_id, p.partition_id, p.model_key, p.dataset_key, p.key_hash, p.key_json, p.spec_json,
                  p.sample_start, p.sample_end, p.sample_end - p.sample_start, float(p.cost), p.n_gpus,
                  p.max_attempts) for p in partitions])

    def set_run_status(self, run_id: str, status: str, *, now: float) -> None:
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {', '.join(RUN_STATUSES)}, not {status!r}")
        with self._write() as conn:
            conn.execute("UPDATE runs SET status=?, updated_at=? WHERE run_id=?", (status, now, run_id))

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first, with its partition counts by status."""
        out = []
        for r in self._read("SELECT * FROM runs ORDER BY created_at, run_id"):
            d = dict(r)
            d["argv"] = json.loads(d.pop("argv_json"))
            counts = self._read("SELECT status, count(*) FROM partitions WHERE run_id=? GROUP BY status",
                                (d["run_id"],))
            d["partitions"] = {s: 0 for s in STATUSES} | {c[0]: c[1] for c in counts}
            out.append(d)
        return out

    def run(self, run_id: str) -> dict[str, Any] | None:
        return next((r for r in self.runs() if r["run_id"] == run_id), None)

    # ---- claiming ---------------------------------------------------------------------------

    def claim(self, run_id: str, worker_id: str, *, now: float, lease_s: float, pid: int, host: str,
              prefer_model: str | None = None, only_models: set[str] | None = None,
              max_gpus: int | None = None, prefer_dataset: str | None = None) -> Claim | None:
        """Take the next partition: a pending one, or a running one whose lease expired (its
        holder died). Partitions of `prefer_model` (the model this worker has loaded) first, of
        its `prefer_dataset` (the dataset it ran last: the prompts share its few-shot prefix, whose
        KV cache the worker keeps) before its other datasets, then by model, dataset, first
        sample. None when nothing is claimable for this worker."""
        if only_models is not None and not only_models:
            return None
        params: dict[str, Any] = {"run": run_id, "now": now, "exp": now + lease_s, "worker": worker_id,
                                  "pid": pid, "host": host, "pref": prefer_model, "gpus": max_gpus,
                                  "pds": prefer_dataset,
                                  "token": secrets.token_hex(16)}
        filt = ""
        if only_models is not None:
            names = sorted(only_models)
            params.update({f"m{i}": m for i, m in enumerate(names)})
            filt += f" AND model_key IN ({', '.join(f':m{i}' for i in range(len(names)))})"
        if max_gpus is not None:
            filt += " AND n_gpus <= :gpus"
        pending = "run_id = :run AND status = 'pending'"
        expired = "run_id = :run AND status = 'running' AND expires_at < :now"
        order = "dataset_key, sample_start, partition_id"
        picks = []
        if prefer_model is not None:
            picks += [f"SELECT rowid FROM partitions WHERE {cond} AND model_key = :pref{filt} "
                      f"ORDER BY (dataset_key IS :pds) DESC, {order} LIMIT 1" for cond in (pending, expired)]
        picks += [f"SELECT rowid FROM partitions WHERE {cond}{filt} ORDER BY model_key, {order} LIMIT 1"
                  for cond in (pending, expired)]
        claim_sql = (
            "UPDATE partitions SET status = 'running', claim_token = :token, attempts = attempts + 1, "
            "claimed_by = :worker, pid = :pid, host = :host, heartbeat_at = :now, expires_at = :exp, "
            "started_at = :now, finished_at = NULL "
            f"WHERE rowid = coalesce({', '.join(f'({p})' for p in picks)}) RETURNING {_CLAIM_COLUMNS}")
        with self._write() as conn:
            self._give_up_expired(conn, run_id, now)
            row = conn.execute(claim_sql, params).fetchone()
            if row is None:
                return None
            claim = Claim(run_id, row[0], params["token"], row[1], row[2], row[3], row[4], row[5], row[6],
                          row[7], row[8], row[9])
            # The previous holder's attempt, if its lease expired, ends here.
            conn.execute("UPDATE attempts SET outcome = 'expired', finished_at = ?, error_class = 'LeaseExpired', "
                         "error_message = 'lease expired; partition taken over' "
                         "WHERE run_id = ? AND partition_id = ? AND outcome = 'running'",
                         (now, run_id, claim.partition_id))
            conn.execute("INSERT INTO attempts (token, run_id, partition_id, attempt, worker, pid, host, started_at) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                         (claim.token, run_id, claim.partition_id, claim.attempt, worker_id, pid, host, now))
        return claim

    @staticmethod
    def _give_up_expired(conn: sqlite3.Connection, run_id: str, now: float) -> int:
        """Expired partitions that used up their attempts become 'failed' (LeaseExpired)."""
        exhausted = ("run_id = :run AND status = 'running' AND expires_at < :now "
                     "AND attempts >= max_attempts")
        p = {"run": run_id, "now": now}
        conn.execute("UPDATE attempts SET outcome = 'expired', finished_at = :now, error_class = 'LeaseExpired', "
                     "error_message = 'lease expired' "
                     f"WHERE token IN (SELECT claim_token FROM partitions WHERE {exhausted})", p)
        cur = conn.execute(
            "UPDATE partitions SET status = 'failed', finished_at = :now, error_class = 'LeaseExpired', "
            "error_message = 'gave up after ' || attempts || ' attempts; last holder died (' || "
            "coalesce(claimed_by, '?') || ' pid ' || coalesce(pid, '?') || ' on ' || coalesce(host, '?') || "
            "', lease expired)', error_traceback = NULL "
            f"WHERE {exhausted}", p)
        return cur.rowcount

    def heartbeat(self, run_id: str, partition_id: str, token: str, *, now: float, lease_s: float) -> bool:
        """Extend the lease. False: the claim was lost (stop working on this partition)."""
        with self._write() as conn:
            cur = conn.execute("UPDATE partitions SET heartbeat_at = ?, expires_at = ? WHERE run_id = ? "
                               "AND partition_id = ? AND claim_token = ? AND status = 'running'",
                               (now, now + lease_s, run_id, partition_id, token))
            return cur.rowcount == 1

    def add_samples(self, run_id: str, partition_id: str, token: str, rows: Iterable[tuple[int, str]], *,
                    now: float) -> bool:
        """Record finished samples (index, output JSON) in one transaction, for the claim holder
        only. A sample already recorded is kept as it was. False: the claim was lost."""
        rows = list(rows)
        with self._write() as conn:
            got = conn.execute("SELECT sample_start, sample_end FROM partitions WHERE run_id = ? AND "
                               "partition_id = ? AND claim_token = ? AND status = 'running'",
                               (run_id, partition_id, token)).fetchone()
            if got is None:
                return False
            start, end = got
            bad = [i for i, _ in rows if not start <= i < end]
            if bad:
                raise ValueError(f"partition {partition_id} covers samples [{start}, {end}); got index {bad[0]}")
            cur = conn.executemany("INSERT OR IGNORE INTO samples (run_id, partition_id, sample_index, "
                                   "output_json, created_at) VALUES (?, ?, ?, ?, ?)",
                                   [(run_id, partition_id, i, out, now) for i, out in rows])
            conn.execute("UPDATE partitions SET n_done = n_done + ?, heartbeat_at = ? WHERE run_id = ? "
                         "AND partition_id = ?", (max(cur.rowcount, 0), now, run_id, partition_id))
            return True

    def done_indices(self, run_id: str, partition_id: str) -> set[int]:
        rows = self._read("SELECT sample_index FROM samples WHERE run_id = ? AND partition_id = ?",
                          (run_id, partition_id))
        return {r[0] for r in rows}

    def complete(self, run_id: str, partition_id: str, token: str, *, now: float) -> bool:
        with self._write() as conn:
            cur = conn.execute("UPDATE partitions SET status = 'done', finished_at = ?, heartbeat_at = ?, "
                               "error_class = NULL, error_message = NULL, error_traceback = NULL "
                               "WHERE run_id = ? AND partition_id = ? AND claim_token = ? AND status = 'running'",
                               (now, now, run_id, partition_id, token))
            if cur.rowcount != 1:
                return False
            conn.execute("UPDATE attempts SET outcome = 'done', finished_at = ? WHERE token = ?", (now, token))
            return True

    def fail(self, run_id: str, partition_id: str, token: str, *, now: float, error_class: str,
             message: str, traceback_tail: str, retry: bool) -> bool:
        """Record a failure. With `retry` and attempts left, the partition goes back to pending;
        otherwise it is 'failed'. False: the claim was lost."""
        with self._write() as conn:
            row = conn.execute(
                "UPDATE partitions SET status = CASE WHEN ? AND attempts < max_attempts THEN 'pending' "
                "ELSE 'failed' END, finished_at = ?, heartbeat_at = ?, error_class = ?, error_message = ?, "
                "error_traceback = ? WHERE run_id = ? AND partition_id = ? AND claim_token = ? "
                "AND status = 'running' RETURNING status",
                (int(retry), now, now, error_class, message, traceback_tail, run_id, partition_id,
                 token)).fetchone()
            if row is None:
                return False
            conn.execute("UPDATE attempts SET outcome = ?, finished_at = ?, error_class = ?, error_message = ?, "
                         "error_traceback = ? WHERE token = ?",
                         ("retry" if row[0] == "pending" else "failed", now, error_class, message,
                          traceback_tail, token))
            return True

    def release(self, run_id: str, partition_id: str, token: str, *, now: float) -> bool:
        """Hand a claimed partition back untouched by failure (the worker is stopping): pending
        again, this attempt not counted, samples kept. False: the claim was lost."""
        with self._write() as conn:
            cur = conn.execute("UPDATE partitions SET status = 'pending', attempts = max(attempts - 1, 0), "
                               "expires_at = NULL, heartbeat_at = ? WHERE run_id = ? AND partition_id = ? "
                               "AND claim_token = ? AND status = 'running'", (now, run_id, partition_id, token))
            if cur.rowcount != 1:
                return False
            conn.execute("UPDATE attempts SET outcome = 'released', finished_at = ? WHERE token = ?", (now, token))
            return True

    def requeue(self, run_id: str, *, now: float) -> int:
        """For resume: failed partitions, and running ones whose lease expired, go back to pending
        with their attempt count reset. Their history stays in `attempts`. Returns how many."""
        stale = "run_id = :run AND (status = 'failed' OR (status = 'running' AND expires_at < :now))"
        p = {"run": run_id, "now": now}
        with self._write() as conn:
            conn.execute("UPDATE attempts SET outcome = 'requeued', finished_at = :now "
                         "WHERE outcome = 'running' AND token IN "
                         f"(SELECT claim_token FROM partitions WHERE {stale})", p)
            cur = conn.execute("UPDATE partitions SET status = 'pending', attempts = 0, claim_token = NULL, "
                               "expires_at = NULL, finished_at = NULL "
                               f"WHERE {stale}", p)
            conn.execute("UPDATE runs SET updated_at = :now WHERE run_id = :run", p)
            return cur.rowcount

    # ---- reading ----------------------------------------------------------------------------

    def partitions(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._read(
            "SELECT * FROM partitions WHERE run_id = ? ORDER BY model_key, dataset_key, sample_start, "
            "partition_id", (run_id,))]

    def attempts(self, run_id: str, partition_id: str | None = None) -> list[dict[str, Any]]:
        """Claim history: one row per attempt, with its outcome and error."""
        where, params = "run_id = ?", [run_id]
        if partition_id is not None:
            where, params = where + " AND partition_id = ?", params + [partition_id]
        return [dict(r) for r in self._read(
            f"SELECT * FROM attempts WHERE {where} ORDER BY started_at, partition_id, attempt", params)]

    def samples(self, run_id: str, partition_id: str | None = None) -> Iterator[tuple[str, int, str]]:
        """(partition_id, sample_index, output_json) in order, read a page at a time (each page
        is one short query, so the iterator holds no lock or open statement between pages)."""
        if partition_id is None:
            sql = ("SELECT partition_id, sample_index, output_json FROM samples WHERE run_id = ? "
                   "AND (partition_id, sample_index) > (?, ?) ORDER BY partition_id, sample_index LIMIT ?")
        else:
            sql = ("SELECT partition_id, sample_index, output_json FROM samples WHERE run_id = ? "
                   "AND partition_id = ? AND sample_index > ? ORDER BY sample_index LIMIT ?")
        after: tuple[str, int] = (partition_id or "", -(2 ** 62))
        while True:
            page = self._read(sql, (run_id, *after, PAGE))
            for r in page:
                yield r[0], r[1], r[2]
            if len(page) < PAGE:
                return
            after = (page[-1][0], page[-1][1])

    def tables(self) -> list[str]:
        """The ledger's table names (reports show the ones they do not know generically)."""
        return [r[0] for r in self._read("SELECT name FROM sqlite_master WHERE type = 'table' "
                                         "AND name NOT LIKE 'sqlite_%' ORDER BY name")]

    def table_rows(self, table: str, run_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Up to `limit` rows of any ledger table as dicts (of one run where it has run_id)."""
        if table not in self.tables():
            raise LedgerError(f"{self.path}: no table {table!r} in this ledger")
        cols = [r[1] for r in self._read(f'PRAGMA table_info("{table}")')]
        if run_id is not None and "run_id" in cols:
            return [dict(r) for r in self._read(f'SELECT * FROM "{table}" WHERE run_id = ? LIMIT ?', (run_id, limit))]
        return [dict(r) for r in self._read(f'SELECT * FROM "{table}" LIMIT ?', (limit,))]

    def progress(self, run_id: str) -> list[dict[str, Any]]:
        """Per (model_key, dataset_key): samples total/done, partitions by status, failures (with
        error class), and timings for an ETA: `started_at` (first claim), `last_activity_at`,
        `busy_seconds` / `busy_samples` (wall time and size of the finished partitions)."""
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for r in self._read(
                "SELECT model_key, dataset_key, status, count(*) AS n, sum(n_samples) AS total, "
                "sum(n_done) AS done, min(started_at) AS started, "
                "max(max(coalesce(heartbeat_at, 0), coalesce(finished_at, 0))) AS last, "
                "sum(CASE WHEN status = 'done' THEN finished_at - started_at END) AS busy, "
                "sum(CASE WHEN status = 'done' THEN n_samples END) AS busy_samples "
                "FROM partitions WHERE run_id = ? GROUP BY model_key, dataset_key, status", (run_id,)):
            g = groups.setdefault((r["model_key"], r["dataset_key"]), {
                "model_key": r["model_key"], "dataset_key": r["dataset_key"], "samples_total": 0,
                "samples_done": 0, "partitions": {s: 0 for s in STATUSES}, "failures": [],
                "started_at": None, "last_activity_at": None, "busy_seconds": 0.0, "busy_samples": 0})
            g["samples_total"] += r["total"] or 0
            g["samples_done"] += r["done"] or 0
            g["partitions"][r["status"]] = r["n"]
            if r["started"] is not None:
                g["started_at"] = r["started"] if g["started_at"] is None else min(g["started_at"], r["started"])
            if r["last"]:
                g["last_activity_at"] = max(g["last_activity_at"] or 0.0, r["last"])
            g["busy_seconds"] += r["busy"] or 0.0
            g["busy_samples"] += r["busy_samples"] or 0
        for r in self._read("SELECT model_key, dataset_key, partition_id, attempts, error_class, error_message "
                            "FROM partitions WHERE run_id = ? AND status = 'failed' "
                            "ORDER BY model_key, dataset_key, sample_start", (run_id,)):
            groups[(r["model_key"], r["dataset_key"])]["failures"].append(
                {"partition_id": r["partition_id"], "attempts": r["attempts"],
                 "error_class": r["error_class"], "error_message": r["error_message"]})
        return [groups[k] for k in sorted(groups)]

    # ---- loads and results ------------------------------------------------------------------

    def record_load(self, run_id: str, worker_id: str, model_key: str, *, started_at: float,
                    seconds: float) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO loads (run_id, worker_id, model_key, started_at, seconds) "
                         "VALUES (?, ?, ?, ?, ?)", (run_id, worker_id, model_key, started_at, seconds))

    def loads(self, run_id: str) -> list[dict[str, Any]]:
        return [dict(r) for r in self._read(
            "SELECT worker_id, model_key, started_at, seconds FROM loads WHERE run_id = ? "
            "ORDER BY started_at, id", (run_id,))]

    def record_paths(self, run_id: str, worker_id: str, model_key: str, paths_json: str, *, now: float) -> None:
        """What a worker's backend did for a model (fast paths taken, fallbacks and why)."""
        with self._write() as conn:
            conn.execute("INSERT INTO backend_paths (run_id, worker_id, model_key, paths_json, recorded_at) "
                         "VALUES (?, ?, ?, ?, ?) ON CONFLICT (run_id, worker_id, model_key) DO UPDATE SET "
                         "paths_json = excluded.paths_json, recorded_at = excluded.recorded_at",
                         (run_id, worker_id, model_key, paths_json, now))

    def backend_paths(self, run_id: str) -> list[dict[str, Any]]:
        return [{"worker_id": r["worker_id"], "model_key": r["model_key"], "paths": json.loads(r["paths_json"])}
                for r in self._read("SELECT worker_id, model_key, paths_json FROM backend_paths WHERE run_id = ? "
                                    "ORDER BY model_key, worker_id", (run_id,))]

    def put_results(self, run_id: str, rows: Iterable[Mapping[str, Any]], *, now: float | None = None) -> int:
        """Upsert what `eval` computed: model_key, dataset_key, metric, value, and optional
        stderr, n, subtask. They go into the newest results version when that one is an 'eval'
        version (a resume updates it), else into a new one (a rescore came in between). Returns
        the version written."""
        with self._write() as conn:
            newest = conn.execute("SELECT version, kind FROM result_versions WHERE run_id = ? "
                                  "ORDER BY version DESC LIMIT 1", (run_id,)).fetchone()
            if newest is not None and newest[1] == "eval":
                version = newest[0]
                if now is not None:
                    conn.execute("UPDATE result_versions SET created_at = ? WHERE run_id = ? AND version = ?",
                                 (now, run_id, version))
            else:
                version = self._new_version(conn, run_id, "eval", {}, now)
            self._upsert_results(conn, run_id, version, rows)
            return version

    def add_results_version(self, run_id: str, rows: Iterable[Mapping[str, Any]], *, kind: str,
                            settings: Mapping[str, Any], now: float) -> int:
        """A new results version (the older ones are kept), with the settings that produced it."""
        with self._write() as conn:
            version = self._new_version(conn, run_id, kind, settings, now)
            self._upsert_results(conn, run_id, version, rows)
            return version

    @staticmethod
    def _new_version(conn: sqlite3.Connection, run_id: str, kind: str, settings: Mapping[str, Any],
                     now: float | None) -> int:
        row = conn.execute("SELECT coalesce(max(version), 0) + 1, (SELECT updated_at FROM runs WHERE run_id = ?) "
                           "FROM result_versions WHERE run_id = ?", (run_id, run_id)).fetchone()
        created = now if now is not None else row[1]
        if created is None:
            raise LedgerError(f"no run {run_id} in this ledger")
        conn.execute("INSERT INTO result_versions (run_id, version, created_at, kind, settings_json) "
                     "VALUES (?, ?, ?, ?, ?)", (run_id, row[0], created, kind, json.dumps(dict(settings), sort_keys=True)))
        return row[0]

    @staticmethod
    def _upsert_results(conn: sqlite3.Connection, run_id: str, version: int, rows: Iterable[Mapping[str, Any]]) -> None:
        conn.executemany(
            "INSERT INTO results (run_id, version, model_key, dataset_key, subtask, metric, value, stderr, n) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (run_id, version, model_key, dataset_key, subtask, metric) "
            "DO UPDATE SET value = excluded.value, stderr = excluded.stderr, n = excluded.n",
            [(run_id, version, r["model_key"], r["dataset_key"], r.get("subtask") or "", r["metric"], r["value"],
              r.get("stderr"), r.get("n")) for r in rows])

    def result_versions(self, run_id: str) -> list[dict[str, Any]]:
        """Every results version of a run, oldest first: version, created_at, kind, settings."""
        out = []
        for r in self._read("SELECT version, created_at, kind, settings_json FROM result_versions "
                            "WHERE run_id = ? ORDER BY version", (run_id,)):
            d = dict(r)
            d["settings"] = json.loads(d.pop("settings_json"))
            out.append(d)
        return out

    def results(self, run_id: str, version: int | None = None, *, subtasks: bool = False) -> list[dict[str, Any]]:
        """Metric rows of one results version (default: the newest). With `subtasks`, the
        per-subtask rows too, each with its `subtask` ('' for the whole dataset)."""
        if version is None:
            got = self._read("SELECT max(version) FROM result_versions WHERE run_id = ?", (run_id,))
            version = got[0][0] if got and got[0][0] is not None else 1
        cols = "model_key, dataset_key, " + ("subtask, " if subtasks else "") + "metric, value, stderr, n"
        where = "" if subtasks else " AND subtask = ''"
        return [dict(r) for r in self._read(
            f"SELECT {cols} FROM results WHERE run_id = ? AND version = ?{where} "
            "ORDER BY model_key, dataset_key, subtask, metric", (run_id, version))]
