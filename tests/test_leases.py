"""GPU leases and GPU discovery: all-or-nothing, distinct devices, expiry and dead processes, FIFO
fairness for multi-GPU requests, two runs on one table, and real processes racing for slots."""

from __future__ import annotations

import multiprocessing
import os
import random
import socket
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cachekit.errors import EXIT_USAGE
from evalcore.engine.gpus import discover_gpus, visible_devices_env
from evalcore.engine.leases import GpuLeases, default_path
from evalcore.errors import LeaseError
from tests.helpers.waiting import ready_then_wait, run_spawned, wait_for

HOST = socket.gethostname()
ME = os.getpid()


def take(g: GpuLeases, n: int, owner: str, *, now: float = 0.0, ttl: float = 10.0, pid: int = ME,
         host: str = HOST, run_id: str = "run"):
    return g.acquire(n, owner=owner, pid=pid, host=host, run_id=run_id, now=now, ttl=ttl)


def held(g: GpuLeases) -> list[tuple[str, int, str]]:
    return [(r["device"], r["slot"], r["owner"]) for r in g.table(0.0) if r["owner"] is not None]


def queued(path: Path) -> list[str]:
    """The owners in the lease table's queue, oldest first (read from the table itself)."""
    with sqlite3.connect(path) as conn:
        return [o for (o,) in conn.execute("SELECT owner FROM waiters ORDER BY ticket")]


# ---- discovery ----------------------------------------------------------------------------------

@pytest.mark.parametrize("env, expected", [
    ({"EVALCORE_FAKE_GPUS": "3"}, ["0", "1", "2"]),
    ({"EVALCORE_FAKE_GPUS": "0"}, []),
    ({"EVALCORE_FAKE_GPUS": "a, b"}, ["a", "b"]),
    ({"EVALCORE_FAKE_GPUS": "2", "CUDA_VISIBLE_DEVICES": "5"}, []),  # CUDA_VISIBLE_DEVICES restricts fakes too
    ({"EVALCORE_FAKE_GPUS": "4", "CUDA_VISIBLE_DEVICES": "1,3"}, ["1", "3"]),
    ({"CUDA_VISIBLE_DEVICES": "2,3"}, ["2", "3"]),
    ({"CUDA_VISIBLE_DEVICES": ""}, []),
    ({"CUDA_VISIBLE_DEVICES": "-1"}, []),
    ({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, ["1"]),
    ({"CUDA_VISIBLE_DEVICES": "GPU-8f3e0c1a-77aa-4c1b-9a8e-0123456789ab,MIG-1d2c/7/0"},
     ["GPU-8f3e0c1a-77aa-4c1b-9a8e-0123456789ab", "MIG-1d2c/7/0"]),
    ({"PATH": "/nonexistent"}, []),
])
def test_discover_gpus_from_the_environment(env, expected):
    assert discover_gpus(env) == expected


def test_discover_gpus_rejects_a_bad_fake_list():
    with pytest.raises(LeaseError, match="EVALCORE_FAKE_GPUS"):
        discover_gpus({"EVALCORE_FAKE_GPUS": "0,0"})


def _fake_nvidia_smi(bin_dir: Path, body: str) -> dict[str, str]:
    bin_dir.mkdir()
    exe = bin_dir / "nvidia-smi"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return {"PATH": str(bin_dir)}


def test_discover_gpus_asks_nvidia_smi(tmp_path):
    env = _fake_nvidia_smi(tmp_path / "ok", 'test "$1" = "--query-gpu=index" || exit 3\nprintf "0\\n1\\n2\\n"')
    assert discover_gpus(env) == ["0", "1", "2"]
    assert discover_gpus(_fake_nvidia_smi(tmp_path / "broken", "echo 'NVIDIA-SMI has failed' >&2; exit 9")) == []


def test_visible_devices_env_and_default_path(tmp_path):
    assert visible_devices_env(["2", "3"]) == {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert visible_devices_env([]) == {"CUDA_VISIBLE_DEVICES": ""}
    assert default_path({"EVALCORE_STATE_DIR": "/s", "HOME": "/h"}) == Path("/s/gpu_leases.db")
    assert default_path({"HOME": "/h"}) == Path("/h/.local/state/evalcore/gpu_leases.db")


# ---- one process --------------------------------------------------------------------------------

def test_all_or_nothing_on_distinct_devices(tmp_path):
    g = GpuLeases(tmp_path / "leases.db", ["0", "1", "2", "3"], 1)
    a = take(g, 3, "a")
    assert a is not None and len(set(a.devices)) == 3
    before = held(g)
    assert take(g, 2, "b") is None                     # only one free: nothing taken
    assert held(g) == before
    g.release(a)
    b = take(g, 2, "b")
    assert b is not None and len(set(b.devices)) == 2 and held(g) == [(d, 0, "b") for d in sorted(b.devices)]


def test_a_lease_never_takes_two_slots_of_one_device_and_spreads_load(tmp_path):
    g = GpuLeases(tmp_path / "leases.db", ["0", "1"], 2)
    x = take(g, 1, "x")
    y = take(g, 1, "y")
    assert {x.devices, y.devices} == {("0",), ("1",)}                   # least loaded first
    z = take(g, 2, "z")
    assert sorted(z.devices) == ["0", "1"] and z.slots == (1, 1)
    assert take(g, 1, "w") is None
    one = GpuLeases(tmp_path / "one.db", ["7"], 2)
    with pytest.raises(LeaseError):                                     # two slots of one GPU are not two GPUs
        take(one, 2, "p")


def test_a_request_larger_than_the_machine_fails_at_once(tmp_path):
    g = GpuLeases(tmp_path / "leases.db", ["0", "1"], 4)
    with pytest.raises(LeaseError, match=r"needs 3 GPUs but this run has only 2 \(0,1\)") as err:
        take(g, 3, "big")                                               # raised: the caller never polls
    assert err.value.exit_code == EXIT_USAGE and err.value.hint
    assert queued(tmp_path / "leases.db") == []                         # and it never took a queue place
    with pytest.raises(LeaseError):
        take(g, 0, "none")
    with pytest.raises(LeaseError, match="at least 1"):
        GpuLeases(tmp_path / "x.db", ["0"], 0)


def test_renew_and_release_only_by_token(tmp_path):
    g = GpuLeases(tmp_path / "leases.db", ["0", "1"], 1)
    a = take(g, 2, "a", now=0.0, ttl=10.0)
    assert g.renew(a, now=8.0, ttl=10.0)
    assert {r["expires_in"] for r in g.table(8.0)} == {10.0}
    assert take(g, 1, "b", now=15.0) is None                            # renewed until 18
    forged = type(a)("0" * 32, a.devices, a.slots, a.owner, a.run_id, a.expires_at)
    assert not g.renew(forged, now=9.0, ttl=10.0)
    g.release(forged)
    assert len(held(g)) == 2
    g.release(a)
    assert held(g) == []


def test_expired_lease_is_reclaimed(tmp_path):
    g = GpuLeases(tmp_path / "leases.db", ["0"], 1)
    a = take(g, 1, "a", now=0.0, ttl=10.0)
    assert take(g, 1, "b", now=9.0) is None                             # not expired yet
    assert take(g, 1, "b", now=11.0) is not None                        # acquire reclaims the expired slot
    assert not g.renew(a, now=11.0, ttl=10.0)                           # the old holder lost it
    assert [o for _, _, o in held(g)] == ["b"]


def test_slots_of_a_dead_process_are_reclaimed_on_its_host_only(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = int(proc.stdout)
    g = GpuLeases(tmp_path / "leases.db", ["0", "1"], 1)
    take(g, 1, "here", pid=dead, ttl=1000.0)
    take(g, 1, "there", pid=dead, host="other-host", ttl=1000.0)
    assert take(g, 1, "new", now=1.0) is not None                       # the dead pid's slot on this host
    assert sorted(o for _, _, o in held(g)) == ["new", "there"]         # another host's pid means nothing here
    assert take(g, 1, "more", now=2.0) is None


def test_two_runs_on_one_table_never_oversubscribe(tmp_path):
    path = tmp_path / "leases.db"
    run_a = GpuLeases(path, ["0", "1"], 1)
    run_b = GpuLeases(path, ["0", "1"], 1)
    assert take(run_a, 2, "a", run_id="A") is not None
    assert take(run_b, 1, "b", run_id="B") is None
    # a run with more slots per GPU never shares a GPU held by a run with another limit
    wide = GpuLeases(path, ["0", "1"], 2)
    assert take(wide, 1, "w", run_id="W") is None
    narrow = GpuLeases(tmp_path / "n.db", ["0"], 2)
    narrow_1 = GpuLeases(tmp_path / "n.db", ["0"], 1)
    assert take(narrow, 1, "n2").slots == (0,)
    assert take(narrow_1, 1, "n1") is None                              # slot 1 is not its to use


def test_an_older_multi_gpu_waiter_blocks_backfill_that_would_delay_it(tmp_path):
    path = tmp_path / "leases.db"
    g = GpuLeases(path, ["0", "1", "2", "3"], 1)
    small = take(g, 2, "small", now=0.0)
    assert take(g, 4, "big", now=0.0, ttl=5.0) is None                   # waits, first in line
    assert take(g, 1, "late", now=1.0) is None                          # would delay "big"
    g.release(small)
    assert take(g, 1, "late", now=2.0) is None                          # "late" waits behind it
    big = take(g, 4, "big", now=2.0)
    assert big is not None and sorted(big.devices) == ["0", "1", "2", "3"]
    assert queued(path) == ["late"]
    g.release(big)
    assert take(g, 1, "late", now=3.0) is not None and queued(path) == []


def test_backfill_that_cannot_delay_an_older_waiter_goes_ahead(tmp_path):
    path = tmp_path / "leases.db"
    left = GpuLeases(path, ["0", "1"], 1)                               # two runs, disjoint GPUs
    right = GpuLeases(path, ["2", "3"], 1)
    hog = take(left, 1, "hog", now=0.0)
    assert take(left, 2, "pair", now=0.0) is None                       # waits for GPU of "hog"
    assert take(right, 1, "r1", now=1.0) is not None                    # other GPUs: no delay
    assert take(left, 1, "l1", now=1.0) is None                         # would take "pair"'s GPU
    left.release(hog)
    assert take(left, 2, "pair", now=2.0) is not None


def test_a_waiter_that_stops_polling_loses_its_place(tmp_path):
    path = tmp_path / "leases.db"
    g = GpuLeases(path, ["0", "1"], 1)
    take(g, 1, "x", now=0.0, ttl=100.0)
    assert take(g, 2, "big", now=0.0, ttl=5.0) is None
    assert take(g, 1, "small", now=1.0) is None
    assert take(g, 1, "small", now=6.0) is not None                     # "big" went quiet at 5
    assert queued(path) == []
    # a waiter whose process died is dropped at once
    take(g, 2, "ghost", now=7.0, ttl=100.0, pid=_dead_pid())
    assert queued(path) and take(g, 2, "ghost2", now=7.5, ttl=100.0) is None
    assert queued(path) == ["ghost2"]
    g.cancel("ghost2")
    assert queued(path) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---- many processes -----------------------------------------------------------------------------

def _stress_worker(path: str, check: str, devices: list[str], spg: int, rounds: int, go: str, seed: int) -> dict:
    """Acquire 1-2 GPUs, prove in a separate file that nobody else holds those slots, release."""
    rng = random.Random(seed)
    leases = GpuLeases(path, devices, spg)
    chk = sqlite3.connect(check, timeout=30, isolation_level=None)
    owner = f"w{seed}"
    violations: list[str] = []
    got = 0
    ready_then_wait(go)
    deadline = time.monotonic() + 300                 # generous: a loaded machine is slow, not wrong
    while got < rounds and time.monotonic() < deadline:
        n = rng.choice((1, 1, 2))
        lease = leases.acquire(n, owner=owner, pid=os.getpid(), host=HOST, run_id=f"run-{spg}", now=time.time(), ttl=30)
        if lease is None:
            time.sleep(0.001)
            continue
        got += 1
        if len(set(lease.devices)) != n or any(s >= spg for s in lease.slots):
            violations.append(f"bad lease {lease}")
        chk.execute("BEGIN IMMEDIATE")
        for d, s in zip(lease.devices, lease.slots, strict=True):
            try:
                chk.execute("INSERT INTO held VALUES (?, ?, ?)", (d, s, owner))
            except sqlite3.IntegrityError:
                violations.append(f"{d}/{s} held twice")
        over = chk.execute("SELECT device, count(*) FROM held GROUP BY device HAVING count(*) > 2").fetchall()
        violations += [f"device {d} has {c} holders" for d, c in over]
        chk.execute("COMMIT")
        time.sleep(rng.uniform(0, 0.004))
        chk.execute("DELETE FROM held WHERE owner = ?", (owner,))
        leases.release(lease)
    chk.close()
    leases.close()
    return {"got": got, "violations": violations}


def test_eight_processes_never_hold_a_slot_twice(tmp_path):
    path, check, go = tmp_path / "leases.db", tmp_path / "check.db", tmp_path / "go"
    with sqlite3.connect(check) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE held (device TEXT, slot INTEGER, owner TEXT, PRIMARY KEY (device, slot))")
    devices = ["0", "1", "2"]
    # two runs on one table: one with 2 slots per GPU, one with 1
    args = [(str(path), str(check), devices, 2 if i % 2 else 1, 40, str(go), i) for i in range(8)]
    results = run_spawned(_stress_worker, args, go)
    assert [r["violations"] for r in results] == [[]] * 8
    assert [r["got"] for r in results] == [40] * 8
    assert all(r["owner"] is None for r in GpuLeases(path, devices, 1).table(time.time()))


def _small_stream(path: str, go: str, stop: str, seed: int) -> int:
    """Keep asking for one GPU, holding it briefly, asking again at once."""
    leases = GpuLeases(path, ["0", "1", "2", "3"], 1)
    owner, got = f"small{seed}", 0
    ready_then_wait(go)
    while not os.path.exists(stop):
        lease = leases.acquire(1, owner=owner, pid=os.getpid(), host=HOST, run_id="small", now=time.time(), ttl=30)
        if lease is None:
            time.sleep(0.001)
            continue
        got += 1
        time.sleep(0.02)
        leases.release(lease)
    leases.cancel(owner)
    return got


def test_a_four_gpu_task_is_not_starved_by_a_stream_of_one_gpu_tasks(tmp_path):
    """Conditions, not timings: once the 4-GPU request waits, the stream of 1-GPU tasks never
    holds more GPUs than the moment before, so the request is served as the stream drains."""
    path, go, stop = tmp_path / "leases.db", tmp_path / "go", tmp_path / "stop"
    g = GpuLeases(path, ["0", "1", "2", "3"], 1)
    small_held = lambda: sum(r["owner"] is not None for r in g.table(time.time()))  # noqa: E731
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        pending = [pool.apply_async(_small_stream, (str(path), str(go), str(stop), i)) for i in range(3)]
        wait_for(lambda: len(list(tmp_path.glob("go.ready.*"))) == 3, 300.0, 0.005, "the stream never started")
        go.touch()
        wait_for(lambda: small_held() >= 2, 300.0, 0.005, "the stream never flowed")
        big = take(g, 4, "big", now=time.time(), ttl=300)     # now a waiter with a ticket
        before = small_held()
        deadline = time.monotonic() + 300
        while big is None:
            assert time.monotonic() < deadline, "the 4-GPU request starved"
            now_held = small_held()
            assert now_held <= before, "a 1-GPU task slipped in ahead of the waiting 4-GPU task"
            before = now_held
            big = take(g, 4, "big", now=time.time(), ttl=300)
        assert sorted(big.devices) == ["0", "1", "2", "3"]
        assert held(g) == [(d, 0, "big") for d in ("0", "1", "2", "3")]
        g.release(big)
        wait_for(lambda: small_held() >= 1, 300.0, 0.005, "the stream did not resume after the big task")
        stop.touch()
        counts = [p.get(timeout=300) for p in pending]
    assert sum(counts) >= 3                                    # the stream ran before and after
