"""GPU leases: one host-wide SQLite table shared by every evalcore run on the host.

One row per (device, slot); a run declares its devices and `slots_per_gpu` and may use only slots
below its own `slots_per_gpu`. A task needing N GPUs takes one free slot on each of N distinct
devices in one `BEGIN IMMEDIATE` transaction, or nothing. Leases expire unless renewed, and the
slots of a dead process on this host are freed at once (`os.kill(pid, 0)`).

Fairness: a request that cannot be served registers as a waiter with a FIFO ticket and keeps it
while it polls (each `acquire` renews it). Before a request takes slots, the older waiters are
served on paper, in ticket order: one that would fit sets aside the slots it would take; one that
would not fit sets aside every free slot it could use. The request may only take what is left,
so it can backfill idle GPUs but never delays an older waiter: a waiting 4-GPU task is not
starved by a stream of 1-GPU tasks. A waiter that stops polling (not renewed within its ttl, or
its process died) is dropped.

Time is a parameter (`now`, epoch seconds); nothing here reads the clock.

The file must be on a disk local to the host (SQLite WAL does not work across hosts); point
`EVALCORE_STATE_DIR` at a local directory when the home directory is shared between nodes.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalcore.engine import db
from evalcore.errors import LeaseError

APPLICATION_ID = 0x4556474C  # "EVGL"
FILENAME = "gpu_leases.db"


@dataclass(frozen=True)
class Lease:
    """GPUs held together: `devices[i]` at slot `slots[i]`, all under one token."""

    token: str
    devices: tuple[str, ...]
    slots: tuple[int, ...]
    owner: str
    run_id: str
    expires_at: float


_V1 = (
    """CREATE TABLE slots (
        device TEXT NOT NULL,
        slot INTEGER NOT NULL CHECK (slot >= 0),
        token TEXT,
        owner TEXT,
        run_id TEXT,
        pid INTEGER,
        host TEXT,
        acquired_at REAL,
        expires_at REAL,
        PRIMARY KEY (device, slot)
    )""",
    "CREATE INDEX slots_token ON slots (token)",
    """CREATE TABLE waiters (
        ticket INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL UNIQUE,
        n_gpus INTEGER NOT NULL CHECK (n_gpus >= 1),
        devices_json TEXT NOT NULL,
        slots_per_gpu INTEGER NOT NULL CHECK (slots_per_gpu >= 1),
        pid INTEGER,
        host TEXT,
        run_id TEXT,
        registered_at REAL NOT NULL,
        renewed_at REAL NOT NULL,
        expires_at REAL NOT NULL
    )""",
)


# v2: each held slot records the holder's slots per GPU, so a GPU held by a run with one limit is
# never given to a run with another (a run with 1 worker per GPU keeps its GPU to itself).
_V2 = ("ALTER TABLE slots ADD COLUMN slots_per_gpu INTEGER",)

SCHEMA = db.Schema(label="GPU lease table", application_id=APPLICATION_ID,
                   migrations={1: db.script(_V1), 2: db.script(_V2)})


def default_path(env: Mapping[str, str]) -> Path:
    """`$EVALCORE_STATE_DIR/gpu_leases.db`, else `$XDG_STATE_HOME/evalcore/...`, else
    `~/.local/state/evalcore/gpu_leases.db`."""
    if env.get("EVALCORE_STATE_DIR"):
        return Path(env["EVALCORE_STATE_DIR"]) / FILENAME
    if env.get("XDG_STATE_HOME"):
        return Path(env["XDG_STATE_HOME"]) / "evalcore" / FILENAME
    home = Path(env["HOME"]) if env.get("HOME") else Path.home()
    return home / ".local" / "state" / "evalcore" / FILENAME


def pid_alive(pid: int | None) -> bool:
    """Whether a process of this host exists (unknown pids count as alive: expiry handles them)."""
    if pid is None or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:        # EPERM: it exists, owned by someone else
        return True
    return True


def _device_key(device: str) -> tuple:
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", device) if p)


def _pick(free: dict[str, list[int]], load: dict[str, int], devices: Sequence[str], slots_per_gpu: int,
          n: int) -> list[tuple[str, int]] | None:
    """n distinct devices with a usable free slot, least loaded first (spreads work), or None."""
    usable = [d for d in devices if any(s < slots_per_gpu for s in free.get(d, ()))]
    if len(usable) < n:
        return None
    order = {d: i for i, d in enumerate(devices)}
    chosen = sorted(usable, key=lambda d: (load.get(d, 0), order[d]))[:n]
    return [(d, min(s for s in free[d] if s < slots_per_gpu)) for d in chosen]


def _usable(free: dict[str, list[int]], devices: Sequence[str], slots_per_gpu: int) -> list[tuple[str, int]]:
    """One usable free slot on every device that has one (what a blocked waiter sets aside)."""
    out = []
    for d in devices:
        mine = [s for s in free.get(d, ()) if s < slots_per_gpu]
        if mine:
            out.append((d, min(mine)))
    return out


class GpuLeases:
    """This run's view of the host's GPU lease table: its devices and its slots per GPU."""

    def __init__(self, path: str | os.PathLike[str], devices: Sequence[str], slots_per_gpu: int) -> None:
        devices = [str(d) for d in devices]
        if len(set(devices)) != len(devices):
            raise LeaseError(f"GPU ids must be distinct, got {','.join(devices)}")
        if slots_per_gpu < 1:
            raise LeaseError(f"slots per GPU must be at least 1, got {slots_per_gpu}",
                             hint="--max-workers-per-gpu takes a positive number")
        self.path = Path(path)
        self.devices = tuple(devices)
        self.slots_per_gpu = int(slots_per_gpu)
        self._h = db.Handle(self.path, create=True, schema=SCHEMA)
        with self._h.write() as conn:
            conn.executemany("INSERT OR IGNORE INTO slots (device, slot) VALUES (?, ?)",
                             [(d, s) for d in self.devices for s in range(self.slots_per_gpu)])

    def __reduce__(self):  # sent to a spawned process, it reopens the file there
        return (GpuLeases, (str(self.path), list(self.devices), self.slots_per_gpu))

    def close(self) -> None:
        self._h.close()

    def __enter__(self) -> GpuLeases:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- leasing ----------------------------------------------------------------------------

    def acquire(self, n_gpus: int, *, owner: str, pid: int, host: str, run_id: str, now: float,
                ttl: float) -> Lease | None:
        """All `n_gpus` on distinct devices, or None (then poll again, well within `ttl`, to keep
        the place in the queue). `owner` names the requester and must be unique on the host."""
        if n_gpus < 1:
            raise LeaseError(f"a GPU lease needs at least 1 GPU, not {n_gpus}")
        if n_gpus > len(self.devices):
            have = f"only {len(self.devices)} ({','.join(self.devices)})" if self.devices else "none"
            raise LeaseError(f"a task needs {n_gpus} GPU{'s' if n_gpus > 1 else ''} but this run has {have}; "
                             "it could never start")
        with self._h.write() as conn:
            self._reclaim(conn, now=now, host=host)
            free: dict[str, list[int]] = {}
            load: dict[str, int] = {}
            other_limit: set[str] = set()  # devices held by someone sharing a GPU on other terms
            for device, slot, token, spg in conn.execute(
                    "SELECT device, slot, token, slots_per_gpu FROM slots ORDER BY device, slot"):
                if token is None:
                    free.setdefault(device, []).append(slot)
                else:
                    load[device] = load.get(device, 0) + 1
                    if spg != self.slots_per_gpu:
                        other_limit.add(device)
            mine = conn.execute("SELECT ticket FROM waiters WHERE owner = ?", (owner,)).fetchone()
            ticket = mine[0] if mine else None         # None: a new request, behind every waiter
            older = conn.execute("SELECT n_gpus, devices_json, slots_per_gpu FROM waiters WHERE owner != ? "
                                 "AND (? IS NULL OR ticket < ?) ORDER BY ticket",
                                 (owner, ticket, ticket)).fetchall()
            for n, devices_json, spg in older:          # serve older waiters first, on paper
                devices = json.loads(devices_json)
                aside = _pick(free, load, devices, spg, n) or _usable(free, devices, spg)
                for d, s in aside:
                    free[d].remove(s)
                    load[d] = load.get(d, 0) + 1
            for d in other_limit:
                free.pop(d, None)
            picked = _pick(free, load, self.devices, self.slots_per_gpu, n_gpus)
            if picked is None:
                conn.execute(
                    "INSERT INTO waiters (owner, n_gpus, devices_json, slots_per_gpu, pid, host, run_id, "
                    "registered_at, renewed_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (owner) DO UPDATE SET n_gpus = excluded.n_gpus, devices_json = "
                    "excluded.devices_json, slots_per_gpu = excluded.slots_per_gpu, pid = excluded.pid, "
                    "host = excluded.host, run_id = excluded.run_id, renewed_at = excluded.renewed_at, "
                    "expires_at = excluded.expires_at",
                    (owner, n_gpus, json.dumps(list(self.devices)), self.slots_per_gpu, pid, host, run_id,
                     now, now, now + ttl))
                return None
            token = secrets.token_hex(16)
            for d, s in picked:
                cur = conn.execute("UPDATE slots SET token = ?, owner = ?, run_id = ?, pid = ?, host = ?, "
                                   "acquired_at = ?, expires_at = ?, slots_per_gpu = ? WHERE device = ? AND slot = ? "
                                   "AND token IS NULL", (token, owner, run_id, pid, host, now, now + ttl,
                                                         self.slots_per_gpu, d, s))
                if cur.rowcount != 1:  # cannot happen inside BEGIN IMMEDIATE; refuse to oversubscribe
                    raise RuntimeError(f"GPU lease table changed under a write lock ({d} slot {s})")
            conn.execute("DELETE FROM waiters WHERE owner = ?", (owner,))
        return Lease(token, tuple(d for d, _ in picked), tuple(s for _, s in picked), owner, run_id, now + ttl)

    def renew(self, lease: Lease, *, now: float, ttl: float) -> bool:
        """Extend every slot of the lease. False: the lease was lost (reclaimed); stop using it."""
        with self._h.write() as conn:
            cur = conn.execute("UPDATE slots SET expires_at = ? WHERE token = ?", (now + ttl, lease.token))
            if cur.rowcount == len(lease.devices):
                return True
            self._free(conn, "token = ?", (lease.token,))   # partly lost: let go of the rest
            return False

    def release(self, lease: Lease) -> None:
        with self._h.write() as conn:
            self._free(conn, "token = ?", (lease.token,))

    def cancel(self, owner: str) -> None:
        """Stop waiting: give up the queue place of `owner`."""
        with self._h.write() as conn:
            conn.execute("DELETE FROM waiters WHERE owner = ?", (owner,))

    @staticmethod
    def _free(conn: sqlite3.Connection, where: str, params: Sequence[Any]) -> int:
        return conn.execute("UPDATE slots SET token = NULL, owner = NULL, run_id = NULL, pid = NULL, "
                            "host = NULL, acquired_at = NULL, expires_at = NULL, slots_per_gpu = NULL "
                            f"WHERE token IS NOT NULL AND ({where})", params).rowcount

    def _reclaim(self, conn: sqlite3.Connection, *, now: float, host: str) -> int:
        freed = self._free(conn, "expires_at < ?", (now,))
        dead = [pid for (pid,) in conn.execute(
            "SELECT DISTINCT pid FROM slots WHERE token IS NOT NULL AND host = ?", (host,)) if not pid_alive(pid)]
        for pid in dead:
            freed += self._free(conn, "host = ? AND pid = ?", (host, pid))
        conn.execute("DELETE FROM waiters WHERE expires_at < ?", (now,))
        gone = [pid for (pid,) in conn.execute("SELECT DISTINCT pid FROM waiters WHERE host = ?", (host,))
                if not pid_alive(pid)]
        conn.executemany("DELETE FROM waiters WHERE host = ? AND pid = ?", [(host, p) for p in gone])
        return freed

    # ---- reading ----------------------------------------------------------------------------

    def table(self, now: float) -> list[dict[str, Any]]:
        """Every slot (all runs on the host): device, slot, owner, run, pid, host, expires_in
        (seconds; None when free)."""
        rows = [{"device": r["device"], "slot": r["slot"], "owner": r["owner"], "run": r["run_id"],
                 "pid": r["pid"], "host": r["host"],
                 "expires_in": None if r["token"] is None else r["expires_at"] - now}
                for r in self._h.read("SELECT * FROM slots")]
        return sorted(rows, key=lambda r: (_device_key(r["device"]), r["slot"]))
